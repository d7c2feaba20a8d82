//! An in-car app pays for parking: app -> agent's local gRPC -> MQTT over mTLS -> gateway ->
//! partner adapter over mTLS gRPC -> back.

use std::time::Duration;

use integration_tests::*;
use proto::parking::v1::{EndSessionRequest, GeoPoint, ListNearbyLotsRequest};

#[tokio::test]
async fn an_in_car_app_pays_for_parking_through_the_agent() {
    let platform = Platform::start().await;
    let (car, mut app) = platform.car_and_app(VIN_A).await;

    let lots = app
        .list_nearby_lots(ListNearbyLotsRequest {
            near: Some(GeoPoint {
                latitude: 31.2304,
                longitude: 121.4737,
            }),
            radius_m: 20_000,
            max_results: 3,
        })
        .await
        .expect("nearby lots")
        .into_inner()
        .lots;
    assert!(!lots.is_empty() && lots.len() <= 3, "{lots:?}");
    assert!(
        lots.windows(2).all(|w| w[0].distance_m <= w[1].distance_m),
        "nearest first"
    );

    let session = park_from_the_app_at(&mut app, &lots[0].lot_id).await;
    assert_eq!(session.lot_id, lots[0].lot_id);

    let ended = pay_from_the_app(&mut app, &session.session_id).await;
    let receipt = ended.receipt.expect("receipt");
    assert!(receipt.fee.as_ref().expect("fee").amount_minor > 0);

    let again = receipt_from_the_app(&mut app, &receipt.receipt_id).await;
    assert_eq!(again.session_id, session.session_id);
    assert_eq!(platform.parking.charges(), 1, "charged exactly once");
    car.shutdown().await;
}

#[tokio::test]
async fn partner_errors_reach_the_app_with_their_code() {
    let platform = Platform::start().await;
    let (car, mut app) = platform.car_and_app(VIN_A).await;
    let err = app
        .start_session(parking_at("no-such-lot"))
        .await
        .expect_err("unknown lot");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    car.shutdown().await;
}

#[tokio::test]
async fn the_partner_learns_the_vin_from_the_certificate_not_the_payload() {
    // Sessions belong to the VIN the gateway passes on; another car cannot end this one.
    let platform = Platform::start().await;
    let a = platform.agent(VIN_A).await;
    let b = platform.agent(VIN_B).await;
    let session = in_car_app(&a)
        .await
        .start_session(parking_at("lot-jingan-01"))
        .await
        .expect("A starts")
        .into_inner()
        .session
        .unwrap();
    let err = in_car_app(&b)
        .await
        .end_session(EndSessionRequest {
            session_id: session.session_id,
        })
        .await
        .expect_err("B cannot end A's session");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(platform.parking.charges(), 0);
    within(Duration::from_secs(5), a.shutdown(), "shutdown").await;
    b.shutdown().await;
}
