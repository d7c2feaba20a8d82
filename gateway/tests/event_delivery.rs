//! Event delivery against a real SQLite store: acknowledgements are coalesced per car (only
//! the highest matters), so a car flooding them costs a map update each and never queues work
//! ahead of another car's events.

use std::time::Duration;

use bytes::Bytes;
use gateway::bus::{AckInbox, MailboxLimits, Mailboxes, Outbound};
use gateway::events::EventDelivery;
use gateway::store::{NewEvent, Store};
use prost::Message;
use proto::Vin;
use proto::vehicle::v1::{Event, EventAck};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn event_for(vin: &Vin, id: &str) -> NewEvent {
    let now = gateway::clock::now_ms();
    NewEvent {
        vin: vin.clone(),
        service: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: b"paid".to_vec(),
        event_id: id.into(),
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    }
}

/// Event delivery running on a fresh SQLite store, with mailboxes of `max_messages` each.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    mailboxes: Mailboxes,
    delivery: EventDelivery,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Rig {
    async fn start(max_messages: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mailboxes = Mailboxes::new(MailboxLimits {
            max_messages,
            max_bytes: 1 << 20,
        });
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        let delivery = EventDelivery::spawn(store.clone(), mailboxes.clone(), shutdown.clone(), tracker.clone());
        Rig {
            _dir: dir,
            store,
            mailboxes,
            delivery,
            shutdown,
            tracker,
        }
    }

    /// Stops delivery, waits for its tasks, closes the store.
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.store.close().await;
    }
}

#[tokio::test]
async fn a_flood_of_acknowledgements_is_one_entry_and_another_cars_event_still_goes_out() {
    let rig = Rig::start(16).await;
    let (store, mailboxes, delivery) = (&rig.store, &rig.mailboxes, &rig.delivery);
    let flooder = Vin::parse("LSVAU2180N2183294").unwrap();
    let other = Vin::parse("WBA3B5C50DF123456").unwrap();
    let mailbox = mailboxes.open(&other, false);
    delivery.subscribed(other.clone(), 1);

    for sequence in 0..100_000u64 {
        delivery.acknowledged(&flooder, Bytes::from(EventAck { sequence }.encode_to_vec()));
        delivery.acknowledged(&flooder, Bytes::from_static(b"\xff not an ack"));
    }
    assert!(
        delivery.acks_waiting() <= 1,
        "200,000 acknowledgements from one car wait as at most one write"
    );

    store.append_event(&event_for(&other, "e1"), 1000).await.unwrap();
    delivery.flush(&other);
    tokio::time::timeout(Duration::from_secs(10), mailbox.changed())
        .await
        .expect("the other car's event is queued");
    let message = mailbox.pop().expect("a message");
    assert_eq!(message.topic, Outbound::Events);
    assert_eq!(Event::decode(message.payload).unwrap().sequence, 1);

    rig.stop().await;
}

/// Sequences of the events popped from `mailbox` until it has delivered `count`.
async fn next_sequences(mailbox: &gateway::bus::Mailbox, count: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < count {
        match mailbox.pop() {
            Some(message) => got.push(Event::decode(message.payload).unwrap().sequence),
            None => tokio::time::timeout(Duration::from_secs(10), mailbox.changed())
                .await
                .unwrap_or_else(|_| panic!("only {got:?} of {count} events were queued")),
        }
    }
    got
}

#[tokio::test(flavor = "current_thread")]
async fn subscribing_again_while_a_delivery_pass_runs_sends_everything_again() {
    let rig = Rig::start(64).await;
    let (store, mailboxes, delivery) = (&rig.store, &rig.mailboxes, &rig.delivery);
    let car = Vin::parse("LSVAU2180N2183294").unwrap();
    for id in ["e1", "e2", "e3"] {
        store.append_event(&event_for(&car, id), 1000).await.unwrap();
    }
    let mailbox = mailboxes.open(&car, false);
    delivery.subscribed(car.clone(), 1);
    // On this one thread, the pass starts and waits for the database; the car subscribes
    // again meanwhile (as the agent does to have an event it refused sent again).
    tokio::task::yield_now().await;
    delivery.subscribed(car.clone(), 1);
    assert_eq!(next_sequences(&mailbox, 6).await, [1, 2, 3, 1, 2, 3]);

    rig.stop().await;
}
