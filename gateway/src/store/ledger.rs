//! Idempotency ledger keyed by (VIN, idempotency key), with Stripe's semantics: the first
//! response is stored and replayed to retries, a key reused with another request is refused,
//! and a retry while the first attempt is still running waits instead of calling the partner
//! a second time.
//!
//! A claim is a lease: the owner (one id per gateway process) holds the key until
//! `claimed_at + lease_ms`, with the `lease_ms` the claimer passed (it knows how long its call
//! may take; a retry with a shorter deadline must not cut a live attempt short).
//! Every step is a single statement, so the ledger is atomic across connections, processes
//! and gateway nodes sharing a PostgreSQL:
//!
//! 1. `INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now RETURNING`: creates the row,
//!    or replaces an expired one. A row came back: the caller owns the key ([`Claim::Fresh`]).
//! 2. Otherwise read the row and decide: another method or payload → [`Claim::Mismatch`];
//!    a stored response → [`Claim::Replay`]; a live lease → [`Claim::InFlight`].
//! 3. A lease that ran out is taken over with a compare-and-swap on the claim counter
//!    (`UPDATE … WHERE owner = $old AND attempts = $old`): exactly one taker gets
//!    [`Claim::Fresh`]; the losers read the row again and see the winner's live lease.

use proto::Vin;
use ring::digest;

use super::{Store, StoreError, on_writer, rows_changed, rows_changed_on};

/// Rounds of "insert, read, take over" before giving up with [`StoreError::Contention`].
/// Each extra round needs another writer to have changed the row in between.
const MAX_CLAIM_ROUNDS: usize = 16;

/// Which idempotency record: keys are scoped to one car.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerKey {
    /// The car that sent the request.
    pub vin: Vin,
    /// The key the car chose for it.
    pub idempotency_key: String,
}

/// What a key was first used for; a retry must match it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestFingerprint {
    /// The gRPC method path.
    pub method: String,
    /// SHA-256 of the request payload.
    pub payload_sha256: [u8; 32],
}

impl RequestFingerprint {
    /// The fingerprint of calling `method` with `payload`.
    pub fn of(method: &str, payload: &[u8]) -> RequestFingerprint {
        let mut payload_sha256 = [0u8; 32];
        payload_sha256.copy_from_slice(digest::digest(&digest::SHA256, payload).as_ref());
        RequestFingerprint {
            method: method.to_owned(),
            payload_sha256,
        }
    }
}

/// The outcome of [`Store::ledger_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller now owns the key and must call the partner, then complete or release.
    Fresh,
    /// A response was stored earlier: return it, do not call the partner.
    Replay(Vec<u8>),
    /// Another live attempt owns the key; wait for it (poll again) instead of calling twice.
    InFlight,
    /// The key was used with another method or payload: refuse (Stripe's 409).
    Mismatch {
        /// The method the key was first used with.
        method: String,
    },
}

/// (method, payload_sha256, owner, lease_expires_at, attempts, response, expires_at)
type LedgerRow = (String, Vec<u8>, String, i64, i64, Option<Vec<u8>>, i64);

impl Store {
    /// Claims `key` for one attempt at `request` by `owner` (one id per gateway process).
    ///
    /// - No record, or an expired one (`expires_at <= now_ms`): the caller gets [`Claim::Fresh`];
    ///   the record expires at `now_ms + retention_ms`.
    /// - A record for another method or payload: [`Claim::Mismatch`] (checked first).
    /// - A completed record: [`Claim::Replay`] with the stored response.
    /// - A claim whose lease has not run out, whoever holds it: [`Claim::InFlight`]. The lease
    ///   is the one its claimer asked for (`claimed_at + lease_ms` of the call that got `Fresh`),
    ///   not the asking caller's.
    /// - The take-over rule deliberately ignores who the holder is: another owner id may be a
    ///   live process on another node, so only an expired lease proves the attempt is over.
    /// - A claim whose lease ran out (its owner died, or gave up without releasing): taken over,
    ///   [`Claim::Fresh`] for exactly one of the callers racing for it.
    ///
    /// Atomic across concurrent callers, processes and nodes: of N concurrent claims of a new key
    /// exactly one is `Fresh`. Make `lease_ms` at least the longest a partner call may take
    /// (the gateway's maximum request timeout), so a live attempt is never taken over.
    pub async fn ledger_claim(
        &self,
        key: &LedgerKey,
        request: &RequestFingerprint,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        retention_ms: i64,
    ) -> Result<Claim, StoreError> {
        const INSERT: &str = "INSERT INTO idempotency_ledger \
                (vin, idempotency_key, method, payload_sha256, owner, claimed_at, lease_expires_at, attempts, \
                 response, completed_at, created_at, expires_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $8, 1, NULL, NULL, $6, $7) \
            ON CONFLICT (vin, idempotency_key) DO UPDATE SET \
                method = excluded.method, payload_sha256 = excluded.payload_sha256, owner = excluded.owner, \
                claimed_at = excluded.claimed_at, lease_expires_at = excluded.lease_expires_at, attempts = 1, \
                response = NULL, completed_at = NULL, \
                created_at = excluded.created_at, expires_at = excluded.expires_at \
            WHERE idempotency_ledger.expires_at <= $6 \
            RETURNING attempts";
        const READ: &str = "SELECT method, payload_sha256, owner, lease_expires_at, attempts, response, expires_at \
            FROM idempotency_ledger WHERE vin = $1 AND idempotency_key = $2";
        const TAKE_OVER: &str = "UPDATE idempotency_ledger SET owner = $3, claimed_at = $4, lease_expires_at = $7, \
                attempts = attempts + 1 \
            WHERE vin = $1 AND idempotency_key = $2 AND owner = $5 AND attempts = $6 AND response IS NULL \
              AND expires_at > $4";
        const OP: &str = "claiming an idempotency key";

        let vin = key.vin.as_str().to_owned();
        let idem = key.idempotency_key.clone();
        let request = request.clone();
        let owner = owner.to_owned();
        let expires_at = now_ms.saturating_add(retention_ms);
        let lease_expires_at = now_ms.saturating_add(lease_ms);
        on_writer!(self, OP, |conn| {
            for _ in 0..MAX_CLAIM_ROUNDS {
                let inserted: Option<(i64,)> = sqlx::query_as(INSERT)
                    .bind(&vin)
                    .bind(&idem)
                    .bind(&request.method)
                    .bind(&request.payload_sha256[..])
                    .bind(&owner)
                    .bind(now_ms)
                    .bind(expires_at)
                    .bind(lease_expires_at)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::query(OP))?;
                if inserted.is_some() {
                    return Ok(Claim::Fresh);
                }

                let row: Option<LedgerRow> = sqlx::query_as(READ)
                    .bind(&vin)
                    .bind(&idem)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::query(OP))?;
                // Gone (released or purged) or expired since the insert: insert again.
                let Some((method, hash, holder, lease_until, attempts, response, row_expires_at)) = row else {
                    continue;
                };
                if row_expires_at <= now_ms {
                    continue;
                }
                if method != request.method || hash[..] != request.payload_sha256[..] {
                    return Ok(Claim::Mismatch { method });
                }
                if let Some(response) = response {
                    return Ok(Claim::Replay(response));
                }
                if lease_until > now_ms {
                    return Ok(Claim::InFlight);
                }
                let taken = rows_changed_on!(
                    &mut *conn,
                    OP,
                    TAKE_OVER,
                    &vin,
                    &idem,
                    &owner,
                    now_ms,
                    &holder,
                    attempts,
                    lease_expires_at
                )?;
                if taken == 1 {
                    tracing::info!(%vin, idempotency_key = %idem, previous_owner = %holder, %owner, "took over an expired idempotency claim");
                    return Ok(Claim::Fresh);
                }
                // Someone else changed the row first: read it again.
            }
            Err(StoreError::Contention {
                vin: vin.clone(),
                idempotency_key: idem.clone(),
            })
        })
    }

    /// Stores `response` for the key `owner` claimed, so retries get [`Claim::Replay`].
    ///
    /// Only the current owner of an uncompleted claim can complete it. Anyone else (the claim was
    /// taken over after its lease ran out, released, already completed, or purged) gets
    /// [`StoreError::NotLedgerOwner`] and nothing is stored: the caller should still answer its
    /// request, and log the error.
    pub async fn ledger_complete(
        &self,
        key: &LedgerKey,
        owner: &str,
        response: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE idempotency_ledger SET response = $4, completed_at = $5 \
            WHERE vin = $1 AND idempotency_key = $2 AND owner = $3 AND response IS NULL";
        const OP: &str = "completing an idempotency key";
        // The macro's arguments move into the writer; the error below needs its own copies.
        let (vin, idempotency_key) = (key.vin.to_string(), key.idempotency_key.clone());
        let (bound_vin, bound_key, bound_owner) = (vin.clone(), idempotency_key.clone(), owner.to_owned());
        let response = response.to_vec();
        let done = rows_changed!(self, OP, SQL, bound_vin, bound_key, bound_owner, response, now_ms)?;
        if done == 0 {
            return Err(StoreError::NotLedgerOwner {
                vin,
                idempotency_key,
                owner: owner.to_owned(),
            });
        }
        Ok(())
    }

    /// Gives up a claim without a stored response (the outcome is unknown or retryable), so the
    /// next retry calls the partner again. Deletes the record only if `owner` still holds an
    /// uncompleted claim on it; otherwise does nothing (and succeeds).
    pub async fn ledger_release(&self, key: &LedgerKey, owner: &str) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM idempotency_ledger \
            WHERE vin = $1 AND idempotency_key = $2 AND owner = $3 AND response IS NULL";
        const OP: &str = "releasing an idempotency key";
        let (key, owner) = (key.clone(), owner.to_owned());
        rows_changed!(self, OP, SQL, key.vin.to_string(), key.idempotency_key, owner).map(|_| ())
    }

    /// Ends the leases of every uncompleted claim whose owner starts with `owner_prefix`, so the
    /// next retry takes them over at once instead of waiting the lease out.
    ///
    /// A restarted gateway calls this for its own node (`"{node}/"`): the claims of its killed
    /// predecessor belong to no live attempt. Returns how many claims were freed.
    pub async fn ledger_abandon_claims(&self, owner_prefix: &str) -> Result<u64, StoreError> {
        // Compare the prefix directly rather than with LIKE, whose wildcards could match other owners.
        const SQL: &str = "UPDATE idempotency_ledger SET lease_expires_at = 0 \
            WHERE response IS NULL AND substr(owner, 1, length($1)) = $1";
        const OP: &str = "abandoning a dead process's idempotency claims";
        let owner_prefix = owner_prefix.to_owned();
        rows_changed!(self, OP, SQL, owner_prefix)
    }

    /// Deletes the records that expired (`expires_at <= now_ms`), completed or not. Returns how many.
    pub async fn ledger_purge(&self, now_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM idempotency_ledger WHERE expires_at <= $1";
        const OP: &str = "purging expired idempotency keys";
        rows_changed!(self, OP, SQL, now_ms)
    }

    /// Entries in the ledger (claims and stored outcomes, until purged), for metrics.
    pub async fn ledger_entries(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM idempotency_ledger", "ledger entries")
            .await
    }
}
