//! Revoked vehicles: what operators revoked, kept so that it holds across restarts and nodes.

use proto::Vin;

use super::{Store, StoreError, on_pool, on_writer};

/// One revoked VIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// The vehicle.
    pub vin: Vin,
    /// Certificates of the VIN issued before this (unix ms) are refused.
    pub revoked_at_ms: i64,
    /// Why, as the operator said.
    pub reason: String,
    /// The operator (their certificate's CN).
    pub revoked_by: String,
}

type RevocationRow = (String, i64, String, String);

impl Store {
    /// Revokes `vin` at `at_ms` and returns the revocation in force: a later revocation moves the
    /// cut-off forward with its reason and operator; an earlier one (another node's clock, a
    /// call that took longer) changes nothing, so the record never pairs one operator's
    /// cut-off with another's reason.
    pub async fn revoke_vehicle(
        &self,
        vin: &Vin,
        at_ms: i64,
        reason: &str,
        revoked_by: &str,
    ) -> Result<RevocationRecord, StoreError> {
        const SQL: &str = "INSERT INTO revocations (vin, revoked_at, reason, revoked_by) VALUES ($1, $2, $3, $4) \
                           ON CONFLICT (vin) DO UPDATE SET \
                             revoked_at = CASE WHEN excluded.revoked_at > revocations.revoked_at \
                                          THEN excluded.revoked_at ELSE revocations.revoked_at END, \
                             reason = CASE WHEN excluded.revoked_at > revocations.revoked_at \
                                      THEN excluded.reason ELSE revocations.reason END, \
                             revoked_by = CASE WHEN excluded.revoked_at > revocations.revoked_at \
                                          THEN excluded.revoked_by ELSE revocations.revoked_by END \
                           RETURNING vin, revoked_at, reason, revoked_by";
        const OP: &str = "revoking a vehicle";
        let (vin, reason, by) = (vin.as_str().to_owned(), reason.to_owned(), revoked_by.to_owned());
        let row: RevocationRow = on_writer!(self, OP, |conn| {
            sqlx::query_as(SQL)
                .bind(vin)
                .bind(at_ms)
                .bind(reason)
                .bind(by)
                .fetch_one(&mut *conn)
                .await
                .map_err(StoreError::query(OP))
        })?;
        record(row)
    }

    /// Every revoked VIN, newest revocation first.
    pub async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        const SQL: &str = "SELECT vin, revoked_at, reason, revoked_by FROM revocations ORDER BY revoked_at DESC, vin";
        let rows: Vec<RevocationRow> = on_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await)
            .map_err(StoreError::query("listing revocations"))?;
        rows.into_iter().map(record).collect()
    }
}

fn record((vin, revoked_at_ms, reason, revoked_by): RevocationRow) -> Result<RevocationRecord, StoreError> {
    Ok(RevocationRecord {
        vin: Vin::parse(&vin).map_err(|e| StoreError::Corrupt(format!("revocations: {vin:?}: {e}")))?,
        revoked_at_ms,
        reason,
        revoked_by,
    })
}
