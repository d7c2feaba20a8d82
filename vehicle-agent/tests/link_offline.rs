//! What the gateway link decides on its own, with no gateway to reach.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tonic::Code;

use common::Offline;
use proto::MethodPath;
use vehicle_agent::outbox::Lookup;
use vehicle_agent::owner::Owner;
use vehicle_agent::{AgentConfig, CallIds, GatewayLink};

fn start() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/StartSession").unwrap()
}

/// The configuration of `car`, whose gateway never answers, sending payloads of at most 1 KiB,
/// with `change` made to it.
fn offline_config(car: &Offline, change: impl FnOnce(&mut AgentConfig)) -> AgentConfig {
    let mut config = car.car_config();
    config.max_payload_bytes = 1024;
    change(&mut config);
    config
}

/// The link of `car`, whose gateway never answers, sending payloads of at most 1 KiB.
fn offline_link(car: &Offline) -> GatewayLink {
    GatewayLink::start(&offline_config(car, |_| {})).unwrap()
}

/// A car whose gateway never answers, and its link.
fn an_offline_car() -> (Offline, GatewayLink) {
    let car = Offline::new();
    let link = offline_link(&car);
    (car, link)
}

/// A StartSession with `request_id` and no payload, through `link`.
async fn start_session(link: &GatewayLink, request_id: &str, timeout: Duration) -> Result<Bytes, tonic::Status> {
    link.call_with_ids(&start(), Bytes::new(), timeout, ids(request_id))
        .await
}

/// A StartSession through `link`, which must fail: its status.
async fn failed_call(link: &GatewayLink, payload: Bytes, timeout: Duration, key: Option<String>) -> tonic::Status {
    link.call(&start(), payload, timeout, key).await.unwrap_err()
}

/// What `link` knows of `request_id` of the anonymous app.
async fn lookup(link: &GatewayLink, request_id: &str) -> Lookup {
    link.result(request_id, &anon()).await.unwrap()
}

fn anon() -> Owner {
    Owner::anonymous()
}

#[tokio::test]
async fn oversize_payloads_are_refused_without_sending() {
    let (_car, link) = an_offline_car();
    let payload = Bytes::from(vec![0u8; 1025]);
    // Refused on the first poll: nothing was queued, nothing waited for.
    let err = link
        .call(&start(), payload, Duration::from_secs(60), None)
        .now_or_never()
        .expect("refused at once")
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "request payload of 1025 bytes exceeds the 1024-byte limit"
    );
    assert_eq!(link.pending_calls(), 0);

    // At the limit it is accepted (and then waits for the link).
    let err = link
        .call(&start(), Bytes::from(vec![0u8; 1024]), Duration::from_millis(50), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    link.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_limited_to_255_characters() {
    let (_car, link) = an_offline_car();
    let long = "é".repeat(256);
    let err = link
        .call(&start(), Bytes::new(), Duration::from_secs(60), Some(long))
        .now_or_never()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("256 characters"), "{}", err.message());

    let err = failed_call(&link, Bytes::new(), Duration::ZERO, Some("é".repeat(255))).await;
    assert_eq!(err.code(), Code::DeadlineExceeded);
    link.shutdown().await;
}

#[tokio::test]
async fn deadline_says_the_link_was_down() {
    let (_car, link) = an_offline_car();
    let err = failed_call(&link, Bytes::new(), Duration::from_millis(100), None).await;
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(
        err.message(),
        "no response within 100ms: the link to the gateway was down, the request was never sent"
    );
    assert!(!link.is_connected());
    assert_eq!(link.pending_calls(), 0);
    link.shutdown().await;
}

fn ids(request_id: &str) -> CallIds {
    CallIds {
        request_id: Some(request_id.into()),
        ..CallIds::default()
    }
}

/// Makes a call with `request_id` in the background and returns once it is on disk.
async fn accepted_call(
    link: &GatewayLink,
    request_id: &str,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Bytes, tonic::Status>> {
    let before = link.pending_requests();
    let call = tokio::spawn({
        let (link, request_id) = (link.clone(), request_id.to_owned());
        async move { start_session(&link, &request_id, timeout).await }
    });
    // The outbox write runs on the blocking pool; yield until it is done.
    while link.pending_requests() == before {
        tokio::task::yield_now().await;
    }
    call
}

/// Checks that `request_id` is the one request in `link`'s outbox and that no app waits for it.
async fn assert_kept_without_a_caller(link: &GatewayLink, request_id: &str) {
    assert_eq!(link.pending_calls(), 0);
    assert_eq!(link.pending_requests(), 1);
    assert_eq!(lookup(link, request_id).await, Lookup::Pending);
}

#[tokio::test]
async fn shutdown_fails_waiting_calls_at_once_and_keeps_their_requests() {
    let (car, link) = an_offline_car();
    let call = accepted_call(&link, "kept", Duration::from_secs(600)).await;
    link.shutdown().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("the request is kept"), "{}", err.message());
    assert_eq!(link.pending_calls(), 0);
    assert_eq!(link.pending_requests(), 1);

    // The next agent on the same state directory has it (shutdown released the directory).
    let link = offline_link(&car);
    assert_kept_without_a_caller(&link, "kept").await;
    link.shutdown().await;
}

#[tokio::test]
async fn dropping_a_call_keeps_its_request() {
    let (_car, link) = an_offline_car();
    let call = accepted_call(&link, "dropped", Duration::from_secs(600)).await;
    call.abort();
    let _ = call.await;
    // The driver's intent outlives the app's call.
    assert_kept_without_a_caller(&link, "dropped").await;
    link.shutdown().await;
}

#[tokio::test]
async fn one_request_id_is_one_request() {
    let (_car, link) = an_offline_car();
    assert_eq!(lookup(&link, "same").await, Lookup::Unknown);
    let first = accepted_call(&link, "same", Duration::from_millis(300)).await;
    // The app retries with the same x-request-id: it waits for the same request.
    let again = tokio::spawn({
        let link = link.clone();
        async move { start_session(&link, "same", Duration::from_secs(60)).await }
    });
    while link.pending_calls() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(link.pending_requests(), 1);
    // The first caller's deadline is the request's: both get its DEADLINE_EXCEEDED.
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.code(), Code::DeadlineExceeded);
    let again = again.await.unwrap().unwrap_err();
    assert_eq!(again.code(), Code::DeadlineExceeded);
    assert_eq!(again.message(), first.message());
    assert_eq!(link.pending_requests(), 0);

    // Later calls with that id get the stored outcome without anything being sent.
    let stored = start_session(&link, "same", Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(stored.message(), first.message());
    let Lookup::Done(result) = lookup(&link, "same").await else {
        panic!("same is done");
    };
    assert_eq!(result.method, "/parking.v1.ParkingPayment/StartSession");
    assert_eq!(link.pending_requests(), 0);
    link.shutdown().await;
}

#[tokio::test]
async fn bad_request_ids_are_refused_at_once() {
    let (_car, link) = an_offline_car();
    for bad in ["../x", "a b", &"x".repeat(129)] {
        let err = start_session(&link, bad, Duration::from_secs(5))
            .now_or_never()
            .expect("refused at once")
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(
            link.result(bad, &anon()).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    assert_eq!(link.pending_requests(), 0);
    link.shutdown().await;
}

#[tokio::test]
async fn a_full_outbox_refuses_calls() {
    let car = Offline::new();
    let link = GatewayLink::start(&offline_config(&car, |c| c.outbox_capacity = 1)).unwrap();
    let _waiting = accepted_call(&link, "one", Duration::from_secs(600)).await;
    let err = start_session(&link, "two", Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "outbox full: 1 requests waiting for the gateway");
    assert_eq!(lookup(&link, "two").await, Lookup::Unknown);
    link.shutdown().await;
}

#[tokio::test]
async fn a_disk_failure_refuses_calls() {
    let (car, link) = an_offline_car();
    // A regular file where the outbox directory was: writes fail, even for root.
    let outbox_dir = car.pki.state_dir().join("outbox");
    std::fs::remove_dir(&outbox_dir).unwrap();
    std::fs::write(&outbox_dir, b"").unwrap();
    let err = start_session(&link, "lost", Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("it was not accepted"), "{}", err.message());
    assert_eq!(link.pending_requests(), 0);
    assert_eq!(link.pending_calls(), 0);
    link.shutdown().await;
}

#[tokio::test]
async fn an_unusable_state_dir_stops_the_start() {
    let car = Offline::new();
    let file = car.pki.dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let config = offline_config(&car, |c| c.state_dir = file.join("state"));
    let e = GatewayLink::start(&config).unwrap_err().to_string();
    assert!(
        e.starts_with("state_dir: cannot use ") && e.contains("a-file/state"),
        "{e}"
    );

    // Two agents never share one state directory.
    let link = offline_link(&car);
    let e = GatewayLink::start(&car.car_config()).unwrap_err().to_string();
    assert!(e.contains("in use by another vehicle agent"), "{e}");
    link.shutdown().await;
}
