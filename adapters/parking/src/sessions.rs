//! Parking sessions and their charges in the database: starting, finding, ending and charging.
//!
//! Each function takes the connection of a transaction the caller opened (see
//! `idempotency.rs` for the order of steps), so that what it writes commits together with the
//! idempotency answer and any event for the car, or not at all.

use prost::Message as _;
use proto::parking::v1::{ParkingSession, Receipt, SessionState};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqliteConnection};
use tonic::Status;

use crate::catalogue::{self, LotInfo};
use crate::pricing::cny;
use crate::store::unavailable;

/// Who ended a session, as stored in `sessions.ended_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// The driver, from the dashboard (EndSession).
    Car,
    /// The lot's exit gate (ParkingLot.VehicleExited).
    ExitGate,
    /// The lot, when the session reached its maximum stay.
    MaxStay,
}

impl EndedBy {
    fn as_str(self) -> &'static str {
        match self {
            EndedBy::Car => "car",
            EndedBy::ExitGate => "exit_gate",
            EndedBy::MaxStay => "max_stay",
        }
    }
}

/// A row of `sessions`.
#[derive(Debug, Clone)]
pub(crate) struct SessionRecord {
    pub(crate) session_id: String,
    /// The owner: the VIN that started it.
    pub(crate) vin: String,
    pub(crate) lot_id: String,
    pub(crate) plate: String,
    pub(crate) started_at_unix_ms: i64,
    /// `None` while active.
    pub(crate) ended_at_unix_ms: Option<i64>,
}

impl SessionRecord {
    fn from_row(row: &SqliteRow) -> SessionRecord {
        SessionRecord {
            session_id: row.get("session_id"),
            vin: row.get("vin"),
            lot_id: row.get("lot_id"),
            plate: row.get("plate"),
            started_at_unix_ms: row.get("started_at_unix_ms"),
            ended_at_unix_ms: row.get("ended_at_unix_ms"),
        }
    }

    /// The session as the contract describes it; `fee_fen` once charged.
    fn to_proto(&self, fee_fen: Option<i64>) -> ParkingSession {
        ParkingSession {
            session_id: self.session_id.clone(),
            lot_id: self.lot_id.clone(),
            plate: self.plate.clone(),
            state: if self.ended_at_unix_ms.is_some() {
                SessionState::Ended
            } else {
                SessionState::Active
            }
            .into(),
            started_at_unix_ms: self.started_at_unix_ms,
            ended_at_unix_ms: self.ended_at_unix_ms.unwrap_or(0),
            fee: fee_fen.map(cny),
        }
    }
}

/// The id of `vin`'s active session, if it has one.
pub(crate) async fn active_session_of(conn: &mut SqliteConnection, vin: &str) -> Result<Option<String>, Status> {
    sqlx::query_scalar("SELECT session_id FROM sessions WHERE vin = ?1 AND ended_at_unix_ms IS NULL")
        .bind(vin)
        .fetch_optional(conn)
        .await
        .map_err(unavailable)
}

/// Records a new active session of `vin` at `lot`.
pub(crate) async fn start(
    conn: &mut SqliteConnection,
    vin: &str,
    lot: &LotInfo,
    plate: &str,
    now: i64,
) -> Result<ParkingSession, Status> {
    let record = SessionRecord {
        // Random, so that ids reveal nothing about other cars or the lot's traffic.
        session_id: format!("ps-{}", uuid::Uuid::new_v4().simple()),
        vin: vin.to_owned(),
        lot_id: lot.id.to_owned(),
        plate: plate.to_owned(),
        started_at_unix_ms: now,
        ended_at_unix_ms: None,
    };
    sqlx::query(
        "INSERT INTO sessions (session_id, vin, lot_id, plate, started_at_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(&record.session_id)
    .bind(&record.vin)
    .bind(&record.lot_id)
    .bind(&record.plate)
    .bind(record.started_at_unix_ms)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(record.to_proto(None))
}

/// The session `session_id` if `vin` owns it. Someone else's session is reported exactly like
/// a missing one (NOT_FOUND), so a car cannot probe which session ids exist.
pub(crate) async fn owned(conn: &mut SqliteConnection, vin: &str, session_id: &str) -> Result<SessionRecord, Status> {
    sqlx::query(
        "SELECT session_id, vin, lot_id, plate, started_at_unix_ms, ended_at_unix_ms \
         FROM sessions WHERE session_id = ?1 AND vin = ?2",
    )
    .bind(session_id)
    .bind(vin)
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?
    .map(|row| SessionRecord::from_row(&row))
    .ok_or_else(|| Status::not_found(format!("no session {session_id:?}")))
}

/// The oldest active session of `plate` at `lot_id`, if any.
pub(crate) async fn active_at(
    conn: &mut SqliteConnection,
    lot_id: &str,
    plate: &str,
) -> Result<Option<SessionRecord>, Status> {
    let row = sqlx::query(
        "SELECT session_id, vin, lot_id, plate, started_at_unix_ms, ended_at_unix_ms \
         FROM sessions WHERE lot_id = ?1 AND plate = ?2 AND ended_at_unix_ms IS NULL \
         ORDER BY started_at_unix_ms LIMIT 1",
    )
    .bind(lot_id)
    .bind(plate)
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?;
    Ok(row.map(|row| SessionRecord::from_row(&row)))
}

/// Active sessions started at or before `started_before`, oldest first, at most `limit`.
pub(crate) async fn active_since(
    conn: &mut SqliteConnection,
    started_before: i64,
    limit: i64,
) -> Result<Vec<SessionRecord>, Status> {
    let rows = sqlx::query(
        "SELECT session_id, vin, lot_id, plate, started_at_unix_ms, ended_at_unix_ms \
         FROM sessions WHERE ended_at_unix_ms IS NULL AND started_at_unix_ms <= ?1 \
         ORDER BY started_at_unix_ms LIMIT ?2",
    )
    .bind(started_before)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(unavailable)?;
    Ok(rows.iter().map(SessionRecord::from_row).collect())
}

/// Ends `record` at `now` and charges its fee, or, if it already ended, returns what ending it
/// answered the first time: ending is idempotent by nature, whatever the idempotency key, and a
/// session is never charged twice (the `charges.session_id` column is UNIQUE as well).
pub(crate) async fn end_and_charge(
    conn: &mut SqliteConnection,
    mut record: SessionRecord,
    now: i64,
    ended_by: EndedBy,
) -> Result<(ParkingSession, Receipt), Status> {
    if record.ended_at_unix_ms.is_some() {
        let receipt = receipt_of_session(conn, &record.session_id)
            .await?
            .ok_or_else(|| Status::internal(format!("session {} ended without a charge", record.session_id)))?;
        let fee = receipt.fee.as_ref().map(|fee| fee.amount_minor);
        return Ok((record.to_proto(fee), receipt));
    }
    let lot = catalogue::find(&record.lot_id)
        .ok_or_else(|| Status::internal(format!("lot {:?} is no longer in the catalogue", record.lot_id)))?;

    // A clock that stepped backwards must not produce a negative duration.
    let ended = now.max(record.started_at_unix_ms);
    let duration_ms = ended - record.started_at_unix_ms;
    let fee = lot.price.fee(duration_ms);

    // This is where a real adapter calls its payment provider, passing the session id as the
    // provider's idempotency key so that a retry after a crash cannot charge twice. The
    // reference adapter makes up the provider's reference.
    let payment_reference = format!("wxpay-{}", uuid::Uuid::new_v4().simple());
    let receipt = Receipt {
        receipt_id: format!("rcpt-{}", uuid::Uuid::new_v4().simple()),
        session_id: record.session_id.clone(),
        lot_name: lot.name.to_owned(),
        started_at_unix_ms: record.started_at_unix_ms,
        ended_at_unix_ms: ended,
        duration_s: u64::try_from(duration_ms / 1_000).unwrap_or(0),
        fee: Some(cny(fee.amount_fen)),
        payment_reference,
        breakdown: Some(fee.breakdown(&lot.price)),
        refunded: Some(cny(0)),
    };

    let ended_now = sqlx::query(
        "UPDATE sessions SET ended_at_unix_ms = ?2, ended_by = ?3 WHERE session_id = ?1 AND ended_at_unix_ms IS NULL",
    )
    .bind(&record.session_id)
    .bind(ended)
    .bind(ended_by.as_str())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if ended_now != 1 {
        // The caller's transaction holds the write lock, so nobody ended it since it was read.
        return Err(Status::aborted(format!(
            "session {} changed meanwhile; retry",
            record.session_id
        )));
    }
    sqlx::query(
        "INSERT INTO charges (receipt_id, session_id, amount_minor, payment_reference, charged_at_unix_ms, receipt) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&receipt.receipt_id)
    .bind(&record.session_id)
    .bind(fee.amount_fen)
    .bind(&receipt.payment_reference)
    .bind(now)
    .bind(receipt.encode_to_vec())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;

    record.ended_at_unix_ms = Some(ended);
    Ok((record.to_proto(Some(fee.amount_fen)), receipt))
}

/// The receipt of `session_id`'s charge with the refunds so far, if it was charged.
pub(crate) async fn receipt_of_session(
    conn: &mut SqliteConnection,
    session_id: &str,
) -> Result<Option<Receipt>, Status> {
    let row = sqlx::query(
        "SELECT c.receipt, (SELECT COALESCE(SUM(r.amount_minor), 0) FROM refunds r WHERE r.session_id = c.session_id) \
         FROM charges c WHERE c.session_id = ?1",
    )
    .bind(session_id)
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?;
    row.map(|row| with_refunds(row.get(0), row.get(1))).transpose()
}

/// The receipt `receipt_id` if `vin` owns its session (otherwise NOT_FOUND, as if missing).
pub(crate) async fn receipt_owned(conn: &mut SqliteConnection, vin: &str, receipt_id: &str) -> Result<Receipt, Status> {
    let row = sqlx::query(
        "SELECT c.receipt, (SELECT COALESCE(SUM(r.amount_minor), 0) FROM refunds r WHERE r.session_id = c.session_id) \
         FROM charges c JOIN sessions s ON s.session_id = c.session_id WHERE c.receipt_id = ?1 AND s.vin = ?2",
    )
    .bind(receipt_id)
    .bind(vin)
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?
    .ok_or_else(|| Status::not_found(format!("no receipt {receipt_id:?}")))?;
    with_refunds(row.get(0), row.get(1))
}

/// The stored receipt with `refunded_fen` as its refunded total.
fn with_refunds(stored: Vec<u8>, refunded_fen: i64) -> Result<Receipt, Status> {
    let mut receipt =
        Receipt::decode(stored.as_slice()).map_err(|e| Status::internal(format!("stored receipt unreadable: {e}")))?;
    receipt.refunded = Some(cny(refunded_fen));
    Ok(receipt)
}

/// Charges recorded in the database, by any run of the adapter.
pub(crate) async fn count_charges(conn: &mut SqliteConnection) -> Result<u64, Status> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM charges")
        .fetch_one(conn)
        .await
        .map_err(unavailable)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
