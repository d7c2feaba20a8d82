//! A partner that hangs, fails and recovers, over the real wire: its limit on calls in flight
//! sheds the excess at once (RESOURCE_EXHAUSTED), its circuit breaker opens after failures in
//! a row (UNAVAILABLE at once, the partner not called), lets one probe through after the open
//! interval and closes on its success; neither refusal is stored by the idempotency ledger, so
//! a retry with the same key reaches the partner once it is back.

use std::time::Duration;

use gateway::config::PartnerConfig;
use gateway::routing::{BreakerState, PartnerHealth};
use prost::Message;
use proto::vehicle::v1::Code;

use integration_tests::*;

const START: &str = "/parking.v1.ParkingPayment/StartSession";

/// The gateway in front of a [`SteeredParking`], its parking entry adjusted by `settings`.
async fn platform_with(settings: impl FnOnce(&mut PartnerConfig)) -> (Platform, SteeredParking) {
    Platform::start_wrapping(SteeredParking::new, |_, c| settings(&mut c.partners[0])).await
}

/// A car, and the gateway in front of a [`SteeredParking`] steered to fail every call with
/// `code`, whose breaker opens for `open_for` after `breaker_failures` failures in a row.
async fn failing(code: tonic::Code, breaker_failures: u32, open_for: Duration) -> (Platform, SteeredParking, RawCar) {
    let (platform, partner) = platform_with(|p| {
        p.breaker_failures = breaker_failures;
        p.breaker_open_for = open_for;
    })
    .await;
    partner.steer(Steering::Fail(code));
    let car = RawCar::connect(&platform, VIN_A).await;
    (platform, partner, car)
}

/// `car` asks for lots `n` times (request ids `{name}-1`, `{name}-2`, …) and is answered
/// `code` each time.
async fn asks_answered(car: &mut RawCar, name: &str, n: usize, code: Code) {
    for i in 1..=n {
        let id = format!("{name}-{i}");
        assert_eq!(outcome(&car.ask(lots(&id)).await), (id.as_str(), code));
    }
}

fn health(platform: &Platform) -> PartnerHealth {
    let all = platform.gateway.partner_health();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().expect("the parking partner")
}

/// An envelope asking for nearby lots (read-only: no ledger).
fn lots(request_id: &str) -> Vec<u8> {
    envelope(request_id, LIST, nearby_lots())
}

/// An envelope starting a parking session under idempotency key `key` (through the ledger).
fn start(request_id: &str, key: &str) -> Vec<u8> {
    keyed_envelope(request_id, key, START, parking_at_the_bund().encode_to_vec())
}

/// Asserts that the breaker is open, and has opened `times` times in all.
fn assert_open(platform: &Platform, times: u64) {
    let h = health(platform);
    assert!(matches!(h.breaker, BreakerState::Open { .. }), "{h:?}");
    assert_eq!(h.opened_total, times, "{h:?}");
}

/// Waits until the open breaker lets a probe through: the state change, not a guessed sleep.
async fn probe_due(platform: &Platform) {
    eventually("the breaker is due for a probe", || {
        health(platform).breaker == BreakerState::HalfOpen
    })
    .await;
}

#[tokio::test]
async fn a_hanging_partner_holds_at_most_its_limit_and_the_next_call_is_refused_at_once() {
    let (platform, partner) = platform_with(|p| p.max_concurrent_calls = 2).await;
    partner.steer(Steering::Hang);
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.publish_request(lots("hung-1")).await;
    car.publish_request(lots("hung-2")).await;
    // Nothing comes back while they hang, so driving the car's connection loses nothing.
    let arrived = partner.calls_arrived(2);
    while_connected(&mut car.eventloop, arrived, "both calls reach the hanging partner").await;

    // The first answer the car gets is the refusal: it did not queue behind the hung calls.
    let refused = car.ask(start("one-too-many", "park-1")).await;
    assert_eq!(outcome(&refused), ("one-too-many", Code::ResourceExhausted));
    let message = &refused.status.as_ref().expect("a status").message;
    assert!(message.contains("2 calls in flight"), "{message}");
    assert_eq!(partner.calls(), 2, "the partner never saw the refused call");
    let h = health(&platform);
    assert_eq!((h.calls_in_flight, h.shed_total), (2, 1), "{h:?}");

    partner.steer(Steering::Answer);
    partner.release(2);
    let mut released = [car.next_response().await, car.next_response().await];
    released.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let released: Vec<_> = released.iter().map(outcome).collect();
    assert_eq!(released, [("hung-1", Code::Ok), ("hung-2", Code::Ok)]);

    // The refusal was not stored: the same key now reaches the partner and starts the session.
    let retried = car.ask(start("retry", "park-1")).await;
    assert_eq!(outcome(&retried), ("retry", Code::Ok));
    assert_eq!(partner.calls(), 3);
    assert_eq!(health(&platform).calls_in_flight, 0);
}

#[tokio::test]
async fn a_failing_partner_opens_the_breaker_and_is_not_called_while_it_is_open() {
    let (platform, partner, mut car) = failing(tonic::Code::Internal, 3, Duration::from_secs(3600)).await;
    asks_answered(&mut car, "failing", 3, Code::Internal).await;
    assert_eq!(partner.calls(), 3);
    assert_open(&platform, 1);

    let refused = car.ask(lots("while-open")).await;
    assert_eq!(outcome(&refused), ("while-open", Code::Unavailable));
    let message = &refused.status.as_ref().expect("a status").message;
    assert!(message.contains("parking.v1.ParkingPayment is failing"), "{message}");
    assert_eq!(partner.calls(), 3, "the open breaker did not call the partner");
    assert_eq!(health(&platform).refused_while_open_total, 1);
}

#[tokio::test]
async fn the_cars_own_errors_do_not_open_the_breaker() {
    let open_for = gateway::config::DEFAULT_BREAKER_OPEN_FOR;
    let (platform, partner, mut car) = failing(tonic::Code::InvalidArgument, 2, open_for).await;
    asks_answered(&mut car, "bad", 4, Code::InvalidArgument).await;
    assert_eq!(partner.calls(), 4, "every call reached the partner");
    assert_eq!(health(&platform).breaker, BreakerState::Closed);
}

#[tokio::test]
async fn after_the_open_interval_one_probe_reaches_the_partner_and_its_success_closes_the_breaker() {
    let (platform, partner, mut car) = failing(tonic::Code::Internal, 2, Duration::from_millis(200)).await;
    asks_answered(&mut car, "failing", 2, Code::Internal).await;
    // Refused while open, its key not stored.
    let refused = car.ask(start("while-open", "park-1")).await;
    assert_eq!(outcome(&refused), ("while-open", Code::Unavailable));
    assert_eq!(partner.calls(), 2);

    partner.steer(Steering::Answer);
    probe_due(&platform).await;
    let probe = car.ask(start("probe", "park-1")).await;
    assert_eq!(
        outcome(&probe),
        ("probe", Code::Ok),
        "the retry with the same key reached the partner"
    );
    assert_eq!(partner.calls(), 3);
    assert_eq!(health(&platform).breaker, BreakerState::Closed);
    for id in ["after-1", "after-2", "after-3"] {
        assert_eq!(outcome(&car.ask(lots(id)).await), (id, Code::Ok));
    }
    assert_eq!(partner.calls(), 6, "calls flow again");
}

#[tokio::test]
async fn a_failing_probe_opens_the_breaker_again() {
    let (platform, partner, mut car) = failing(tonic::Code::Internal, 1, Duration::from_millis(200)).await;
    asks_answered(&mut car, "failing", 1, Code::Internal).await;
    probe_due(&platform).await;

    let probe = car.ask(lots("probe")).await;
    assert_eq!(
        outcome(&probe),
        ("probe", Code::Internal),
        "the probe reached the partner"
    );
    assert_eq!(partner.calls(), 2);
    assert_open(&platform, 2);
    let refused = car.ask(lots("after-probe")).await;
    assert_eq!(outcome(&refused), ("after-probe", Code::Unavailable));
    assert_eq!(partner.calls(), 2, "open again: the partner is not called");
}

#[tokio::test]
async fn an_unreachable_partner_opens_the_breaker_within_one_request_of_retries() {
    // UNAVAILABLE is retried by the gateway (3 attempts); each attempt counts, and once the
    // breaker opens the remaining attempts are not made.
    let unreachable = RefusingPartner::new();
    let platform = Platform::start_with_pki(|pki, c| {
        c.partners[0] = PartnerConfig {
            breaker_failures: 2,
            breaker_open_for: Duration::from_secs(3600),
            ..partner_entry(pki, PARKING, unreachable.addr())
        };
    })
    .await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let first = car.ask(lots("unreachable")).await;
    assert_eq!(outcome(&first), ("unreachable", Code::Unavailable));
    let h = health(&platform);
    assert!(matches!(h.breaker, BreakerState::Open { .. }), "{h:?}");
    assert_eq!(h.refused_while_open_total, 1, "the third attempt was refused, not made");
}
