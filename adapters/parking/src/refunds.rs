//! Refunds: money given back on an ended session, never more than was charged.
//!
//! A refund is not idempotent by nature (two refunds of ¥5 are ¥10), so `RefundSession`
//! requires an idempotency key: the same key twice refunds once and answers the same.

use proto::parking::v1::{Refund, RefundSessionRequest, RefundSessionResponse};
use sqlx::SqliteConnection;
use tonic::Status;

use crate::catalogue::CURRENCY;
use crate::pricing::cny;
use crate::sessions::{self, SessionRecord};
use crate::store::unavailable;

/// Longest refund reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// Most refunds one session may have: enough for any dispute, and a bound on what a car can
/// make the adapter store.
pub const MAX_REFUNDS_PER_SESSION: i64 = 10;

/// Checks what can be checked without the database: the amount's currency and sign, and the
/// reason's length.
pub(crate) fn validate(request: &RefundSessionRequest) -> Result<(), Status> {
    if request.session_id.is_empty() {
        return Err(Status::invalid_argument("session_id is required"));
    }
    if let Some(amount) = &request.amount {
        if amount.amount_minor < 0 {
            return Err(Status::invalid_argument("amount must not be negative"));
        }
        if amount.amount_minor > 0 && amount.currency != CURRENCY {
            return Err(Status::invalid_argument(format!(
                "amount must be in {CURRENCY}, the currency of the fee"
            )));
        }
    }
    if request.reason.chars().count() > MAX_REASON_CHARS {
        return Err(Status::invalid_argument(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(())
}

/// Refunds `request.amount` (all that remains when 0 or unset) of `session`'s charge.
pub(crate) async fn refund(
    conn: &mut SqliteConnection,
    session: &SessionRecord,
    request: &RefundSessionRequest,
    now: i64,
) -> Result<RefundSessionResponse, Status> {
    if session.ended_at_unix_ms.is_none() {
        return Err(Status::failed_precondition(format!(
            "session {} is still active: end it first, then refund",
            session.session_id
        )));
    }
    let receipt = sessions::receipt_of_session(conn, &session.session_id)
        .await?
        .ok_or_else(|| Status::internal(format!("session {} ended without a charge", session.session_id)))?;
    let charged = receipt.fee.as_ref().map_or(0, |fee| fee.amount_minor);
    let refunded = receipt.refunded.as_ref().map_or(0, |r| r.amount_minor);
    let remaining = charged - refunded;
    let asked = request.amount.as_ref().map_or(0, |a| a.amount_minor);
    let amount = if asked == 0 { remaining } else { asked };
    if remaining <= 0 {
        return Err(Status::failed_precondition(format!(
            "nothing left to refund on session {}: {} of {} fen already refunded",
            session.session_id, refunded, charged
        )));
    }
    if amount > remaining {
        return Err(Status::failed_precondition(format!(
            "cannot refund {amount} fen: only {remaining} fen of the {charged} fen charged remain"
        )));
    }
    let refunds_so_far: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refunds WHERE session_id = ?1")
        .bind(&session.session_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    if refunds_so_far >= MAX_REFUNDS_PER_SESSION {
        return Err(Status::resource_exhausted(format!(
            "session {} already has {MAX_REFUNDS_PER_SESSION} refunds, the most allowed",
            session.session_id
        )));
    }

    // Where a real adapter asks its payment provider to refund, with the idempotency key.
    let refund = Refund {
        refund_id: format!("rf-{}", uuid::Uuid::new_v4().simple()),
        session_id: session.session_id.clone(),
        amount: Some(cny(amount)),
        reason: request.reason.clone(),
        refunded_at_unix_ms: now,
        payment_reference: format!("wxrefund-{}", uuid::Uuid::new_v4().simple()),
    };
    sqlx::query(
        "INSERT INTO refunds (refund_id, session_id, amount_minor, reason, payment_reference, refunded_at_unix_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&refund.refund_id)
    .bind(&refund.session_id)
    .bind(amount)
    .bind(&refund.reason)
    .bind(&refund.payment_reference)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;

    let mut receipt = receipt;
    receipt.refunded = Some(cny(refunded + amount));
    Ok(RefundSessionResponse {
        refund: Some(refund),
        receipt: Some(receipt),
    })
}
