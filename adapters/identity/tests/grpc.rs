//! The car's side over gRPC: who may poll which login, bad input, the per-car bound and
//! retried starts.

mod common;

use common::{CAR, OTHER_CAR, start};
use identity_adapter::GuessLimits;
use proto::adapter::testing::from_car;
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::{LoginPending, PollDeviceLoginRequest, SocialProvider, StartDeviceLoginRequest};
use tonic::{Code, Request};

#[tokio::test]
async fn a_login_is_polled_only_by_the_car_that_started_it() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    assert_eq!(
        adapter.poll(CAR, &login.device_code).await.unwrap(),
        Outcome::Pending(LoginPending { interval: 5 })
    );
    // Another car, and a code nobody was given, get the same answer: no oracle.
    let theirs = adapter.poll(OTHER_CAR, &login.device_code).await.unwrap_err();
    let nobodys = adapter.poll(CAR, &"0".repeat(64)).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!((nobodys.code(), nobodys.message()), (theirs.code(), theirs.message()));
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_a_call_without_a_vin_is_unauthenticated() {
    let mut adapter = start(GuessLimits::default()).await;
    for device_code in [String::new(), "a".repeat(129), "not a code".into()] {
        let err = adapter.poll(CAR, &device_code).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{device_code:?}: {err:?}");
    }
    for provider in [SocialProvider::Unspecified as i32, 99] {
        let err = adapter
            .grpc
            .start_device_login(from_car(CAR, StartDeviceLoginRequest { provider }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "provider {provider}");
        assert!(err.message().contains("SOCIAL_PROVIDER_WECHAT"), "{}", err.message());
    }
    let anonymous = Request::new(PollDeviceLoginRequest {
        device_code: "ab".into(),
    });
    let err = adapter.grpc.poll_device_login(anonymous).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut long_key = from_car(
        CAR,
        StartDeviceLoginRequest {
            provider: SocialProvider::Wechat.into(),
        },
    );
    long_key
        .metadata_mut()
        .insert("idempotency-key", "k".repeat(129).parse().unwrap());
    let err = adapter.grpc.start_device_login(long_key).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_fourth_pending_login_for_one_car_is_resource_exhausted() {
    let mut adapter = start(GuessLimits::default()).await;
    for _ in 0..3 {
        adapter.start_login(CAR).await;
    }
    let fourth = StartDeviceLoginRequest {
        provider: SocialProvider::Weibo.into(),
    };
    let err = adapter
        .grpc
        .start_device_login(from_car(CAR, fourth))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("already has 3 device logins waiting"),
        "{}",
        err.message()
    );
    adapter.start_login(OTHER_CAR).await;
}

#[tokio::test]
async fn a_retried_start_with_the_same_key_returns_the_same_codes() {
    let mut adapter = start(GuessLimits::default()).await;
    let keyed = || {
        let mut request = from_car(
            CAR,
            StartDeviceLoginRequest {
                provider: SocialProvider::Alipay.into(),
            },
        );
        request
            .metadata_mut()
            .insert("idempotency-key", "sign-in-1".parse().unwrap());
        request
    };
    let first = adapter.grpc.start_device_login(keyed()).await.unwrap().into_inner();
    let retry = adapter.grpc.start_device_login(keyed()).await.unwrap().into_inner();
    assert_eq!(retry, first);
    let other = adapter.start_login(CAR).await;
    assert_ne!(other.device_code, first.device_code);
}
