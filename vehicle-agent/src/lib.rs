//! The vehicle agent: runs on a car's telematics unit.
//!
//! It keeps one MQTT 3.1.1 session over mutual TLS to the cloud gateway (client id = the VIN
//! in the car's certificate) and serves the partner services the gateway offers to in-car
//! apps on a local gRPC endpoint (loopback TCP, and a Unix socket if configured), forwarding
//! each call as a `vehicle.v1.Request`. In this crate "session" means the MQTT session only.
//!
//! - [`config`]: [`AgentConfig`], from a TOML file and `AGENT_*` variables;
//! - [`tls`]: the car's identity (VIN) and rustls client configuration;
//! - [`backoff`]: reconnection delays with full jitter;
//! - [`store`]: crash-safe files in the state directory;
//! - [`outbox`]: accepted requests and their outcomes, on disk across crashes and reboots;
//! - [`owner`]: which in-car app a request and its result belong to;
//! - [`events`]: partner events kept on disk until an in-car app acknowledges them;
//! - [`pending`]: app calls waiting for a response, in memory;
//! - [`link`]: [`GatewayLink`], accepting calls and matching responses;
//! - `event_loop`: the link's MQTT event loop and housekeeping tasks;
//! - [`local`]: the in-car gRPC server forwarding partner services;
//! - [`api`]: `agent.v1.VehicleAgent`, results of earlier calls and events for apps;
//! - [`agent`]: [`Agent`], both together;
//! - [`cli`]: the `vehicle-agent` command line.

#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
mod event_loop;
pub mod events;
pub mod link;
pub mod local;
pub mod outbox;
pub mod owner;
pub mod pending;
pub mod store;
pub mod tls;

pub use agent::Agent;
pub use config::{AgentConfig, ConfigError};
pub use link::{CallIds, GatewayLink};
