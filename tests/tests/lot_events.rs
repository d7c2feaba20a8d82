//! The lot ends a session itself and the car hears about it: the exit gate calls the reference
//! adapter's lot port, the adapter ends and charges the session and pushes SessionEndedByLot
//! through the gateway's partner API to the car; an event committed before a kill -9 of the
//! adapter is published by the restarted adapter.

use integration_tests::*;
use prost::Message;
use proto::parking::v1::parking_lot_client::ParkingLotClient;
use proto::parking::v1::{LotEndReason, SessionEndedByLot, VehicleExitedRequest, VehicleExitedResponse};
use proto::vehicle::v1::Event;
use tonic::transport::Channel;

/// The exit gate of the Bund's garage reading the tests' plate.
fn leaving_the_bund() -> VehicleExitedRequest {
    VehicleExitedRequest {
        lot_id: parking_at_the_bund().lot_id,
        plate: parking_at_the_bund().plate,
    }
}

/// The operators CA file: what the lot port trusts.
fn operators_ca(pki: &TestPki) -> std::path::PathBuf {
    pki.layout.issuing_ca_cert(certs::IssuingCa::Operators)
}

/// The exit gate's client of the lot port at `addr`: an operator certificate.
async fn exit_gate(pki: &TestPki, addr: std::net::SocketAddr) -> ParkingLotClient<Channel> {
    let gate = pki.operator("bund-exit-gate");
    ParkingLotClient::new(pki.grpc_channel(addr, &gate).await.expect("connect to the lot port"))
}

/// The exit gate at `addr` sees the car [`leaving_the_bund`], which ends its session `session_id`.
async fn the_car_leaves(pki: &TestPki, addr: std::net::SocketAddr, session_id: &str) -> VehicleExitedResponse {
    let exited = exit_gate(pki, addr)
        .await
        .vehicle_exited(leaving_the_bund())
        .await
        .expect("the gate ends the session")
        .into_inner();
    assert_eq!(exited.session.as_ref().unwrap().session_id, session_id);
    exited
}

/// The parking partner's view of the gateway's partner API.
fn partner_api_of(platform: &Platform) -> parking_adapter::PartnerApi {
    let addr = platform.gateway.partner_api_addr().expect("the partner API is on");
    let me = platform.pki.partner("parking");
    let ca = std::fs::read_to_string(&platform.pki.ca_cert).unwrap();
    parking_adapter::PartnerApi::new(
        &format!("https://localhost:{}", addr.port()),
        &ca,
        &me.pem.cert_pem,
        &me.pem.key_pem,
    )
    .expect("partner API settings")
}

/// The event must be the lot's account of `exited`.
fn assert_ended_by_lot(event: &Event, exited: &VehicleExitedResponse) {
    assert_eq!(event.partner, PARKING);
    assert_eq!(event.kind, parking_adapter::lot::SESSION_ENDED_BY_LOT);
    let ended = SessionEndedByLot::decode(event.payload.as_slice()).expect("a SessionEndedByLot");
    assert_eq!(ended.reason(), LotEndReason::ExitGate);
    assert_eq!(ended.session, exited.session);
    assert_eq!(ended.receipt, exited.receipt);
}

#[tokio::test]
async fn a_car_that_leaves_through_the_exit_gate_hears_what_it_was_charged() {
    let platform = Platform::start_with_pki(|pki, c| c.partner_api = partner_api(pki.partners_ca())).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.subscribe_events().await;
    let session_id = car.park().await;
    let _publisher = AbortOnDrop(platform.parking.publish_events(partner_api_of(&platform)));

    // The lot port, over mTLS trusting the operators CA only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lot_addr = listener.local_addr().unwrap();
    let me = platform.pki.partner("parking");
    let operators = std::fs::read_to_string(operators_ca(&platform.pki)).unwrap();
    let tls = parking_adapter::mtls_config(&me.pem.cert_pem, &me.pem.key_pem, &operators);
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(parking_adapter::serve_lot(
        listener,
        Some(tls),
        platform.parking.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    // A car's certificate cannot reach the lot port: no ending sessions by plate.
    let car_creds = platform.pki.vehicle(VIN_A);
    let as_a_car = match platform.pki.grpc_channel(lot_addr, &car_creds).await {
        Ok(channel) => ParkingLotClient::new(channel)
            .vehicle_exited(leaving_the_bund())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(as_a_car, "a car's certificate is refused by the lot port");

    let exited = the_car_leaves(&platform.pki, lot_addr, &session_id).await;
    assert_eq!(platform.parking.charges(), 1);

    let event = car.next_event().await;
    assert_ended_by_lot(&event, &exited);
    // Once the gateway took it, the outbox is empty.
    outbox_empties(&platform.parking, "the outbox empties").await;
}

#[tokio::test]
async fn an_event_committed_before_kill_9_is_published_by_the_restarted_adapter() {
    // The adapter runs as a process on a port the test holds across its lives; the gateway
    // routes parking to it (the platform's in-process adapter stands by unused).
    let adapter_port = KeptPort::bind();
    let platform = Platform::start_with_pki(|pki, c| {
        c.partner_api = partner_api(pki.partners_ca());
        c.partners = vec![partner_entry(pki, PARKING, adapter_port.addr())];
    })
    .await;
    let pki = &platform.pki;
    let database = pki.path("parking-process.db");
    let nobody = RefusingPartner::new();
    let partner_api_addr = platform.gateway.partner_api_addr().unwrap();
    let args = |partner_api: std::net::SocketAddr, lot: bool| {
        let mut args = parking_adapter_args(pki, &database);
        args.extend([
            "--partner-api".into(),
            format!("https://localhost:{}", partner_api.port()),
            "--partner-api-ca".into(),
            pki.ca_cert.display().to_string(),
        ]);
        if lot {
            args.extend([
                "--lot-listen".into(),
                "127.0.0.1:0".into(),
                "--lot-client-ca".into(),
                operators_ca(pki).display().to_string(),
            ]);
        }
        args
    };
    let spawn = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::spawn_on(built_binary!("parking-adapter"), &args, adapter_port.socket())
    };

    // First life: it cannot reach the partner API (nobody listens there), so the event stays
    // in its outbox.
    let mut first_life = spawn(args(nobody.addr(), true));
    first_life.wait_for_line("parking adapter listening on").await;
    let lot_line = first_life.wait_for_line("parking lot listening on").await;
    let lot_addr: std::net::SocketAddr = lot_line
        .split_whitespace()
        .nth(4)
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("an address in {lot_line:?}"));

    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.subscribe_events().await;
    let session_id = car.park().await;
    let exited = the_car_leaves(pki, lot_addr, &session_id).await;
    first_life.kill9().await;

    // Second life, on the same database, with the gateway reachable.
    let mut second_life = spawn(args(partner_api_addr, false));
    second_life.wait_for_line("parking adapter listening on").await;
    let event = car.next_event().await;
    assert_ended_by_lot(&event, &exited);

    // Charged once, by the gate.
    let records = parking_adapter::ParkingService::open(&database).await.unwrap();
    assert_eq!(records.charges_recorded().await.unwrap(), 1);
    outbox_empties(&records, "the restarted adapter's outbox empties").await;
}

/// Waits, within [`SOON`], until `parking`'s outbox holds no event (the publisher deletes an
/// event right after the gateway accepted it, so a car may see it a moment before).
async fn outbox_empties(parking: &parking_adapter::ParkingService, what: &str) {
    until_answered(what, || async {
        (parking.events_waiting().await.unwrap() == 0).then_some(())
    })
    .await
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `request` as the gateway sends it for car `VIN_A`.
fn from_car_a<T>(request: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert(proto::metadata::VIN, VIN_A.parse().unwrap());
    request
        .metadata_mut()
        .insert(proto::metadata::IDEMPOTENCY_KEY, key.parse().unwrap());
    request
}

#[tokio::test]
async fn an_event_unsent_for_a_day_is_dropped_not_delivered_late() {
    use proto::parking::v1::parking_lot_server::ParkingLot;
    use proto::parking::v1::parking_payment_server::ParkingPayment;

    let platform = Platform::start_with_pki(|pki, c| c.partner_api = partner_api(pki.partners_ca())).await;
    let clock = parking_adapter::ManualClock::default();
    let lot = parking_adapter::ParkingService::open_with_clock(
        &platform.pki.path("lot-on-a-manual-clock.db"),
        std::sync::Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    // The lot's own calls, made in process: this test is about the outbox, not the ports.
    let park_and_leave = |key: &'static str| {
        let lot = lot.clone();
        async move {
            let started = lot.start_session(from_car_a(parking_at_the_bund(), key)).await.unwrap();
            lot.vehicle_exited(tonic::Request::new(leaving_the_bund()))
                .await
                .unwrap();
            started.into_inner().session.unwrap().session_id
        }
    };

    // Ended while nothing publishes, then a day and an hour go by.
    park_and_leave("first").await;
    clock.advance(std::time::Duration::from_secs(25 * 60 * 60));
    let second = park_and_leave("second").await;
    assert_eq!(lot.events_waiting().await.unwrap(), 2);

    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.subscribe_events().await;
    let _publisher = AbortOnDrop(lot.publish_events(partner_api_of(&platform)));
    let event = car.next_event().await;
    let ended = SessionEndedByLot::decode(event.payload.as_slice()).unwrap();
    assert_eq!(ended.session.unwrap().session_id, second, "the stale event was dropped");
    assert_eq!(event.sequence, 1);
    outbox_empties(&lot, "the outbox empties").await;
}

/// A gateway's partner API standing in for the real one, answering each Publish with the next
/// scripted status (then OK), and recording the event ids it was sent.
#[derive(Clone, Default)]
struct ScriptedPartnerApi {
    answers: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<tonic::Code>>>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl proto::events::v1::partner_events_server::PartnerEvents for ScriptedPartnerApi {
    async fn publish(
        &self,
        request: tonic::Request<proto::events::v1::PublishRequest>,
    ) -> Result<tonic::Response<proto::events::v1::PublishResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(request.into_inner().event_id);
        match self.answers.lock().unwrap().pop_front() {
            Some(code) => Err(tonic::Status::new(code, "scripted")),
            None => Ok(tonic::Response::new(proto::events::v1::PublishResponse { sequence: 1 })),
        }
    }
}

#[tokio::test]
async fn the_publisher_retries_an_unavailable_gateway_with_the_same_event_id_and_drops_a_refused_event() {
    use proto::parking::v1::parking_lot_server::ParkingLot;
    use proto::parking::v1::parking_payment_server::ParkingPayment;

    init();
    let pki = TestPki::new();
    // The stand-in serves as the gateway does: its server certificate, partners only.
    let api = ScriptedPartnerApi::default();
    api.answers.lock().unwrap().extend([
        tonic::Code::Unavailable,
        tonic::Code::Unavailable,
        tonic::Code::InvalidArgument,
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &pki.gateway.pem.cert_pem,
            &pki.gateway.pem.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            std::fs::read(pki.partners_ca()).unwrap(),
        ));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(proto::events::v1::partner_events_server::PartnerEventsServer::new(
            api.clone(),
        ));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));

    let lot = parking_service(&pki).await;
    let me = pki.partner("parking");
    let partner_api = parking_adapter::PartnerApi::new(
        &format!("https://localhost:{}", addr.port()),
        &std::fs::read_to_string(&pki.ca_cert).unwrap(),
        &me.pem.cert_pem,
        &me.pem.key_pem,
    )
    .unwrap();
    let _publisher = AbortOnDrop(lot.publish_events(partner_api));

    // First event: UNAVAILABLE twice, then accepted, under one event id.
    let started = lot
        .start_session(from_car_a(parking_at_the_bund(), "first"))
        .await
        .unwrap();
    let first = started.into_inner().session.unwrap().session_id;
    lot.vehicle_exited(tonic::Request::new(leaving_the_bund()))
        .await
        .unwrap();
    outbox_empties(&lot, "the first event is published after two failures").await;
    let expected = format!("{first}-ended-by-lot");
    assert_eq!(
        *api.seen.lock().unwrap(),
        [expected.clone(), expected.clone(), expected]
    );

    // Second event: refused as malformed, which no retry can fix: dropped after one try.
    api.seen.lock().unwrap().clear();
    lot.start_session(from_car_a(parking_at_the_bund(), "second"))
        .await
        .unwrap();
    lot.vehicle_exited(tonic::Request::new(leaving_the_bund()))
        .await
        .unwrap();
    outbox_empties(&lot, "the refused event leaves the outbox").await;
    assert_eq!(api.seen.lock().unwrap().len(), 1);
}
