//! Answers remembered per (VIN, idempotency key), so that a retried call replays its first
//! answer instead of acting twice.
//!
//! The gateway deduplicates too, but a partner must be safe on its own: the gateway may restart
//! between a call and its retry, or run as several instances.

use std::collections::HashMap;
use std::time::Duration;

use proto::parking::v1::{EndSessionRequest, EndSessionResponse, StartSessionRequest, StartSessionResponse};
use tonic::Status;

/// How long a key answers retries. The gateway retries for minutes at most; a day leaves room
/// for a car that was offline, without keeping keys forever.
pub(crate) const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A successful mutating call: the request that used the key, and the response it got.
///
/// Only successes are remembered: a rejected call changed nothing, so re-evaluating its retry
/// is safe and lets the car recover (for example, end its old session and then retry).
pub(crate) enum Outcome {
    Start(StartSessionRequest, StartSessionResponse),
    End(EndSessionRequest, EndSessionResponse),
}

impl Outcome {
    /// The request and response, if this is a StartSession outcome.
    pub(crate) fn as_start(&self) -> Option<(&StartSessionRequest, &StartSessionResponse)> {
        match self {
            Outcome::Start(request, response) => Some((request, response)),
            Outcome::End(..) => None,
        }
    }

    /// The request and response, if this is an EndSession outcome.
    pub(crate) fn as_end(&self) -> Option<(&EndSessionRequest, &EndSessionResponse)> {
        match self {
            Outcome::End(request, response) => Some((request, response)),
            Outcome::Start(..) => None,
        }
    }
}

/// The remembered outcomes. Keys are scoped by VIN so that two cars choosing the same key can
/// neither collide nor read each other's answers.
#[derive(Default)]
pub(crate) struct IdempotencyStore {
    entries: HashMap<(String, String), Entry>,
}

struct Entry {
    at_unix_ms: i64,
    outcome: Outcome,
}

impl IdempotencyStore {
    /// What `key` answered for `vin`, unless it is unknown or expired.
    pub(crate) fn recall(&self, vin: &str, key: &str, now_unix_ms: i64) -> Option<&Outcome> {
        self.entries
            .get(&(vin.to_owned(), key.to_owned()))
            .filter(|entry| !expired(entry, now_unix_ms))
            .map(|entry| &entry.outcome)
    }

    /// Remembers `outcome` as the answer to `key` for `vin`.
    pub(crate) fn remember(&mut self, vin: &str, key: &str, now_unix_ms: i64, outcome: Outcome) {
        // Expire old keys as new ones arrive: simple, and bounded by one day of traffic.
        self.entries.retain(|_, entry| !expired(entry, now_unix_ms));
        let entry = Entry {
            at_unix_ms: now_unix_ms,
            outcome,
        };
        self.entries.insert((vin.to_owned(), key.to_owned()), entry);
    }
}

fn expired(entry: &Entry, now_unix_ms: i64) -> bool {
    let retention_ms = i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
    now_unix_ms.saturating_sub(entry.at_unix_ms) >= retention_ms
}

/// The answer to a key used for another method or another request: the caller has a bug, and
/// guessing which request it meant could charge the wrong thing.
pub(crate) fn key_reused() -> Status {
    Status::failed_precondition("idempotency key reused with a different request")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_outcome(lot_id: &str) -> Outcome {
        let request = StartSessionRequest {
            lot_id: lot_id.into(),
            plate: "沪A12345".into(),
        };
        Outcome::Start(request, StartSessionResponse::default())
    }

    #[test]
    fn keys_are_per_vin_and_expire() {
        let day_ms = i64::try_from(RETENTION.as_millis()).unwrap();
        let mut store = IdempotencyStore::default();
        store.remember("VIN-A", "k", 0, start_outcome("lot-a"));
        assert!(matches!(store.recall("VIN-A", "k", 1), Some(Outcome::Start(r, _)) if r.lot_id == "lot-a"));
        assert!(store.recall("VIN-B", "k", 1).is_none());
        assert!(store.recall("VIN-A", "k", day_ms).is_none());

        // Remembering prunes expired entries.
        store.remember("VIN-B", "k2", day_ms, start_outcome("lot-b"));
        assert_eq!(store.entries.len(), 1);
    }
}
