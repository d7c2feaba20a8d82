//! The vehicle agent: runs on a car's telematics unit.
//!
//! It keeps one MQTT 3.1.1 session over mutual TLS to the cloud gateway (client id = the VIN
//! in the car's certificate) and serves the partner services the gateway offers to in-car
//! apps on a loopback gRPC endpoint, forwarding each call as a `vehicle.v1.Request`:
//!
//! - [`config`]: [`AgentConfig`], from a TOML file and `AGENT_*` variables;
//! - [`tls`]: the car's identity (VIN) and rustls client configuration;
//! - [`backoff`]: reconnection delays with full jitter;
//! - [`pending`]: requests waiting for their response across link drops;
//! - [`link`]: [`GatewayLink`], the MQTT session and the request/response matching;
//! - [`local`]: the in-car gRPC server forwarding partner services;
//! - [`agent`]: [`Agent`], both together;
//! - [`cli`]: the `vehicle-agent` command line.

#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod link;
pub mod local;
pub mod pending;
pub mod tls;

pub use agent::Agent;
pub use config::{AgentConfig, ConfigError};
pub use link::GatewayLink;
