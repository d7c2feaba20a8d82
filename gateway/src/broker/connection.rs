//! One vehicle's MQTT session: frames MQTT 3.1.1 over the TLS stream, enforces the VIN's
//! namespace, and shuttles packets between the socket and the car's router link.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use proto::Vin;
use proto::topics::{is_within_tenant, may_publish};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol, Publish, SubAck,
    SubscribeReasonCode, v4::V4,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bus::{Bus, LinkSpec};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time allowed between the handshake and CONNECT.
    pub connect_timeout: Duration,
    /// Cap on the keep-alive a car may ask for, and the value used when it asks for none.
    pub max_keep_alive: Duration,
    /// Largest MQTT packet accepted (remaining length).
    pub max_packet_bytes: usize,
}

/// Why a vehicle's session ended.
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
    /// The gateway is shutting down.
    ServerShutdown,
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
            DisconnectReason::ServerShutdown => f.write_str("server shutdown"),
        }
    }
}

/// Who connected, as recorded in the session registry.
#[derive(Debug, Clone)]
pub struct SessionInfo {
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
    /// When the session was accepted (unix ms).
    pub at_ms: i64,
}

/// What the connection layer reports about a session's lifetime.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The car's CONNECT was accepted.
    Connected(SessionInfo),
    /// The router confirmed the car's subscription to its events topic: events can flow.
    EventsSubscribed {
        /// The connection.
        conn: u64,
        /// Who.
        vin: Vin,
    },
    /// The session ended.
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
pub struct SessionSink(pub tokio::sync::mpsc::Sender<SessionEvent>);

impl SessionSink {
    async fn send(&self, event: SessionEvent) {
        let _ = self.0.send(event).await;
    }
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    /// Remote address.
    pub remote: SocketAddr,
}

/// MQTT framing over any byte stream.
struct MqttIo<S> {
    io: S,
    read: BytesMut,
    write: BytesMut,
    max_packet_bytes: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttIo<S> {
    /// Reads one packet. Cancel-safe: partial input stays in the buffer.
    async fn read(&mut self) -> Result<Packet, DisconnectReason> {
        loop {
            match V4.read_mut(&mut self.read, self.max_packet_bytes) {
                Ok(packet) => return Ok(packet),
                Err(protocol::Error::InsufficientBytes(_)) => {}
                Err(protocol::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(DisconnectReason::ProtocolError(format!(
                        "packet of {n} bytes exceeds the {}-byte limit",
                        self.max_packet_bytes
                    )));
                }
                Err(e) => return Err(DisconnectReason::ProtocolError(e.to_string())),
            }
            match self.io.read_buf(&mut self.read).await {
                Ok(0) if self.read.is_empty() => return Err(DisconnectReason::ConnectionLost("closed by peer".into())),
                Ok(0) => return Err(DisconnectReason::ConnectionLost("closed mid-packet".into())),
                Ok(_) => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }

    fn queue(&mut self, packet: Packet) -> Result<(), DisconnectReason> {
        V4.write(packet, &mut self.write)
            .map_err(|e| DisconnectReason::ProtocolError(e.to_string()))?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DisconnectReason> {
        self.io.write_all(&self.write).await.map_err(lost)?;
        self.io.flush().await.map_err(lost)?;
        self.write.clear();
        Ok(())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), DisconnectReason> {
        self.queue(packet)?;
        self.flush().await
    }
}

fn lost(e: io::Error) -> DisconnectReason {
    DisconnectReason::ConnectionLost(e.to_string())
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// Runs one vehicle's MQTT session on an authenticated stream until it ends, and says why.
pub async fn serve_vehicle<S>(
    io: S,
    peer: &Peer,
    bus: &Bus,
    limits: &SessionLimits,
    events: &SessionSink,
    shutdown: &CancellationToken,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let vin = &peer.vin;
    let mut mqtt = MqttIo {
        io,
        read: BytesMut::with_capacity(1024),
        write: BytesMut::new(),
        max_packet_bytes: limits.max_packet_bytes,
    };
    let first = match timeout(limits.connect_timeout, mqtt.read()).await {
        Ok(Ok(packet)) => packet,
        Ok(Err(reason)) => return reason,
        Err(_) => return DisconnectReason::ProtocolError("no CONNECT within the connect timeout".into()),
    };
    let Packet::Connect(connect, _, will, _, login) = first else {
        return DisconnectReason::ProtocolError("first packet is not CONNECT".into());
    };
    // The certificate is the identity: the client id may only repeat it.
    if !(connect.client_id == vin.as_str() || connect.client_id.is_empty() && connect.clean_session) {
        let _ = mqtt.send(connack(ConnectReturnCode::ClientIdentifierNotValid)).await;
        return DisconnectReason::Refused(format!(
            "client id {:?} is not the certificate's VIN",
            truncate(&connect.client_id)
        ));
    }
    if let Some(will) = &will
        && !topic_allowed(vin, &will.topic)
    {
        let _ = mqtt.send(connack(ConnectReturnCode::NotAuthorized)).await;
        return DisconnectReason::Refused("will topic outside the vehicle's namespace".into());
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

    let spec = LinkSpec {
        client_id: vin.to_string(),
        tenant: Some(vin.clone()),
        clean_session: connect.clean_session,
    };
    let (mut link_tx, mut link_rx, ack) = match bus.link(spec).await {
        Ok(link) => link,
        Err(e) => {
            warn!(error = %e, "router refused the session");
            let _ = mqtt.send(connack(ConnectReturnCode::ServerUnavailable)).await;
            return DisconnectReason::Refused("server unavailable".into());
        }
    };
    if let Some(packet) = Option::<Packet>::from(ack)
        && let Err(reason) = mqtt.send(packet).await
    {
        let _ = link_tx.send(disconnect_packet()).await;
        return reason;
    }
    info!(
        keep_alive_s = connect.keep_alive,
        clean_session = connect.clean_session,
        "vehicle connected"
    );
    let agent_version = login
        .map(|l| {
            l.username
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    events
        .send(SessionEvent::Connected(SessionInfo {
            conn: peer.conn,
            vin: vin.clone(),
            fingerprint: peer.fingerprint.clone(),
            agent_version,
            remote: peer.remote,
            at_ms: now_ms(),
        }))
        .await;
    let events_topic = proto::topics::events(vin);
    // SUBSCRIBE packet ids that cover the events topic; their SUBACK opens event delivery.
    let mut events_subscriptions: Vec<u16> = Vec::new();

    let mut deadline = Instant::now() + keep_alive;
    // SUBSCRIBE packet id -> which of its filters were passed to the router.
    let mut refused_filters: HashMap<u16, Vec<bool>> = HashMap::new();
    let reason = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break DisconnectReason::ServerShutdown,
            _ = sleep_until(deadline) => break DisconnectReason::KeepAliveTimeout,
            read = mqtt.read() => {
                let packet = match read {
                    Ok(packet) => packet,
                    Err(reason) => break reason,
                };
                deadline = Instant::now() + keep_alive;
                match packet {
                    Packet::Publish(publish, _) => {
                        if !topic_allowed(vin, &publish.topic) {
                            warn!(topic = %String::from_utf8_lossy(&publish.topic), "publish refused: outside the vehicle's namespace or on a gateway-owned topic");
                            break DisconnectReason::ProtocolError("publish refused: outside the vehicle's namespace or on a gateway-owned topic".into());
                        }
                        if link_tx.send(Packet::Publish(publish, None)).await.is_err() {
                            break DisconnectReason::Kicked;
                        }
                    }
                    Packet::Subscribe(mut subscribe, _) => {
                        let allowed: Vec<bool> = subscribe.filters.iter().map(|f| is_within_tenant(vin, &f.path)).collect();
                        if allowed.contains(&false) {
                            // MQTT 3.1.1 lets us refuse filters one by one instead of dropping the car.
                            warn!(filters = ?subscribe.filters.iter().map(|f| &f.path).collect::<Vec<_>>(), "subscribe outside the vehicle's namespace refused");
                        }
                        if !allowed.contains(&true) {
                            let codes = vec![SubscribeReasonCode::Failure; allowed.len()];
                            if let Err(reason) = mqtt.send(Packet::SubAck(SubAck { pkid: subscribe.pkid, return_codes: codes }, None)).await {
                                break reason;
                            }
                            continue;
                        }
                        if subscribe.filters.iter().zip(&allowed).any(|(f, ok)| *ok && covers(&f.path, &events_topic)) {
                            events_subscriptions.push(subscribe.pkid);
                        }
                        if allowed.contains(&false) {
                            let mut keep = allowed.iter();
                            subscribe.filters.retain(|_| *keep.next().unwrap_or(&false));
                            refused_filters.insert(subscribe.pkid, allowed);
                        }
                        if link_tx.send(Packet::Subscribe(subscribe, None)).await.is_err() {
                            break DisconnectReason::Kicked;
                        }
                    }
                    Packet::Disconnect(..) => {
                        let _ = link_tx.send(disconnect_packet()).await;
                        return finish(events, peer, DisconnectReason::Clean).await;
                    }
                    Packet::Connect(..) => break DisconnectReason::ProtocolError("second CONNECT".into()),
                    other => {
                        if link_tx.send(other).await.is_err() {
                            break DisconnectReason::Kicked;
                        }
                    }
                }
            }
            notification = link_rx.next() => {
                let first = match notification {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    // The router dropped this link: a newer session with the same VIN replaced it.
                    Err(_) => return finish(events, peer, DisconnectReason::Kicked).await,
                };
                let mut unscheduled = false;
                let mut subscribed_to_events = false;
                let mut next = Some(first);
                while let Some(n) = next {
                    match Option::<Packet>::from(n) {
                        Some(Packet::SubAck(mut ack, props)) => {
                            if let Some(i) = events_subscriptions.iter().position(|p| *p == ack.pkid) {
                                events_subscriptions.swap_remove(i);
                                subscribed_to_events = true;
                            }
                            // Put the refused filters back into the router's answer, in order.
                            if let Some(allowed) = refused_filters.remove(&ack.pkid) {
                                let mut granted = ack.return_codes.into_iter();
                                ack.return_codes = allowed
                                    .iter()
                                    .map(|ok| if *ok { granted.next().unwrap_or(SubscribeReasonCode::Failure) } else { SubscribeReasonCode::Failure })
                                    .collect();
                            }
                            if let Err(reason) = mqtt.queue(Packet::SubAck(ack, props)) {
                                warn!(%reason, "cannot encode packet for vehicle");
                            }
                        }
                        Some(packet) => {
                            if let Err(reason) = mqtt.queue(packet) {
                                warn!(%reason, "cannot encode packet for vehicle");
                            }
                        }
                        None => unscheduled = true,
                    }
                    // Batch whatever else the router has ready into the same write.
                    next = link_rx.next().now_or_never().and_then(|r| r.ok()).flatten();
                }
                if let Err(reason) = mqtt.flush().await {
                    break reason;
                }
                if subscribed_to_events {
                    events.send(SessionEvent::EventsSubscribed { conn: peer.conn, vin: vin.clone() }).await;
                }
                if unscheduled && link_rx.wake().await.is_err() {
                    return finish(events, peer, DisconnectReason::Kicked).await;
                }
            }
        }
    };
    if let Some(will) = will.filter(|_| reason != DisconnectReason::ServerShutdown) {
        let _ = link_tx.send(will_publish(will)).await;
    }
    if reason == DisconnectReason::ServerShutdown {
        let _ = mqtt
            .send(Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::ServerShuttingDown,
                },
                None,
            ))
            .await;
        let _ = mqtt.io.shutdown().await;
    }
    let _ = link_tx.send(disconnect_packet()).await;
    finish(events, peer, reason).await
}

async fn finish(events: &SessionSink, peer: &Peer, reason: DisconnectReason) -> DisconnectReason {
    debug!(%reason, "session ended");
    events
        .send(SessionEvent::Disconnected {
            conn: peer.conn,
            vin: peer.vin.clone(),
            reason: reason.clone(),
            at_ms: now_ms(),
        })
        .await;
    reason
}

/// Whether subscription `filter` receives messages published on `topic`.
fn covers(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Tells the router the session is over (rumqttd's internal disconnect event is private).
fn disconnect_packet() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// The car's last will, published on its behalf at QoS 0 (the session that would ack it is gone).
fn will_publish(will: LastWill) -> Packet {
    Packet::Publish(Publish::new(will.topic, will.message, will.retain), None)
}

fn topic_allowed(vin: &Vin, topic: &[u8]) -> bool {
    std::str::from_utf8(topic).is_ok_and(|t| may_publish(vin, t))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
