//! Partner events on both backends: sequencing per car, concurrent appends, acknowledgements, caps.

use super::*;

pub(crate) async fn events_are_sequenced_from_one_per_vin_and_idempotent(db: Db) {
    let s = &db.store;
    let exp = T0 + 3_600_000;
    assert_eq!(append(s, &event(1, "parking", "e1", T0, exp)).await.unwrap(), 1);
    assert_eq!(append(s, &event(1, "parking", "e2", T0 + 1, exp)).await.unwrap(), 2);
    assert_eq!(append(s, &event(1, "parking", "e3", T0 + 2, exp)).await.unwrap(), 3);
    // A repeat stores nothing and returns the original sequence, whatever else it carries.
    let mut repeat = event(1, "parking", "e2", T0 + 50, exp + 50);
    repeat.payload = b"different".to_vec();
    assert_eq!(append(s, &repeat).await.unwrap(), 2);
    // The same event id from another service is another event.
    assert_eq!(append(s, &event(1, "navigation", "e2", T0 + 3, exp)).await.unwrap(), 4);
    // Each car has its own stream.
    assert_eq!(append(s, &event(2, "parking", "e1", T0, exp)).await.unwrap(), 1);
    assert_eq!(append(s, &event(1, "parking", "e5", T0 + 4, exp)).await.unwrap(), 5);

    let stored = s.undelivered_events(&vin(1), T0, 100).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let second = &stored[1];
    assert_eq!(second.vin, vin(1));
    assert_eq!(
        (second.service.as_str(), second.kind.as_str()),
        ("parking", "session.ended")
    );
    assert_eq!(second.payload, b"{\"id\":\"e2\"}");
    assert_eq!((second.created_at_ms, second.expires_at_ms), (T0 + 1, exp));
    assert_eq!(stored[3].service, "navigation");
    let other = s.undelivered_events(&vin(2), T0, 100).await.unwrap();
    assert_eq!((other.len(), other[0].sequence, other[0].vin.clone()), (1, 1, vin(2)));
}

/// Appends `events` at once, task `i` on `stores[i % len]`; returns the sequences in task order.
pub(crate) async fn concurrent_appends(stores: &[Store], events: Vec<NewEvent>) -> Vec<u64> {
    let barrier = Arc::new(Barrier::new(events.len()));
    let tasks: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let (store, barrier) = (stores[i % stores.len()].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                append(&store, &e).await.unwrap()
            })
        })
        .collect();
    outputs(tasks).await
}

pub(crate) async fn events_concurrent_appends_are_gapless(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    let exp = T0 + 3_600_000;
    let events = (0..50)
        .map(|i| event(1, "parking", &format!("e{i}"), T0 + i, exp))
        .collect();
    let mut sequences = concurrent_appends(&stores, events).await;
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=50).collect::<Vec<u64>>());
    let stored = db.store.undelivered_events(&vin(1), T0, 1_000).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<u64>>()
    );
    let ids: BTreeSet<_> = stored.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(ids.len(), 50);
    node_b.close().await;
}

pub(crate) async fn events_concurrent_duplicates_are_stored_once_without_gaps(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    let exp = T0 + 3_600_000;
    assert_eq!(
        append(&db.store, &event(1, "parking", "first", T0, exp)).await.unwrap(),
        1
    );
    // 16 deliveries of the same partner event, interleaved with 16 distinct ones.
    let events = (0..32)
        .map(|i| {
            let id = if i % 2 == 0 { "dup".to_owned() } else { format!("e{i}") };
            event(1, "parking", &id, T0 + 1, exp)
        })
        .collect();
    let sequences = concurrent_appends(&stores, events).await;
    let dup: BTreeSet<_> = sequences.iter().step_by(2).copied().collect();
    assert_eq!(
        dup.len(),
        1,
        "every copy of the duplicate gets one sequence: {sequences:?}"
    );
    let mut all: Vec<u64> = sequences.iter().skip(1).step_by(2).copied().chain(dup).collect();
    all.sort_unstable();
    assert_eq!(all, (2..=18).collect::<Vec<u64>>());
    assert_eq!(
        append(&db.store, &event(1, "parking", "last", T0, exp)).await.unwrap(),
        19
    );
    assert_eq!(db.store.undelivered_events(&vin(1), T0, 1_000).await.unwrap().len(), 19);
    node_b.close().await;
}

pub(crate) async fn events_acks_are_cumulative_and_expired_events_are_not_delivered(db: Db) {
    let s = &db.store;
    let long = T0 + 3_600_000;
    for (i, expires) in [(1, long), (2, long), (3, long), (4, T0 + 100), (5, long), (6, long)] {
        assert_eq!(
            append(s, &event(1, "parking", &format!("e{i}"), T0, expires))
                .await
                .unwrap(),
            i
        );
    }
    append(s, &event(2, "parking", "e1", T0, long)).await.unwrap();
    let seqs = |events: Vec<gateway::store::StoredEvent>| events.into_iter().map(|e| e.sequence).collect::<Vec<_>>();

    assert_eq!(
        seqs(s.undelivered_events(&vin(1), T0, 100).await.unwrap()),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(seqs(s.undelivered_events(&vin(1), T0, 2).await.unwrap()), vec![1, 2]);
    assert_eq!(s.ack_events(&vin(1), 3).await.unwrap(), 3);
    assert_eq!(
        s.ack_events(&vin(1), 2).await.unwrap(),
        0,
        "an older ack changes nothing"
    );
    assert_eq!(
        seqs(s.undelivered_events(&vin(1), T0, 100).await.unwrap()),
        vec![4, 5, 6]
    );
    // Event 4 expires at T0 + 100: from then on it is not delivered.
    assert_eq!(
        seqs(s.undelivered_events(&vin(1), T0 + 99, 100).await.unwrap()),
        vec![4, 5, 6]
    );
    assert_eq!(
        seqs(s.undelivered_events(&vin(1), T0 + 100, 100).await.unwrap()),
        vec![5, 6]
    );
    // Acks are per car.
    assert_eq!(seqs(s.undelivered_events(&vin(2), T0, 100).await.unwrap()), vec![1]);

    // Purge: acked (1..=3) and expired (4) go; 5 and 6 stay; sequences continue.
    assert_eq!(s.purge_events(T0 + 100).await.unwrap(), 4);
    assert_eq!(s.purge_events(T0 + 100).await.unwrap(), 0);
    assert_eq!(
        seqs(s.undelivered_events(&vin(1), T0 + 100, 100).await.unwrap()),
        vec![5, 6]
    );
    assert_eq!(append(s, &event(1, "parking", "e7", T0, long)).await.unwrap(), 7);
    // An ack beyond the end does not cover later events.
    assert_eq!(s.ack_events(&vin(1), 1_000).await.unwrap(), 3);
    assert_eq!(append(s, &event(1, "parking", "e8", T0, long)).await.unwrap(), 8);
    assert_eq!(seqs(s.undelivered_events(&vin(1), T0, 100).await.unwrap()), vec![8]);
}

pub(crate) async fn events_waiting_for_one_car_are_capped_and_a_repeat_is_still_answered(db: Db) {
    let s = &db.store;
    let long = T0 + 3_600_000;
    for i in 1..=3u64 {
        let e = event(1, "parking", &format!("e{i}"), T0, long);
        assert_eq!(s.append_event(&e, 3).await.unwrap(), Appended::Stored(i));
    }
    let fourth = event(1, "parking", "e4", T0, long);
    assert_eq!(s.append_event(&fourth, 3).await.unwrap(), Appended::Full { pending: 3 });
    // A repeat of a stored event is answered with its sequence, full or not.
    let repeat = event(1, "parking", "e2", T0, long);
    assert_eq!(s.append_event(&repeat, 3).await.unwrap(), Appended::Stored(2));
    // Another car has its own quota.
    let other = event(2, "parking", "e1", T0, long);
    assert_eq!(s.append_event(&other, 3).await.unwrap(), Appended::Stored(1));
    // Once the car acknowledges, there is room again, and the sequence has no gap.
    s.ack_events(&vin(1), 1).await.unwrap();
    assert_eq!(s.append_event(&fourth, 3).await.unwrap(), Appended::Stored(4));
}

pub(crate) async fn events_acks_of_many_cars_are_written_at_once(db: Db) {
    let s = &db.store;
    let long = T0 + 3_600_000;
    for car in 1..=3 {
        for i in 1..=3 {
            append(s, &event(car, "parking", &format!("e{i}"), T0, long))
                .await
                .unwrap();
        }
    }
    s.ack_events_many(&[(vin(1), 2), (vin(2), 3)]).await.unwrap();
    let left = |car| async move { s.undelivered_events(&vin(car), T0, 10).await.unwrap().len() };
    assert_eq!((left(1).await, left(2).await, left(3).await), (1, 0, 3));
}

/// What a node asks to learn of events other nodes stored for its cars: the last sequence of
/// each car that has events, however many cars it asks about (more than one statement takes).
pub(crate) async fn events_last_sequences_are_read_for_any_number_of_cars(s: Store) {
    let exp = T0 + 3_600_000;
    for (car, count) in [(3, 2), (700, 1), (1_100, 3)] {
        for i in 0..count {
            append(&s, &event(car, "parking", &format!("e{i}"), T0, exp))
                .await
                .unwrap();
        }
    }
    let asked: Vec<Vin> = (1..=1_200).map(vin).collect();
    let mut lasts = s.last_event_sequences(&asked).await.unwrap();
    lasts.sort();
    assert_eq!(lasts, vec![(vin(3), 2), (vin(700), 1), (vin(1_100), 3)]);
    assert!(s.last_event_sequences(&[]).await.unwrap().is_empty());
}
