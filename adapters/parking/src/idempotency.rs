//! Answers remembered per (VIN, idempotency key), so that a retried call replays its first
//! answer instead of acting twice, across restarts and kill -9.
//!
//! The pattern, in the order every mutating handler of `service.rs` and `refunds.rs` follows
//! it, inside ONE database transaction:
//!
//! 1. **Claim** the key ([`claim`]): insert a row for (VIN, key) with the method and the
//!    encoded request. If a row is already there, the call is a retry: replay the stored
//!    response, or refuse (FAILED_PRECONDITION) if the key was used for another request.
//! 2. **Act**: start the session, charge, refund: write the effect's rows.
//! 3. **Store the answer** ([`answer`]) on the key's row.
//! 4. **Commit.** The effect and its answer become durable together, or not at all.
//!
//! A crash (kill -9, power loss) before the commit leaves no trace: the retry claims the key
//! afresh and acts once. A crash after it leaves both: the retry replays. There is no window in
//! which a charge exists without its answer, which is what made 17 of 120 payments come back
//! NOT_FOUND when the state lived in memory. A call that fails is rolled back with its claim,
//! so only successes are remembered: re-evaluating a rejected call's retry is safe and lets the
//! car recover (for example, end its old session and then retry).
//!
//! The reference adapter's effects are rows in its own database, so the whole call fits in one
//! short transaction. If your effect is a remote call (a payment provider), do not hold a
//! transaction open across it: commit the claim as "in flight" first, call the provider with a
//! key it deduplicates on, then store the answer and commit; a retry that finds the claim in
//! flight after a crash calls the provider again with the same key.
//!
//! Concurrency: the transaction holds SQLite's write lock from its start (`BEGIN IMMEDIATE`),
//! so two copies of one call run one after the other and the second replays. On PostgreSQL
//! the same code is safe because the second INSERT of a primary key waits for the first
//! transaction and then finds its row.
//!
//! The gateway deduplicates too, but a partner must be safe on its own: the gateway may take
//! a claim over after its own crash and call again with the same key.

use std::time::Duration;

use prost::Message;
use sqlx::Row as _;
use tonic::Status;

use crate::store::{WriteTx, unavailable};

/// How long a key answers retries. The gateway retries for minutes at most; a day leaves room
/// for a car that was offline, without keeping keys forever.
pub(crate) const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest idempotency key accepted, in bytes; the gateway's are far shorter.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// Expired keys deleted per claim: pruning keeps pace with new keys without one call paying
/// for a day of backlog.
const PRUNE_PER_CLAIM: i64 = 16;

/// One car's idempotency key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    /// The car, from `x-vehicle-vin`: keys are per car, so two cars choosing the same key can
    /// neither collide nor read each other's answers.
    pub(crate) vin: &'a str,
    /// The key the car sent.
    pub(crate) key: &'a str,
}

/// Claims `key` for `method` with `request` in `tx` (step 1 above).
///
/// `Ok(None)`: the key is this call's; act, then [`answer`] and commit. `Ok(Some(response))`:
/// a retry; return the stored response and do nothing else. Without a key (`None`) every call
/// is fresh.
pub(crate) async fn claim<Resp: Message + Default>(
    tx: &mut WriteTx,
    key: Option<Key<'_>>,
    method: &str,
    request: &impl Message,
    now_unix_ms: i64,
) -> Result<Option<Resp>, Status> {
    let Some(Key { vin, key }) = key else {
        return Ok(None);
    };
    let expired_before = now_unix_ms.saturating_sub(i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX));
    // This key first, if it expired, so that it can be claimed afresh; then a few others.
    sqlx::query("DELETE FROM idempotency_keys WHERE vin = ?1 AND idempotency_key = ?2 AND created_at_unix_ms <= ?3")
        .bind(vin)
        .bind(key)
        .bind(expired_before)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE rowid IN \
         (SELECT rowid FROM idempotency_keys WHERE created_at_unix_ms <= ?1 LIMIT ?2)",
    )
    .bind(expired_before)
    .bind(PRUNE_PER_CLAIM)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;

    let request = request.encode_to_vec();
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (vin, idempotency_key, method, request, response, created_at_unix_ms) \
         VALUES (?1, ?2, ?3, ?4, NULL, ?5) ON CONFLICT (vin, idempotency_key) DO NOTHING",
    )
    .bind(vin)
    .bind(key)
    .bind(method)
    .bind(&request)
    .bind(now_unix_ms)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if claimed == 1 {
        return Ok(None);
    }

    let row =
        sqlx::query("SELECT method, request, response FROM idempotency_keys WHERE vin = ?1 AND idempotency_key = ?2")
            .bind(vin)
            .bind(key)
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
    let (first_method, first_request, response): (String, Vec<u8>, Option<Vec<u8>>) =
        (row.get(0), row.get(1), row.get(2));
    match response {
        Some(response) if first_method == method && first_request == request => {
            tracing::info!("replaying the response stored for this idempotency key");
            Resp::decode(response.as_slice())
                .map(Some)
                .map_err(|e| Status::internal(format!("stored response unreadable: {e}")))
        }
        _ => Err(key_reused()),
    }
}

/// Stores `response` as the answer to `key` (step 3 above); commit `tx` next.
pub(crate) async fn answer(tx: &mut WriteTx, key: Option<Key<'_>>, response: &impl Message) -> Result<(), Status> {
    let Some(Key { vin, key }) = key else {
        return Ok(());
    };
    sqlx::query("UPDATE idempotency_keys SET response = ?3 WHERE vin = ?1 AND idempotency_key = ?2")
        .bind(vin)
        .bind(key)
        .bind(response.encode_to_vec())
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// The answer to a key used for another method or another request: the caller has a bug, and
/// guessing which request it meant could charge the wrong thing.
pub(crate) fn key_reused() -> Status {
    Status::failed_precondition("idempotency key reused with a different request")
}
