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
use vehicle_agent::{CallIds, GatewayLink};

fn start() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/StartSession").unwrap()
}

/// A car whose gateway never answers, sending payloads of at most `max_payload_bytes`.
fn offline_link(car: &Offline, max_payload_bytes: usize) -> GatewayLink {
    let mut config = car.car_config();
    config.max_payload_bytes = max_payload_bytes;
    GatewayLink::start(&config).unwrap()
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
    let car = Offline::new();
    let link = offline_link(&car, 1024);
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
    let car = Offline::new();
    let link = offline_link(&car, 1024);
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
    let car = Offline::new();
    let link = offline_link(&car, 1024);
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
        let (link, ids) = (link.clone(), ids(request_id));
        async move { link.call_with_ids(&start(), Bytes::new(), timeout, ids).await }
    });
    // The outbox write runs on the blocking pool; yield until it is done.
    while link.pending_requests() == before {
        tokio::task::yield_now().await;
    }
    call
}

#[tokio::test]
async fn shutdown_fails_waiting_calls_at_once_and_keeps_their_requests() {
    let car = Offline::new();
    let link = offline_link(&car, 1024);
    let call = accepted_call(&link, "kept", Duration::from_secs(600)).await;
    link.shutdown().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("the request is kept"), "{}", err.message());
    assert_eq!(link.pending_calls(), 0);
    assert_eq!(link.pending_requests(), 1);

    // The next agent on the same state directory has it (shutdown released the directory).
    let link = offline_link(&car, 1024);
    assert_eq!(link.pending_requests(), 1);
    assert_eq!(lookup(&link, "kept").await, Lookup::Pending);
    link.shutdown().await;
}

#[tokio::test]
async fn dropping_a_call_keeps_its_request() {
    let car = Offline::new();
    let link = offline_link(&car, 1024);
    let call = accepted_call(&link, "dropped", Duration::from_secs(600)).await;
    call.abort();
    let _ = call.await;
    assert_eq!(link.pending_calls(), 0);
    // The driver's intent outlives the app's call.
    assert_eq!(link.pending_requests(), 1);
    assert_eq!(lookup(&link, "dropped").await, Lookup::Pending);
    link.shutdown().await;
}

#[tokio::test]
async fn one_request_id_is_one_request() {
    let car = Offline::new();
    let link = offline_link(&car, 1024);
    assert_eq!(lookup(&link, "same").await, Lookup::Unknown);
    let first = accepted_call(&link, "same", Duration::from_millis(300)).await;
    // The app retries with the same x-request-id: it waits for the same request.
    let again = tokio::spawn({
        let link = link.clone();
        async move {
            link.call_with_ids(&start(), Bytes::new(), Duration::from_secs(60), ids("same"))
                .await
        }
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
    let stored = link
        .call_with_ids(&start(), Bytes::new(), Duration::from_secs(60), ids("same"))
        .await
        .unwrap_err();
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
    let car = Offline::new();
    let link = offline_link(&car, 1024);
    for bad in ["../x", "a b", &"x".repeat(129)] {
        let err = link
            .call_with_ids(&start(), Bytes::new(), Duration::from_secs(5), ids(bad))
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
    let mut config = car.car_config();
    config.outbox_capacity = 1;
    let link = GatewayLink::start(&config).unwrap();
    let _waiting = accepted_call(&link, "one", Duration::from_secs(600)).await;
    let err = link
        .call_with_ids(&start(), Bytes::new(), Duration::from_secs(600), ids("two"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "outbox full: 1 requests waiting for the gateway");
    assert_eq!(lookup(&link, "two").await, Lookup::Unknown);
    link.shutdown().await;
}

#[tokio::test]
async fn a_disk_failure_refuses_calls() {
    let car = Offline::new();
    let link = offline_link(&car, 1024);
    // A regular file where the outbox directory was: writes fail, even for root.
    let outbox_dir = car.pki.state_dir().join("outbox");
    std::fs::remove_dir(&outbox_dir).unwrap();
    std::fs::write(&outbox_dir, b"").unwrap();
    let err = link
        .call_with_ids(&start(), Bytes::new(), Duration::from_secs(600), ids("lost"))
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
    let mut config = car.car_config();
    let file = car.pki.dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    config.state_dir = file.join("state");
    let e = GatewayLink::start(&config).unwrap_err().to_string();
    assert!(
        e.starts_with("state_dir: cannot use ") && e.contains("a-file/state"),
        "{e}"
    );

    // Two agents never share one state directory.
    let link = offline_link(&car, 1024);
    let e = GatewayLink::start(&car.car_config()).unwrap_err().to_string();
    assert!(e.contains("in use by another vehicle agent"), "{e}");
    link.shutdown().await;
}
