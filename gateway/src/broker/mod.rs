//! The vehicle-facing connection layer: TLS, identity, MQTT sessions. It knows nothing of
//! partners; it only attaches each authenticated car to the bus under its own VIN.

pub mod handshakes;
pub mod identity;
pub mod lifecycle;
pub mod listener;
mod live;
mod mqtt;
pub mod session;
pub mod subscriptions;
pub mod tls;

pub use handshakes::HandshakePool;
pub use identity::{IdentityError, VehicleIdentity, vehicle_identity};
pub use lifecycle::{DisconnectReason, Peer, SessionEvent, SessionInfo, SessionSink, now_ms};
pub use listener::{Attachments, ListenerSettings, ListenerStats};
pub use session::{SessionLimits, Wiring};
