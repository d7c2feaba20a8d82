//! Admission control: beyond its handshake capacity the gateway closes new connections before
//! any TLS work, and cars get in once capacity frees up (their backoff brings them back).

use std::sync::atomic::Ordering;
use std::time::Duration;

use integration_tests::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn beyond_handshake_capacity_connections_are_shed_before_tls_and_cars_get_in_later() {
    let platform = Platform::start_with(|c| {
        c.mqtt.max_handshakes_in_flight = 1;
        c.mqtt.handshake_timeout = Duration::from_secs(20);
    })
    .await;
    // Takes the only handshake slot and says nothing. It is accepted before the car below,
    // whose TCP connection completes later in the same accept queue.
    let stalled = TcpStream::connect(platform.mqtt_addr()).await.unwrap();

    let creds = platform.pki.vehicle(VIN_A);
    let (_client, mut eventloop) = platform.mqtt_client(&creds, VIN_A);
    let err = connack(&mut eventloop).await.expect_err("shed while the slot is taken");
    assert!(
        !format!("{err:?}").contains("CertificateExpired"),
        "shed, not refused: {err:?}"
    );
    let stats = platform.gateway.listener_stats();
    assert_eq!(stats.shed_handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.completed_handshakes.load(Ordering::Relaxed),
        0,
        "no TLS work was spent on it"
    );

    // Capacity frees up; an agent retrying with backoff gets in.
    drop(stalled);
    let car = platform.agent(VIN_A).await;
    assert!(stats.completed_handshakes.load(Ordering::Relaxed) >= 1);
    car.shutdown().await;
}
