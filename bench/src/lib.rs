//! Fleet simulator and side-by-side benchmarks of the gateway and Mosquitto.
//!
//! - [`fleet`]: deterministic VINs and one certificate per vehicle, issued in-process;
//! - [`swarm`]: raw vehicles (rumqttc over mTLS), connect storms with the agent's backoff;
//! - [`traffic`]: publish round trips and full requests, open and closed loop;
//! - [`agents`]: requests through the real agent's `GatewayLink`;
//! - [`brokers`]: the gateway (own process or in-process), Mosquitto, the parking adapter;
//! - [`process`]: child processes and their logs;
//! - [`procfs`]: CPU time and RSS of each process, machine facts;
//! - [`under_storm`]: connected vehicles served while the rest of the fleet connects;
//! - [`restart`]: the reconnect storm (the broker killed and restarted under the fleet);
//! - [`abuse`]: well-behaved cars served while one car abuses MQTT ([`abuser`], over the raw
//!   client [`rawmqtt`]) and sockets flood the listener; partner events from [`partner`];
//! - [`services`]: a service known by configuration only against a compiled-in one;
//!   [`phased`]: what it shares with [`journal_cost`] (settings alternating in phases);
//! - [`revoke`]: from an operator's revocation (over [`ops`], the gateway's ops API) to the car
//!   cut off; [`journal_cost`]: request round trips with the interaction journal off and on;
//! - [`journal`]: rows per second of the gateway's journal writer, SQLite and PostgreSQL;
//! - [`run`]: one run of every scenario; [`report`]: its JSON and Markdown.

pub mod abuse;
pub mod abuser;
pub mod agents;
pub mod brokers;
pub mod fleet;
pub mod journal;
pub mod journal_cost;
pub mod ops;
pub mod partner;
pub mod phased;
pub mod process;
pub mod procfs;
pub mod rawmqtt;
pub mod report;
pub mod restart;
pub mod revoke;
pub mod run;
pub mod services;
pub mod stats;
pub mod swarm;
mod targets;
pub mod traffic;
pub mod under_storm;
