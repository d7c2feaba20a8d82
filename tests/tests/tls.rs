//! The handshake is the front door: only certificates from our CA, valid today, for a
//! vehicle, get in, and a socket that never finishes its handshake delays no one.

use std::time::Duration;

use integration_tests::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vehicle_agent::Agent;

/// The gateway refused the client certificate with a TLS alert (in TLS 1.3 the client learns
/// of it on its first read after sending its certificate).
fn refused_with(e: &rumqttc::ConnectionError, alerts: &[&str]) -> bool {
    let text = format!("{e:?}");
    alerts.iter().any(|a| text.contains(a))
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let platform = Platform::start().await;
    let foreign = TestPki::new();
    let creds = foreign.vehicle(VIN_A);
    // Trusts our gateway, but presents a certificate our CA never signed.
    let (_c, mut eventloop) = mqtt_client(platform.mqtt_addr(), &platform.pki.ca_cert, &creds, VIN_A);
    let err = connack(&mut eventloop)
        .await
        .expect_err("foreign certificate must be refused");
    // The foreign CA has the same name as ours, so its signature is what fails.
    assert!(
        refused_with(&err, &["DecryptError", "UnknownCA", "BadCertificate"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let platform = Platform::start().await;
    let creds = platform.pki.expired_vehicle(VIN_A);
    let (_c, mut eventloop) = platform.mqtt_client(&creds, VIN_A);
    let err = connack(&mut eventloop)
        .await
        .expect_err("expired certificate must be refused");
    assert!(refused_with(&err, &["CertificateExpired"]), "{err:?}");
}

#[tokio::test]
async fn a_partner_certificate_cannot_connect_as_a_vehicle() {
    let platform = Platform::start().await;
    let creds = platform.pki.partner("parking");
    let (_c, mut eventloop) = platform.mqtt_client(&creds, "parking");
    assert!(connack(&mut eventloop).await.is_err());
}

#[tokio::test]
async fn a_stalled_handshake_neither_blocks_others_nor_lives_forever() {
    let platform = Platform::start_with(|c| c.mqtt.handshake_timeout = Duration::from_millis(300)).await;
    // Opens TCP and never says a word.
    let mut stalled = TcpStream::connect(platform.mqtt_addr()).await.unwrap();

    let car: Agent = platform.agent(VIN_A).await;
    assert!(car.is_connected());

    // The gateway drops the silent socket once the handshake timeout passes.
    let mut buf = [0u8; 16];
    let n = within(Duration::from_secs(10), stalled.read(&mut buf), "stalled socket closed").await;
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got {n:?}");
    car.shutdown().await;
}
