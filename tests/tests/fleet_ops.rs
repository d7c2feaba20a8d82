//! Fleet operations over the wire: the ops listener admits operators only, shows live sessions
//! and their changes, kicks a car, and revokes one so that it stays out: at once, on a resumed
//! TLS session too, across a restart, and by a CRL file reloaded without a restart.

use std::time::{Duration, Instant};

use gateway::DisconnectReason;
use integration_tests::*;
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use proto::fleet::v1::session_change::Kind;
use proto::fleet::v1::{
    KickVehicleRequest, ListRevocationsRequest, ListSessionsRequest, RevokeVehicleRequest, WatchSessionsRequest,
};
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn platform_with_ops() -> Platform {
    Platform::start_with_pki(|pki, config| config.ops = ops(pki)).await
}

async fn operator(platform: &Platform) -> FleetOpsClient<tonic::transport::Channel> {
    platform.fleet_ops(&platform.pki.operator("alice")).await
}

#[tokio::test]
async fn only_operators_may_call_the_ops_api() {
    let platform = platform_with_ops().await;
    let list = || tonic::Request::new(ListSessionsRequest::default());

    // No client certificate at all: the TLS layer lets it in (for probes), the API does not.
    let addr = platform.gateway.ops_addr().unwrap();
    let anonymous = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&platform.pki.ca_cert).unwrap())),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS without a client certificate connects");
    let refused = FleetOpsClient::new(anonymous).list_sessions(list()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // A vehicle's certificate is not signed by the operators CA: refused at the handshake or
    // by the API, never served.
    if let Ok(mut as_car) = platform.try_fleet_ops(&platform.pki.vehicle(VIN_A)).await {
        let refused = as_car.list_sessions(list()).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::Unavailable | Code::Unknown
            ),
            "{refused:?}"
        );
    }
    if let Ok(mut as_partner) = platform.try_fleet_ops(&platform.pki.partner("parking")).await {
        let refused = as_partner.list_sessions(list()).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::Unavailable | Code::Unknown
            ),
            "{refused:?}"
        );
    }

    let listed = operator(&platform)
        .await
        .list_sessions(list())
        .await
        .expect("an operator is served");
    assert!(listed.into_inner().live.is_empty());
}

#[tokio::test]
async fn a_car_appears_in_the_live_list_and_the_stream_and_leaves_with_its_reason() {
    let platform = platform_with_ops().await;
    let mut ops = operator(&platform).await;
    let mut changes = ops
        .watch_sessions(WatchSessionsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let car = RawCar::connect(&platform, VIN_A).await;
    let change = within(SOON, changes.message(), "a session change")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.kind(), Kind::Connected);
    assert_eq!(change.session.as_ref().unwrap().vin, VIN_A);

    let listed = ops
        .list_sessions(ListSessionsRequest {
            vin_prefix: "lsv".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.live_total, 1);
    assert_eq!(listed.live[0].vin, VIN_A);
    assert_eq!(listed.live[0].disconnected_at_ms, 0);

    let kicked = ops
        .kick_vehicle(KickVehicleRequest { vin: VIN_A.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(kicked.was_connected);
    let change = within(SOON, changes.message(), "a session change")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.kind(), Kind::Disconnected);
    assert_eq!(
        change.session.as_ref().unwrap().disconnect_reason,
        "kicked by an operator"
    );
    drop(car);

    let listed = ops
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.live.is_empty());
    assert_eq!(listed.recently_closed[0].vin, VIN_A);
    assert_eq!(listed.recently_closed[0].disconnect_reason, "kicked by an operator");
}

#[tokio::test]
async fn a_kicked_car_may_come_back() {
    let platform = platform_with_ops().await;
    let mut events = platform.connection_events();
    let _car = WireCar::connect(&platform, VIN_A).await;
    operator(&platform)
        .await
        .kick_vehicle(KickVehicleRequest { vin: VIN_A.into() })
        .await
        .unwrap();
    assert_eq!(
        disconnected(&mut events, VIN_A).await,
        DisconnectReason::KickedByOperator
    );
    let _again = WireCar::connect(&platform, VIN_A).await;
}

#[tokio::test]
async fn bad_ids_are_refused_with_the_id_in_the_message() {
    let platform = platform_with_ops().await;
    let mut ops = operator(&platform).await;
    let bad = ops
        .revoke_vehicle(RevokeVehicleRequest {
            vin: "NOT-A-VIN".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("NOT-A-VIN"), "{bad:?}");
    let bad = ops
        .list_sessions(ListSessionsRequest {
            vin_prefix: "%".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn revocation_ends_the_session_at_once_and_refuses_resumed_and_full_handshakes() {
    let platform = platform_with_ops().await;
    let mut events = platform.connection_events();
    let creds = platform.pki.vehicle(VIN_A);
    // One client config for every connection of this car: its TLS session cache lets the next
    // handshake resume, as a real car's would.
    let config = client_tls(&platform.pki.ca_cert, &creds);
    let mut car = WireCar::open_with(&platform, config.clone()).await;
    assert_eq!(car.connect_as(VIN_A).await, Some(ConnectReturnCode::Success));

    let revoked_at = Instant::now();
    let revoked = operator(&platform)
        .await
        .revoke_vehicle(RevokeVehicleRequest {
            vin: VIN_A.into(),
            reason: "reported stolen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.was_connected);
    let reason = within(
        Duration::from_secs(1),
        disconnected(&mut events, VIN_A),
        "the revoked car's session ends",
    )
    .await;
    assert_eq!(reason, DisconnectReason::Revoked);
    eprintln!("revoke call to disconnect: {:?}", revoked_at.elapsed());
    assert!(car.read().await.is_none(), "the gateway closed the connection");

    let mut resumed = WireCar::open_with(&platform, config).await;
    assert!(
        resumed.resumed(),
        "the premise: this handshake resumed the earlier TLS session"
    );
    assert_eq!(resumed.connect_as(VIN_A).await, Some(ConnectReturnCode::NotAuthorized));

    let mut full = WireCar::open(&platform, VIN_A).await;
    assert!(!full.resumed());
    assert_eq!(full.connect_as(VIN_A).await, Some(ConnectReturnCode::NotAuthorized));

    // Another car is untouched.
    let _other = WireCar::connect(&platform, VIN_B).await;
}

#[tokio::test]
async fn a_revocation_survives_a_restart() {
    let platform = platform_with_ops().await;
    operator(&platform)
        .await
        .revoke_vehicle(RevokeVehicleRequest {
            vin: VIN_A.into(),
            reason: "decommissioned".into(),
        })
        .await
        .unwrap();
    let (platform, ()) = platform.restart_gateway(async {}).await;
    let mut car = WireCar::open(&platform, VIN_A).await;
    assert_eq!(car.connect_as(VIN_A).await, Some(ConnectReturnCode::NotAuthorized));
    let listed = operator(&platform)
        .await
        .list_revocations(ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.revocations.len(), 1);
    assert_eq!(listed.revocations[0].vin, VIN_A);
    assert_eq!(listed.revocations[0].reason, "decommissioned");
    assert_eq!(listed.revocations[0].revoked_by, "alice");
}

#[tokio::test]
async fn a_crl_written_by_the_certs_tool_is_reloaded_without_a_restart() {
    let pki_crl = std::sync::Mutex::new(None);
    let platform = Platform::start_with_pki(|pki, config| {
        let path = pki.path("vehicles.crl.pem");
        certs::write_revocation_list(&path, &pki.ca.vehicle_revocation_list(&[], 30).unwrap()).unwrap();
        config.tls.crls = vec![path.clone()];
        config.revocation.reload_interval = Duration::from_millis(50);
        *pki_crl.lock().unwrap() = Some(path);
    })
    .await;
    let crl = pki_crl.lock().unwrap().clone().unwrap();
    let mut before = WireCar::open(&platform, VIN_A).await;
    assert_eq!(before.connect_as(VIN_A).await, Some(ConnectReturnCode::Success));
    drop(before);
    // Issued last: the fixture writes each certificate of a VIN to the same file.
    let creds = platform.pki.vehicle(VIN_A);

    let list = platform
        .pki
        .ca
        .vehicle_revocation_list(&[&creds.pem.cert_pem], 30)
        .unwrap();
    certs::write_revocation_list(&crl, &list).unwrap();
    within(
        SOON,
        async {
            loop {
                let mut car = WireCar::open_with(&platform, client_tls(&platform.pki.ca_cert, &creds)).await;
                match car.connect_as(VIN_A).await {
                    Some(ConnectReturnCode::NotAuthorized) => break,
                    // Not reloaded yet (every 50 ms): ask again a little later.
                    Some(ConnectReturnCode::Success | ConnectReturnCode::ServiceUnavailable) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => panic!("unexpected answer to CONNECT: {other:?}"),
                }
            }
        },
        "the reloaded CRL refuses the car",
    )
    .await;
    // A certificate of the same VIN that is not on the list still gets in.
    let _reissued = WireCar::connect(&platform, VIN_A).await;
}
