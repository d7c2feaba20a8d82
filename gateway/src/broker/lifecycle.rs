//! What the connection layer reports about each vehicle connection: who connected, when, and
//! why the session ended.

use std::fmt;
use std::net::SocketAddr;

use proto::Vin;

/// Why a vehicle's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The car sent DISCONNECT.
    Clean,
    /// Nothing heard from the car for 1.5 × its keep-alive.
    KeepAliveTimeout,
    /// Another connection with the same VIN took over the session.
    Kicked,
    /// The car broke the protocol or left its namespace.
    ProtocolError(String),
    /// The CONNECT was refused (the code sent in CONNACK).
    Refused(String),
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost(String),
    /// The car stopped reading while the gateway had messages for it.
    SlowConsumer,
    /// The car kept sending packets faster than its rate limit allows.
    Flooding {
        /// Packets (PUBLISH, SUBSCRIBE, UNSUBSCRIBE) per second the car may send.
        per_second: u32,
        /// How long it stayed over that rate.
        for_: std::time::Duration,
    },
    /// The car went over one of its per-car bounds (retained messages, QoS 2 in flight, topic size).
    LimitExceeded(String),
    /// The gateway is shutting down.
    ServerShutdown,
    /// An operator ended the session (fleet ops `KickVehicle`).
    KickedByOperator,
    /// The car's certificate was revoked: its session ends and it may not connect again.
    Revoked,
}

impl DisconnectReason {
    /// A short fixed label for the reason (metrics, dashboards): one per variant, never the
    /// free text some variants carry.
    pub fn kind(&self) -> &'static str {
        match self {
            DisconnectReason::Clean => "clean",
            DisconnectReason::KeepAliveTimeout => "keep_alive_timeout",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::ProtocolError(_) => "protocol_error",
            DisconnectReason::Refused(_) => "refused",
            DisconnectReason::ConnectionLost(_) => "connection_lost",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::Flooding { .. } => "flooding",
            DisconnectReason::LimitExceeded(_) => "limit_exceeded",
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::KickedByOperator => "kicked_by_operator",
            DisconnectReason::Revoked => "revoked",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Clean => f.write_str("clean"),
            DisconnectReason::KeepAliveTimeout => f.write_str("keep-alive timeout"),
            DisconnectReason::Kicked => f.write_str("kicked: session taken over by a new connection"),
            DisconnectReason::ProtocolError(why) => write!(f, "protocol error: {why}"),
            DisconnectReason::Refused(why) => write!(f, "refused: {why}"),
            DisconnectReason::ConnectionLost(why) => write!(f, "connection lost: {why}"),
            DisconnectReason::SlowConsumer => {
                f.write_str("slow consumer: the car stopped reading while messages for it piled up")
            }
            DisconnectReason::Flooding { per_second, for_ } => {
                write!(f, "flooding: over {per_second} packets/s for {}s", for_.as_secs())
            }
            DisconnectReason::LimitExceeded(why) => write!(f, "limit exceeded: {why}"),
            DisconnectReason::ServerShutdown => f.write_str("server shutdown"),
            DisconnectReason::KickedByOperator => f.write_str("kicked by an operator"),
            DisconnectReason::Revoked => f.write_str("certificate revoked"),
        }
    }
}

/// Who connected, as recorded in the connection log.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// This connection, unique within the process.
    pub conn: u64,
    /// The VIN from the certificate.
    pub vin: Vin,
    /// SHA-256 of the certificate.
    pub fingerprint: String,
    /// What the car says it runs (the CONNECT user name, e.g. `vehicle-agent/0.1.0`).
    pub agent_version: Option<String>,
    /// The car's address as seen by the gateway.
    pub remote: SocketAddr,
    /// When its CONNECT was accepted (unix ms).
    pub at_ms: i64,
}

/// What the connection layer reports about a connection's lifetime.
#[derive(Debug, Clone)]
pub enum ConnectionEvent {
    /// The car's CONNECT was accepted.
    Connected(ConnectionInfo),
    /// The car is subscribed to its events topic (its SUBACK is on the wire): events can flow.
    EventsSubscribed {
        /// The connection.
        conn: u64,
        /// Who.
        vin: Vin,
    },
    /// The connection ended.
    Disconnected {
        /// The connection.
        conn: u64,
        /// Who.
        vin: Vin,
        /// Why.
        reason: DisconnectReason,
        /// When (unix ms).
        at_ms: i64,
    },
}

/// Where sessions report their lifetime events. Sending waits when the consumer is behind, so
/// no connect or disconnect goes unrecorded.
#[derive(Debug, Clone)]
pub struct ConnectionEventSink(pub tokio::sync::mpsc::Sender<ConnectionEvent>);

impl ConnectionEventSink {
    pub(crate) async fn send(&self, event: ConnectionEvent) {
        // Boxed: the event is large and sent rarely, so it stays out of the session's future.
        let _ = Box::pin(self.0.send(event)).await;
    }
}

/// The peer of one vehicle connection, as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// This connection, unique within the process.
    pub conn: u64,
    /// Identity from the certificate.
    pub vin: Vin,
    /// SHA-256 of the certificate.
    pub fingerprint: String,
    /// Serial and notBefore of the certificate, for the revocation check at CONNECT.
    pub certificate: super::revocation::CertificateFacts,
    /// Remote address.
    pub remote: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_short_label_without_the_free_text() {
        let all = [
            DisconnectReason::Clean,
            DisconnectReason::KeepAliveTimeout,
            DisconnectReason::Kicked,
            DisconnectReason::ProtocolError("car text".into()),
            DisconnectReason::Refused("car text".into()),
            DisconnectReason::ConnectionLost("car text".into()),
            DisconnectReason::SlowConsumer,
            DisconnectReason::Flooding {
                per_second: 1,
                for_: std::time::Duration::from_secs(1),
            },
            DisconnectReason::LimitExceeded("car text".into()),
            DisconnectReason::ServerShutdown,
            DisconnectReason::KickedByOperator,
            DisconnectReason::Revoked,
        ];
        let kinds: std::collections::BTreeSet<&str> = all.iter().map(DisconnectReason::kind).collect();
        assert_eq!(kinds.len(), all.len(), "{kinds:?}");
        assert!(
            kinds
                .iter()
                .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{kinds:?}"
        );
    }
}
