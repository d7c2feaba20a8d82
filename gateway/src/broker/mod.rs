//! The vehicle-facing connection layer: TLS, identity, MQTT sessions and the bounds on what a
//! car can make the gateway hold. It knows nothing of partners; it only attaches each
//! authenticated car to the bus under its own VIN.

pub mod flood;
pub mod handshakes;
pub mod identity;
pub mod lifecycle;
pub mod listener;
pub mod revocation;
pub mod saved;
pub mod session;
pub mod subscriptions;
pub mod tls;

mod connected;
pub(crate) mod mqtt;

pub use flood::{ConnectLimiter, PacketLimiter, PacketRate};
pub use handshakes::HandshakePool;
pub use identity::{IdentityError, VehicleIdentity, vehicle_identity};
pub use lifecycle::{ConnectionEvent, ConnectionEventSink, ConnectionInfo, DisconnectReason, Peer};
pub use listener::{ListenerSettings, ListenerStats};
pub use revocation::{CertificateFacts, RevocationList, Revoked};
pub use saved::{RetainedLimits, SavedSessions, SavedStats};
pub use session::{SessionLimits, SessionServices};

/// Forgets, every `interval`, what cars away longer than `expiry` kept (saved subscriptions,
/// retained messages, parked mailboxes), and the rate buckets that are full again.
pub async fn expire_saved_sessions(
    services: SessionServices,
    expiry: std::time::Duration,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let expired = services.saved.expire(expiry);
        for vin in &expired {
            services.mailboxes.forget_parked(vin);
        }
        if !expired.is_empty() {
            tracing::info!(vehicles = expired.len(), "saved sessions expired");
        }
        services.packet_limiter.prune();
        services.connect_limiter.prune();
    }
}
