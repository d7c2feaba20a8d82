//! One vehicle's MQTT session: frames MQTT 3.1.1 over the TLS stream, enforces the VIN's
//! namespace, hands what the car sends on the gateway's own topics to the inbox, writes what
//! its mailbox receives, and links to the pub/sub router only if the car uses other topics.
//! This file has the session's beginning (CONNECT) and end; [`super::live`] the rest.

use std::sync::Arc;
use std::time::Duration;

use proto::topics::may_publish;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, LastWill, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lifecycle::{DisconnectReason, Peer, SessionEvent, SessionInfo, SessionSink, now_ms, printable};
use super::live::{Live, Unacked};
use super::mqtt::MqttIo;
use super::subscriptions::{SavedSessions, Subscriptions};
use crate::bus::{Inbox, Mailbox, Mailboxes, PubSub};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time allowed between the handshake and CONNECT.
    pub connect_timeout: Duration,
    /// Cap on the keep-alive a car may ask for, and the value used when it asks for none.
    pub max_keep_alive: Duration,
    /// Largest MQTT packet accepted (remaining length).
    pub max_packet_bytes: usize,
    /// Requests of one car being handled at once; beyond it the session stops reading from
    /// the car until one is answered.
    pub max_requests_in_flight: usize,
}

/// What every session is attached to.
#[derive(Clone)]
pub struct Wiring {
    /// Where the gateway's messages for each car wait.
    pub mailboxes: Mailboxes,
    /// The router for the car's other topics.
    pub pubsub: PubSub,
    /// Receives what cars send on the gateway's own topics.
    pub inbox: Arc<dyn Inbox>,
    /// Where sessions report connects and disconnects.
    pub events: SessionSink,
    /// Subscriptions of persistent sessions.
    pub saved: SavedSessions,
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
    wiring: &Wiring,
    limits: &SessionLimits,
    shutdown: &CancellationToken,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut mqtt = MqttIo::new(io, limits.max_packet_bytes);
    let (mut live, opened) = match Box::pin(open(&mut mqtt, peer, wiring, limits)).await {
        Ok(opened) => opened,
        Err(reason) => return reason,
    };
    let reason = live
        .run(&mut mqtt, &opened.mailbox, opened.keep_alive, peer.conn, shutdown)
        .await;
    Box::pin(close(mqtt, live, opened, peer, reason)).await
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
    wiring: &'a Wiring,
    limits: &SessionLimits,
) -> Result<(Live<'a>, Opened), DisconnectReason> {
    let vin = &peer.vin;
    let connect = match timeout(limits.connect_timeout, mqtt.read()).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => return Err(DisconnectReason::ProtocolError("first packet is not CONNECT".into())),
        Ok(Err(reason)) => return Err(reason),
        Err(_) => {
            return Err(DisconnectReason::ProtocolError(
                "no CONNECT within the connect timeout".into(),
            ));
        }
    };
    if connect.protocol != Protocol::V4 {
        let _ = mqtt
            .send(&connack(false, ConnectReturnCode::RefusedProtocolVersion))
            .await;
        return Err(DisconnectReason::Refused("only MQTT 3.1.1 is served".into()));
    }
    // The certificate is the identity: the client id may only repeat it.
    if !(connect.client_id == vin.as_str() || connect.client_id.is_empty() && connect.clean_session) {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::BadClientId)).await;
        return Err(DisconnectReason::Refused(format!(
            "client id {:?} is not the certificate's VIN",
            printable(&connect.client_id)
        )));
    }
    if let Some(will) = &connect.last_will
        && !may_publish(vin, &will.topic)
    {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::NotAuthorized)).await;
        return Err(DisconnectReason::Refused(
            "will topic outside the vehicle's namespace".into(),
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

    let restored = wiring.saved.resume(vin, connect.clean_session);
    let session_present = restored.is_some();
    let mailbox = wiring.mailboxes.open(vin, !connect.clean_session);
    let mut live = Live {
        vin,
        wiring,
        subs: Subscriptions::restore(restored.unwrap_or_default()),
        link: None,
        unacked: Unacked::default(),
        qos2_received: Vec::new(),
        slots: Arc::new(Semaphore::new(limits.max_requests_in_flight.max(1))),
        persistent: !connect.clean_session,
    };
    let restored_filters = live.subs.pubsub_filters(vin);
    if !restored_filters.is_empty()
        && let Err(reason) = live.resubscribe(restored_filters).await
    {
        let _ = mqtt.send(&connack(false, ConnectReturnCode::ServiceUnavailable)).await;
        wiring.mailboxes.close(vin, &mailbox, false);
        return Err(reason);
    }
    if let Err(reason) = mqtt.send(&connack(session_present, ConnectReturnCode::Success)).await {
        wiring.mailboxes.close(vin, &mailbox, false);
        live.detach().await;
        return Err(reason);
    }
    info!(
        keep_alive_s = connect.keep_alive,
        clean_session = connect.clean_session,
        session_present,
        "vehicle connected"
    );
    let agent_version = connect
        .login
        .map(|l| {
            l.username
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    wiring
        .events
        .send(SessionEvent::Connected(SessionInfo {
            conn: peer.conn,
            vin: vin.clone(),
            fingerprint: peer.fingerprint.clone(),
            agent_version,
            remote: peer.remote,
            at_ms: now_ms(),
        }))
        .await;
    if live.subs.covers_events(vin) {
        live.events_subscribed(peer.conn).await;
    }
    let opened = Opened {
        mailbox,
        keep_alive,
        will: connect.last_will,
    };
    Ok((live, opened))
}

/// Ends a session that was open: the will, the farewell to the car, the mailbox, the record.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    mut mqtt: MqttIo<S>,
    mut live: Live<'_>,
    opened: Opened,
    peer: &Peer,
    reason: DisconnectReason,
) -> DisconnectReason {
    // MQTT publishes the will on any end but the car's own DISCONNECT.
    if let Some(will) = opened
        .will
        .filter(|_| !matches!(reason, DisconnectReason::Clean | DisconnectReason::ServerShutdown))
    {
        live.publish_will(will).await;
    }
    if reason == DisconnectReason::ServerShutdown {
        let _ = mqtt.send(&Packet::Disconnect).await;
        mqtt.shutdown().await;
    }
    // A persistent session's mailbox stays, keeping messages for its return.
    live.wiring.mailboxes.close(&peer.vin, &opened.mailbox, live.persistent);
    live.detach().await;
    finish(&live.wiring.events, peer, reason).await
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
