//! The handshake is the front door: only certificates from our vehicles CA, valid today, get
//! in, and a socket that never finishes its handshake delays no one, on the cars' port or the
//! gateway's gRPC endpoints (partner API, ops). Behind the gateway, a partner adapter's door
//! opens for the gateway's client certificate only. A partner that sends half a call and
//! vanishes does not hold the gateway's stop.

use std::time::Duration;

use integration_tests::*;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
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
async fn partner_and_operator_certificates_are_refused_at_the_handshake() {
    let platform = Platform::start().await;
    for (who, creds) in [
        ("parking", platform.pki.partner("parking")),
        ("night-shift", platform.pki.operator("night-shift")),
    ] {
        let (_c, mut eventloop) = platform.mqtt_client(&creds, who);
        let err = connack(&mut eventloop)
            .await
            .expect_err("only vehicles connect over MQTT");
        // Signed by the same root, but not by the vehicles CA the MQTT port trusts.
        assert!(refused_with(&err, &["UnknownCA"]), "{who}: {err:?}");
    }
    // The same port admits a car, so the refusals above are about the role.
    let (_c, mut eventloop) = platform.mqtt_client(&platform.pki.vehicle(VIN_A), VIN_A);
    connack(&mut eventloop).await.expect("a vehicle connects");
}

/// StartSession sent straight to the parking adapter, bypassing the gateway: presenting
/// `creds` and claiming to be the car `vin` in the metadata only the gateway should write.
async fn start_session_at_the_adapter(
    platform: &Platform,
    creds: &Credentials,
    vin: &str,
) -> Result<proto::parking::v1::StartSessionResponse, String> {
    let channel = (platform.pki)
        .grpc_channel(platform.parking_server.addr, creds)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut request = tonic::Request::new(parking_at_the_bund());
    request
        .metadata_mut()
        .insert(proto::metadata::VIN, vin.parse().unwrap());
    ParkingPaymentClient::new(channel)
        .start_session(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test]
async fn a_car_certificate_cannot_call_the_parking_adapter_directly() {
    let platform = Platform::start().await;
    // The car holds a valid certificate of the same root and wants to park as another car.
    let car = platform.pki.vehicle(VIN_A);
    let err = start_session_at_the_adapter(&platform, &car, VIN_B)
        .await
        .expect_err("a car's certificate must not open the adapter");
    // Refused during the handshake: with TLS 1.3 the client may learn of it on connect or on
    // its first call, which then fails at the transport, never with an answer of the adapter.
    assert!(
        err.starts_with("connect:") || err.starts_with("Unavailable") || err.starts_with("Unknown"),
        "{err}"
    );

    // The same call with the gateway's client certificate is served: the refusal is the car's.
    let session = start_session_at_the_adapter(&platform, &platform.pki.gateway_client, VIN_B)
        .await
        .expect("the gateway's certificate is accepted");
    assert!(session.session.is_some());
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

#[tokio::test]
async fn an_agent_refuses_a_gateway_whose_certificate_is_not_for_the_name_it_expects() {
    let platform = Platform::start().await;
    let mut config = platform.agent_config(VIN_A);
    config.server_name = Some("gateway.example".into());
    let link = vehicle_agent::GatewayLink::start(&config).unwrap();
    let method = proto::MethodPath::parse(LIST).unwrap();
    let err = link
        .call(&method, Default::default(), Duration::from_millis(500), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    assert!(!link.is_connected());
    link.shutdown().await;

    // The same car expecting the right name gets in: the refusal was about the name.
    config.server_name = Some("localhost".into());
    connected_agent(config).await.shutdown().await;
}

/// The platform with both gRPC endpoints of the gateway on: the partner API and the ops listener.
async fn platform_with_grpc_endpoints() -> Platform {
    Platform::start_with_pki(|pki, c| {
        c.partner_api = partner_api(pki.partners_ca());
        c.ops = ops(pki);
    })
    .await
}

#[tokio::test]
async fn a_socket_silent_on_a_grpc_endpoint_is_dropped_after_the_handshake_timeout() {
    let platform = platform_with_grpc_endpoints().await;
    let endpoints = [
        platform.gateway.partner_api_addr().expect("the partner API is on"),
        platform.gateway.ops_addr().expect("the ops listener is on"),
    ];
    let closed = endpoints.map(|addr| async move {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let limit = gateway::listeners::TLS_HANDSHAKE_TIMEOUT + SOON;
        let n = within(limit, silent.read(&mut buf), "the silent socket is closed").await;
        assert!(matches!(n, Ok(0) | Err(_)), "{addr}: expected EOF, got {n:?}");
    });
    futures::future::join_all(closed).await;
}

#[tokio::test]
async fn a_partner_call_sent_by_half_does_not_hold_the_gateways_stop() {
    let platform = platform_with_grpc_endpoints().await;
    let addr = platform.gateway.partner_api_addr().expect("the partner API is on");
    let mut tls = (*client_tls(&platform.pki.ca_cert, &platform.pki.partner("parking"))).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("the partner's handshake");
    let (mut calls, connection) = h2::client::handshake(stream).await.expect("HTTP/2");
    let connection = tokio::spawn(connection);
    let publish = || {
        http::Request::post(format!("https://{addr}/events.v1.PartnerEvents/Publish"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    // Headers sent, the message never: the call stays open until the peer ends it.
    let (stuck, _never_sent) = calls.send_request(publish(), false).expect("the call is sent");
    // A whole call after it on the same connection: once it is answered, the gateway has taken
    // the first one's headers (one connection's frames are read in order).
    let (answered, mut message) = calls.send_request(publish(), false).expect("the call is sent");
    message
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("an empty message");
    within(SOON, answered, "the whole call's answer")
        .await
        .expect("answered");

    within(
        gateway::listeners::STOP_GRACE + SOON,
        platform.restart_gateway(async {}),
        "the gateway's stop with a call sent by half",
    )
    .await;
    drop((stuck, calls, connection));
}
