//! Fleet operations over the wire: the ops listener admits operators only, shows live sessions
//! and their changes, kicks a car, and revokes one so that it stays out: at once, on a resumed
//! TLS session too, across a restart, and by a CRL file reloaded without a restart.

use std::time::{Duration, Instant};

use gateway::DisconnectReason;
use integration_tests::*;
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use proto::fleet::v1::get_customer_request::By;
use proto::fleet::v1::session_change::Kind;
use proto::fleet::v1::timeline_entry::What;
use proto::fleet::v1::{
    CreateCustomerRequest, CustomerTimelineRequest, GetCustomerRequest, KickVehicleRequest, LinkVehicleRequest,
    ListRevocationsRequest, ListSessionsRequest, RevokeVehicleRequest, TimelineEntry, VehicleRole,
    VehicleTimelineRequest, WatchSessionsRequest,
};
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn platform_with_ops() -> Platform {
    Platform::start_with_pki(|pki, config| config.ops = ops(pki)).await
}

/// Asserts that `answer` is an error with `code` whose message names each of `names`.
#[track_caller]
fn assert_refused<T>(answer: Result<tonic::Response<T>, tonic::Status>, code: Code, names: &[&str]) {
    let Err(status) = answer else {
        panic!("answered, not refused with {code:?}");
    };
    assert_eq!(status.code(), code, "{status:?}");
    for name in names {
        assert!(status.message().contains(name), "{status:?} does not name {name}");
    }
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
    assert_refused(
        ops.revoke_vehicle(RevokeVehicleRequest {
            vin: "NOT-A-VIN".into(),
            reason: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["NOT-A-VIN"],
    );
    assert_refused(
        ops.list_sessions(ListSessionsRequest {
            vin_prefix: "%".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &[],
    );
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

/// Another node's revocation (in the shared database) reaches this node within the reload
/// interval: the car's live session here ends, and it cannot come back.
#[tokio::test]
async fn a_revocation_made_on_another_node_ends_the_session_here() {
    let platform = Platform::start_with_pki(|pki, config| {
        config.ops = ops(pki);
        config.revocation.reload_interval = Duration::from_millis(50);
    })
    .await;
    let mut events = platform.connection_events();
    let _car = WireCar::connect(&platform, VIN_A).await;
    let other_node = platform.gateway.store();
    let vin = proto::Vin::parse(VIN_A).unwrap();
    other_node
        .revoke_vehicle(&vin, gateway::clock::now_ms(), "reported stolen", "bob")
        .await
        .unwrap();
    let reason = within(SOON, disconnected(&mut events, VIN_A), "the session here ends").await;
    assert_eq!(reason, DisconnectReason::Revoked);
    let mut again = WireCar::open(&platform, VIN_A).await;
    assert_eq!(again.connect_as(VIN_A).await, Some(ConnectReturnCode::NotAuthorized));
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
    until_answered("the reloaded CRL refuses the car", || async {
        let mut car = WireCar::open_with(&platform, client_tls(&platform.pki.ca_cert, &creds)).await;
        match car.connect_as(VIN_A).await {
            Some(ConnectReturnCode::NotAuthorized) => Some(()),
            // Not reloaded yet (every 50 ms): ask again.
            Some(ConnectReturnCode::Success | ConnectReturnCode::ServiceUnavailable) => None,
            other => panic!("unexpected answer to CONNECT: {other:?}"),
        }
    })
    .await;
    // A certificate of the same VIN that is not on the list still gets in.
    let _reissued = WireCar::connect(&platform, VIN_A).await;
}

/// The timeline of `vin` (first page, everything so far) once it holds `rows` entries.
async fn timeline_of(
    ops: &mut FleetOpsClient<tonic::transport::Channel>,
    vin: &str,
    rows: usize,
) -> Vec<TimelineEntry> {
    until_answered("the timeline fills", || {
        let mut ops = ops.clone();
        async move {
            let request = VehicleTimelineRequest {
                vin: vin.into(),
                ..Default::default()
            };
            let page = ops.vehicle_timeline(request).await.unwrap().into_inner();
            (page.entries.len() >= rows).then_some(page.entries)
        }
    })
    .await
}

fn describe(entry: &TimelineEntry) -> String {
    match entry.what.as_ref().unwrap() {
        What::Request(r) => format!("request {}/{} {}", r.service, r.method, r.code_name),
        What::Event(e) => format!("event {} {}", e.service, e.kind),
        What::Session(s) => format!("session {:?} {}", s.change(), s.detail),
    }
}

#[tokio::test]
async fn a_cars_connect_request_and_revocation_are_in_its_timeline_and_its_customers() {
    let platform = platform_with_ops().await;
    let mut ops = operator(&platform).await;
    let customer = ops
        .create_customer(CreateCustomerRequest {
            display_name: "Li Wei".into(),
        })
        .await
        .unwrap()
        .into_inner();
    ops.link_vehicle(LinkVehicleRequest {
        customer_id: customer.id.clone(),
        vin: VIN_A.into(),
        role: VehicleRole::Owner.into(),
    })
    .await
    .unwrap();

    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.park().await;
    ops.revoke_vehicle(RevokeVehicleRequest {
        vin: VIN_A.into(),
        reason: "stolen".into(),
    })
    .await
    .unwrap();

    let entries = timeline_of(&mut ops, VIN_A, 4).await;
    let seen: Vec<String> = entries.iter().map(describe).collect();
    assert!(seen[0].starts_with("session Connected"), "{seen:?}");
    assert!(
        seen.contains(&"request parking.v1.ParkingPayment/StartSession OK".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"session Revoked by alice: stolen".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("session Disconnected certificate revoked")),
        "{seen:?}"
    );
    assert!(entries.iter().all(|e| e.vin == VIN_A));

    let of_customer = ops
        .customer_timeline(CustomerTimelineRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        of_customer.entries.len(),
        entries.len(),
        "all of it happened while the car was theirs"
    );
    let found = ops
        .get_customer(GetCustomerRequest {
            by: Some(By::Vin(VIN_A.into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.id, customer.id);
    assert_eq!(found.vehicles[0].role(), VehicleRole::Owner);
}

#[tokio::test]
async fn timelines_page_through_a_long_range_and_unknown_ids_are_not_found() {
    let platform = platform_with_ops().await;
    let mut ops = operator(&platform).await;
    for _ in 0..3 {
        let car = WireCar::connect(&platform, VIN_A).await;
        drop(car);
    }
    let all = timeline_of(&mut ops, VIN_A, 6).await;
    // Ten years back, two entries a page: every page at most two, together the whole history.
    let ten_years_ago = gateway::clock::now_ms() - 10 * 365 * 24 * 3600 * 1000;
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = ops
            .vehicle_timeline(VehicleTimelineRequest {
                vin: VIN_A.into(),
                from_ms: ten_years_ago,
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(paged.len() >= all.len());
    assert_eq!(paged[..all.len()], all[..]);

    assert_refused(
        ops.vehicle_timeline(VehicleTimelineRequest {
            vin: VIN_B.into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &[VIN_B],
    );
    assert_refused(
        ops.customer_timeline(CustomerTimelineRequest {
            customer_id: "c-nobody".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["c-nobody"],
    );
    assert_refused(
        ops.get_customer(GetCustomerRequest {
            by: Some(By::Vin(VIN_B.into())),
        })
        .await,
        Code::NotFound,
        &[VIN_B],
    );
    assert_refused(
        ops.vehicle_timeline(VehicleTimelineRequest {
            vin: VIN_A.into(),
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &[],
    );
}

#[tokio::test]
async fn an_open_watch_ends_when_the_gateway_stops_and_does_not_hold_the_stop() {
    let platform = platform_with_ops().await;
    let mut changes = operator(&platform)
        .await
        .watch_sessions(WatchSessionsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let (_platform, ended) = within(
        SOON,
        platform.restart_gateway(changes.message()),
        "the gateway's stop with a watch open",
    )
    .await;
    let status = ended.expect_err("the watch ends with a status, not as if it were done");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("stopping"), "{status:?}");
}

#[tokio::test]
async fn session_streams_beyond_the_bound_are_refused() {
    let platform = Platform::start_with_pki(|pki, config| {
        let mut ops = ops(pki).unwrap();
        ops.max_watchers = 1;
        config.ops = Some(ops);
    })
    .await;
    let mut client = operator(&platform).await;
    let _first = client
        .watch_sessions(WatchSessionsRequest::default())
        .await
        .expect("the first stream is served");
    assert_refused(
        client.watch_sessions(WatchSessionsRequest::default()).await,
        Code::ResourceExhausted,
        &["ops.max_watchers"],
    );
}
