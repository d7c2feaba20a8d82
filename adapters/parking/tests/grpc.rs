//! The adapter as the gateway sees it: a real server on a loopback port, called with the
//! generated client and the metadata the gateway attaches.

mod common;

use std::time::Duration;

use common::*;
use parking_adapter::Clock;
use proto::metadata;
use proto::parking::v1::{
    GeoPoint, GetReceiptRequest, ListNearbyLotsRequest, Money, SessionState, StartSessionRequest,
};
use tonic::{Code, Request};

const PEOPLES_SQUARE: GeoPoint = GeoPoint {
    latitude: 31.2317,
    longitude: 121.4726,
};

#[tokio::test]
async fn nearby_lots_are_nearest_first_and_limited() {
    let mut h = start().await;
    let near = |radius_m, max_results| ListNearbyLotsRequest {
        near: Some(PEOPLES_SQUARE),
        radius_m,
        max_results,
    };

    let lots = h
        .client
        .list_nearby_lots(call(near(5_000, 3), CAR_A, "n1"))
        .await
        .unwrap();
    let lots = lots.into_inner().lots;
    assert_eq!(lots.len(), 3);
    assert_eq!(lots[0].lot_id, "lot-peoplessquare-01");
    assert!(lots.windows(2).all(|w| w[0].distance_m <= w[1].distance_m), "{lots:?}");
    assert_eq!(
        lots[0].price_per_hour,
        Some(Money {
            currency: "CNY".into(),
            amount_minor: 1_200
        })
    );
    let rules = lots[0].price_rules.as_ref().expect("the lot shows its price rules");
    assert_eq!(rules.free_minutes, 0);
    assert_eq!(rules.hourly_rate, lots[0].price_per_hour);

    // Defaults: 2000 m, 10 results. Jing'an and Lujiazui are about 2.8 km away.
    let lots = h.client.list_nearby_lots(call(near(0, 0), CAR_A, "n2")).await.unwrap();
    let lots = lots.into_inner().lots;
    assert!(
        !lots.is_empty() && lots.iter().all(|l| l.distance_m <= 2_000),
        "{lots:?}"
    );
    assert!(lots.iter().all(|l| l.lot_id != "lot-jingan-01"));

    let missing = ListNearbyLotsRequest {
        near: None,
        radius_m: 0,
        max_results: 0,
    };
    let err = h.client.list_nearby_lots(call(missing, CAR_A, "n3")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn ninety_minutes_are_fifteen_free_then_two_started_hours() {
    let mut h = start().await;
    let started_at = h.clock.now_unix_ms();
    let session_id = park(&mut h, CAR_A, "start-1").await;
    h.clock.advance(Duration::from_secs(90 * 60));

    let ended = pay(&mut h, &session_id, CAR_A, "end-1").await.unwrap();
    let ended = ended.into_inner();
    let session = ended.session.unwrap();
    let receipt = ended.receipt.unwrap();
    let two_hours = Money {
        currency: "CNY".into(),
        amount_minor: 2 * 2_000,
    };
    assert_eq!(session.state(), SessionState::Ended);
    assert_eq!(session.fee.as_ref(), Some(&two_hours));
    assert_eq!(receipt.fee.as_ref(), Some(&two_hours));
    assert_eq!(receipt.started_at_unix_ms, started_at);
    assert_eq!(receipt.ended_at_unix_ms, started_at + 90 * 60 * 1_000);
    assert_eq!(receipt.duration_s, 90 * 60);
    assert!(receipt.payment_reference.starts_with("wxpay-"), "{receipt:?}");
    assert_eq!(receipt.lot_name, "Xintiandi South Block Car Park");
    let breakdown = receipt.breakdown.as_ref().expect("the receipt explains the fee");
    assert_eq!(breakdown.free_minutes_used, 15);
    assert_eq!(breakdown.billed_hours, 2);
    assert_eq!(breakdown.before_cap.as_ref(), Some(&two_hours));
    assert_eq!(breakdown.cap_discount.as_ref().map(|m| m.amount_minor), Some(0));
    let rules = breakdown.rules.as_ref().unwrap();
    assert_eq!(
        (rules.free_minutes, rules.daily_cap.as_ref().unwrap().amount_minor),
        (15, 12_000)
    );
    assert_eq!(h.service.charges(), 1);
    assert_eq!(h.service.charges_recorded().await.unwrap(), 1);

    assert_eq!(read_receipt(&mut h, &receipt.receipt_id, CAR_A, "r-1").await, receipt);
}

#[tokio::test]
async fn retries_with_the_same_key_charge_once() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "start-1").await;
    // A retried StartSession replays the session instead of hitting "already active".
    assert_eq!(park(&mut h, CAR_A, "start-1").await, session_id);
    h.clock.advance(Duration::from_secs(10 * 60));

    let first = pay(&mut h, &session_id, CAR_A, "end-1").await.unwrap().into_inner();
    h.clock.advance(Duration::from_secs(3 * 60 * 60));
    let retry = pay(&mut h, &session_id, CAR_A, "end-1").await.unwrap();
    assert_eq!(first, retry.into_inner());
    assert_eq!(h.service.charges(), 1);

    // A fresh key on an ended session returns it unchanged: still one charge.
    let again = pay(&mut h, &session_id, CAR_A, "end-2").await.unwrap();
    assert_eq!(again.into_inner().receipt, first.receipt);
    assert_eq!(h.service.charges_recorded().await.unwrap(), 1);
}

// Several worker threads, so that the retries really do race for the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_charge_once() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "start-1").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut client = h.client.clone();
            let request = call(end(&session_id), CAR_A, "end-1");
            tokio::spawn(async move { client.end_session(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.unwrap().unwrap());
    }
    assert!(responses.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(h.service.charges(), 1);
}

#[tokio::test]
async fn other_vehicles_cannot_end_or_read_a_session() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "a-start").await;

    let err = pay(&mut h, &session_id, CAR_B, "b-end").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Indistinguishable from a session that does not exist.
    let unknown = pay(&mut h, "ps-00000000000000000000000000000000", CAR_B, "b-end-2")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(h.service.charges(), 0);

    let ended = pay(&mut h, &session_id, CAR_A, "a-end").await.unwrap();
    let receipt_id = ended.into_inner().receipt.unwrap().receipt_id;
    let read = GetReceiptRequest { receipt_id };
    let err = h.client.get_receipt(call(read, CAR_B, "b-read")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn missing_vin_is_unauthenticated() {
    let mut h = start().await;
    let mut request = Request::new(start_at("lot-bund-01"));
    request
        .metadata_mut()
        .insert(metadata::IDEMPOTENCY_KEY, "k".parse().unwrap());
    let err = h.client.start_session(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let err = h.client.end_session(Request::new(end("ps-1"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn start_session_checks_lot_plate_and_active_session() {
    let mut h = start().await;
    let err = h
        .client
        .start_session(call(start_at("lot-nowhere-99"), CAR_A, "k1"))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);

    let no_plate = StartSessionRequest {
        lot_id: "lot-bund-01".into(),
        plate: " ".into(),
    };
    let err = h.client.start_session(call(no_plate, CAR_A, "k2")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let long_plate = StartSessionRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪".repeat(parking_adapter::service::MAX_PLATE_CHARS + 1),
    };
    let err = h
        .client
        .start_session(call(long_plate, CAR_A, "k2b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let session_id = park(&mut h, CAR_A, "k3").await;
    let err = h.client.start_session(call(start_at("lot-bund-01"), CAR_A, "k4")).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&session_id), "{}", err.message());

    // Another car is not affected by car A's session, and gets a different id.
    assert_ne!(park(&mut h, CAR_B, "k3").await, session_id);
}

#[tokio::test]
async fn reusing_a_key_for_a_different_request_is_refused() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "k1").await;

    // Same method, different request.
    let other_lot = h.client.start_session(call(start_at("lot-bund-01"), CAR_A, "k1")).await;
    let err = other_lot.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "idempotency key reused with a different request");

    // Different method.
    let err = pay(&mut h, &session_id, CAR_A, "k1").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(h.service.charges(), 0);

    // Keys are per car: car B may use "k1" for its own intent.
    park(&mut h, CAR_B, "k1").await;
}

#[tokio::test]
async fn an_idempotency_key_answers_for_a_day_then_is_forgotten() {
    let mut h = start().await;
    let session_id = park(&mut h, CAR_A, "k").await;
    pay(&mut h, &session_id, CAR_A, "end").await.unwrap();

    // Within the day, the key belongs to that StartSession: another request with it is refused.
    h.clock.advance(Duration::from_secs(24 * 60 * 60 - 1));
    let reused = h.client.start_session(call(start_at("lot-bund-01"), CAR_A, "k")).await;
    assert_eq!(reused.unwrap_err().code(), Code::FailedPrecondition);

    // After it, the key is free again and starts a new session.
    h.clock.advance(Duration::from_secs(1));
    let again = park_at(&mut h, "lot-bund-01", CAR_A, "k").await;
    assert_ne!(again, session_id);
}
