//! One vehicle's MQTT session: frames MQTT 3.1.1 over the TLS stream, enforces the VIN's
//! namespace, hands what the car sends on the gateway's own topics to the inbox, writes what
//! its mailbox receives, and links to the pub/sub router only if the car uses other topics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::Vin;
use proto::topics::{self, is_within_tenant, may_publish};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lifecycle::{DisconnectReason, Peer, SessionEvent, SessionInfo, SessionSink, now_ms};
use super::mqtt::MqttIo;
use super::subscriptions::{SavedSessions, Subscriptions, valid_filter};
use crate::bus::{
    Inbound, Inbox, Mailbox, MailboxState, Mailboxes, OutboundMessage, PubSub, PubSubLink, PubSubMessage,
};

/// QoS 1 messages sent to a car and not yet acknowledged; beyond it the gateway waits for
/// PUBACKs (rumqttd's own limit).
const MAX_UNACKED: usize = 100;

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
            truncate(&connect.client_id)
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

/// A connected session's state.
struct Live<'a> {
    vin: &'a Vin,
    wiring: &'a Wiring,
    subs: Subscriptions,
    /// Attached on first use of a topic outside the gateway's own (boxed: most cars never do).
    link: Option<Box<PubSubLink>>,
    unacked: Unacked,
    /// QoS 2 packet ids received and not yet released, so a redelivery is not handed on twice.
    qos2_received: Vec<u16>,
    slots: Arc<Semaphore>,
    /// `clean_session = false`: subscriptions are saved as they change, so a session that
    /// takes over from a connection still alive resumes them.
    persistent: bool,
}

/// What the session does after a packet.
enum Next {
    Continue,
    /// A request is waiting for one of the car's request slots.
    Hold(Publish),
}

/// Where a car's publish goes.
enum Target {
    Gateway(fn(Bytes) -> Inbound),
    PubSub,
}

impl Live<'_> {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        mailbox: &Mailbox,
        keep_alive: Duration,
        conn: u64,
        shutdown: &CancellationToken,
    ) -> DisconnectReason {
        let mut deadline = Instant::now() + keep_alive;
        let mut held: Option<Publish> = None;
        loop {
            match mailbox.state() {
                MailboxState::Open | MailboxState::Parked => {}
                MailboxState::Kicked => return DisconnectReason::Kicked,
                MailboxState::Overflowed => return DisconnectReason::SlowConsumer,
            }
            if let Err(reason) = self.drain(mqtt, mailbox) {
                return reason;
            }
            if let Err(reason) = mqtt.flush().await {
                return reason;
            }
            let from_router = self.link.is_some() && self.unacked.has_room();
            tokio::select! {
                _ = shutdown.cancelled() => return DisconnectReason::ServerShutdown,
                _ = sleep_until(deadline), if held.is_none() => return DisconnectReason::KeepAliveTimeout,
                _ = mailbox.changed() => {}
                slot = self.slots.clone().acquire_owned(), if held.is_some() => {
                    let (Ok(slot), Some(publish)) = (slot, held.take()) else {
                        return DisconnectReason::ServerShutdown;
                    };
                    // The answer that freed the slot is in the mailbox already: it goes out
                    // before the held request's acknowledgement, so the car sees cause then effect.
                    if let Err(reason) = self
                        .drain(mqtt, mailbox)
                        .and_then(|()| self.hand_to_gateway(mqtt, publish, slot))
                    {
                        return reason;
                    }
                    // The car was not read while it waited; it is not to blame for the silence.
                    deadline = Instant::now() + keep_alive;
                }
                read = mqtt.read(), if held.is_none() => {
                    let packet = match read {
                        Ok(packet) => packet,
                        Err(reason) => return reason,
                    };
                    deadline = Instant::now() + keep_alive;
                    // Boxed: the session's own future stays small for the idle car it mostly is.
                    match Box::pin(self.on_packet(mqtt, packet, conn)).await {
                        Ok(Next::Continue) => {}
                        Ok(Next::Hold(publish)) => held = Some(publish),
                        Err(reason) => return reason,
                    }
                }
                message = next_from_router(&mut self.link), if from_router => match message {
                    Ok(message) => {
                        if let Err(reason) = self.queue_from_router(mqtt, message) {
                            return reason;
                        }
                    }
                    // The router dropped the link: a newer session of this VIN replaced it.
                    Err(_) => return DisconnectReason::Kicked,
                },
            }
        }
    }

    /// Queues what waits in the mailbox, as far as the car's window of unacknowledged
    /// messages allows.
    fn drain<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        mailbox: &Mailbox,
    ) -> Result<(), DisconnectReason> {
        while self.unacked.has_room() {
            let Some(message) = mailbox.pop() else { break };
            self.queue_outbound(mqtt, message)?;
        }
        Ok(())
    }

    async fn on_packet<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        packet: Packet,
        conn: u64,
    ) -> Result<Next, DisconnectReason> {
        match packet {
            Packet::Publish(publish) => return self.on_publish(mqtt, publish).await,
            Packet::PubAck(PubAck { pkid }) => self.unacked.ack(pkid),
            Packet::PubRel(rel) => {
                self.qos2_received.retain(|p| *p != rel.pkid);
                mqtt.queue(&Packet::PubComp(PubComp { pkid: rel.pkid }))?;
            }
            // The gateway never sends QoS 2, so these answer nothing of ours.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(subscribe) => self.on_subscribe(mqtt, subscribe, conn).await?,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(mqtt, unsubscribe).await?,
            Packet::PingReq => mqtt.queue(&Packet::PingResp)?,
            Packet::Disconnect => return Err(DisconnectReason::Clean),
            Packet::Connect(_) => return Err(DisconnectReason::ProtocolError("second CONNECT".into())),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(DisconnectReason::ProtocolError(
                    "a client sent a packet only a server may send".into(),
                ));
            }
        }
        Ok(Next::Continue)
    }

    async fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        publish: Publish,
    ) -> Result<Next, DisconnectReason> {
        if !may_publish(self.vin, &publish.topic) {
            warn!(topic = %truncate(&publish.topic), "publish refused: outside the vehicle's namespace or on a gateway-owned topic");
            return Err(DisconnectReason::ProtocolError(
                "publish refused: outside the vehicle's namespace or on a gateway-owned topic".into(),
            ));
        }
        if publish.qos == QoS::ExactlyOnce && self.qos2_received.contains(&publish.pkid) {
            // A redelivery of a message already handed on: acknowledge it again, nothing more.
            mqtt.queue(&Packet::PubRec(PubRec { pkid: publish.pkid }))?;
            return Ok(Next::Continue);
        }
        match target(self.vin, &publish.topic) {
            Target::Gateway(_) => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => self.hand_to_gateway(mqtt, publish, slot)?,
                Err(_) => {
                    debug!("car has its maximum of requests in flight; reading paused");
                    return Ok(Next::Hold(publish));
                }
            },
            Target::PubSub => {
                let ack = (publish.qos, publish.pkid);
                self.attach()
                    .await?
                    .publish(Bytes::from(publish.topic), publish.payload, publish.retain)
                    .await
                    .map_err(|e| DisconnectReason::ServerError(e.to_string()))?;
                self.acknowledge(mqtt, ack)?;
            }
        }
        Ok(Next::Continue)
    }

    /// Passes a publish on one of the gateway's own topics to the inbox, then acknowledges it.
    fn hand_to_gateway<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        publish: Publish,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), DisconnectReason> {
        if let Target::Gateway(wrap) = target(self.vin, &publish.topic) {
            self.wiring.inbox.receive(self.vin.clone(), wrap(publish.payload), slot);
        }
        self.acknowledge(mqtt, (publish.qos, publish.pkid))
    }

    fn acknowledge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        (qos, pkid): (QoS, u16),
    ) -> Result<(), DisconnectReason> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => mqtt.queue(&Packet::PubAck(PubAck { pkid })),
            QoS::ExactlyOnce => {
                self.qos2_received.push(pkid);
                mqtt.queue(&Packet::PubRec(PubRec { pkid }))
            }
        }
    }

    async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        subscribe: Subscribe,
        conn: u64,
    ) -> Result<(), DisconnectReason> {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut to_router = Vec::new();
        let mut refused = Vec::new();
        let mut events = false;
        for filter in subscribe.filters {
            if !is_within_tenant(self.vin, &filter.path) || !valid_filter(&filter.path) {
                codes.push(SubscribeReasonCode::Failure);
                refused.push(filter.path);
                continue;
            }
            let granted = self.subs.add(self.vin, &filter.path, filter.qos);
            events |= granted.events;
            if granted.pubsub {
                to_router.push(filter.path);
            }
            codes.push(SubscribeReasonCode::Success(granted.qos));
        }
        if !refused.is_empty() {
            // MQTT 3.1.1 lets us refuse filters one by one instead of dropping the car.
            warn!(filters = ?refused.iter().map(|f| truncate(f)).collect::<Vec<_>>(), "subscribe outside the vehicle's namespace (or malformed) refused");
        }
        if !to_router.is_empty() {
            self.resubscribe(to_router).await?;
        }
        self.save_if_persistent();
        mqtt.queue(&Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
        }))?;
        if events {
            // The SUBACK goes out before any event does.
            mqtt.flush().await?;
            self.events_subscribed(conn).await;
        }
        Ok(())
    }

    async fn on_unsubscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        unsubscribe: Unsubscribe,
    ) -> Result<(), DisconnectReason> {
        let routed: Vec<String> = unsubscribe
            .topics
            .into_iter()
            .filter(|filter| self.subs.remove(self.vin, filter))
            .collect();
        if let Some(link) = self.link.as_mut()
            && !routed.is_empty()
        {
            link.unsubscribe(routed)
                .await
                .map_err(|e| DisconnectReason::ServerError(e.to_string()))?;
        }
        self.save_if_persistent();
        mqtt.queue(&Packet::UnsubAck(UnsubAck { pkid: unsubscribe.pkid }))
    }

    fn save_if_persistent(&self) {
        if self.persistent {
            self.wiring.saved.save(self.vin, &self.subs);
        }
    }

    /// Writes one of the gateway's messages, if the car subscribed to its topic.
    fn queue_outbound<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        message: OutboundMessage,
    ) -> Result<(), DisconnectReason> {
        let Some(qos) = self.subs.qos_for(self.vin, message.topic) else {
            debug!(topic = ?message.topic, "message dropped: the car is not subscribed to its topic");
            return Ok(());
        };
        self.queue_publish(mqtt, message.topic.topic(self.vin), message.payload, qos, false)
    }

    /// Writes a message the router delivered, at the QoS of the car's matching subscriptions.
    fn queue_from_router<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        message: PubSubMessage,
    ) -> Result<(), DisconnectReason> {
        let Ok(topic) = String::from_utf8(message.topic.to_vec()) else {
            return Ok(());
        };
        // None: unsubscribed since the router queued it.
        match self.subs.qos_for_topic(&topic) {
            Some(qos) => self.queue_publish(mqtt, topic, message.payload, qos, message.retain),
            None => Ok(()),
        }
    }

    fn queue_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), DisconnectReason> {
        let pkid = match qos {
            QoS::AtMostOnce => 0,
            _ => self.unacked.take(),
        };
        mqtt.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            pkid,
            payload,
        }))
    }

    /// The router link, attached on first use.
    async fn attach(&mut self) -> Result<&mut PubSubLink, DisconnectReason> {
        if self.link.is_none() {
            let link = self.wiring.pubsub.link(self.vin).await.map_err(|e| {
                warn!(error = %e, "pub/sub router refused the session");
                DisconnectReason::ServerError(e.to_string())
            })?;
            self.link = Some(Box::new(link));
        }
        Ok(self.link.as_mut().expect("attached above"))
    }

    async fn resubscribe(&mut self, filters: Vec<String>) -> Result<(), DisconnectReason> {
        self.attach()
            .await?
            .subscribe(filters)
            .await
            .map_err(|e| DisconnectReason::ServerError(e.to_string()))
    }

    async fn events_subscribed(&self, conn: u64) {
        self.wiring
            .events
            .send(SessionEvent::EventsSubscribed {
                conn,
                vin: self.vin.clone(),
            })
            .await;
    }

    /// Publishes the car's last will as if the car had (its session is gone, so at QoS 0).
    async fn publish_will(&mut self, will: LastWill) {
        match target(self.vin, &will.topic) {
            Target::Gateway(wrap) => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => self.wiring.inbox.receive(self.vin.clone(), wrap(will.message), slot),
                Err(_) => warn!("last will dropped: the car has its maximum of requests in flight"),
            },
            Target::PubSub => {
                if let Ok(link) = self.attach().await
                    && let Err(e) = link.publish(Bytes::from(will.topic), will.message, will.retain).await
                {
                    warn!(error = %e, "last will not published");
                }
            }
        }
    }

    async fn detach(&mut self) {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }
}

/// Resolves with the router's next message for the car; never, without a link.
async fn next_from_router(link: &mut Option<Box<PubSubLink>>) -> Result<PubSubMessage, crate::bus::PubSubError> {
    match link {
        // Boxed: rumqttd's receive future is large and most cars never have a link.
        Some(link) => Box::pin(link.next()).await,
        None => std::future::pending().await,
    }
}

/// Where a publish the car may make goes.
fn target(vin: &Vin, topic: &str) -> Target {
    if topic == topics::requests(vin) {
        Target::Gateway(Inbound::Request)
    } else if topic == topics::event_acks(vin) {
        Target::Gateway(Inbound::EventAck)
    } else {
        Target::PubSub
    }
}

/// Packet ids of QoS 1 messages sent to the car and not yet acknowledged.
#[derive(Debug, Default)]
struct Unacked {
    last: u16,
    ids: Vec<u16>,
}

impl Unacked {
    fn has_room(&self) -> bool {
        self.ids.len() < MAX_UNACKED
    }

    fn take(&mut self) -> u16 {
        loop {
            self.last = self.last.wrapping_add(1);
            if self.last != 0 && !self.ids.contains(&self.last) {
                self.ids.push(self.last);
                return self.last;
            }
        }
    }

    fn ack(&mut self, pkid: u16) {
        if let Some(i) = self.ids.iter().position(|p| *p == pkid) {
            self.ids.swap_remove(i);
        }
        if self.ids.is_empty() && self.ids.capacity() > 8 {
            self.ids = Vec::new();
        }
    }
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

fn truncate(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_never_zero_and_never_reused_while_unacknowledged() {
        let mut unacked = Unacked {
            last: u16::MAX - 1,
            ids: vec![1],
        };
        assert_eq!(unacked.take(), u16::MAX);
        assert_eq!(unacked.take(), 2, "skips 0 and the unacknowledged 1");
        unacked.ack(1);
        unacked.ack(u16::MAX);
        unacked.ack(2);
        assert!(unacked.ids.is_empty());
        for _ in 0..MAX_UNACKED {
            unacked.take();
        }
        assert!(!unacked.has_room());
    }
}
