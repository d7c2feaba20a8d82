//! RefundSession: idempotent on its key, never more than was charged, and clear statuses for
//! sessions that cannot be refunded.

mod common;

use std::time::Duration;

use common::*;
use parking_adapter::refunds::{MAX_REASON_CHARS, MAX_REFUNDS_PER_SESSION};
use proto::metadata;
use proto::parking::v1::{Money, RefundSessionRequest, RefundSessionResponse};
use tonic::{Code, Request, Status};

fn refund_of(session_id: &str, fen: i64) -> RefundSessionRequest {
    RefundSessionRequest {
        session_id: session_id.into(),
        amount: (fen > 0).then(|| Money {
            currency: "CNY".into(),
            amount_minor: fen,
        }),
        reason: "barrier stuck at the exit".into(),
    }
}

async fn refund(h: &mut Harness, request: RefundSessionRequest, key: &str) -> Result<RefundSessionResponse, Status> {
    h.client
        .refund_session(call(request, CAR_A, key))
        .await
        .map(|r| r.into_inner())
}

/// The adapter, and a session of car A at Xintiandi, parked 90 minutes and paid: 4,000 fen.
async fn start_with_a_paid_session() -> (Harness, String) {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "start").await;
    h.clock.advance(Duration::from_secs(90 * 60));
    let paid = pay(&mut h, &session_id, CAR_A, "end").await.unwrap().into_inner();
    assert_eq!(paid.receipt.unwrap().fee.unwrap().amount_minor, 4_000);
    (h, session_id)
}

#[tokio::test]
async fn the_same_key_refunds_once_and_answers_the_same() {
    let (mut h, session_id) = start_with_a_paid_session().await;

    let first = refund(&mut h, refund_of(&session_id, 1_500), "refund-1").await.unwrap();
    h.clock.advance(Duration::from_secs(60));
    let retry = refund(&mut h, refund_of(&session_id, 1_500), "refund-1").await.unwrap();
    assert_eq!(first, retry);
    let receipt = first.receipt.unwrap();
    assert_eq!(receipt.refunded.unwrap().amount_minor, 1_500);
    assert_eq!(first.refund.unwrap().amount.unwrap().amount_minor, 1_500);

    // The receipt, read again, counts the refund once.
    let fetched = read_receipt(&mut h, &receipt.receipt_id, CAR_A, "read").await;
    assert_eq!(fetched.refunded.unwrap().amount_minor, 1_500);

    // The same key for another amount is a bug of the caller.
    let reused = refund(&mut h, refund_of(&session_id, 100), "refund-1")
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn never_more_than_was_charged() {
    let (mut h, session_id) = start_with_a_paid_session().await;

    let too_much = refund(&mut h, refund_of(&session_id, 4_001), "r1").await.unwrap_err();
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    assert!(too_much.message().contains("4000"), "{}", too_much.message());

    refund(&mut h, refund_of(&session_id, 1_000), "r2").await.unwrap();
    let over_what_remains = refund(&mut h, refund_of(&session_id, 3_001), "r3").await.unwrap_err();
    assert_eq!(over_what_remains.code(), Code::FailedPrecondition);

    // No amount: everything that remains.
    let rest = refund(&mut h, refund_of(&session_id, 0), "r4").await.unwrap();
    assert_eq!(rest.refund.unwrap().amount.unwrap().amount_minor, 3_000);
    assert_eq!(rest.receipt.unwrap().refunded.unwrap().amount_minor, 4_000);

    let nothing_left = refund(&mut h, refund_of(&session_id, 0), "r5").await.unwrap_err();
    assert_eq!(nothing_left.code(), Code::FailedPrecondition);
    let one_fen = refund(&mut h, refund_of(&session_id, 1), "r6").await.unwrap_err();
    assert_eq!(one_fen.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn unknown_active_and_other_cars_sessions_are_refused_clearly() {
    let mut h = start().await;
    let unknown = refund(&mut h, refund_of("ps-nope", 100), "r1").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let session_id = park(&mut h, CAR_A, "start").await;
    let active = refund(&mut h, refund_of(&session_id, 100), "r2").await.unwrap_err();
    assert_eq!(active.code(), Code::FailedPrecondition);
    assert!(active.message().contains("still active"), "{}", active.message());

    pay(&mut h, &session_id, CAR_A, "end").await.unwrap();
    let not_yours = h
        .client
        .refund_session(call(refund_of(&session_id, 100), CAR_B, "r3"))
        .await
        .unwrap_err();
    assert_eq!(not_yours.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_refund_requests_are_invalid() {
    let (mut h, session_id) = start_with_a_paid_session().await;

    // Without a key a retry would refund twice: refused.
    let mut keyless = Request::new(refund_of(&session_id, 100));
    keyless.metadata_mut().insert(metadata::VIN, CAR_A.parse().unwrap());
    let err = h.client.refund_session(keyless).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("idempotency-key"), "{}", err.message());

    let mut negative = refund_of(&session_id, 100);
    negative.amount.as_mut().unwrap().amount_minor = -1;
    let dollars = RefundSessionRequest {
        amount: Some(Money {
            currency: "USD".into(),
            amount_minor: 100,
        }),
        ..refund_of(&session_id, 0)
    };
    let long_reason = RefundSessionRequest {
        reason: "x".repeat(MAX_REASON_CHARS + 1),
        ..refund_of(&session_id, 100)
    };
    for (i, bad) in [negative, dollars, long_reason].into_iter().enumerate() {
        let err = refund(&mut h, bad, &format!("bad-{i}")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{i}: {err:?}");
    }
    let at_the_limit = RefundSessionRequest {
        reason: "x".repeat(MAX_REASON_CHARS),
        ..refund_of(&session_id, 100)
    };
    refund(&mut h, at_the_limit, "fine").await.unwrap();
}

#[tokio::test]
async fn refunds_per_session_are_bounded() {
    let (mut h, session_id) = start_with_a_paid_session().await;
    for i in 0..MAX_REFUNDS_PER_SESSION {
        refund(&mut h, refund_of(&session_id, 1), &format!("r{i}"))
            .await
            .unwrap();
    }
    let one_more = refund(&mut h, refund_of(&session_id, 1), "one-more").await.unwrap_err();
    assert_eq!(one_more.code(), Code::ResourceExhausted);
}

/// The money an answer moved is reported to the gateway in the `carlink-amount` response
/// header: the fee on the EndSession that charged, minus the refund on RefundSession, nothing
/// on an EndSession that charged nothing.
#[tokio::test]
async fn answers_that_move_money_report_the_amount() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "start").await;
    h.clock.advance(Duration::from_secs(90 * 60));
    let amount = |md: &tonic::metadata::MetadataMap| md.get(metadata::AMOUNT).map(|v| v.to_str().unwrap().to_owned());
    let paid = pay(&mut h, &session_id, CAR_A, "end").await.unwrap();
    assert_eq!(amount(paid.metadata()).as_deref(), Some("4000 CNY"));
    // A retry with the key replays the charge's answer, amount included.
    let replayed = pay(&mut h, &session_id, CAR_A, "end").await.unwrap();
    assert_eq!(amount(replayed.metadata()).as_deref(), Some("4000 CNY"));
    // Another key on the ended session charges nothing: no amount.
    let again = pay(&mut h, &session_id, CAR_A, "end-again").await.unwrap();
    assert_eq!(amount(again.metadata()), None);
    let refunded = h
        .client
        .refund_session(call(refund_of(&session_id, 1_500), CAR_A, "refund-1"))
        .await
        .unwrap();
    assert_eq!(amount(refunded.metadata()).as_deref(), Some("-1500 CNY"));
    assert_eq!(metadata::parse_amount("-1500 CNY"), Some((-1500, "CNY".into())));
}
