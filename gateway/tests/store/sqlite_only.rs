//! What only SQLite has: the group-commit writer recovering after a full disk and a failed
//! write, an in-memory database; and a full disk refusing a connection batch half-way (only
//! SQLite can be made to fill up on cue).

use super::*;

/// After "database or disk is full", the next writes succeed as soon as there is room again,
/// without a restart. The database file is capped (`PRAGMA max_page_count`, the way a full
/// disk caps it); room comes back when old data is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recovers_by_itself_after_the_disk_was_full() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_backends::sqlite_on_a_small_disk(dir.path()).await;
    let big = |i: usize| NewEvent {
        payload: vec![7u8; 16 * 1024],
        ..event(1, "parking", &format!("big-{i}"), T0, T0 + 1)
    };
    let mut stored = 0;
    let full = loop {
        match s.append_event(&big(stored), u64::MAX).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1_000, "the cap never bit");
    };
    assert!(full.to_string().contains("full"), "{full}");
    // Still full: a write fails again, cleanly.
    assert!(s.append_event(&big(stored), u64::MAX).await.is_err());
    // Room comes back (the events expired and are purged): writes succeed again.
    s.purge_events(T0 + 1)
        .await
        .expect("a delete succeeds on a full database");
    let after = event(2, "parking", "after", T0, T0 + 3_600_000);
    assert_eq!(
        append(&s, &after).await.unwrap(),
        1,
        "the store recovered without a restart"
    );
    claim(&s, &key(1, "k"), &pay(b"x"), "gw-1/1", T0).await;
    s.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_works_with_one_shared_connection() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    let a = append(&store, &event(1, "parking", "e1", T0, T0 + 10)).await.unwrap();
    let (second, car) = (event(1, "parking", "e2", T0, T0 + 10), vin(1));
    let (b, c) = tokio::join!(append(&store, &second), store.undelivered_events(&car, T0, 10));
    assert_eq!((a, b.unwrap()), (1, 2));
    assert!(!c.unwrap().is_empty());
    assert_eq!(store.undelivered_events(&vin(1), T0, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_failing_write_does_not_take_its_batch_down() {
    on_sqlite(|db: Db| async move {
        // Break one kind of write behind the store's back.
        let mut raw = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query("DROP TABLE events").execute(&mut raw).await.unwrap();
        raw.close().await.unwrap();
        let s = &db.store;
        let e = event(1, "parking.v1.ParkingPayment", "e-1", T0, T0 + 60_000);
        let appended = append(s, &e);
        let claims = futures::future::join_all((0..50).map(|i| async move {
            s.ledger_claim(&key(1, &format!("k-{i}")), &pay(b"x"), "gw-1/1", T0, LEASE, RETENTION)
                .await
        }));
        let (appended, claims) = tokio::join!(appended, claims);
        assert!(matches!(appended, Err(StoreError::Query { .. })), "{appended:?}");
        assert!(claims.into_iter().all(|c| c.unwrap() == Claim::Fresh));
        assert_eq!(
            claim(s, &key(1, "k-0"), &pay(b"x"), "gw-1/1", T0 + 1).await,
            Claim::InFlight,
            "the claims were committed"
        );
    })
    .await;
}

/// A batch of connections the database refuses half-way (here: the disk fills) leaves nothing
/// behind: were its first opens kept, the caller (told the batch failed) would never learn
/// their ids, and no close could end them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_connection_batch_refused_half_way_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_backends::sqlite_on_a_small_disk(dir.path()).await;
    let long = |i: u32| NewConnection {
        // Long enough that the small disk fills within the batch.
        agent_version: Some("v".repeat(4000)),
        ..connection(i, "gw-1", T0)
    };
    let batch = (0..2_000)
        .map(|i| ConnectionChange::Open {
            conn: u64::from(i),
            connection: long(i),
        })
        .collect();
    let refused = s.record_connections(batch).await.expect_err("the disk fills half-way");
    assert!(refused.to_string().contains("full"), "{refused}");
    let (_, open) = s.open_connections_page("", 10).await.unwrap();
    assert_eq!(open, 0, "connections of a refused batch were kept");
    s.close().await;
}
