//! The storage suite: every case runs on SQLite (a file in a temporary directory) and on
//! PostgreSQL (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, each test
//! in its own fresh schema, dropped afterwards). PostgreSQL being unreachable fails the
//! PostgreSQL half; it is never skipped.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use gateway::store::{
    Appended, Backend, Claim, ConnectionChange, ConnectionId, LedgerKey, NewConnection, NewEvent, RequestFingerprint,
    Store, StoreError, StoreOptions,
};
use proto::Vin;
use sqlx::Connection;
use tokio::sync::Barrier;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// A fixed "now" (unix ms); tests move time by passing other values, never by sleeping.
const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 30_000;
const RETENTION: i64 = 24 * 3600 * 1000;

// ---------------------------------------------------------------------------------------------
// Harness

/// Appends with no quota on pending events, returning the sequence.
async fn append(store: &Store, event: &NewEvent) -> Result<u64, StoreError> {
    match store.append_event(event, u64::MAX).await? {
        Appended::Stored(sequence) => Ok(sequence),
        Appended::Full { pending } => panic!("no quota was set, yet {pending} events are pending"),
    }
}

/// One test's database: a store on it, and its URL to open more stores (more "nodes") on it.
struct Db {
    store: Store,
    url: String,
}

impl Db {
    /// Another pool on the same database, as a second gateway node would have.
    async fn another_node(&self) -> Store {
        Store::connect(&self.url)
            .await
            .expect("second store on the same database")
    }
}

async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}/state/gateway.db", dir.path().display());
    run_case(url, Backend::Sqlite, case).await;
}

/// Connects a store to `url` (which must be on `backend`), runs `case` on it, closes it.
async fn run_case<F, Fut>(url: String, backend: Backend, case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = Store::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(store.backend(), backend);
    case(Db {
        store: store.clone(),
        url,
    })
    .await;
    store.close().await;
}

fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

fn unique_schema() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "store_test_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// `url` with `search_path` set to `schema` for every connection.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = postgres_url();
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} is not reachable ({e}); the PostgreSQL half of the store suite needs it \
             (set TEST_POSTGRES_URL, or start it: pg_ctlcluster <version> main start)",
            gateway::store::redact_url(&base)
        )
    });
    let schema = unique_schema();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .expect("create schema");
    let url = with_search_path(&base, &schema);

    let outcome = AssertUnwindSafe(run_case(url, Backend::Postgres, case))
        .catch_unwind()
        .await;

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("drop schema");
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs each named `async fn(Db)` as two tests: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::on_sqlite(super::$case).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::on_postgres(super::$case).await
                }
            )+
        }
    };
}

on_both_backends!(
    connect_migrates_idempotently_and_pings,
    an_unreachable_database_fails_fast_naming_it_without_password,
    connections_are_listed_newest_first_and_closed_once,
    closing_a_nodes_open_connections_spares_other_nodes,
    ledger_first_claim_is_fresh_then_completion_is_replayed,
    ledger_refuses_a_key_reused_for_another_request,
    ledger_live_lease_is_in_flight_for_any_owner,
    ledger_expired_lease_is_taken_over_and_old_owner_cannot_complete,
    ledger_expired_record_behaves_as_absent,
    ledger_release_only_by_owner_and_never_a_stored_response,
    ledger_purge_deletes_only_expired_records,
    ledger_concurrent_claims_of_a_new_key_give_exactly_one_fresh,
    ledger_concurrent_take_overs_give_exactly_one_fresh,
    events_are_sequenced_from_one_per_vin_and_idempotent,
    events_concurrent_appends_are_gapless,
    events_concurrent_duplicates_are_stored_once_without_gaps,
    events_waiting_for_one_car_are_capped_and_a_repeat_is_still_answered,
    events_acks_of_many_cars_are_written_at_once,
    old_closed_connections_are_purged_and_open_ones_stay,
    events_acks_are_cumulative_and_expired_events_are_not_delivered,
    ledger_a_restarted_node_frees_its_predecessors_claims_only,
    connections_recorded_in_one_batch_open_and_close_in_order,
    many_concurrent_writes_all_commit,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// `store.ledger_claim` with the usual lease and retention.
async fn claim(store: &Store, key: &LedgerKey, request: &RequestFingerprint, owner: &str, now: i64) -> Claim {
    store
        .ledger_claim(key, request, owner, now, LEASE, RETENTION)
        .await
        .unwrap()
}

/// Key `pay-1` of car 1, claimed (fresh) by `gw-a` at [`T0`] for a payment for lot 42.
async fn claimed_by_gw_a(store: &Store) -> (LedgerKey, RequestFingerprint) {
    let (k, req) = (key(1, "pay-1"), pay(b"lot=42"));
    assert_eq!(claim(store, &k, &req, "gw-a", T0).await, Claim::Fresh);
    (k, req)
}

fn vin(n: u32) -> Vin {
    Vin::parse(&format!("LSVAU2180N2{n:06}")).unwrap()
}

fn key(n: u32, idempotency_key: &str) -> LedgerKey {
    LedgerKey {
        vin: vin(n),
        idempotency_key: idempotency_key.to_owned(),
    }
}

fn pay(payload: &[u8]) -> RequestFingerprint {
    RequestFingerprint::of("/parking.v1.ParkingPayment/Pay", payload)
}

fn connection(vin_n: u32, node: &str, connected_at_ms: i64) -> NewConnection {
    NewConnection {
        vin: vin(vin_n),
        node: node.to_owned(),
        cert_fingerprint: format!("sha256:{vin_n:04x}"),
        agent_version: Some("0.1.0".to_owned()),
        remote_addr: "203.0.113.7:51234".to_owned(),
        connected_at_ms,
    }
}

fn event(vin_n: u32, service: &str, event_id: &str, created_at_ms: i64, expires_at_ms: i64) -> NewEvent {
    NewEvent {
        vin: vin(vin_n),
        service: service.to_owned(),
        kind: "session.ended".to_owned(),
        payload: format!("{{\"id\":\"{event_id}\"}}").into_bytes(),
        event_id: event_id.to_owned(),
        created_at_ms,
        expires_at_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting

async fn connect_migrates_idempotently_and_pings(db: Db) {
    db.store.ping().await.unwrap();
    // A second connect runs the (already applied) migrations again: a no-op.
    let again = db.another_node().await;
    again.ping().await.unwrap();
    assert_eq!(again.backend(), db.store.backend());
    again.close().await;
}

async fn an_unreachable_database_fails_fast_naming_it_without_password(db: Db) {
    let (url, named) = match db.store.backend() {
        // Nothing listens on port 1.
        Backend::Postgres => ("postgres://gateway:hunter2@127.0.0.1:1/test".to_owned(), "127.0.0.1:1"),
        // A directory cannot be created under a regular file.
        Backend::Sqlite => {
            let file = tempfile::NamedTempFile::new().unwrap();
            let url = format!("sqlite://{}/sub/gateway.db", file.path().display());
            let started = Instant::now();
            let err = Store::connect(&url).await.expect_err("a database under a regular file");
            assert!(started.elapsed() < Duration::from_secs(10));
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{}/sub/gateway.db", file.path().display())),
                "{msg}"
            );
            assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
            return;
        }
    };
    let started = Instant::now();
    let err = Store::connect(&url).await.expect_err("nothing listens on port 1");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(took < Duration::from_secs(10), "took {took:?}: {msg}");
    assert!(msg.contains(named), "{msg}");
    assert!(msg.contains("gateway:***@"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");

    let err = Store::connect("mysql://root:pw@localhost/gw")
        .await
        .expect_err("unsupported");
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Sessions

async fn connections_are_listed_newest_first_and_closed_once(db: Db) {
    let s = &db.store;
    let first = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    let second = s.open_connection(&connection(1, "node-a", T0 + 1_000)).await.unwrap();
    let mut third = connection(1, "node-b", T0 + 2_000);
    third.agent_version = None;
    let third = s.open_connection(&third).await.unwrap();
    let other_car = s.open_connection(&connection(2, "node-a", T0 + 500)).await.unwrap();
    assert!(first < second && second < third);

    s.close_connection(first, "kicked", T0 + 999).await.unwrap();
    // Closing again keeps the first time and reason.
    s.close_connection(first, "keep_alive_timeout", T0 + 5_000)
        .await
        .unwrap();
    let err = s
        .close_connection(ConnectionId(i64::MAX), "x", T0)
        .await
        .expect_err("unknown id");
    assert!(matches!(err, StoreError::UnknownConnection(_)), "{err:?}");

    let all = s.connections_of(&vin(1), 10).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![third, second, first]);
    let newest = &all[0];
    assert_eq!(newest.connection.vin, vin(1));
    assert_eq!(newest.connection.node, "node-b");
    assert_eq!(newest.connection.cert_fingerprint, "sha256:0001");
    assert_eq!(newest.connection.agent_version, None);
    assert_eq!(newest.connection.remote_addr, "203.0.113.7:51234");
    assert_eq!(newest.connection.connected_at_ms, T0 + 2_000);
    assert_eq!(
        (newest.disconnected_at_ms, newest.disconnect_reason.as_deref()),
        (None, None)
    );
    let closed = &all[2];
    assert_eq!(closed.connection.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        (closed.disconnected_at_ms, closed.disconnect_reason.as_deref()),
        (Some(T0 + 999), Some("kicked"))
    );

    let two = s.connections_of(&vin(1), 2).await.unwrap();
    assert_eq!(two.iter().map(|r| r.id).collect::<Vec<_>>(), vec![third, second]);
    assert!(s.connections_of(&vin(3), 10).await.unwrap().is_empty());

    let open = s.open_connections().await.unwrap();
    assert_eq!(
        open.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![other_car, second, third]
    );
}

async fn closing_a_nodes_open_connections_spares_other_nodes(db: Db) {
    let s = &db.store;
    let a1 = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    let a2 = s.open_connection(&connection(2, "node-a", T0 + 1)).await.unwrap();
    let a_closed = s.open_connection(&connection(3, "node-a", T0 + 2)).await.unwrap();
    s.close_connection(a_closed, "client_disconnect", T0 + 3).await.unwrap();
    let b1 = s.open_connection(&connection(4, "node-b", T0 + 4)).await.unwrap();

    assert_eq!(
        s.close_open_connections_of_node("node-a", "node_restarted", T0 + 10)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.close_open_connections_of_node("node-a", "node_restarted", T0 + 20)
            .await
            .unwrap(),
        0
    );

    let open = s.open_connections().await.unwrap();
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b1]);
    for (n, id) in [(1, a1), (2, a2)] {
        let r = &s.connections_of(&vin(n), 1).await.unwrap()[0];
        assert_eq!(r.id, id);
        assert_eq!(
            (r.disconnected_at_ms, r.disconnect_reason.as_deref()),
            (Some(T0 + 10), Some("node_restarted"))
        );
    }
    let r = &s.connections_of(&vin(3), 1).await.unwrap()[0];
    assert_eq!(
        (r.disconnected_at_ms, r.disconnect_reason.as_deref()),
        (Some(T0 + 3), Some("client_disconnect"))
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotency ledger

async fn ledger_first_claim_is_fresh_then_completion_is_replayed(db: Db) {
    let s = &db.store;
    let k = key(1, "pay-1");
    let req = pay(b"lot=42;minutes=60");
    assert_eq!(claim(s, &k, &req, "gw-a", T0).await, Claim::Fresh);
    s.ledger_complete(&k, "gw-a", b"receipt-1", T0 + 10).await.unwrap();
    // Same owner, another owner, later: all get the stored response.
    for owner in ["gw-a", "gw-b"] {
        assert_eq!(
            claim(s, &k, &req, owner, T0 + 20).await,
            Claim::Replay(b"receipt-1".to_vec())
        );
    }
    assert_eq!(
        claim(s, &k, &req, "gw-c", T0 + RETENTION - 1).await,
        Claim::Replay(b"receipt-1".to_vec())
    );
    // A second completion does not overwrite the first response.
    let err = s
        .ledger_complete(&k, "gw-a", b"receipt-2", T0 + 30)
        .await
        .expect_err("already completed");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    // Keys are per car, and the empty response is a response.
    let other_car = key(2, "pay-1");
    assert_eq!(claim(s, &other_car, &req, "gw-a", T0).await, Claim::Fresh);
    s.ledger_complete(&other_car, "gw-a", b"", T0 + 1).await.unwrap();
    assert_eq!(claim(s, &other_car, &req, "gw-a", T0 + 2).await, Claim::Replay(vec![]));
}

async fn ledger_refuses_a_key_reused_for_another_request(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    let original = Claim::Mismatch {
        method: "/parking.v1.ParkingPayment/Pay".to_owned(),
    };
    // In flight: another payload, another method.
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-a", T0 + 1).await, original);
    let other_method = RequestFingerprint::of("/parking.v1.ParkingPayment/Refund", b"lot=42");
    assert_eq!(claim(s, &k, &other_method, "gw-b", T0 + 1).await, original);
    // Completed: still refused, not replayed.
    s.ledger_complete(&k, "gw-a", b"receipt", T0 + 2).await.unwrap();
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-a", T0 + 3).await, original);
    // An abandoned claim whose lease is long gone is still not taken over by another request.
    let k2 = key(1, "pay-2");
    assert_eq!(claim(s, &k2, &req, "gw-a", T0).await, Claim::Fresh);
    assert_eq!(claim(s, &k2, &other_method, "gw-b", T0 + 10 * LEASE).await, original);
    assert_eq!(claim(s, &k2, &req, "gw-b", T0 + 10 * LEASE).await, Claim::Fresh);
}

async fn ledger_live_lease_is_in_flight_for_any_owner(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + 1).await, Claim::InFlight);
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE - 1).await, Claim::InFlight);
    // Another process (another node, or this node restarted) while the lease is live: it may
    // still be calling the partner, so the retry waits instead of calling a second time.
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + LEASE - 1).await, Claim::InFlight);
    // The lease is the claimer's: a retry asking with a shorter lease does not cut it short.
    assert_eq!(
        s.ledger_claim(&k, &req, "gw-b", T0 + LEASE - 1, 1, RETENTION)
            .await
            .unwrap(),
        Claim::InFlight
    );
    // The same owner after its own lease ran out gets it back.
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE).await, Claim::Fresh);
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE + 1).await, Claim::InFlight);
    s.ledger_complete(&k, "gw-a", b"ok", T0 + LEASE + 2).await.unwrap();
    assert_eq!(
        claim(s, &k, &req, "gw-b", T0 + LEASE + 3).await,
        Claim::Replay(b"ok".to_vec())
    );
    // A claimer with a long call holds the key that long, whatever lease the retries ask for.
    let long = key(1, "pay-long");
    assert_eq!(
        s.ledger_claim(&long, &req, "gw-a", T0, 3 * LEASE, RETENTION)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(claim(s, &long, &req, "gw-b", T0 + 3 * LEASE - 1).await, Claim::InFlight);
    assert_eq!(claim(s, &long, &req, "gw-b", T0 + 3 * LEASE).await, Claim::Fresh);
}

async fn ledger_expired_lease_is_taken_over_and_old_owner_cannot_complete(db: Db) {
    let s = &db.store;
    // gw-a claims, then its process is killed.
    let (k, req) = claimed_by_gw_a(s).await;
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + LEASE).await, Claim::Fresh);
    // gw-b now holds a live lease of its own.
    assert_eq!(claim(s, &k, &req, "gw-c", T0 + LEASE + 1).await, Claim::InFlight);
    // The old owner can neither complete nor release the claim it lost.
    let err = s
        .ledger_complete(&k, "gw-a", b"late", T0 + LEASE + 2)
        .await
        .expect_err("lost the claim");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pay-1") && err.to_string().contains("gw-a"),
        "{err}"
    );
    s.ledger_release(&k, "gw-a").await.unwrap();
    assert_eq!(claim(s, &k, &req, "gw-c", T0 + LEASE + 3).await, Claim::InFlight);
    s.ledger_complete(&k, "gw-b", b"receipt-b", T0 + LEASE + 4)
        .await
        .unwrap();
    assert_eq!(
        claim(s, &k, &req, "gw-a", T0 + LEASE + 5).await,
        Claim::Replay(b"receipt-b".to_vec())
    );
    // The retention period counts from the first claim, not the take-over.
    assert_eq!(s.ledger_purge(T0 + RETENTION).await.unwrap(), 1);
}

async fn ledger_expired_record_behaves_as_absent(db: Db) {
    let s = &db.store;
    let k = key(1, "pay-1");
    let retention = 60_000;
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-a", T0, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    s.ledger_complete(&k, "gw-a", b"ra", T0 + 1).await.unwrap();
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-a", T0 + retention - 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::Replay(b"ra".to_vec())
    );
    // Expired (not yet purged): neither replayed nor a mismatch; the key starts over.
    let later = T0 + retention;
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-b", later, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-b", later + 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-b", later + 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::Mismatch {
            method: "/parking.v1.ParkingPayment/Pay".to_owned()
        }
    );
    // The old owner cannot complete the new claim.
    assert!(s.ledger_complete(&k, "gw-a", b"stale", later + 2).await.is_err());
    s.ledger_complete(&k, "gw-b", b"rb", later + 2).await.unwrap();
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-a", later + 3, LEASE, retention)
            .await
            .unwrap(),
        Claim::Replay(b"rb".to_vec())
    );
    // An expired claim that was never completed is replaced too.
    let k2 = key(1, "pay-2");
    assert_eq!(
        s.ledger_claim(&k2, &pay(b"a"), "gw-a", T0, 10 * retention, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        s.ledger_claim(&k2, &pay(b"z"), "gw-b", T0 + retention, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
}

async fn ledger_release_only_by_owner_and_never_a_stored_response(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    // Someone else's release does nothing.
    s.ledger_release(&k, "gw-b").await.unwrap();
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + 1).await, Claim::InFlight);
    // The owner's release lets the next retry call the partner again, even with another payload.
    s.ledger_release(&k, "gw-a").await.unwrap();
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-b", T0 + 2).await, Claim::Fresh);
    let err = s.ledger_complete(&k, "gw-a", b"x", T0 + 3).await.expect_err("released");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    // A completed record is not released.
    s.ledger_complete(&k, "gw-b", b"done", T0 + 3).await.unwrap();
    s.ledger_release(&k, "gw-b").await.unwrap();
    assert_eq!(
        claim(s, &k, &pay(b"lot=43"), "gw-c", T0 + 4).await,
        Claim::Replay(b"done".to_vec())
    );
    // Releasing a key nobody claimed is fine.
    s.ledger_release(&key(9, "never"), "gw-a").await.unwrap();
}

async fn ledger_purge_deletes_only_expired_records(db: Db) {
    let s = &db.store;
    let req = pay(b"x");
    for (n, retention) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let k = key(n, "k");
        assert_eq!(
            s.ledger_claim(&k, &req, "gw-a", T0, LEASE, retention).await.unwrap(),
            Claim::Fresh
        );
    }
    s.ledger_complete(&key(1, "k"), "gw-a", b"r1", T0 + 1).await.unwrap();
    assert_eq!(s.ledger_purge(T0 + 999).await.unwrap(), 0);
    assert_eq!(s.ledger_purge(T0 + 2_000).await.unwrap(), 2); // expires_at <= now, completed or not
    assert_eq!(s.ledger_purge(T0 + 2_000).await.unwrap(), 0);
    assert_eq!(
        s.ledger_claim(&key(3, "k"), &req, "gw-a", T0 + 2_001, LEASE, 3_000)
            .await
            .unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        s.ledger_claim(&key(1, "k"), &req, "gw-b", T0 + 2_001, LEASE, 3_000)
            .await
            .unwrap(),
        Claim::Fresh
    );
}

/// Runs `n` claims of `k` at once, task `i` on `stores[i % len]` as owner `owner(i)`, at `now`.
async fn concurrent_claims(
    stores: &[Store],
    n: usize,
    k: &LedgerKey,
    owner: impl Fn(usize) -> String,
    now: i64,
) -> Vec<Claim> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, k, owner, barrier) = (stores[i % stores.len()].clone(), k.clone(), owner(i), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .ledger_claim(&k, &pay(b"lot=42"), &owner, now, LEASE, RETENTION)
                    .await
                    .unwrap()
            })
        })
        .collect();
    outputs(tasks).await
}

/// What each of `tasks` returned, in order.
async fn outputs<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

fn count(claims: &[Claim], want: &Claim) -> usize {
    claims.iter().filter(|c| *c == want).count()
}

async fn ledger_concurrent_claims_of_a_new_key_give_exactly_one_fresh(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    for round in 0..5 {
        // One process: retries of one request arriving together.
        let k = key(1, &format!("same-owner-{round}"));
        let claims = concurrent_claims(&stores[..1], 16, &k, |_| "gw-a".to_owned(), T0).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
        // Two nodes sharing the database, every caller its own process id.
        let k = key(2, &format!("many-owners-{round}"));
        let claims = concurrent_claims(&stores, 16, &k, |i| format!("gw-{i}"), T0).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
    }
    node_b.close().await;
}

async fn ledger_concurrent_take_overs_give_exactly_one_fresh(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    for round in 0..5 {
        let k = key(1, &format!("take-over-{round}"));
        assert_eq!(
            db.store
                .ledger_claim(&k, &pay(b"lot=42"), "dead", T0, LEASE, RETENTION)
                .await
                .unwrap(),
            Claim::Fresh
        );
        let claims = concurrent_claims(&stores, 16, &k, |i| format!("gw-{i}"), T0 + LEASE).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
        let err = db
            .store
            .ledger_complete(&k, "dead", b"late", T0 + LEASE)
            .await
            .expect_err("taken over");
        assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    }
    node_b.close().await;
}

// ---------------------------------------------------------------------------------------------
// Events

async fn events_are_sequenced_from_one_per_vin_and_idempotent(db: Db) {
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
async fn concurrent_appends(stores: &[Store], events: Vec<NewEvent>) -> Vec<u64> {
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

async fn events_concurrent_appends_are_gapless(db: Db) {
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

async fn events_concurrent_duplicates_are_stored_once_without_gaps(db: Db) {
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

async fn events_acks_are_cumulative_and_expired_events_are_not_delivered(db: Db) {
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

async fn events_waiting_for_one_car_are_capped_and_a_repeat_is_still_answered(db: Db) {
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

async fn events_acks_of_many_cars_are_written_at_once(db: Db) {
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

async fn old_closed_connections_are_purged_and_open_ones_stay(db: Db) {
    let s = &db.store;
    let old = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    s.close_connection(old, "clean", T0 + 10).await.unwrap();
    let recent = s.open_connection(&connection(1, "node-a", T0 + 20)).await.unwrap();
    s.close_connection(recent, "clean", T0 + 1_000).await.unwrap();
    let open = s.open_connection(&connection(1, "node-a", T0 + 30)).await.unwrap();
    assert_eq!(s.purge_connections(T0 + 500).await.unwrap(), 1);
    let left: Vec<_> = s
        .connections_of(&vin(1), 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec![open, recent]);
}

// ---------------------------------------------------------------------------------------------
// SQLite only

/// After "database or disk is full", the next writes succeed as soon as there is room again,
/// without a restart. The database file is capped (`PRAGMA max_page_count`, the way a full
/// disk caps it); room comes back when old data is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recovers_by_itself_after_the_disk_was_full() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("full.db").display());
    let options = StoreOptions {
        sqlite_max_pages: Some(64),
        ..StoreOptions::default()
    };
    let s = Store::connect_with(&url, options).await.unwrap();
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

#[test]
fn request_fingerprint_is_the_payload_sha256() {
    let f = RequestFingerprint::of("/m", b"abc");
    assert_eq!(f.method, "/m");
    let hex: String = f.payload_sha256.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

async fn ledger_a_restarted_node_frees_its_predecessors_claims_only(db: Db) {
    let s = &db.store;
    let req = pay(b"lot=42");
    // gw-1's first process claims two keys and is killed; gw-10 (another node) holds a third.
    for (k, owner) in [
        (key(1, "a"), "gw-1/111"),
        (key(1, "b"), "gw-1/111"),
        (key(1, "c"), "gw-10/7"),
    ] {
        assert_eq!(claim(s, &k, &req, owner, T0).await, Claim::Fresh);
    }
    s.ledger_complete(&key(1, "b"), "gw-1/111", b"done", T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        s.ledger_abandon_claims("gw-1/").await.unwrap(),
        1,
        "only the uncompleted claim of gw-1"
    );
    // Well inside the old lease, the restarted gw-1 takes its own stale claim over...
    assert_eq!(claim(s, &key(1, "a"), &req, "gw-1/222", T0 + 2).await, Claim::Fresh);
    // ...the completed one is still replayed, and gw-10's live claim is untouched.
    assert_eq!(
        claim(s, &key(1, "b"), &req, "gw-1/222", T0 + 3).await,
        Claim::Replay(b"done".to_vec())
    );
    assert_eq!(claim(s, &key(1, "c"), &req, "gw-1/222", T0 + 4).await, Claim::InFlight);
}

async fn connections_recorded_in_one_batch_open_and_close_in_order(db: Db) {
    let s = &db.store;
    let close = |conn: u64, id: Option<ConnectionId>, reason: &str, at_ms: i64| ConnectionChange::Close {
        conn,
        id,
        reason: reason.into(),
        at_ms,
    };
    let opened = s
        .record_connections(vec![
            ConnectionChange::Open {
                conn: 1,
                connection: connection(1, "node-a", T0),
            },
            ConnectionChange::Open {
                conn: 2,
                connection: connection(2, "node-a", T0 + 1),
            },
            // Opened and closed within the batch: the close finds the id the open got.
            close(1, None, "clean", T0 + 2),
            // Never opened: skipped, and the rest is still recorded.
            close(99, None, "clean", T0 + 3),
        ])
        .await
        .unwrap();
    assert_eq!(opened.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2]);
    let first = &s.connections_of(&vin(1), 1).await.unwrap()[0];
    assert_eq!(
        (first.id, first.disconnect_reason.as_deref()),
        (opened[0].1, Some("clean"))
    );
    assert_eq!(s.open_connections().await.unwrap().len(), 1);
    // A later batch closes by the id the first one returned.
    s.record_connections(vec![close(2, Some(opened[1].1), "keep-alive timeout", T0 + 10)])
        .await
        .unwrap();
    assert!(s.open_connections().await.unwrap().is_empty());
}

async fn many_concurrent_writes_all_commit(db: Db) {
    // Hundreds of writes in flight at once: on SQLite they share group commits; every one of
    // them must be durable and visible once it returned.
    let n = 400;
    let claims = futures::future::join_all((0..n).map(|i| {
        let s = db.store.clone();
        async move {
            let k = key(i % 7, &format!("k-{i}"));
            let claimed = s.ledger_claim(&k, &pay(b"x"), "gw-1/1", T0, LEASE, RETENTION).await;
            let completed = s
                .ledger_complete(&k, "gw-1/1", format!("r-{i}").as_bytes(), T0 + 1)
                .await;
            (claimed.unwrap(), completed.is_ok())
        }
    }))
    .await;
    assert!(claims.iter().all(|c| *c == (Claim::Fresh, true)));
    let again = db.another_node().await;
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            again
                .ledger_claim(
                    &key(i % 7, &format!("k-{i}")),
                    &pay(b"x"),
                    "gw-2/1",
                    T0 + 2,
                    LEASE,
                    RETENTION
                )
                .await
                .unwrap(),
            Claim::Replay(format!("r-{i}").into_bytes())
        );
    }
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_failing_write_does_not_take_its_batch_down() {
    on_sqlite(|db| async move {
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
