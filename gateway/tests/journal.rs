//! The interaction journal on SQLite and PostgreSQL: appending, paging a vehicle's and a
//! customer's timeline (keyset pages, equal timestamps, ten years of rows), the purge by
//! retention, page tokens; and the [`Journal`] writer: dropping and counting beyond its queue,
//! and surviving a database that refuses writes.

mod two_backends;

use std::time::Duration;

use gateway::config::JournalConfig;
use gateway::journal::Journal;
use gateway::store::{
    Amount, EventRecord, Interaction, JournalCursor, JournalEntry, MAX_PAGE, RequestRecord, SessionChange,
    SessionRecord, Store, StoreError, TimelineQuery, VehicleRole,
};
use proto::Vin;

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 24 * 3600 * 1000;
/// Every wait on the writer is bounded by this: a hang fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(20);

fn vin(n: u32) -> Vin {
    Vin::parse(&format!("LSVAU2180N{n:07}")).expect("valid VIN")
}

fn request(car: u32, at_ms: i64, request_id: &str) -> JournalEntry {
    JournalEntry {
        id: 0,
        at_ms,
        vin: vin(car),
        what: Interaction::Request(RequestRecord {
            service: "parking.v1.ParkingPayment".into(),
            method: "EndSession".into(),
            code: 0,
            latency_us: 1234,
            amount: Some(Amount {
                minor_units: 1250,
                currency: "CNY".into(),
            }),
            request_id: request_id.into(),
            request_payload: None,
            response_payload: None,
        }),
    }
}

fn query(from_ms: i64, to_ms: i64, limit: u32) -> TimelineQuery {
    TimelineQuery {
        from_ms,
        to_ms,
        after: None,
        limit,
    }
}

/// Reads every page of the vehicle's timeline, checking each holds at most `limit` entries.
async fn all_pages(s: &Store, car: u32, mut q: TimelineQuery) -> (Vec<JournalEntry>, usize) {
    let (mut all, mut pages) = (Vec::new(), 0);
    loop {
        let page = s.vehicle_timeline(&vin(car), q).await.unwrap();
        assert!(page.entries.len() <= q.limit.clamp(1, MAX_PAGE) as usize);
        pages += 1;
        all.extend(page.entries);
        match page.next {
            // The token is what a caller passes back: go through it.
            Some(next) => q.after = Some(JournalCursor::from_token(&next.to_token()).unwrap()),
            None => return (all, pages),
        }
    }
}

async fn every_kind_round_trips(s: Store) {
    let entries = vec![
        request(1, T0, "r-1"),
        JournalEntry {
            id: 0,
            at_ms: T0 + 1,
            vin: vin(1),
            what: Interaction::Event(EventRecord {
                service: "parking.v1.ParkingPayment".into(),
                kind: "parking.session_ended_by_lot".into(),
                sequence: 7,
            }),
        },
        JournalEntry {
            id: 0,
            at_ms: T0 + 2,
            vin: vin(1),
            what: Interaction::Session(SessionRecord {
                change: SessionChange::Connected,
                detail: "10.0.0.1:5555".into(),
            }),
        },
        JournalEntry {
            what: Interaction::Request(RequestRecord {
                code: 14,
                amount: None,
                request_payload: Some(vec![1, 2, 3]),
                response_payload: Some(Vec::new()),
                ..match request(1, 0, "r-2").what {
                    Interaction::Request(r) => r,
                    _ => unreachable!(),
                }
            }),
            ..request(1, T0 + 3, "r-2")
        },
    ];
    assert_eq!(s.journal_append(&entries).await.unwrap(), 4);
    let page = s.vehicle_timeline(&vin(1), query(T0, T0 + 10, 10)).await.unwrap();
    assert_eq!(page.next, None);
    let stored: Vec<JournalEntry> = page
        .entries
        .iter()
        .map(|e| JournalEntry { id: 0, ..e.clone() })
        .collect();
    assert_eq!(stored, entries);
    assert!(page.entries.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        s.vehicle_timeline(&vin(2), query(T0, T0 + 10, 10))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
}

async fn pages_cross_equal_timestamps_without_loss_or_repeat(s: Store) {
    // 25 rows, five per millisecond, and another car's rows in between.
    let mut entries = Vec::new();
    for i in 0..25 {
        entries.push(request(1, T0 + i / 5, &format!("r-{i}")));
        entries.push(request(2, T0 + i / 5, &format!("other-{i}")));
    }
    s.journal_append(&entries).await.unwrap();
    for limit in [1, 3, 5, 7, 25, 100] {
        let (all, pages) = all_pages(&s, 1, query(T0, T0 + 5, limit)).await;
        let ids: Vec<String> = all
            .iter()
            .map(|e| match &e.what {
                Interaction::Request(r) => r.request_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let expected: Vec<String> = (0..25).map(|i| format!("r-{i}")).collect();
        assert_eq!(ids, expected, "limit {limit}");
        assert_eq!(
            pages,
            25usize.div_ceil(limit as usize).max(1),
            "limit {limit}: no empty last page"
        );
    }
    // The range is [from, to): the last millisecond's five rows are outside [T0, T0 + 4).
    assert_eq!(all_pages(&s, 1, query(T0, T0 + 4, 100)).await.0.len(), 20);
    assert_eq!(all_pages(&s, 1, query(T0 + 1, T0 + 2, 100)).await.0.len(), 5);
}

async fn ten_years_of_rows_come_in_pages_of_at_most_the_limit(s: Store) {
    // A row every ~3 days for ten years, in batches as the writer sends them.
    let rows: Vec<JournalEntry> = (0..1200)
        .map(|i| request(1, T0 + i * 3 * DAY, &format!("r-{i}")))
        .collect();
    for batch in rows.chunks(1000) {
        s.journal_append(batch).await.unwrap();
    }
    let ten_years = query(T0 - DAY, T0 + 3650 * DAY, 50);
    let first = s.vehicle_timeline(&vin(1), ten_years).await.unwrap();
    assert_eq!(first.entries.len(), 50);
    let (all, pages) = all_pages(&s, 1, ten_years).await;
    assert_eq!((all.len(), pages), (1200, 24));
    // A limit beyond the maximum is clamped; 0 means 1.
    let huge = s
        .vehicle_timeline(&vin(1), query(T0 - DAY, T0 + 3650 * DAY, 1_000_000))
        .await
        .unwrap();
    assert_eq!(huge.entries.len(), MAX_PAGE as usize);
    assert!(huge.next.is_some());
    let zero = s
        .vehicle_timeline(&vin(1), query(T0 - DAY, T0 + 3650 * DAY, 0))
        .await
        .unwrap();
    assert_eq!(zero.entries.len(), 1);
}

async fn a_customer_timeline_holds_only_rows_inside_the_link_periods(s: Store) {
    let c = s.create_customer("c").await.unwrap();
    let someone = s.create_customer("someone").await.unwrap();
    // Car 1: linked [T0+10, T0+20), then again from T0+30. Car 2: driver from T0+15.
    s.link_vehicle(&c.id, &vin(1), VehicleRole::Owner, T0 + 10)
        .await
        .unwrap();
    s.unlink_vehicle(&c.id, &vin(1), T0 + 20).await.unwrap();
    s.link_vehicle(&c.id, &vin(1), VehicleRole::Driver, T0 + 30)
        .await
        .unwrap();
    s.link_vehicle(&c.id, &vin(2), VehicleRole::Driver, T0 + 15)
        .await
        .unwrap();
    // Car 3 is someone else's.
    s.link_vehicle(&someone.id, &vin(3), VehicleRole::Owner, T0)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for at in [5, 10, 15, 19, 20, 25, 30, 35] {
        for car in [1, 2, 3] {
            rows.push(request(car, T0 + at, &format!("{car}@{at}")));
        }
    }
    s.journal_append(&rows).await.unwrap();
    let mut q = query(T0, T0 + 100, 2);
    let mut seen = Vec::new();
    loop {
        let page = s.customer_timeline(&c.id, q).await.unwrap();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.iter().map(|e| match &e.what {
            Interaction::Request(r) => r.request_id.clone(),
            other => panic!("{other:?}"),
        }));
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    let expected = [
        "1@10", "1@15", "2@15", "1@19", "2@19", "2@20", "2@25", "1@30", "2@30", "1@35", "2@35",
    ];
    assert_eq!(seen, expected);
    // An unknown customer is NOT_FOUND, with the id.
    let ghost = gateway::store::CustomerId("no-such-customer".into());
    let e = s.customer_timeline(&ghost, q).await.expect_err("unknown customer");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.to_string().contains("no-such-customer"), "{e}");
}

async fn rows_older_than_the_retention_are_purged(s: Store) {
    // More rows than one purge statement deletes, so the purge runs in several batches.
    let old: Vec<JournalEntry> = (0..12_000)
        .map(|i| request(1 + (i % 3) as u32, T0 - 100 * DAY + i, "old"))
        .collect();
    for batch in old.chunks(1000) {
        s.journal_append(batch).await.unwrap();
    }
    s.journal_append(&[request(1, T0, "new"), request(2, T0 - 89 * DAY, "recent")])
        .await
        .unwrap();
    assert_eq!(s.purge_journal(T0 - 90 * DAY).await.unwrap(), 12_000);
    assert_eq!(all_pages(&s, 1, query(0, i64::MAX, 1000)).await.0.len(), 1);
    assert_eq!(all_pages(&s, 2, query(0, i64::MAX, 1000)).await.0.len(), 1);
    assert_eq!(s.purge_journal(T0 - 90 * DAY).await.unwrap(), 0);
}

async fn the_writer_writes_in_batches_and_counts(s: Store) {
    let config = JournalConfig {
        max_batch_rows: 7,
        ..JournalConfig::default()
    };
    let journal = Journal::spawn(s.clone(), &config);
    for i in 0..100 {
        journal.record(request(1, T0 + i, &format!("r-{i}")));
    }
    tokio::time::timeout(PATIENCE, journal.flushed())
        .await
        .expect("written");
    let stats = journal.stats();
    assert_eq!(
        (stats.recorded, stats.written, stats.dropped, stats.queued),
        (100, 100, 0, 0)
    );
    assert_eq!(all_pages(&s, 1, query(T0, T0 + 100, 1000)).await.0.len(), 100);
    journal.close().await;
    // Closed: rows are dropped and counted, never written.
    journal.record(request(1, T0, "late"));
    assert_eq!(journal.stats().dropped, 1);
}

on_both_backends!(
    every_kind_round_trips,
    pages_cross_equal_timestamps_without_loss_or_repeat,
    ten_years_of_rows_come_in_pages_of_at_most_the_limit,
    a_customer_timeline_holds_only_rows_inside_the_link_periods,
    rows_older_than_the_retention_are_purged,
    the_writer_writes_in_batches_and_counts,
);

#[test]
fn page_tokens_round_trip_and_junk_is_refused() {
    for cursor in [
        JournalCursor { at_ms: T0, id: 1 },
        JournalCursor {
            at_ms: -5,
            id: i64::MAX,
        },
        JournalCursor { at_ms: 0, id: 0 },
    ] {
        let token = cursor.to_token();
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "URL-safe: {token}");
        assert_eq!(JournalCursor::from_token(&token).unwrap(), cursor);
    }
    let good = JournalCursor { at_ms: T0, id: 1 }.to_token();
    for junk in [
        "",
        "j1",
        "x1",
        "j1zz",
        &good[..good.len() - 1],
        &format!("{good}0"),
        &good.replace("j1", "j2"),
    ] {
        let e = JournalCursor::from_token(junk).expect_err(junk);
        assert!(matches!(e, StoreError::Invalid { what: "page token", .. }), "{e:?}");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}

/// A queue of 10 and a database that never answers in time: rows beyond 10 are dropped and
/// counted, the request path never waits, and nothing is written twice when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_drops_and_counts_beyond_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let s = Store::connect(&url).await.unwrap();
    // Hold SQLite's write lock from another connection so the writer's batch cannot commit.
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.unwrap();
    let config = JournalConfig {
        max_queued_rows: 10,
        max_batch_rows: 4,
        ..JournalConfig::default()
    };
    let journal = Journal::spawn(s.clone(), &config);
    let started = std::time::Instant::now();
    for i in 0..1000 {
        journal.record(request(1, T0 + i, &format!("r-{i}")));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "record never waits");
    let stats = journal.stats();
    assert_eq!(
        (stats.recorded, stats.dropped, stats.queued),
        (1000, 990, 10),
        "{stats:?}"
    );
    assert_eq!(stats.written, 0);
    tokio::time::timeout(PATIENCE, journal.failed_writes(1))
        .await
        .expect("the locked database refuses the batch");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    tokio::time::timeout(PATIENCE, journal.written(10))
        .await
        .expect("the queued rows are written");
    let stats = journal.stats();
    assert_eq!((stats.written, stats.queued, stats.dropped), (10, 0, 990));
    assert_eq!(all_pages(&s, 1, query(T0, T0 + 1000, 1000)).await.0.len(), 10);
    journal.close().await;
    s.close().await;
}

/// The database refuses the batch (the file is capped, as a full disk caps it): the writer
/// keeps it, and writes it once there is room again, without losing or repeating a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_survives_a_full_database_and_writes_the_batch_later() {
    let dir = tempfile::tempdir().unwrap();
    let s = two_backends::sqlite_on_a_small_disk(dir.path()).await;
    // Fill the file with rows that are old enough to purge.
    let filler = |i: i64| JournalEntry {
        what: Interaction::Request(RequestRecord {
            request_payload: Some(vec![7u8; 8 * 1024]),
            ..match request(9, 0, "filler").what {
                Interaction::Request(r) => r,
                _ => unreachable!(),
            }
        }),
        ..request(9, T0 - 100 * DAY + i, "filler")
    };
    let mut i = 0;
    let full = loop {
        match s.journal_append(&[filler(i)]).await {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
        assert!(i < 1000, "the cap never bit");
    };
    assert!(full.to_string().contains("full"), "{full}");

    let journal = Journal::spawn(s.clone(), &JournalConfig::default());
    let rows: Vec<JournalEntry> = (0..50)
        .map(|n| JournalEntry {
            what: Interaction::Request(RequestRecord {
                request_payload: Some(vec![1u8; 512]),
                ..match request(1, 0, "x").what {
                    Interaction::Request(r) => r,
                    _ => unreachable!(),
                }
            }),
            ..request(1, T0 + n, &format!("r-{n}"))
        })
        .collect();
    for row in rows {
        journal.record(row);
    }
    // The writer tries, fails, and keeps the rows queued.
    tokio::time::timeout(PATIENCE, journal.failed_writes(1))
        .await
        .expect("the full database refuses the batch");
    assert_eq!((journal.stats().written, journal.stats().queued), (0, 50));
    // Room comes back: the purge deletes the old rows; the writer's next try succeeds.
    assert!(s.purge_journal(T0 - 90 * DAY).await.unwrap() > 0);
    tokio::time::timeout(PATIENCE, journal.written(50))
        .await
        .expect("the batch is written once there is room");
    let stats = journal.stats();
    assert_eq!((stats.written, stats.dropped, stats.queued), (50, 0, 0));
    let (all, _) = all_pages(&s, 1, query(T0, T0 + 100, 1000)).await;
    assert_eq!(all.len(), 50, "each row once");
    journal.close().await;
    s.close().await;
}

use sqlx::Connection as _;
