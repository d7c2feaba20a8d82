//! Delivers stored events to cars, in sequence order, at least once: every unacknowledged
//! event is published again each time the car (re)subscribes to its events topic.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;
use proto::Vin;
use proto::vehicle::v1::Event;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::broker::now_ms;
use crate::bus::{Delivery, Mailboxes, Outbound};
use crate::store::Store;

/// Events fetched per store query.
const BATCH: u32 = 100;

enum Command {
    Subscribed(Vin, u64),
    Gone(Vin, u64),
    Flush(Vin),
    Ack(Vin, u64),
}

/// Handle to the delivery task; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventDelivery {
    tx: mpsc::UnboundedSender<Command>,
}

impl EventDelivery {
    /// Starts the delivery task, which puts events in the cars' `mailboxes`.
    pub fn spawn(store: Store, mailboxes: Mailboxes) -> EventDelivery {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, store, mailboxes));
        EventDelivery { tx }
    }

    /// The car's subscription to its events topic is live on connection `conn`.
    pub fn subscribed(&self, vin: Vin, conn: u64) {
        let _ = self.tx.send(Command::Subscribed(vin, conn));
    }

    /// Connection `conn` of the car ended.
    pub fn gone(&self, vin: Vin, conn: u64) {
        let _ = self.tx.send(Command::Gone(vin, conn));
    }

    /// New events were stored for the car.
    pub fn flush(&self, vin: Vin) {
        let _ = self.tx.send(Command::Flush(vin));
    }

    /// The car acknowledged every event up to `sequence`.
    pub fn ack(&self, vin: Vin, sequence: u64) {
        let _ = self.tx.send(Command::Ack(vin, sequence));
    }
}

/// Per subscribed car: its connection and the last sequence published on it.
struct Listening {
    conn: u64,
    published: u64,
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, store: Store, mailboxes: Mailboxes) {
    // One task for all cars keeps each car's events in sequence order on the wire.
    let mut listening: HashMap<Vin, Listening> = HashMap::new();
    while let Some(command) = rx.recv().await {
        let vin = match command {
            Command::Subscribed(vin, conn) => {
                listening.insert(vin.clone(), Listening { conn, published: 0 });
                vin
            }
            Command::Gone(vin, conn) => {
                if listening.get(&vin).is_some_and(|l| l.conn == conn) {
                    listening.remove(&vin);
                }
                continue;
            }
            Command::Flush(vin) => vin,
            Command::Ack(vin, sequence) => {
                if let Err(e) = store.ack_events(&vin, sequence).await {
                    warn!(%vin, sequence, error = %e, "event acknowledgement not stored; the car will see the event again");
                }
                vin
            }
        };
        let Some(state) = listening.get_mut(&vin) else { continue };
        let events = match store.undelivered_events(&vin, now_ms(), BATCH).await {
            Ok(events) => events,
            Err(e) => {
                warn!(%vin, error = %e, "cannot read events; will retry on the next trigger");
                continue;
            }
        };
        let already = state.published;
        for stored in events.into_iter().filter(|e| e.sequence > already) {
            let event = Event {
                partner: stored.service,
                kind: stored.kind,
                payload: stored.payload,
                sequence: stored.sequence,
            };
            match mailboxes.deliver(&vin, Outbound::Events, Bytes::from(event.encode_to_vec())) {
                Delivery::Queued => {
                    debug!(%vin, sequence = stored.sequence, "event published");
                    state.published = stored.sequence;
                }
                // Redelivered when the car subscribes again.
                Delivery::Offline | Delivery::Overflow | Delivery::Parked => break,
            }
        }
    }
}
