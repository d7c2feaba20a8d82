//! Delivers stored events to cars, in sequence order, at least once: every unacknowledged
//! event is published again each time the car (re)subscribes to its events topic.
//!
//! Each car is served on its own: a delivery pass (read the car's undelivered events, queue
//! them in its mailbox) runs as a task of its own while there is something to do for that car,
//! at most one per car at a time, so one car's slow read or full mailbox delays no other car.
//! Acknowledgements are cumulative, so only a car's highest one matters: they are coalesced in
//! memory (one entry per car) and written in batches by one task, one database write per batch
//! whatever the number of acks. A car flooding acks costs a map update per ack.
//!
//! A partner's publish may reach any node sharing the database, and only the node holding the
//! car's connection can deliver: every [`OTHER_NODES_INTERVAL`] each node asks the store for
//! the last sequence of every car listening to it (one query per 500 cars) and runs a pass for
//! each with events it has not queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use proto::Vin;
use proto::vehicle::v1::{Event, EventAck};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::bus::{AckInbox, DeliveryOutcome, Mailboxes, Outbound};
use crate::clock::now_ms;
use crate::store::Store;

/// Events fetched per store query.
const BATCH: u32 = 100;
/// Pause before writing acknowledgements again after the database refused them.
const ACK_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often a node looks for events other nodes stored for the cars connected to it: the
/// longest such an event waits before it is sent.
pub const OTHER_NODES_INTERVAL: Duration = Duration::from_secs(2);

/// Handle to event delivery; cheap to clone.
#[derive(Clone)]
pub struct EventDelivery {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDelivery").finish_non_exhaustive()
    }
}

struct Shared {
    store: Store,
    mailboxes: Mailboxes,
    tracker: TaskTracker,
    /// Cars subscribed to their events topic right now.
    listening: Mutex<HashMap<Vin, Listening>>,
    /// Each car's highest acknowledgement not written yet.
    acks: Mutex<HashMap<Vin, u64>>,
    acks_waiting: Notify,
}

/// A subscribed car.
struct Listening {
    /// The connection it subscribed on.
    conn: u64,
    /// Counts the car's subscriptions: a pass that began before the latest one must not
    /// record what it queued, or what the new subscription must get again would be skipped.
    subscription: u64,
    /// The last sequence queued in its mailbox since that subscription.
    published: u64,
    /// The last sequence the store showed for it that a pass has been run for (events that
    /// expired before they could be sent would otherwise look new at every look).
    seen: u64,
    /// A delivery pass is running for it.
    running: bool,
    /// Something happened during that pass: run another.
    again: bool,
}

impl EventDelivery {
    /// Starts event delivery into the cars' `mailboxes`: its tasks are tracked by `tracker`,
    /// and the acknowledgements still waiting are written when `shutdown` is cancelled.
    pub fn spawn(
        store: Store,
        mailboxes: Mailboxes,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> EventDelivery {
        let delivery = EventDelivery {
            shared: Arc::new(Shared {
                store,
                mailboxes,
                tracker: tracker.clone(),
                listening: Mutex::default(),
                acks: Mutex::default(),
                acks_waiting: Notify::new(),
            }),
        };
        tracker.spawn(
            look_for_other_nodes_events(delivery.clone(), OTHER_NODES_INTERVAL, shutdown.clone())
                .instrument(info_span!("other_nodes_events")),
        );
        tracker.spawn(write_acks(delivery.clone(), shutdown).instrument(info_span!("event_acks")));
        delivery
    }

    /// The car's subscription to its events topic is live on connection `conn`: everything
    /// not acknowledged goes out again.
    pub fn subscribed(&self, vin: Vin, conn: u64) {
        let mut all = self.shared.listening();
        let (running, subscription) = all
            .get(&vin)
            .map_or((false, 0), |l| (l.running, l.subscription.wrapping_add(1)));
        let listening = Listening {
            conn,
            subscription,
            published: 0,
            seen: 0,
            running,
            again: false,
        };
        all.insert(vin.clone(), listening);
        drop(all);
        self.schedule(&vin);
    }

    /// Connection `conn` of the car ended.
    pub fn gone(&self, vin: &Vin, conn: u64) {
        let mut all = self.shared.listening();
        if all.get(vin).is_some_and(|l| l.conn == conn) {
            all.remove(vin);
        }
    }

    /// New events were stored for the car.
    pub fn flush(&self, vin: &Vin) {
        self.schedule(vin);
    }

    /// Cars with acknowledgements not written yet (at most one entry each).
    pub fn acks_waiting(&self) -> usize {
        self.shared.acks().len()
    }

    /// Runs a delivery pass for `vin` if it is listening: now, or right after the one running.
    fn schedule(&self, vin: &Vin) {
        let mut all = self.shared.listening();
        let Some(car) = all.get_mut(vin) else { return };
        if car.running {
            car.again = true;
            return;
        }
        car.running = true;
        drop(all);
        let shared = self.shared.clone();
        let vin = vin.clone();
        let span = info_span!("event_delivery", %vin);
        self.shared.tracker.spawn(deliver(shared, vin).instrument(span));
    }
}

impl Shared {
    fn listening(&self) -> MutexGuard<'_, HashMap<Vin, Listening>> {
        self.listening.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acks(&self) -> MutexGuard<'_, HashMap<Vin, u64>> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AckInbox for EventDelivery {
    fn acknowledged(&self, vin: &Vin, ack: Bytes) {
        let Ok(EventAck { sequence }) = EventAck::decode(ack) else {
            // Debug, not warn: a car flooding garbage must not flood the log.
            debug!(%vin, "malformed event acknowledgement ignored");
            return;
        };
        let mut acks = self.shared.acks();
        let highest = acks.entry(vin.clone()).or_insert(sequence);
        *highest = (*highest).max(sequence);
        drop(acks);
        self.shared.acks_waiting.notify_one();
    }
}

/// DeliveryOutcome passes for one car until there is nothing more to do for it.
async fn deliver(shared: Arc<Shared>, vin: Vin) {
    loop {
        let Some((subscription, published)) = shared.listening().get(&vin).map(|l| (l.subscription, l.published))
        else {
            return;
        };
        let queued = match shared.store.undelivered_events(&vin, now_ms(), BATCH).await {
            Ok(events) => queue(&shared.mailboxes, &vin, events, published),
            Err(e) => {
                warn!(error = %e, "cannot read events; will retry on the next trigger");
                published
            }
        };
        let mut all = shared.listening();
        let Some(car) = all.get_mut(&vin) else { return };
        if car.subscription == subscription {
            car.published = car.published.max(queued);
        }
        if car.again {
            car.again = false;
        } else {
            car.running = false;
            return;
        }
    }
}

/// Queues `events` after `published` in the car's mailbox, in order; returns the last queued.
fn queue(mailboxes: &Mailboxes, vin: &Vin, events: Vec<crate::store::StoredEvent>, published: u64) -> u64 {
    let mut last = published;
    for stored in events.into_iter().filter(|e| e.sequence > published) {
        let event = Event {
            partner: stored.service,
            kind: stored.kind,
            payload: stored.payload,
            sequence: stored.sequence,
        };
        match mailboxes.deliver(vin, Outbound::Events, Bytes::from(event.encode_to_vec())) {
            DeliveryOutcome::Queued => {
                debug!(sequence = stored.sequence, "event queued for the car");
                last = stored.sequence;
            }
            // Redelivered when the car subscribes again.
            DeliveryOutcome::Offline | DeliveryOutcome::Overflow | DeliveryOutcome::Parked => break,
        }
    }
    last
}

/// Every `interval` until shutdown: runs a pass for each car listening here whose last stored
/// sequence is past what this node queued or looked at (events another node stored for it).
async fn look_for_other_nodes_events(delivery: EventDelivery, interval: Duration, shutdown: CancellationToken) {
    let shared = &delivery.shared;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let known: HashMap<Vin, u64> = shared
            .listening()
            .iter()
            .map(|(vin, car)| (vin.clone(), car.published.max(car.seen)))
            .collect();
        if known.is_empty() {
            continue;
        }
        let cars: Vec<Vin> = known.keys().cloned().collect();
        let lasts = match shared.store.last_event_sequences(&cars).await {
            Ok(lasts) => lasts,
            Err(e) => {
                warn!(error = %e, "cannot look for events stored by other nodes; will look again");
                continue;
            }
        };
        for (vin, last) in lasts {
            if known.get(&vin).is_some_and(|&known| last > known) {
                if let Some(car) = shared.listening().get_mut(&vin) {
                    car.seen = car.seen.max(last);
                }
                delivery.schedule(&vin);
            }
        }
    }
}

/// Writes the coalesced acknowledgements, one batch at a time, until shutdown; then the last.
async fn write_acks(delivery: EventDelivery, shutdown: CancellationToken) {
    let shared = &delivery.shared;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = shared.acks_waiting.notified() => false,
        };
        let batch: Vec<(Vin, u64)> = std::mem::take(&mut *shared.acks()).into_iter().collect();
        if !batch.is_empty() {
            match shared.store.ack_events_many(&batch).await {
                Ok(()) => {
                    // Events past the last batch may be waiting for room in the car's window.
                    for (vin, _) in &batch {
                        delivery.schedule(vin);
                    }
                }
                Err(e) => {
                    warn!(cars = batch.len(), error = %e, "event acknowledgements not stored; retrying");
                    {
                        let mut acks = shared.acks();
                        for (vin, sequence) in batch {
                            let highest = acks.entry(vin).or_insert(sequence);
                            *highest = (*highest).max(sequence);
                        }
                    }
                    if !stopping {
                        shared.acks_waiting.notify_one();
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(ACK_RETRY_PAUSE) => {}
                        }
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}
