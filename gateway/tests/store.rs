//! The storage suite: every case runs on SQLite (a file in a temporary directory) and on
//! PostgreSQL (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, each test
//! in its own fresh schema, dropped afterwards). PostgreSQL being unreachable fails the
//! PostgreSQL half; it is never skipped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::store::{
    Appended, Backend, Claim, ConnectionChange, ConnectionId, LedgerKey, NewConnection, NewEvent, RequestFingerprint,
    Store, StoreError,
};
use proto::Vin;
use sqlx::Connection;
use tokio::sync::Barrier;

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

mod two_backends;
use two_backends::{Db, on_sqlite};

// The cases, by what they exercise, in store/ (the crate root is this file, so the paths are
// spelled out); each case named below runs on both backends.
#[path = "store/connections.rs"]
mod connections;
#[path = "store/events.rs"]
mod events;
#[path = "store/ledger.rs"]
mod ledger;
#[path = "store/revocations.rs"]
mod revocations;
#[path = "store/sqlite_only.rs"]
mod sqlite_only;
use connections::*;
use events::*;
use ledger::*;
use revocations::*;

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
    a_later_revocation_moves_the_cut_off_and_an_earlier_one_changes_nothing,
    events_last_sequences_are_read_for_any_number_of_cars,
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

/// What each of `tasks` returned, in order.
async fn outputs<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}
