//! Unit tests of the limit and the breaker, on a clock the test moves: every method takes
//! `now`, so no test sleeps and none depends on how fast it runs.

use super::*;

const OPEN_FOR: Duration = Duration::from_millis(200);

fn guard(max_concurrent_calls: usize, breaker_failures: u32) -> Arc<PartnerGuard> {
    PartnerGuard::new(
        "parking.v1.ParkingPayment",
        ResilienceSettings {
            max_concurrent_calls,
            breaker_failures,
            breaker_open_for: OPEN_FOR,
        },
    )
}

fn failed() -> CallOutcome {
    CallOutcome::Failed("Unavailable: partner parking.v1.ParkingPayment unreachable".into())
}

/// Admits one call at `now` and finishes it with `outcome` at once.
fn call(g: &Arc<PartnerGuard>, now: Instant, outcome: CallOutcome) {
    g.admit(now).expect("admitted").finish(outcome, now);
}

#[test]
fn opens_after_the_configured_failures_in_a_row_and_an_answer_resets_the_count() {
    let (g, now) = (guard(8, 3), Instant::now());
    call(&g, now, failed());
    call(&g, now, failed());
    call(&g, now, CallOutcome::Answered);
    call(&g, now, failed());
    call(&g, now, failed());
    let health = g.health(now);
    assert_eq!((health.breaker, health.consecutive_failures), (BreakerState::Closed, 2));
    call(&g, now, CallOutcome::Inconclusive);
    assert_eq!(
        g.health(now).breaker,
        BreakerState::Closed,
        "a short deadline is no failure"
    );
    call(&g, now, failed());
    let health = g.health(now);
    assert_eq!(health.breaker, BreakerState::Open { retry_in: OPEN_FOR });
    assert_eq!(health.opened_total, 1);
}

#[test]
fn an_open_breaker_refuses_at_once_then_lets_exactly_one_probe_through() {
    let (g, opened) = (guard(8, 1), Instant::now());
    call(&g, opened, failed());
    let refused = g.admit(opened + OPEN_FOR / 4).expect_err("open");
    assert_eq!(
        refused,
        Refusal::BreakerOpen {
            retry_in: OPEN_FOR * 3 / 4
        }
    );
    let status = refused.to_status("parking.v1.ParkingPayment");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("paused for another 150ms"), "{status:?}");

    let due = opened + OPEN_FOR;
    assert_eq!(g.health(due).breaker, BreakerState::HalfOpen);
    let probe = g.admit(due).expect("the probe");
    assert!(probe.is_probe());
    let second = g.admit(due).expect_err("one probe at a time");
    assert_eq!(
        second,
        Refusal::BreakerOpen {
            retry_in: Duration::ZERO
        }
    );
    assert!(second.to_status("s.v1.S").message().contains("probe"));
    assert_eq!(g.health(due).refused_while_open_total, 2);

    probe.finish(CallOutcome::Answered, due);
    assert_eq!(g.health(due).breaker, BreakerState::Closed);
    assert!(!g.admit(due).expect("closed again").is_probe());
}

#[test]
fn a_failed_probe_opens_the_breaker_again_for_the_whole_interval() {
    let (g, opened) = (guard(8, 2), Instant::now());
    call(&g, opened, failed());
    call(&g, opened, failed());
    let probed = opened + OPEN_FOR;
    call(&g, probed, failed());
    let health = g.health(probed);
    assert_eq!(health.breaker, BreakerState::Open { retry_in: OPEN_FOR });
    assert_eq!(health.opened_total, 2);
    assert!(
        g.admit(probed + OPEN_FOR - Duration::from_millis(1)).is_err(),
        "still open"
    );
    assert!(g.admit(probed + OPEN_FOR).expect("a probe again").is_probe());
}

#[test]
fn a_probe_that_ends_without_an_outcome_lets_the_next_call_probe() {
    let (g, opened) = (guard(8, 1), Instant::now());
    call(&g, opened, failed());
    let due = opened + OPEN_FOR;
    drop(g.admit(due).expect("a probe, then cancelled"));
    let next = g.admit(due).expect("the next call probes");
    assert!(next.is_probe());
    next.finish(CallOutcome::Inconclusive, due);
    assert_eq!(g.health(due).breaker, BreakerState::HalfOpen);
    assert!(g.admit(due).expect("and the next").is_probe());
}

#[test]
fn outcomes_of_calls_admitted_before_a_change_are_ignored() {
    let (g, now) = (guard(8, 1), Instant::now());
    let straggler = g.admit(now).unwrap();
    let slow_success = g.admit(now).unwrap();
    call(&g, now, failed());
    let due = now + OPEN_FOR;
    let probe = g.admit(due).unwrap();
    slow_success.finish(CallOutcome::Answered, due);
    assert_eq!(
        g.health(due).breaker,
        BreakerState::HalfOpen,
        "only the probe closes it"
    );
    probe.finish(CallOutcome::Answered, due);
    straggler.finish(failed(), due);
    assert_eq!(
        g.health(due).breaker,
        BreakerState::Closed,
        "a failure from before does not reopen it"
    );
}

#[test]
fn calls_beyond_the_limit_are_shed_at_once_and_a_freed_slot_is_reused() {
    let (g, now) = (guard(2, 5), Instant::now());
    let first = g.admit(now).unwrap();
    let _second = g.admit(now).unwrap();
    let refused = g.admit(now).expect_err("every slot taken");
    assert_eq!(
        refused,
        Refusal::Overloaded {
            max_concurrent_calls: 2
        }
    );
    assert_eq!(refused.to_status("s.v1.S").code(), tonic::Code::ResourceExhausted);
    let health = g.health(now);
    assert_eq!((health.calls_in_flight, health.shed_total), (2, 1));
    first.finish(CallOutcome::Answered, now);
    let _third = g.admit(now).expect("a slot was freed");
}

#[test]
fn the_partners_failures_count_and_the_cars_own_errors_do_not() {
    let second = Duration::from_secs(1);
    let of = |code, deadline| CallOutcome::of(Err(&tonic::Status::new(code, "m")), deadline);
    // Every gRPC code: unreachable, too slow or broken counts; the car's own errors do not.
    let partners_failures = [
        tonic::Code::Unavailable,
        tonic::Code::DeadlineExceeded,
        tonic::Code::Internal,
        tonic::Code::Unknown,
        tonic::Code::DataLoss,
    ];
    for number in 1..=16 {
        let code = tonic::Code::from_i32(number);
        let counts = partners_failures.contains(&code);
        assert_eq!(is_partner_failure(code), counts, "{code:?}");
        assert_eq!(matches!(of(code, second), CallOutcome::Failed(_)), counts, "{code:?}");
    }
    assert_eq!(CallOutcome::of(Ok(()), second), CallOutcome::Answered);
    assert_eq!(
        of(tonic::Code::DeadlineExceeded, Duration::from_millis(999)),
        CallOutcome::Inconclusive
    );
}
