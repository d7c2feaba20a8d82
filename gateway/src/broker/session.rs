//! One vehicle's MQTT session: frames MQTT 3.1.1 over the TLS stream, enforces the VIN's
//! namespace and the per-car bounds, hands what the car sends on the gateway's own topics to
//! the inboxes and writes what its mailbox receives. This file has the session's beginning
//! (CONNECT) and end; [`super::connected`] the loop in between.

use std::sync::Arc;
use std::time::Duration;

use proto::topics::may_publish;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, LastWill, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connected::ConnectedSession;
use super::flood::{ConnectLimiter, PacketLimiter};
use super::lifecycle::{ConnectionEvent, ConnectionEventSink, ConnectionInfo, DisconnectReason, Peer};
use super::mqtt::MqttIo;
use super::revocation::{RevocationList, Revoked};
use super::saved::{RetainedLimits, SavedSessions};
use super::subscriptions::Subscriptions;
use crate::bus::{AckInbox, Mailbox, Mailboxes, RequestInbox};
use crate::clock::now_ms;
use crate::logsafe::{printable, printable_within};
use crate::metrics::{ConnectResult, Metrics};

/// Per-car bounds of a session, each configurable (`[mqtt]`).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time allowed between the handshake and CONNECT.
    pub connect_timeout: Duration,
    /// Cap on the keep-alive a car may ask for, and the value used when it asks for none.
    pub max_keep_alive: Duration,
    /// Longest a write waits for the car to take any bytes before it is a slow consumer.
    pub write_stall_timeout: Duration,
    /// Largest MQTT packet accepted (remaining length).
    pub max_packet_bytes: usize,
    /// Requests of one car being handled at once; beyond it the session stops reading from
    /// the car until one is answered.
    pub max_requests_in_flight: usize,
    /// Topic filters one car may hold; beyond it a SUBSCRIBE gets 0x80 for each new filter.
    pub max_subscriptions: usize,
    /// Longest topic name or filter, in bytes.
    pub max_topic_bytes: usize,
    /// QoS 2 messages from the car awaiting its PUBREL; one more disconnects it.
    pub max_qos2_awaiting_release: usize,
    /// Retained messages one car may keep.
    pub retained: RetainedLimits,
}

/// What every session is attached to and reports to; cheap to clone.
#[derive(Clone)]
pub struct SessionServices {
    /// Where the gateway's messages for each car wait.
    pub mailboxes: Mailboxes,
    /// Takes the requests cars publish.
    pub requests: Arc<dyn RequestInbox>,
    /// Takes the event acknowledgements cars publish.
    pub acks: Arc<dyn AckInbox>,
    /// Where sessions report connects and disconnects.
    pub events: ConnectionEventSink,
    /// What cars keep between sessions.
    pub saved: SavedSessions,
    /// Every car's packet rate.
    pub packet_limiter: Arc<PacketLimiter>,
    /// Every car's connect rate.
    pub connect_limiter: Arc<ConnectLimiter>,
    /// Per-car bounds.
    pub limits: SessionLimits,
    /// Revoked certificates, checked at every CONNECT (resumed TLS included).
    pub revocations: Arc<RevocationList>,
    /// Where connects, disconnects and takeovers are counted.
    pub metrics: Arc<Metrics>,
}

fn connack(session_present: bool, code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck { session_present, code })
}

/// Runs one vehicle's MQTT session on an authenticated stream until it ends, and says why.
///
/// The future of a connected car lives as long as its session, so it is kept small: what
/// happens once (the CONNECT exchange, the farewell) runs in boxed futures that are freed when
/// done, and the steady state holds little more than the stream and the subscription table.
pub async fn serve_vehicle<S>(
    io: S,
    peer: &Peer,
    services: &SessionServices,
    shutdown: &CancellationToken,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut mqtt = MqttIo::new(
        io,
        services.limits.max_packet_bytes,
        services.limits.write_stall_timeout,
    );
    let (mut session, opened) = match Box::pin(open(&mut mqtt, peer, services)).await {
        Ok(opened) => opened,
        Err((result, reason)) => {
            services.metrics.connect(result);
            return reason;
        }
    };
    services.metrics.connect(ConnectResult::Accepted);
    let reason = session
        .run(&mut mqtt, &opened.mailbox, opened.keep_alive, shutdown)
        .await;
    Box::pin(close(mqtt, session, opened, reason)).await
}

/// Answers CONNACK "not authorized" to a revoked car; what its connection attempt counts as.
async fn refused_as_revoked<S: AsyncRead + AsyncWrite + Unpin>(
    mqtt: &mut MqttIo<S>,
    revoked: Revoked,
) -> (ConnectResult, DisconnectReason) {
    let _ = mqtt.send(&connack(false, ConnectReturnCode::NotAuthorized)).await;
    (ConnectResult::Revoked, DisconnectReason::Refused(revoked.to_string()))
}

/// What a session keeps from its CONNECT.
struct Opened {
    mailbox: Arc<Mailbox>,
    /// 1.5 × the keep-alive in force.
    keep_alive: Duration,
    will: Option<LastWill>,
}

/// Reads and answers the CONNECT, resumes a persistent session, opens the car's mailbox.
async fn open<'a, S: AsyncRead + AsyncWrite + Unpin>(
    mqtt: &mut MqttIo<S>,
    peer: &'a Peer,
    services: &'a SessionServices,
) -> Result<(ConnectedSession<'a>, Opened), (ConnectResult, DisconnectReason)> {
    let vin = &peer.vin;
    let limits = &services.limits;
    let no_connect = |reason| (ConnectResult::NoConnect, reason);
    let connect = match timeout(limits.connect_timeout, mqtt.read()).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => {
            return Err(no_connect(DisconnectReason::ProtocolError(
                "first packet is not CONNECT".into(),
            )));
        }
        Ok(Err(reason)) => return Err(no_connect(reason)),
        Err(_) => {
            return Err(no_connect(DisconnectReason::ProtocolError(
                "no CONNECT within the connect timeout".into(),
            )));
        }
    };
    if !services.connect_limiter.admit(vin) {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::ServiceUnavailable)).await;
        return Err((
            ConnectResult::Rate,
            DisconnectReason::Refused("reconnecting faster than its connect rate".into()),
        ));
    }
    if let Some(revoked) = services.revocations.check(vin, &peer.certificate) {
        return Err(refused_as_revoked(mqtt, revoked).await);
    }
    if connect.protocol != Protocol::V4 {
        let _ = mqtt
            .send(&connack(false, ConnectReturnCode::RefusedProtocolVersion))
            .await;
        return Err((
            ConnectResult::ProtocolVersion,
            DisconnectReason::Refused("only MQTT 3.1.1 is served".into()),
        ));
    }
    // The certificate is the identity: the client id may only repeat it.
    if !(connect.client_id == vin.as_str() || connect.client_id.is_empty() && connect.clean_session) {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::BadClientId)).await;
        return Err((
            ConnectResult::ClientId,
            DisconnectReason::Refused(format!(
                "client id {:?} is not the certificate's VIN",
                printable(&connect.client_id)
            )),
        ));
    }
    if let Some(will) = &connect.last_will
        && (!may_publish(vin, &will.topic) || will.topic.contains('\0') || will.topic.len() > limits.max_topic_bytes)
    {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::NotAuthorized)).await;
        return Err((
            ConnectResult::Will,
            DisconnectReason::Refused("will topic outside the vehicle's namespace, too long or with a NUL".into()),
        ));
    }
    let asked = Duration::from_secs(connect.keep_alive.into());
    if asked > limits.max_keep_alive || asked.is_zero() {
        // MQTT 3.1.1 cannot tell the car; the log tells its operator.
        warn!(
            asked_s = connect.keep_alive,
            max_s = limits.max_keep_alive.as_secs(),
            "keep-alive capped to the gateway's maximum"
        );
    }
    let keep_alive = match asked.is_zero() {
        true => limits.max_keep_alive,
        false => asked.min(limits.max_keep_alive),
    }
    .mul_f32(1.5);

    let restored = services.saved.attach(vin, peer.conn, connect.clean_session);
    let session_present = restored.is_some();
    let mailbox = services.mailboxes.open(vin, !connect.clean_session);
    // A revocation puts itself in force, then ends the car's session by its mailbox: one made
    // since the check above found no mailbox to end, so look again now that it would.
    if let Some(revoked) = services.revocations.check(vin, &peer.certificate) {
        services.mailboxes.close(vin, &mailbox, false);
        services.saved.detach(vin, peer.conn, !connect.clean_session);
        return Err(refused_as_revoked(mqtt, revoked).await);
    }
    let session = ConnectedSession::new(
        peer,
        services,
        Subscriptions::restore(restored.unwrap_or_default()),
        !connect.clean_session,
    );
    if let Err(reason) = mqtt.send(&connack(session_present, ConnectReturnCode::Success)).await {
        services.mailboxes.close(vin, &mailbox, false);
        services.saved.detach(vin, peer.conn, session.persistent());
        return Err(no_connect(reason));
    }
    info!(
        keep_alive_s = connect.keep_alive,
        clean_session = connect.clean_session,
        session_present,
        "vehicle connected"
    );
    let agent_version = connect
        .login
        .map(|l| printable_within(&l.username, 64))
        .filter(|v| !v.is_empty());
    services
        .events
        .send(ConnectionEvent::Connected(ConnectionInfo {
            conn: peer.conn,
            vin: vin.clone(),
            fingerprint: peer.fingerprint.clone(),
            agent_version,
            remote: peer.remote,
            at_ms: now_ms(),
        }))
        .await;
    if session.covers_events() {
        session.events_subscribed().await;
    }
    let opened = Opened {
        mailbox,
        keep_alive,
        will: connect.last_will,
    };
    Ok((session, opened))
}

/// Ends a session that was open: the will, closing the connection, the mailbox, the record.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    mut mqtt: MqttIo<S>,
    mut session: ConnectedSession<'_>,
    opened: Opened,
    reason: DisconnectReason,
) -> DisconnectReason {
    // MQTT publishes the will on any end but the car's own DISCONNECT.
    if let Some(will) = opened
        .will
        .filter(|_| !matches!(reason, DisconnectReason::Clean | DisconnectReason::ServerShutdown))
    {
        session.publish_will(will);
    }
    if reason == DisconnectReason::ServerShutdown {
        // A 3.1.1 server never sends DISCONNECT: it closes the connection (TLS close_notify,
        // then FIN), and the car reconnects with its backoff.
        mqtt.shutdown().await;
    }
    session.end(&opened.mailbox);
    let metrics = &session.services().metrics;
    metrics.disconnected(reason.kind());
    if reason == DisconnectReason::Kicked {
        metrics.takeover();
    }
    finish(&session.services().events, session.peer(), reason).await
}

async fn finish(events: &ConnectionEventSink, peer: &Peer, reason: DisconnectReason) -> DisconnectReason {
    debug!(%reason, "session ended");
    events
        .send(ConnectionEvent::Disconnected {
            conn: peer.conn,
            vin: peer.vin.clone(),
            reason: reason.clone(),
            at_ms: now_ms(),
        })
        .await;
    reason
}
