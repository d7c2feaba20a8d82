//! The gateway link against a real MQTT broker (Mosquitto over mutual TLS) and a fake gateway.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::Code;

use common::{Broker, FakeGateway, Pki, SOON, VIN, free_port, install_provider, mosquitto_available};
use proto::MethodPath;
use proto::parking::v1::{ListNearbyLotsResponse, Lot, ParkingSession, StartSessionRequest, StartSessionResponse};
use proto::vehicle::v1::{Code as EnvCode, Event, Response};
use vehicle_agent::{Agent, GatewayLink};

fn list() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/ListNearbyLots").unwrap()
}

async fn connected(link: &GatewayLink) {
    tokio::time::timeout(SOON, link.wait_connected())
        .await
        .expect("the link connects");
}

#[tokio::test]
async fn calls_errors_duplicates_and_events() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut gw = FakeGateway::connect(&pki, broker.port).await;
    let link = GatewayLink::start(&pki.agent_config(VIN, &format!("localhost:{}", broker.port))).unwrap();
    connected(&link).await;
    assert!(link.is_connected());
    assert_eq!(link.vin().as_str(), VIN);

    // A call with the app's idempotency key.
    let call = tokio::spawn({
        let link = link.clone();
        async move {
            link.call(
                &list(),
                Bytes::from_static(b"ping"),
                Duration::from_secs(5),
                Some("key-1".into()),
            )
            .await
        }
    });
    let (vin, req) = gw.next_request().await;
    assert_eq!(vin, VIN);
    assert_eq!(req.method, "/parking.v1.ParkingPayment/ListNearbyLots");
    assert_eq!(req.idempotency_key, "key-1");
    assert_eq!(req.payload, b"ping");
    assert!(
        req.timeout_ms > 3000 && req.timeout_ms <= 5000,
        "timeout_ms {}",
        req.timeout_ms
    );
    uuid::Uuid::parse_str(&req.request_id).expect("request ids are UUIDs");
    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot A".into(),
            ..Default::default()
        }],
    };
    gw.respond(VIN, Response::ok(req.request_id.clone(), lots.encode_to_vec()))
        .await;
    let got = call.await.unwrap().unwrap();
    assert_eq!(ListNearbyLotsResponse::decode(got).unwrap(), lots);
    assert_eq!(link.pending_calls(), 0);

    // Without a key the request id is the key; an error status comes back as that status.
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call(&list(), Bytes::new(), Duration::from_secs(5), None).await }
    });
    let (_, req) = gw.next_request().await;
    assert_eq!(req.idempotency_key, req.request_id);
    // Garbage and answers nobody waits for are dropped without harm.
    gw.publish(&format!("/tenants/{VIN}/v1/resp"), vec![0xff, 0xff, 0xff])
        .await;
    gw.respond(VIN, Response::ok("not-a-request-of-ours", vec![])).await;
    gw.respond(
        VIN,
        Response::error(req.request_id.clone(), EnvCode::NotFound, "no such lot"),
    )
    .await;
    gw.respond(VIN, Response::ok(req.request_id.clone(), vec![1])).await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such lot");

    // Events reach every subscriber once, duplicates (same sequence) are dropped.
    let mut events = link.events();
    let event = |sequence| Event {
        partner: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: vec![7],
        sequence,
    };
    let topic = format!("/tenants/{VIN}/v1/events");
    gw.publish(&topic, event(1).encode_to_vec()).await;
    gw.publish(&topic, vec![0x0a, 0xff]).await;
    gw.publish(&topic, event(1).encode_to_vec()).await;
    gw.publish(&topic, event(2).encode_to_vec()).await;
    let first = tokio::time::timeout(SOON, events.recv()).await.unwrap().unwrap();
    assert_eq!(first, event(1));
    let second = tokio::time::timeout(SOON, events.recv()).await.unwrap().unwrap();
    assert_eq!(second, event(2));
    // Each numbered event is acknowledged (cumulatively), the redelivered one again.
    for expected in [1, 1, 2] {
        let (vin, ack) = gw.next_ack().await;
        assert_eq!((vin.as_str(), ack.sequence), (VIN, expected));
    }
    // Unnumbered events are shown but cannot be acknowledged.
    gw.publish(&topic, event(0).encode_to_vec()).await;
    gw.publish(&topic, event(3).encode_to_vec()).await;
    assert_eq!(
        tokio::time::timeout(SOON, events.recv()).await.unwrap().unwrap(),
        event(0)
    );
    assert_eq!(
        tokio::time::timeout(SOON, events.recv()).await.unwrap().unwrap(),
        event(3)
    );
    assert_eq!(gw.next_ack().await.1.sequence, 3);

    // Still working after all that.
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call(&list(), Bytes::new(), Duration::from_secs(5), None).await }
    });
    let (_, req) = gw.next_request().await;
    gw.respond(VIN, Response::ok(req.request_id, b"ok".to_vec())).await;
    assert_eq!(call.await.unwrap().unwrap(), Bytes::from_static(b"ok"));

    link.shutdown().await;
    assert!(!link.is_connected());
    let err = link
        .call(&list(), Bytes::new(), Duration::from_secs(1), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    broker.stop().await;
}

#[tokio::test]
async fn requests_made_before_the_link_is_up_go_out_on_connect() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut gw = FakeGateway::connect(&pki, broker.port).await;
    let link = GatewayLink::start(&pki.agent_config(VIN, &format!("localhost:{}", broker.port))).unwrap();

    // On this single-threaded runtime the link's task has not run yet: the call's first
    // poll finds the link down and leaves the request pending.
    let method = list();
    let call = link.call(
        &method,
        Bytes::from_static(b"queued"),
        Duration::from_secs(30),
        Some("k".into()),
    );
    tokio::pin!(call);
    assert!(futures::poll!(&mut call).is_pending());
    assert!(!link.is_connected());
    assert_eq!(link.pending_calls(), 1);

    let gateway = async {
        let (_, req) = gw.next_request().await;
        assert_eq!(req.payload, b"queued");
        assert_eq!(req.idempotency_key, "k");
        assert!(
            req.timeout_ms <= 30_000 && req.timeout_ms > 10_000,
            "timeout_ms {}",
            req.timeout_ms
        );
        gw.respond(VIN, Response::ok(req.request_id, b"done".to_vec())).await;
    };
    let (got, ()) = tokio::join!(call, gateway);
    assert_eq!(got.unwrap(), Bytes::from_static(b"done"));
    assert!(link.is_connected());
    link.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn pending_requests_survive_a_link_drop() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let port = free_port();
    let broker = Broker::start(&pki, port).await;
    let mut gw = FakeGateway::connect(&pki, port).await;
    let config = pki.agent_config(VIN, &format!("localhost:{port}"));
    let link = GatewayLink::start(&config).unwrap();
    connected(&link).await;

    let call = tokio::spawn({
        let link = link.clone();
        async move {
            link.call(&list(), Bytes::from_static(b"again"), Duration::from_secs(30), None)
                .await
        }
    });
    let (_, first) = gw.next_request().await;

    // Before the gateway answers, another connection with the car's identity takes the
    // session over (the broker drops the agent's link), then goes away again. The gateway
    // stays subscribed throughout, so the resend cannot be lost.
    let car = common::CertFiles {
        cert: config.cert.clone(),
        key: config.key.clone(),
    };
    let (intruder, mut eventloop) = common::mqtt_client(&pki, &car, VIN, port);
    let state = link.connection_state();
    tokio::time::timeout(SOON, async {
        while !matches!(
            eventloop.poll().await,
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
        ) {}
    })
    .await
    .expect("the intruder connects");
    drop((intruder, eventloop));

    let (_, again) = gw.next_request().await;
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(again.idempotency_key, first.idempotency_key);
    assert_eq!(again.payload, first.payload);
    assert!(again.timeout_ms <= first.timeout_ms);
    // The link went down and came back in between.
    assert!(state.has_changed().unwrap());
    gw.respond(VIN, Response::ok(again.request_id, b"once".to_vec())).await;
    assert_eq!(call.await.unwrap().unwrap(), Bytes::from_static(b"once"));
    link.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn agent_serves_partner_services_to_apps() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut gw = FakeGateway::connect(&pki, broker.port).await;
    // Dial the IP while checking the certificate against a configured name.
    let mut config = pki.agent_config(VIN, &format!("127.0.0.1:{}", broker.port));
    config.server_name = Some("localhost".into());
    let agent = Agent::start(config).await.unwrap();
    tokio::time::timeout(SOON, agent.wait_connected()).await.unwrap();
    assert!(agent.is_connected());
    assert_eq!(agent.vin().as_str(), VIN);

    let addr = agent.local_addr();
    let app = tokio::spawn(async move {
        let mut client =
            proto::parking::v1::parking_payment_client::ParkingPaymentClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let mut request = tonic::Request::new(StartSessionRequest {
            lot_id: "lot-1".into(),
            plate: "沪A12345".into(),
        });
        request.set_timeout(Duration::from_secs(5));
        request
            .metadata_mut()
            .insert("idempotency-key", "intent-42".parse().unwrap());
        client.start_session(request).await
    });
    let (vin, req) = gw.next_request().await;
    assert_eq!(vin, VIN);
    assert_eq!(req.method, "/parking.v1.ParkingPayment/StartSession");
    assert_eq!(req.idempotency_key, "intent-42");
    assert!(
        req.timeout_ms > 3000 && req.timeout_ms < 5000,
        "timeout_ms {}",
        req.timeout_ms
    );
    let sent = StartSessionRequest::decode(req.payload.as_slice()).unwrap();
    assert_eq!(sent.plate, "沪A12345");
    let reply = StartSessionResponse {
        session: Some(ParkingSession {
            session_id: "s-1".into(),
            lot_id: "lot-1".into(),
            ..Default::default()
        }),
    };
    gw.respond(VIN, Response::ok(req.request_id, reply.encode_to_vec()))
        .await;
    let got = app.await.unwrap().unwrap().into_inner();
    assert_eq!(got, reply);

    agent.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_gateway_with_the_wrong_name_is_refused() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut config = pki.agent_config(VIN, &format!("localhost:{}", broker.port));
    config.server_name = Some("gateway.example".into());
    let link = GatewayLink::start(&config).unwrap();
    let err = link
        .call(&list(), Bytes::new(), Duration::from_millis(500), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(!link.is_connected());
    link.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn the_agent_version_is_the_mqtt_username() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    // Taking the username from CONNECT (not the certificate) makes Mosquitto log it.
    let mut broker = Broker::start_with(&pki, free_port(), "allow_anonymous true\n").await;
    let link = GatewayLink::start(&pki.agent_config(VIN, &format!("localhost:{}", broker.port))).unwrap();
    connected(&link).await;
    let expected = format!("as {VIN} (p2, c1, k30, u'vehicle-agent/{}')", env!("CARGO_PKG_VERSION"));
    tokio::time::timeout(SOON, async {
        while let Some(line) = broker.log.recv().await {
            if line.contains("New client connected") {
                assert!(line.contains(&expected), "{line}");
                return;
            }
        }
        panic!("mosquitto exited");
    })
    .await
    .expect("mosquitto logs the connection");
    link.shutdown().await;
    broker.stop().await;
}
