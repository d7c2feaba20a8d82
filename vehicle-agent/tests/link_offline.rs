//! What the gateway link decides on its own, with no gateway to reach.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tonic::Code;

use common::{Pki, VIN, free_port, install_provider};
use proto::MethodPath;
use vehicle_agent::GatewayLink;

fn start() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/StartSession").unwrap()
}

fn offline_link(pki: &Pki, max_payload_bytes: usize) -> GatewayLink {
    let mut config = pki.agent_config(VIN, &format!("localhost:{}", free_port()));
    config.max_payload_bytes = max_payload_bytes;
    GatewayLink::start(&config).unwrap()
}

#[tokio::test]
async fn oversize_payloads_are_refused_without_sending() {
    install_provider();
    let pki = Pki::new();
    let link = offline_link(&pki, 1024);
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
    install_provider();
    let pki = Pki::new();
    let link = offline_link(&pki, 1024);
    let long = "é".repeat(256);
    let err = link
        .call(&start(), Bytes::new(), Duration::from_secs(60), Some(long))
        .now_or_never()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("256 characters"), "{}", err.message());

    let err = link
        .call(&start(), Bytes::new(), Duration::ZERO, Some("é".repeat(255)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    link.shutdown().await;
}

#[tokio::test]
async fn deadline_says_the_link_was_down() {
    install_provider();
    let pki = Pki::new();
    let link = offline_link(&pki, 1024);
    let err = link
        .call(&start(), Bytes::new(), Duration::from_millis(100), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(
        err.message(),
        "no response within 100ms: the link to the gateway was down, the request was never sent"
    );
    assert!(!link.is_connected());
    assert_eq!(link.pending_calls(), 0);
    link.shutdown().await;
}

#[tokio::test]
async fn shutdown_fails_waiting_calls_at_once() {
    install_provider();
    let pki = Pki::new();
    let link = offline_link(&pki, 1024);
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call(&start(), Bytes::new(), Duration::from_secs(600), None).await }
    });
    while link.pending_calls() == 0 {
        tokio::task::yield_now().await;
    }
    link.shutdown().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(link.pending_calls(), 0);
}

#[tokio::test]
async fn dropping_a_call_forgets_its_request() {
    install_provider();
    let pki = Pki::new();
    let link = offline_link(&pki, 1024);
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call(&start(), Bytes::new(), Duration::from_secs(600), None).await }
    });
    while link.pending_calls() == 0 {
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    assert_eq!(link.pending_calls(), 0);
    link.shutdown().await;
}
