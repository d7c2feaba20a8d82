//! The device login state machine on a manual clock: pending, then linked, denied or expired;
//! slow_down and the growing interval; the bounds.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;

const CAR: &str = "LSVAU2180N2183294";
const OTHER_CAR: &str = "WBA3B5C50DF123456";

fn logins() -> (DeviceLogins, ManualClock) {
    let clock = ManualClock::default();
    let logins = DeviceLogins::new(LoginSettings::new("http://login.test/device"), Arc::new(clock.clone()));
    (logins, clock)
}

/// The driver approving, for the account `display_name`.
fn approve(display_name: &str) -> Decision {
    Decision::Approve {
        display_name: display_name.into(),
    }
}

/// The page finds `user_code` in `state`, no longer pending, and an approval of it is refused
/// saying so.
fn assert_answered_or_expired(logins: &DeviceLogins, user_code: &str, state: CodeLookup) {
    assert_eq!(logins.lookup(&canonical(user_code)), state);
    assert_eq!(logins.decide(&canonical(user_code), approve("Mallory")), Err(state));
}

fn canonical(user_code: &str) -> String {
    codes::normalise_user_code(user_code).unwrap()
}

#[test]
fn a_started_login_says_every_rfc_8628_field() {
    let (logins, _) = logins();
    let start = logins.start(CAR, Some("k-1"), SocialProvider::Wechat).unwrap();
    assert_eq!(start.device_code.len(), 64);
    assert_eq!(start.user_code.len(), 9);
    assert_eq!(start.verification_uri, "http://login.test/device");
    assert_eq!(
        start.verification_uri_complete,
        format!("http://login.test/device?user_code={}", start.user_code)
    );
    assert_eq!(start.expires_in, 600);
    assert_eq!(start.interval, 5);
}

#[test]
fn pending_then_linked_to_the_identity_the_driver_approved() {
    let (logins, clock) = logins();
    let start = logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    assert_eq!(
        logins.poll(CAR, &start.device_code),
        Ok(Outcome::Pending(LoginPending { interval: 5 }))
    );
    let shown = logins.lookup(&canonical(&start.user_code));
    assert_eq!(
        shown,
        CodeLookup::Pending(PendingLogin {
            provider: SocialProvider::Wechat,
            masked_vin: "LSV**********3294".into()
        })
    );
    logins.decide(&canonical(&start.user_code), approve("Li Wei")).unwrap();
    clock.advance(Duration::from_secs(5));
    let Ok(Outcome::Linked(identity)) = logins.poll(CAR, &start.device_code) else {
        panic!("not linked");
    };
    assert_eq!(identity.provider, SocialProvider::Wechat as i32);
    assert_eq!(identity.display_name, "Li Wei");
    assert!(identity.subject_id.starts_with("wx-"), "{}", identity.subject_id);
    assert_eq!(identity.link_token.len(), 64);
    // A lost answer can be asked for again, even sooner than the interval.
    assert_eq!(logins.poll(CAR, &start.device_code), Ok(Outcome::Linked(identity)));
    // The code is used up.
    assert_answered_or_expired(&logins, &start.user_code, CodeLookup::Answered);
}

#[test]
fn pending_then_denied() {
    let (logins, _) = logins();
    let start = logins.start(CAR, None, SocialProvider::Alipay).unwrap();
    logins.decide(&canonical(&start.user_code), Decision::Deny).unwrap();
    assert_eq!(
        logins.poll(CAR, &start.device_code),
        Ok(Outcome::Denied(LoginDenied {}))
    );
}

#[test]
fn pending_then_expired_then_forgotten() {
    let (logins, clock) = logins();
    let start = logins.start(CAR, None, SocialProvider::Weibo).unwrap();
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        logins.poll(CAR, &start.device_code),
        Ok(Outcome::Expired(LoginExpired {}))
    );
    assert_answered_or_expired(&logins, &start.user_code, CodeLookup::Expired);
    // Swept when a later login starts, once retained long enough.
    clock.advance(RETAINED_AFTER_EXPIRY);
    logins.start(OTHER_CAR, None, SocialProvider::Weibo).unwrap();
    assert_eq!(logins.held_count(), 1);
    assert_eq!(logins.poll(CAR, &start.device_code), Err(NotFound));
    assert_eq!(logins.lookup(&canonical(&start.user_code)), CodeLookup::Unknown);
}

#[test]
fn polling_faster_than_the_interval_slows_the_car_down_by_5_s_each_time() {
    let (logins, clock) = logins();
    let start = logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    let poll = || logins.poll(CAR, &start.device_code).unwrap();
    assert_eq!(poll(), Outcome::Pending(LoginPending { interval: 5 }));
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(), Outcome::SlowDown(SlowDown { interval: 10 }));
    // The new interval counts from the slow_down: 5 s later is too soon now.
    clock.advance(Duration::from_secs(5));
    assert_eq!(poll(), Outcome::SlowDown(SlowDown { interval: 15 }));
    clock.advance(Duration::from_secs(15));
    assert_eq!(poll(), Outcome::Pending(LoginPending { interval: 15 }));
    // A little early (jitter) is not too soon.
    clock.advance(Duration::from_millis(14_200));
    assert_eq!(poll(), Outcome::Pending(LoginPending { interval: 15 }));
}

#[test]
fn the_interval_stops_growing_at_its_cap() {
    let (logins, _) = logins();
    let start = logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    let mut last = None;
    for _ in 0..100 {
        last = Some(logins.poll(CAR, &start.device_code).unwrap());
    }
    assert_eq!(
        last,
        Some(Outcome::SlowDown(SlowDown {
            interval: MAX_INTERVAL_SECS
        }))
    );
}

#[test]
fn another_cars_device_code_is_not_found() {
    let (logins, _) = logins();
    let start = logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    assert_eq!(logins.poll(OTHER_CAR, &start.device_code), Err(NotFound));
    assert_eq!(logins.poll(CAR, &codes::new_device_code()), Err(NotFound));
}

#[test]
fn a_retried_start_returns_the_same_login() {
    let (logins, clock) = logins();
    let first = logins.start(CAR, Some("k-1"), SocialProvider::Wechat).unwrap();
    clock.advance(Duration::from_secs(100));
    let retry = logins.start(CAR, Some("k-1"), SocialProvider::Wechat).unwrap();
    assert_eq!(retry.device_code, first.device_code);
    assert_eq!(retry.user_code, first.user_code);
    assert_eq!(retry.expires_in, 500);
    // The same key from another car is another intent.
    let other = logins.start(OTHER_CAR, Some("k-1"), SocialProvider::Wechat).unwrap();
    assert_ne!(other.device_code, first.device_code);
    assert_eq!(logins.held_count(), 2);
}

#[test]
fn a_car_may_have_three_logins_pending() {
    let (logins, _) = logins();
    let first = logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    for _ in 0..2 {
        logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    }
    assert_eq!(
        logins.start(CAR, None, SocialProvider::Wechat),
        Err(StartRefused::TooManyForCar)
    );
    // Others are not held back by it.
    logins.start(OTHER_CAR, None, SocialProvider::Wechat).unwrap();
    // An answered login no longer counts.
    logins.decide(&canonical(&first.user_code), Decision::Deny).unwrap();
    logins.start(CAR, None, SocialProvider::Wechat).unwrap();
}

#[test]
fn no_more_logins_than_the_bound_are_held() {
    let clock = ManualClock::default();
    let mut settings = LoginSettings::new("http://login.test/device");
    settings.max_logins = 2;
    let logins = DeviceLogins::new(settings, Arc::new(clock.clone()));
    logins.start(CAR, None, SocialProvider::Wechat).unwrap();
    logins.start(OTHER_CAR, None, SocialProvider::Wechat).unwrap();
    assert_eq!(
        logins.start("LFV2A21K6A4012345", None, SocialProvider::Wechat),
        Err(StartRefused::Full)
    );
    // Room again once the old ones are forgotten.
    clock.advance(Duration::from_secs(600) + RETAINED_AFTER_EXPIRY);
    logins.start("LFV2A21K6A4012345", None, SocialProvider::Wechat).unwrap();
    assert_eq!(logins.held_count(), 1);
}

#[test]
fn vins_are_masked_but_recognisable() {
    assert_eq!(mask_vin("LSVAU2180N2183294"), "LSV**********3294");
    assert_eq!(mask_vin("SHORT"), "*****");
}
