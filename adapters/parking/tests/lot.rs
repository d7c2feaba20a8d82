//! The lot ends a session itself: the exit gate's VehicleExited ends and charges the car's
//! session and leaves a SessionEndedByLot event for the car in the outbox.

mod common;

use std::time::Duration;

use common::*;
use proto::parking::v1::{SessionState, VehicleExitedRequest};
use tonic::Code;

#[tokio::test]
async fn the_exit_gate_ends_and_charges_the_session_once() {
    let mut h = start().await;
    let session_id = park_at(&mut h, "lot-bund-01", CAR_A, "start").await;
    h.clock.advance(Duration::from_secs(2 * 60 * 60 + 1));

    let exited = h.lot.vehicle_exited(exit_of("lot-bund-01")).await.unwrap().into_inner();
    let session = exited.session.unwrap();
    let receipt = exited.receipt.unwrap();
    assert_eq!(session.session_id, session_id);
    assert_eq!(session.state(), SessionState::Ended);
    // The Bund bills from the first minute: three started hours at 2,500 fen.
    assert_eq!(receipt.fee.as_ref().unwrap().amount_minor, 7_500);
    assert_eq!(h.service.charges_recorded().await.unwrap(), 1);
    assert_eq!(
        h.service.events_waiting().await.unwrap(),
        1,
        "an event for the car, in the outbox"
    );

    // The car's own EndSession, arriving late, gets the lot's receipt: no second charge.
    let late = pay(&mut h, &session_id, CAR_A, "end").await.unwrap().into_inner();
    assert_eq!(late.receipt.as_ref(), Some(&receipt));
    // The gate retrying finds nothing active any more.
    let again = h.lot.vehicle_exited(exit_of("lot-bund-01")).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(h.service.charges_recorded().await.unwrap(), 1);
    assert_eq!(h.service.events_waiting().await.unwrap(), 1);

    // The car can park again.
    park(&mut h, CAR_A, "start-again").await;
}

#[tokio::test]
async fn the_gate_ends_only_the_session_of_that_plate_at_that_lot() {
    let mut h = start().await;
    park_at(&mut h, "lot-bund-01", CAR_A, "start").await;

    let elsewhere = h.lot.vehicle_exited(exit_of("lot-xintiandi-01")).await.unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);
    let other_plate = VehicleExitedRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪B99999".into(),
    };
    let err = h.lot.vehicle_exited(other_plate).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let unknown_lot = h.lot.vehicle_exited(exit_of("lot-nowhere")).await.unwrap_err();
    assert_eq!(unknown_lot.code(), Code::NotFound);
    let no_plate = VehicleExitedRequest {
        lot_id: "lot-bund-01".into(),
        plate: " ".into(),
    };
    assert_eq!(
        h.lot.vehicle_exited(no_plate).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let long_plate = VehicleExitedRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪".repeat(parking_adapter::service::MAX_PLATE_CHARS + 1),
    };
    assert_eq!(
        h.lot.vehicle_exited(long_plate).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    assert_eq!(h.service.charges_recorded().await.unwrap(), 0);
    assert_eq!(h.service.events_waiting().await.unwrap(), 0);
}

const HOUR: Duration = Duration::from_secs(60 * 60);

#[tokio::test]
async fn the_lot_ends_sessions_at_the_maximum_stay() {
    let mut h = start().await;
    let overstaying = park_at(&mut h, "lot-jingan-01", CAR_A, "a").await;
    h.clock.advance(71 * HOUR);
    let recent = park_at(&mut h, "lot-jingan-01", CAR_B, "b").await;
    h.clock.advance(HOUR + Duration::from_secs(1));

    let ended = h.service.end_overstays(72 * HOUR).await.unwrap();
    let ids: Vec<&str> = ended.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, [overstaying.as_str()]);
    // Jing'an: 15 free minutes, then 1,500 fen an hour, at most 9,000 a day: three capped days.
    assert_eq!(ended[0].fee.as_ref().unwrap().amount_minor, 27_000);
    assert_eq!(h.service.events_waiting().await.unwrap(), 1);
    assert!(h.service.end_overstays(72 * HOUR).await.unwrap().is_empty());

    // The car's late EndSession gets the lot's charge; the recent session is still the car's to end.
    let late = pay(&mut h, &overstaying, CAR_A, "end-a").await.unwrap().into_inner();
    assert_eq!(late.receipt.unwrap().fee.unwrap().amount_minor, 27_000);
    let own = pay(&mut h, &recent, CAR_B, "end-b").await.unwrap().into_inner();
    assert_eq!(own.receipt.unwrap().fee.unwrap().amount_minor, 1_500);
    assert_eq!(h.service.charges_recorded().await.unwrap(), 2);
}

#[tokio::test]
async fn one_sweep_ends_at_most_a_batch_and_the_next_the_rest() {
    let mut h = start().await;
    let cars = usize::try_from(parking_adapter::lot::MAX_STAY_BATCH).unwrap() + 1;
    for i in 0..cars {
        park_at(&mut h, "lot-jingan-01", &format!("LTESTCAR{i:09}"), "start").await;
    }
    h.clock.advance(73 * HOUR);
    assert_eq!(h.service.end_overstays(72 * HOUR).await.unwrap().len(), cars - 1);
    assert_eq!(h.service.end_overstays(72 * HOUR).await.unwrap().len(), 1);
    assert_eq!(h.service.events_waiting().await.unwrap(), u64::try_from(cars).unwrap());
}
