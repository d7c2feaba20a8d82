//! The vehicle-facing connection layer: TLS, identity, MQTT sessions. It knows nothing of
//! partners; it only attaches each authenticated car to the bus under its own VIN.

pub mod connection;
pub mod identity;
pub mod listener;
pub mod tls;

pub use connection::{DisconnectReason, Peer, SessionEvent, SessionInfo, SessionLimits, SessionSink, now_ms};
pub use identity::{IdentityError, VehicleIdentity, vehicle_identity};
pub use listener::{Attachments, ListenerSettings, ListenerStats};
