//! Per-VIN delivery of the gateway's own messages (responses, events) to the car's one live
//! session.
//!
//! Each session opens a [`Mailbox`] under its VIN; opening a second one for the same VIN
//! (the car reconnected before the old socket died) marks the old one kicked, which ends the
//! old session: one session per VIN. The gateway queues messages with [`Mailboxes::deliver`];
//! the session drains its mailbox onto the socket. A mailbox holds at most its capacity: a car
//! that stops reading is disconnected rather than allowed to grow the gateway's memory, and
//! what it missed comes back by the usual routes (it republishes pending requests and the
//! ledger replays them; unacknowledged events are redelivered when it subscribes again).
//!
//! A persistent session (`clean_session = false`) that ends leaves its mailbox **parked**:
//! messages for the car keep arriving there, up to [`PARKED_CAPACITY`], and the car's next
//! persistent session takes them over, as MQTT requires for QoS 1 messages of a stored session.
//! A parked mailbox goes when its saved session expires ([`Mailboxes::forget_parked`]).
//!
//! Every mailbox is bounded twice, in messages and in bytes ([`MailboxLimits`]): a car that
//! publishes large messages to its own subscription and never acknowledges them costs at most
//! the byte bound before it is disconnected.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use proto::Vin;
use tokio::sync::Notify;

/// Where a message for a car goes out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outbound {
    /// `/tenants/{VIN}/v1/resp`: answers to the car's requests.
    Responses,
    /// `/tenants/{VIN}/v1/events`: partner events.
    Events,
    /// Another topic of the car's namespace, published by the car itself (or its will) at
    /// `qos`; it goes out at most at that QoS on the car's matching subscriptions.
    CarTopic {
        /// The full topic, inside `/tenants/{VIN}/`.
        topic: String,
        /// The QoS it was published with (0 or 1; QoS 2 is delivered as 1).
        qos: u8,
    },
}

impl Outbound {
    /// The topic this is for `vin`.
    pub fn topic(&self, vin: &Vin) -> String {
        match self {
            Outbound::Responses => proto::topics::responses(vin),
            Outbound::Events => proto::topics::events(vin),
            Outbound::CarTopic { topic, .. } => topic.clone(),
        }
    }
}

/// One message waiting for its car.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// Which topic it goes out on.
    pub topic: Outbound,
    /// The encoded envelope, or the car's own payload.
    pub payload: Bytes,
}

impl OutboundMessage {
    /// What the message costs while it waits.
    fn cost(&self) -> usize {
        let topic = match &self.topic {
            Outbound::CarTopic { topic, .. } => topic.len(),
            Outbound::Responses | Outbound::Events => 0,
        };
        self.payload.len() + topic
    }
}

/// How much one mailbox may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Messages waiting for a live session.
    pub max_messages: usize,
    /// Bytes of payload (and topic) waiting, live or parked.
    pub max_bytes: usize,
}

/// What became of a message handed to [`Mailboxes::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Queued for the car's live session.
    Queued,
    /// Kept for the car's persistent session, which is away.
    Parked,
    /// The car has no session on this gateway.
    Offline,
    /// The car's mailbox was full: the message was not queued and the session is being closed.
    Overflow,
}

/// Whether a mailbox's session may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxState {
    /// In use.
    Open,
    /// A newer session of the same VIN took over.
    Kicked,
    /// The car fell too far behind.
    Overflowed,
    /// Its persistent session ended; it keeps messages for the next one.
    Parked,
    /// An operator ended the session.
    Evicted,
    /// The car's certificate was revoked.
    Revoked,
}

/// Why an operator ends a car's session ([`Mailboxes::evict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// A kick: the car may reconnect.
    Kick,
    /// A revocation: it may not.
    Revocation,
}

const OPEN: u8 = 0;
const KICKED: u8 = 1;
const OVERFLOWED: u8 = 2;
const PARKED: u8 = 3;
const EVICTED: u8 = 4;
const REVOKED: u8 = 5;

/// Messages kept for a car whose persistent session is away; beyond it new ones are dropped
/// (the car republishes what it has no answer for).
pub const PARKED_CAPACITY: usize = 100;

/// Waiting messages and the bytes they hold.
#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<OutboundMessage>,
    bytes: usize,
}

impl Queue {
    fn push(&mut self, message: OutboundMessage) {
        self.bytes += message.cost();
        self.messages.push_back(message);
    }

    fn pop(&mut self) -> Option<OutboundMessage> {
        let message = self.messages.pop_front()?;
        self.bytes -= message.cost();
        Some(message)
    }

    /// Keeps the oldest messages that fit in `max_messages` and `max_bytes`.
    fn shrink_to(&mut self, max_messages: usize, max_bytes: usize) {
        let mut kept = Queue::default();
        for message in self.messages.drain(..) {
            if kept.messages.len() < max_messages && kept.bytes + message.cost() <= max_bytes {
                kept.push(message);
            }
        }
        *self = kept;
    }
}

/// The queue of one session.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    wake: Notify,
    state: AtomicU8,
    limits: MailboxLimits,
}

impl Mailbox {
    fn new(limits: MailboxLimits) -> Mailbox {
        Mailbox {
            // Allocates on first use: an idle car's mailbox holds no buffer.
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            state: AtomicU8::new(OPEN),
            limits,
        }
    }

    /// Resolves when something was queued or the state changed since the last call (a wake-up
    /// that happened while nobody waited is kept, so none is missed).
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    /// The oldest waiting message.
    pub fn pop(&self) -> Option<OutboundMessage> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let message = queue.pop();
        if queue.messages.is_empty() && queue.messages.capacity() > 64 {
            // A burst is over: give its memory back instead of keeping it per idle car.
            queue.messages = VecDeque::new();
        }
        message
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).messages.len()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the session may go on.
    pub fn state(&self) -> MailboxState {
        match self.state.load(Ordering::Acquire) {
            OPEN => MailboxState::Open,
            KICKED => MailboxState::Kicked,
            OVERFLOWED => MailboxState::Overflowed,
            EVICTED => MailboxState::Evicted,
            REVOKED => MailboxState::Revoked,
            _ => MailboxState::Parked,
        }
    }

    fn push(&self, message: OutboundMessage) -> DeliveryOutcome {
        let fits = |queue: &Queue, max_messages: usize| {
            queue.messages.len() < max_messages && queue.bytes + message.cost() <= self.limits.max_bytes
        };
        match self.state.load(Ordering::Acquire) {
            OPEN => {}
            PARKED => {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if !fits(&queue, PARKED_CAPACITY.min(self.limits.max_messages)) {
                    return DeliveryOutcome::Offline;
                }
                queue.push(message);
                return DeliveryOutcome::Parked;
            }
            _ => return DeliveryOutcome::Offline,
        }
        {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if !fits(&queue, self.limits.max_messages) {
                drop(queue);
                self.close_with(OVERFLOWED);
                return DeliveryOutcome::Overflow;
            }
            queue.push(message);
        }
        self.wake.notify_one();
        DeliveryOutcome::Queued
    }

    fn take_queue(&self) -> Queue {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn close_with(&self, state: u8) {
        if self
            .state
            .compare_exchange(OPEN, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }
}

/// Every live session's mailbox, by VIN. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mailboxes {
    live: Arc<RwLock<HashMap<Vin, Arc<Mailbox>>>>,
    limits: MailboxLimits,
}

impl Mailboxes {
    /// No sessions yet; each mailbox will hold at most what `limits` allow.
    pub fn new(limits: MailboxLimits) -> Mailboxes {
        Mailboxes {
            live: Arc::default(),
            limits: MailboxLimits {
                max_messages: limits.max_messages.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
        }
    }

    /// Opens the mailbox of a new session of `vin`. A previous live session of the same VIN is
    /// kicked; what a parked one holds is taken over if `resume` (a persistent session
    /// continues), else dropped.
    pub fn open(&self, vin: &Vin, resume: bool) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::new(self.limits));
        let previous = self
            .live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vin.clone(), mailbox.clone());
        if let Some(previous) = previous {
            if previous.state.load(Ordering::Acquire) == PARKED {
                if resume {
                    *mailbox.queue.lock().unwrap_or_else(PoisonError::into_inner) = previous.take_queue();
                }
            } else {
                previous.close_with(KICKED);
            }
        }
        mailbox
    }

    /// Closes `mailbox` when its session ends (a newer session's mailbox is left alone). With
    /// `park`, the mailbox stays for the car's next persistent session, holding what is
    /// queued and what comes meanwhile.
    pub fn close(&self, vin: &Vin, mailbox: &Arc<Mailbox>, park: bool) {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        if !live.get(vin).is_some_and(|m| Arc::ptr_eq(m, mailbox)) {
            return;
        }
        if park && mailbox.state() == MailboxState::Open {
            mailbox.state.store(PARKED, Ordering::Release);
            let mut queue = mailbox.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.shrink_to(PARKED_CAPACITY.min(self.limits.max_messages), self.limits.max_bytes);
        } else {
            live.remove(vin);
        }
    }

    /// Ends `vin`'s live session, if it has one here, for an operator; returns whether it had.
    /// A revocation also drops what a parked mailbox kept: that car will not be back.
    pub fn evict(&self, vin: &Vin, why: Eviction) -> bool {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let Some(mailbox) = live.get(vin) else {
            return false;
        };
        if mailbox.state() == MailboxState::Parked {
            if why == Eviction::Revocation {
                live.remove(vin);
            }
            return false;
        }
        let state = match why {
            Eviction::Kick => EVICTED,
            Eviction::Revocation => REVOKED,
        };
        let open = mailbox.state() == MailboxState::Open;
        mailbox.close_with(state);
        open
    }

    /// Drops `vin`'s parked mailbox, if it has one: its saved session expired.
    pub fn forget_parked(&self, vin: &Vin) {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        if live.get(vin).is_some_and(|m| m.state() == MailboxState::Parked) {
            live.remove(vin);
        }
    }

    /// Parked mailboxes and the bytes they hold, for operators.
    pub fn parked(&self) -> (usize, usize) {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        live.values()
            .filter(|m| m.state() == MailboxState::Parked)
            .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.bytes()))
    }

    /// Queues `payload` on `topic` for `vin`'s live session.
    pub fn deliver(&self, vin: &Vin, topic: Outbound, payload: Bytes) -> DeliveryOutcome {
        let mailbox = self
            .live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vin)
            .cloned();
        match mailbox {
            Some(m) => m.push(OutboundMessage { topic, payload }),
            None => DeliveryOutcome::Offline,
        }
    }

    /// Sessions open right now (parked ones not counted).
    pub fn live(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|m| m.state.load(Ordering::Acquire) != PARKED)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vin(s: &str) -> Vin {
        Vin::parse(s).unwrap()
    }

    /// Hands `vin`'s mailboxes an empty message for `topic`.
    fn post(boxes: &Mailboxes, vin: &Vin, topic: Outbound) -> DeliveryOutcome {
        boxes.deliver(vin, topic, Bytes::new())
    }

    fn mailboxes(max_messages: usize) -> Mailboxes {
        Mailboxes::new(MailboxLimits {
            max_messages,
            max_bytes: 1 << 20,
        })
    }

    #[tokio::test]
    async fn a_message_reaches_only_the_live_session_of_its_vin() {
        let boxes = mailboxes(8);
        let a = boxes.open(&vin("WBA3B5C50DF123456"), false);
        let b = boxes.open(&vin("LSVAU2180N2183294"), false);
        let sent = boxes.deliver(&vin("WBA3B5C50DF123456"), Outbound::Responses, Bytes::from_static(b"x"));
        assert_eq!(sent, DeliveryOutcome::Queued);
        a.changed().await;
        assert_eq!(a.pop().map(|m| m.payload), Some(Bytes::from_static(b"x")));
        assert!(b.is_empty());
        assert_eq!(
            boxes.deliver(&vin("1HGCM82633A004352"), Outbound::Events, Bytes::new()),
            DeliveryOutcome::Offline
        );
    }

    #[tokio::test]
    async fn a_second_session_kicks_the_first_and_survives_its_close() {
        let boxes = mailboxes(8);
        let car = vin("WBA3B5C50DF123456");
        let first = boxes.open(&car, false);
        let second = boxes.open(&car, false);
        first.changed().await;
        assert_eq!(first.state(), MailboxState::Kicked);
        boxes.close(&car, &first, true);
        assert_eq!(post(&boxes, &car, Outbound::Responses), DeliveryOutcome::Queued);
        assert_eq!(second.len(), 1);
        boxes.close(&car, &second, false);
        assert_eq!(boxes.live(), 0);
    }

    #[tokio::test]
    async fn an_operator_ends_a_live_session_and_a_revocation_forgets_a_parked_one() {
        let boxes = mailboxes(8);
        let car = vin("WBA3B5C50DF123456");
        assert!(!boxes.evict(&car, Eviction::Kick), "no session, nothing to end");
        let live = boxes.open(&car, false);
        assert!(boxes.evict(&car, Eviction::Kick));
        live.changed().await;
        assert_eq!(live.state(), MailboxState::Evicted);
        boxes.close(&car, &live, true);
        assert_eq!(boxes.live(), 0, "an evicted session is not parked");

        let persistent = boxes.open(&car, true);
        boxes.close(&car, &persistent, true);
        assert_eq!(boxes.parked().0, 1);
        assert!(
            !boxes.evict(&car, Eviction::Kick),
            "a kick leaves a parked session alone"
        );
        assert_eq!(boxes.parked().0, 1);
        assert!(!boxes.evict(&car, Eviction::Revocation));
        assert_eq!(boxes.parked().0, 0, "a revoked car will not be back for it");

        let revoked = boxes.open(&car, false);
        assert!(boxes.evict(&car, Eviction::Revocation));
        assert_eq!(revoked.state(), MailboxState::Revoked);
    }

    #[tokio::test]
    async fn a_full_mailbox_closes_its_session_instead_of_growing() {
        let boxes = mailboxes(2);
        let car = vin("WBA3B5C50DF123456");
        let mailbox = boxes.open(&car, false);
        for _ in 0..2 {
            assert_eq!(post(&boxes, &car, Outbound::Events), DeliveryOutcome::Queued);
        }
        assert_eq!(post(&boxes, &car, Outbound::Events), DeliveryOutcome::Overflow);
        assert_eq!(mailbox.state(), MailboxState::Overflowed);
        assert_eq!(post(&boxes, &car, Outbound::Events), DeliveryOutcome::Offline);
    }

    #[tokio::test]
    async fn a_parked_mailbox_keeps_messages_for_the_next_persistent_session_only() {
        let boxes = mailboxes(2 * PARKED_CAPACITY);
        let car = vin("WBA3B5C50DF123456");
        let first = boxes.open(&car, true);
        boxes.close(&car, &first, true);
        assert_eq!(boxes.live(), 0);
        assert_eq!(
            boxes.deliver(&car, Outbound::Responses, Bytes::from_static(b"while away")),
            DeliveryOutcome::Parked
        );
        let resumed = boxes.open(&car, true);
        assert_eq!(
            resumed.pop().map(|m| m.payload),
            Some(Bytes::from_static(b"while away"))
        );
        boxes.close(&car, &resumed, true);
        for _ in 0..PARKED_CAPACITY {
            assert_eq!(post(&boxes, &car, Outbound::Responses), DeliveryOutcome::Parked);
        }
        assert_eq!(post(&boxes, &car, Outbound::Responses), DeliveryOutcome::Offline);
        // A clean session starts empty.
        let clean = boxes.open(&car, false);
        assert!(clean.is_empty());
    }

    #[tokio::test]
    async fn a_mailbox_is_bounded_in_bytes_as_well_as_in_messages() {
        let boxes = Mailboxes::new(MailboxLimits {
            max_messages: 100,
            max_bytes: 1000,
        });
        let car = vin("WBA3B5C50DF123456");
        let mailbox = boxes.open(&car, true);
        let big = || Bytes::from(vec![0u8; 400]);
        assert_eq!(boxes.deliver(&car, Outbound::Responses, big()), DeliveryOutcome::Queued);
        assert_eq!(boxes.deliver(&car, Outbound::Responses, big()), DeliveryOutcome::Queued);
        assert_eq!(mailbox.bytes(), 800);
        assert_eq!(
            boxes.deliver(&car, Outbound::Responses, big()),
            DeliveryOutcome::Overflow
        );
        assert_eq!(mailbox.state(), MailboxState::Overflowed);

        // Parked, the same bound holds, and an expired saved session takes it away.
        let second = boxes.open(&car, true);
        boxes.close(&car, &second, true);
        assert_eq!(boxes.deliver(&car, Outbound::Events, big()), DeliveryOutcome::Parked);
        assert_eq!(boxes.deliver(&car, Outbound::Events, big()), DeliveryOutcome::Parked);
        assert_eq!(boxes.deliver(&car, Outbound::Events, big()), DeliveryOutcome::Offline);
        assert_eq!(boxes.parked(), (1, 800));
        boxes.forget_parked(&car);
        assert_eq!(boxes.parked(), (0, 0));
        assert_eq!(boxes.deliver(&car, Outbound::Events, big()), DeliveryOutcome::Offline);
    }
}
