//! A connected car's session after CONNECT: the loop that reads the car's packets, writes what
//! its mailbox holds, hands requests and acknowledgements to the inboxes under the car's
//! in-flight limit and publish rate, and keeps the car's own topics point to point.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::topics::{self, may_publish};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    LastWill, Packet, PubAck, PubComp, PubRec, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::flood::{Throttle, Verdict};
use super::lifecycle::{ConnectionEvent, DisconnectReason, Peer};
use super::mqtt::MqttIo;
use super::session::SessionServices;
use super::subscriptions::{Subscriptions, TooManyFilters, acceptable_filter};
use crate::bus::{Mailbox, MailboxState, Outbound, OutboundMessage};
use crate::logsafe::printable;

/// QoS 1 messages sent to a car and not yet acknowledged; beyond it the gateway waits for
/// PUBACKs (rumqttd's and EMQX's usual window).
const MAX_UNACKED: usize = 100;

/// A connected session's state.
pub(super) struct ConnectedSession<'a> {
    peer: &'a Peer,
    services: &'a SessionServices,
    subs: Subscriptions,
    unacked: Unacked,
    /// QoS 2 packet ids received and not yet released, so a redelivery is not handed on twice.
    qos2_received: Vec<u16>,
    /// The car's requests in flight.
    slots: Arc<Semaphore>,
    /// `clean_session = false`: subscriptions are saved as they change.
    persistent: bool,
    /// Whether, and since when, the car has been publishing over its rate.
    throttle: Throttle,
}

/// What the session does after a packet.
enum Next {
    Continue,
    /// A request is waiting for one of the car's request slots.
    Hold(Publish),
}

/// Where a car's publish goes.
enum Target {
    /// `v1/req`: to routing.
    Request,
    /// `v1/events/ack`: to event delivery.
    EventAck,
    /// Any other topic of the namespace: back to the car's own subscriptions.
    CarTopic,
}

impl<'a> ConnectedSession<'a> {
    pub(super) fn new(
        peer: &'a Peer,
        services: &'a SessionServices,
        subs: Subscriptions,
        persistent: bool,
    ) -> ConnectedSession<'a> {
        ConnectedSession {
            peer,
            services,
            subs,
            unacked: Unacked::default(),
            qos2_received: Vec::new(),
            slots: Arc::new(Semaphore::new(services.limits.max_requests_in_flight.max(1))),
            persistent,
            throttle: Throttle::default(),
        }
    }

    pub(super) fn peer(&self) -> &'a Peer {
        self.peer
    }

    pub(super) fn services(&self) -> &'a SessionServices {
        self.services
    }

    pub(super) fn persistent(&self) -> bool {
        self.persistent
    }

    pub(super) fn covers_events(&self) -> bool {
        self.subs.covers_events(&self.peer.vin)
    }

    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        mailbox: &Mailbox,
        keep_alive: Duration,
        shutdown: &CancellationToken,
    ) -> DisconnectReason {
        let mut deadline = Instant::now() + keep_alive;
        let mut held: Option<Publish> = None;
        loop {
            match mailbox.state() {
                MailboxState::Open | MailboxState::Parked => {}
                MailboxState::Kicked => return DisconnectReason::Kicked,
                MailboxState::Overflowed => return DisconnectReason::SlowConsumer,
                MailboxState::Evicted => return DisconnectReason::KickedByOperator,
                MailboxState::Revoked => return DisconnectReason::Revoked,
            }
            if let Err(reason) = self.drain(mqtt, mailbox) {
                return reason;
            }
            let flushed = tokio::select! {
                flushed = mqtt.flush() => flushed,
                // A car that takes no bytes would hold the gateway's stop until the write
                // stall timeout; the connection is closing anyway.
                _ = shutdown.cancelled() => Err(DisconnectReason::ServerShutdown),
            };
            if let Err(reason) = flushed {
                return reason;
            }
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
                        .and_then(|()| self.hand_request(mqtt, publish, slot))
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
                    match Box::pin(self.on_packet(mqtt, packet)).await {
                        Ok(Next::Continue) => {}
                        Ok(Next::Hold(publish)) => held = Some(publish),
                        Err(reason) => return reason,
                    }
                }
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
            Packet::Subscribe(subscribe) => {
                self.within_packet_rate().await?;
                self.on_subscribe(mqtt, subscribe).await?
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.within_packet_rate().await?;
                self.on_unsubscribe(mqtt, unsubscribe)?
            }
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
        let vin = &self.peer.vin;
        // The rate first: a car breaking a bound in a loop pays its rate for each attempt.
        self.within_packet_rate().await?;
        if publish.qos != QoS::AtMostOnce {
            packet_id_given("PUBLISH", publish.pkid)?;
        }
        if publish.topic.contains('\0') {
            return Err(DisconnectReason::ProtocolError("NUL character in a topic name".into()));
        }
        if publish.topic.len() > self.services.limits.max_topic_bytes {
            return Err(DisconnectReason::LimitExceeded(format!(
                "topic of {} bytes, at most {} allowed",
                publish.topic.len(),
                self.services.limits.max_topic_bytes
            )));
        }
        if !may_publish(vin, &publish.topic) {
            warn!(topic = %printable(&publish.topic), "publish refused: outside the vehicle's namespace or on a gateway-owned topic");
            return Err(DisconnectReason::ProtocolError(
                "publish refused: outside the vehicle's namespace or on a gateway-owned topic".into(),
            ));
        }
        if publish.qos == QoS::ExactlyOnce && self.qos2_received.contains(&publish.pkid) {
            // A redelivery of a message already handed on: acknowledge it again, nothing more.
            mqtt.queue(&Packet::PubRec(PubRec { pkid: publish.pkid }))?;
            return Ok(Next::Continue);
        }
        if publish.qos == QoS::ExactlyOnce && self.qos2_received.len() >= self.services.limits.max_qos2_awaiting_release
        {
            return Err(DisconnectReason::LimitExceeded(format!(
                "more than {} QoS 2 messages awaiting PUBREL",
                self.services.limits.max_qos2_awaiting_release
            )));
        }
        match target(vin, &publish.topic) {
            Target::Request => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => self.hand_request(mqtt, publish, slot)?,
                Err(_) => {
                    debug!("car has its maximum of requests in flight; reading paused");
                    return Ok(Next::Hold(publish));
                }
            },
            Target::EventAck => {
                let ack = (publish.qos, publish.pkid);
                self.services.acks.acknowledged(vin, publish.payload);
                self.acknowledge(mqtt, ack)?;
            }
            Target::CarTopic => {
                let ack = (publish.qos, publish.pkid);
                let subscribed = self.subs.qos_for_topic(&publish.topic).is_some();
                self.publish_to_car_topic(publish.topic, publish.payload, publish.qos, publish.retain, subscribed)
                    .map_err(DisconnectReason::LimitExceeded)?;
                self.acknowledge(mqtt, ack)?;
            }
        }
        Ok(Next::Continue)
    }

    /// Waits while the car is over its packet rate; fails once it has been over it too long.
    async fn within_packet_rate(&mut self) -> Result<(), DisconnectReason> {
        let limiter = &self.services.packet_limiter;
        loop {
            match limiter.check(&self.peer.vin, &mut self.throttle) {
                Verdict::Now => return Ok(()),
                Verdict::After(wait) => tokio::time::sleep(wait).await,
                Verdict::Flooding => {
                    let rate = limiter.rate();
                    return Err(DisconnectReason::Flooding {
                        per_second: rate.per_second.get(),
                        for_: rate.flood_disconnect_after,
                    });
                }
            }
        }
    }

    /// Keeps a retained message and hands the message to the car's own subscriptions (through
    /// its mailbox, so it is bounded like everything else waiting for the car).
    fn publish_to_car_topic(
        &self,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        subscribed: bool,
    ) -> Result<(), String> {
        let vin = &self.peer.vin;
        let qos = if qos == QoS::AtMostOnce { 0 } else { 1 };
        if retain {
            self.services
                .saved
                .retain(vin, &topic, payload.clone(), qos, self.services.limits.retained)
                .map_err(|e| e.to_string())?;
        }
        if subscribed {
            self.services
                .mailboxes
                .deliver(vin, Outbound::CarTopic { topic, qos }, payload);
        }
        Ok(())
    }

    /// Passes a request to routing, then acknowledges it.
    fn hand_request<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        publish: Publish,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), DisconnectReason> {
        let ack = (publish.qos, publish.pkid);
        self.services
            .requests
            .request(self.peer.vin.clone(), publish.payload, slot);
        self.acknowledge(mqtt, ack)
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
    ) -> Result<(), DisconnectReason> {
        packet_id_given("SUBSCRIBE", subscribe.pkid)?;
        let vin = &self.peer.vin;
        let limits = &self.services.limits;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut refused = Vec::new();
        let mut granted_filters = Vec::new();
        let mut events = false;
        for filter in subscribe.filters {
            let granted = match acceptable_filter(vin, &filter.path, limits.max_topic_bytes) {
                true => self.subs.add(vin, &filter.path, filter.qos, limits.max_subscriptions),
                false => Err(TooManyFilters),
            };
            match granted {
                Ok(granted) => {
                    events |= granted.events;
                    codes.push(SubscribeReasonCode::Success(granted.qos));
                    granted_filters.push((filter.path, granted.qos));
                }
                Err(_) => {
                    codes.push(SubscribeReasonCode::Failure);
                    refused.push(filter.path);
                }
            }
        }
        if let Some(first) = refused.first() {
            // MQTT 3.1.1 lets us refuse filters one by one instead of dropping the car; the car
            // learns it from its SUBACK. Debug, and one line a SUBSCRIBE: a car refused in a
            // loop must not flood the log.
            debug!(
                refused = refused.len(),
                first = %printable(first),
                max_subscriptions = limits.max_subscriptions,
                "subscription refused: outside the vehicle's namespace, malformed, too long, or over the car's maximum"
            );
        }
        self.save_if_persistent();
        mqtt.queue(&Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
        }))?;
        // Retained messages follow the SUBACK, as MQTT requires, on every new subscription.
        for (filter, granted) in granted_filters {
            for retained in self.services.saved.retained_matching(vin, &filter) {
                // At the lower of the retained message's and the subscription's QoS.
                let qos = if retained.qos == 0 { QoS::AtMostOnce } else { granted };
                self.queue_publish(mqtt, retained.topic, retained.payload, qos, true)?;
            }
        }
        if events {
            // The SUBACK goes out before any event does.
            mqtt.flush().await?;
            self.events_subscribed().await;
        }
        Ok(())
    }

    fn on_unsubscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        unsubscribe: Unsubscribe,
    ) -> Result<(), DisconnectReason> {
        packet_id_given("UNSUBSCRIBE", unsubscribe.pkid)?;
        for filter in &unsubscribe.topics {
            self.subs.remove(filter);
        }
        self.save_if_persistent();
        mqtt.queue(&Packet::UnsubAck(UnsubAck { pkid: unsubscribe.pkid }))
    }

    fn save_if_persistent(&self) {
        if self.persistent {
            self.services
                .saved
                .save_filters(&self.peer.vin, self.peer.conn, &self.subs);
        }
    }

    /// Writes one message from the mailbox, if the car subscribed to its topic.
    fn queue_outbound<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        message: OutboundMessage,
    ) -> Result<(), DisconnectReason> {
        let topic = message.topic.topic(&self.peer.vin);
        let Some(subscribed) = self.subs.qos_for_topic(&topic) else {
            debug!(topic = %printable(&topic), "message dropped: the car is not subscribed to its topic");
            return Ok(());
        };
        let qos = match message.topic {
            // MQTT delivers at the lower of the publish's and the subscription's QoS.
            Outbound::CarTopic { qos: 0, .. } => QoS::AtMostOnce,
            _ => subscribed,
        };
        self.queue_publish(mqtt, topic, message.payload, qos, false)
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

    pub(super) async fn events_subscribed(&self) {
        self.services
            .events
            .send(ConnectionEvent::EventsSubscribed {
                conn: self.peer.conn,
                vin: self.peer.vin.clone(),
            })
            .await;
    }

    /// Publishes the car's last will as if the car had (its session is gone, so it goes to the
    /// VIN's next session, if it subscribes).
    pub(super) fn publish_will(&mut self, will: LastWill) {
        let vin = &self.peer.vin;
        match target(vin, &will.topic) {
            Target::Request => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => self.services.requests.request(vin.clone(), will.message, slot),
                Err(_) => warn!("last will dropped: the car has its maximum of requests in flight"),
            },
            Target::EventAck => self.services.acks.acknowledged(vin, will.message),
            Target::CarTopic => {
                if let Err(e) = self.publish_to_car_topic(will.topic, will.message, will.qos, will.retain, true) {
                    warn!(error = %e, "last will not retained");
                }
            }
        }
    }

    /// Leaves the gateway: the mailbox closes (a persistent session's is parked) and what the
    /// car keeps between sessions starts expiring.
    pub(super) fn end(&self, mailbox: &Arc<Mailbox>) {
        let vin = &self.peer.vin;
        self.services.mailboxes.close(vin, mailbox, self.persistent);
        self.services.saved.detach(vin, self.peer.conn, self.persistent);
    }
}

/// MQTT 3.1.1 §2.3.1: a packet that carries a packet identifier must not carry 0.
fn packet_id_given(kind: &str, pkid: u16) -> Result<(), DisconnectReason> {
    match pkid {
        0 => Err(DisconnectReason::ProtocolError(format!(
            "{kind} with packet identifier 0"
        ))),
        _ => Ok(()),
    }
}

/// Where a publish the car may make goes.
fn target(vin: &proto::Vin, topic: &str) -> Target {
    if topic == topics::requests(vin) {
        Target::Request
    } else if topic == topics::event_acks(vin) {
        Target::EventAck
    } else {
        Target::CarTopic
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
