//! Exactly-once at the gateway: the idempotency ledger in front of partner calls.
//!
//! The first completed response for (VIN, idempotency key) is stored and replayed for every
//! retry without calling the partner again; the same key with another method or payload is
//! refused; a retry while the first attempt is in flight waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use proto::Vin;
use proto::vehicle::v1::{Code, Response};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::store::{Claim, LedgerKey, RequestFingerprint, Store, StoreError};

/// How often a retry re-checks a key held by an attempt in another gateway process.
const REMOTE_POLL: Duration = Duration::from_millis(100);
/// Extra lease beyond the call's deadline, so a slow-but-live attempt is never taken over.
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// What a request may do after consulting the ledger.
pub enum Admission {
    /// Call the partner, then [`Ledger::finish`].
    Proceed(LedgerKey),
    /// Answer with this response and do not call the partner.
    Answer(Response),
}

/// The ledger, with in-process waiting for attempts in flight.
pub struct Ledger {
    store: Store,
    owner: String,
    retention: Duration,
    in_flight: Mutex<HashMap<LedgerKey, Arc<Notify>>>,
    /// Outcomes being recorded behind their answers.
    writes: TaskTracker,
}

impl Ledger {
    /// A ledger whose claims are made as `owner` (unique per gateway process).
    pub fn new(store: Store, owner: String, retention: Duration) -> Ledger {
        Ledger {
            store,
            owner,
            retention,
            in_flight: Mutex::new(HashMap::new()),
            writes: TaskTracker::new(),
        }
    }

    /// Decides whether this attempt calls the partner, waiting out one already in flight.
    pub async fn admit(
        &self,
        vin: &Vin,
        idempotency_key: &str,
        method: &str,
        payload: &[u8],
        request_id: &str,
        deadline: Instant,
    ) -> Admission {
        let key = LedgerKey {
            vin: vin.clone(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let request = RequestFingerprint::of(method, payload);
        loop {
            let lease = deadline.saturating_duration_since(Instant::now()) + LEASE_GRACE;
            // Register interest before claiming, so a finish between the two is not missed.
            let notify = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned();
            let notified = notify.as_ref().map(|n| n.notified());
            let claim = self
                .store
                .ledger_claim(
                    &key,
                    &request,
                    &self.owner,
                    now_ms(),
                    lease.as_millis() as i64,
                    self.retention.as_millis() as i64,
                )
                .await;
            match claim {
                Ok(Claim::Fresh) => {
                    self.in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(key.clone())
                        .or_default();
                    return Admission::Proceed(key);
                }
                Ok(Claim::Replay(bytes)) => {
                    debug!(%vin, idempotency_key, "replaying the stored response");
                    return Admission::Answer(replayed(&bytes, request_id));
                }
                Ok(Claim::Mismatch { method: first }) => {
                    return Admission::Answer(Response::error(
                        request_id,
                        Code::FailedPrecondition,
                        format!(
                            "idempotency key {idempotency_key:?} was already used for a different request ({first} with another payload or method)"
                        ),
                    ));
                }
                Ok(Claim::InFlight) => {
                    let wait = async {
                        match notified {
                            Some(n) => n.await,
                            None => tokio::time::sleep(REMOTE_POLL).await,
                        }
                    };
                    if tokio::time::timeout_at(deadline, wait).await.is_err() {
                        return Admission::Answer(Response::error(
                            request_id,
                            Code::DeadlineExceeded,
                            "an earlier attempt with this idempotency key is still in progress; retry with the same key",
                        ));
                    }
                }
                Err(e) => return Admission::Answer(storage_down(request_id, &e)),
            }
        }
    }

    /// Records the outcome of an admitted attempt and wakes retries waiting for it. Outcomes
    /// that say nothing about the partner's side (unreachable, timed out) are not stored, so
    /// the next retry calls the partner again, with the same key.
    pub async fn finish(&self, key: &LedgerKey, response: &Response) {
        let code = response.status.clone().unwrap_or_default().code();
        let result = if is_final(code) {
            let stored = Response {
                request_id: String::new(),
                ..response.clone()
            };
            self.store
                .ledger_complete(key, &self.owner, &stored.encode_to_vec(), now_ms())
                .await
        } else {
            self.store.ledger_release(key, &self.owner).await
        };
        if let Err(e) = result {
            warn!(vin = %key.vin, error = %e, "idempotency ledger not updated");
        }
        if let Some(n) = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        {
            n.notify_waiters();
        }
    }

    /// [`Ledger::finish`] in the background, so the answer need not wait for the disk. Until
    /// the outcome is recorded the key stays in flight: a retry waits for the record instead
    /// of calling the partner again.
    pub fn finish_later(self: &Arc<Self>, key: LedgerKey, response: Response) {
        let ledger = self.clone();
        self.writes.spawn(async move { ledger.finish(&key, &response).await });
    }

    /// Waits until every outcome handed to [`Ledger::finish_later`] is recorded; for shutdown.
    pub async fn drain(&self) {
        self.writes.close();
        self.writes.wait().await;
    }

    /// Deletes expired entries; returns how many.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        self.store.ledger_purge(now_ms()).await
    }
}

/// Whether a response is the partner's considered answer (stored) or a transient failure.
fn is_final(code: Code) -> bool {
    !matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::ResourceExhausted
    )
}

fn replayed(bytes: &[u8], request_id: &str) -> Response {
    match Response::decode(bytes) {
        Ok(stored) => Response {
            request_id: request_id.to_owned(),
            ..stored
        },
        Err(e) => Response::error(
            request_id,
            Code::DataLoss,
            format!("stored response is unreadable: {e}"),
        ),
    }
}

fn storage_down(request_id: &str, e: &StoreError) -> Response {
    warn!(error = %e, "idempotency ledger unavailable");
    Response::error(
        request_id,
        Code::Unavailable,
        "the gateway's storage is unavailable; retry with the same idempotency key",
    )
}
