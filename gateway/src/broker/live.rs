//! A connected car's session after CONNECT: the loop that reads the car's packets, writes what
//! its mailbox holds, hands requests to the inbox under the car's in-flight limit, and talks
//! to the pub/sub router for the car's other topics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::Vin;
use proto::topics::{self, is_within_tenant, may_publish};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    LastWill, Packet, PubAck, PubComp, PubRec, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::lifecycle::{DisconnectReason, SessionEvent, printable};
use super::mqtt::MqttIo;
use super::session::Wiring;
use super::subscriptions::{Subscriptions, valid_filter};
use crate::bus::{Inbound, Mailbox, MailboxState, OutboundMessage, PubSubLink, PubSubMessage};

/// QoS 1 messages sent to a car and not yet acknowledged; beyond it the gateway waits for
/// PUBACKs (rumqttd's own limit).
const MAX_UNACKED: usize = 100;

/// A connected session's state.
pub(super) struct Live<'a> {
    pub(super) vin: &'a Vin,
    pub(super) wiring: &'a Wiring,
    pub(super) subs: Subscriptions,
    /// Attached on first use of a topic outside the gateway's own (boxed: most cars never do).
    pub(super) link: Option<Box<PubSubLink>>,
    pub(super) unacked: Unacked,
    /// QoS 2 packet ids received and not yet released, so a redelivery is not handed on twice.
    pub(super) qos2_received: Vec<u16>,
    pub(super) slots: Arc<Semaphore>,
    /// `clean_session = false`: subscriptions are saved as they change, so a session that
    /// takes over from a connection still alive resumes them.
    pub(super) persistent: bool,
}

/// What the session does after a packet.
enum Next {
    Continue,
    /// A request is waiting for one of the car's request slots.
    Hold(Publish, ToInbox),
}

/// How a publish on one of the gateway's own topics becomes what the inbox takes.
type ToInbox = fn(Bytes) -> Inbound;

/// Where a car's publish goes.
enum Target {
    Gateway(ToInbox),
    PubSub,
}

impl Live<'_> {
    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mqtt: &mut MqttIo<S>,
        mailbox: &Mailbox,
        keep_alive: Duration,
        conn: u64,
        shutdown: &CancellationToken,
    ) -> DisconnectReason {
        let mut deadline = Instant::now() + keep_alive;
        let mut held: Option<(Publish, ToInbox)> = None;
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
                    let (Ok(slot), Some((publish, wrap))) = (slot, held.take()) else {
                        return DisconnectReason::ServerShutdown;
                    };
                    // The answer that freed the slot is in the mailbox already: it goes out
                    // before the held request's acknowledgement, so the car sees cause then effect.
                    if let Err(reason) = self
                        .drain(mqtt, mailbox)
                        .and_then(|()| self.hand_to_gateway(mqtt, publish, wrap, slot))
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
                        Ok(Next::Hold(publish, wrap)) => held = Some((publish, wrap)),
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
        match target(self.vin, &publish.topic) {
            Target::Gateway(wrap) => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => self.hand_to_gateway(mqtt, publish, wrap, slot)?,
                Err(_) => {
                    debug!("car has its maximum of requests in flight; reading paused");
                    return Ok(Next::Hold(publish, wrap));
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
        wrap: ToInbox,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), DisconnectReason> {
        let ack = (publish.qos, publish.pkid);
        self.wiring.inbox.receive(self.vin.clone(), wrap(publish.payload), slot);
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
            warn!(filters = ?refused.iter().map(|f| printable(f)).collect::<Vec<_>>(), "subscribe outside the vehicle's namespace (or malformed) refused");
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
        let topic = message.topic.topic(self.vin);
        let Some(qos) = self.subs.qos_for_topic(&topic) else {
            debug!(topic = ?message.topic, "message dropped: the car is not subscribed to its topic");
            return Ok(());
        };
        self.queue_publish(mqtt, topic, message.payload, qos, false)
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

    pub(super) async fn resubscribe(&mut self, filters: Vec<String>) -> Result<(), DisconnectReason> {
        self.attach()
            .await?
            .subscribe(filters)
            .await
            .map_err(|e| DisconnectReason::ServerError(e.to_string()))
    }

    pub(super) async fn events_subscribed(&self, conn: u64) {
        self.wiring
            .events
            .send(SessionEvent::EventsSubscribed {
                conn,
                vin: self.vin.clone(),
            })
            .await;
    }

    /// Publishes the car's last will as if the car had (its session is gone, so at QoS 0).
    pub(super) async fn publish_will(&mut self, will: LastWill) {
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

    pub(super) async fn detach(&mut self) {
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
pub(super) struct Unacked {
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
