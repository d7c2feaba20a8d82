//! Partners push events to cars: stored per VIN, delivered in order, redelivered until the
//! car acknowledges them, and a partner can speak only for its own service. The agent keeps
//! them until an in-car app has taken them, and acknowledges them only then.

use integration_tests::*;
use prost::Message;
use proto::events::v1::PublishRequest;
use proto::events::v1::partner_events_client::PartnerEventsClient;
use proto::vehicle::v1::EventAck;
use rumqttc::QoS;
use tonic::transport::Channel;

/// The platform with the partner API on, trusting only the partners CA.
async fn platform_with_partner_api() -> Platform {
    platform_with_partner_api_and(|_| {}).await
}

/// The platform with the partner API on, trusting only the partners CA, with `tweak` applied.
async fn platform_with_partner_api_and(tweak: impl FnOnce(&mut gateway::GatewayConfig)) -> Platform {
    Platform::start_with_pki(|pki, c| {
        c.partner_api = partner_api(pki.partners_ca());
        tweak(c);
    })
    .await
}

/// The parking partner's client of the partner API.
async fn parking_partner(platform: &Platform) -> PartnerEventsClient<Channel> {
    platform.partner_events(&platform.pki.partner("parking")).await
}

/// The platform with the partner API on, and the parking partner's client of it.
async fn platform_and_parking_partner() -> (Platform, PartnerEventsClient<Channel>) {
    let platform = platform_with_partner_api().await;
    let partner = parking_partner(&platform).await;
    (platform, partner)
}

/// A car played by a stock client, listening for its events.
async fn listening_car(platform: &Platform, vin: &str) -> RawCar {
    let mut car = RawCar::connect(platform, vin).await;
    car.subscribe_events().await;
    car
}

/// Publishes `event` as `partner`, which must be accepted: its sequence number.
async fn published(partner: &mut PartnerEventsClient<Channel>, event: PublishRequest) -> u64 {
    partner.publish(event).await.expect("accepted").into_inner().sequence
}

/// The car `first` is for, listening for its events, once it has read `first` (sequence 1),
/// which `partner` pushed to it, and not acknowledged it.
async fn a_car_that_read(
    platform: &Platform,
    partner: &mut PartnerEventsClient<Channel>,
    first: PublishRequest,
) -> RawCar {
    let vin = first.vin.clone();
    partner.publish(first).await.unwrap();
    let mut car = listening_car(platform, &vin).await;
    assert_eq!(car.next_event().await.sequence, 1);
    car
}

fn event(vin: &str, id: &str, kind: &str) -> PublishRequest {
    PublishRequest {
        vin: vin.into(),
        service: PARKING.into(),
        kind: kind.into(),
        payload: kind.as_bytes().to_vec(),
        event_id: id.into(),
        ttl_seconds: 0,
    }
}

#[tokio::test]
async fn events_pushed_while_the_car_is_away_arrive_in_order_when_it_connects() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    for (i, kind) in ["session.started", "session.extended", "session.ended"]
        .iter()
        .enumerate()
    {
        let seq = published(&mut partner, event(VIN_A, &format!("e{i}"), kind)).await;
        assert_eq!(seq, i as u64 + 1);
    }
    let car = vehicle_agent::Agent::start(platform.agent_config(VIN_A)).await.unwrap();
    let mut events = car.link().subscribe_events(0).unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = within(SOON, events.next(), "event").await.unwrap();
        kinds.push((e.sequence, e.kind));
    }
    assert_eq!(
        kinds,
        vec![
            (1, "session.started".into()),
            (2, "session.extended".into()),
            (3, "session.ended".into())
        ]
    );
    car.shutdown().await;
}

/// The kinds of the next `n` events an app of `agent` is shown after `after_sequence`.
async fn shown_to_an_app(agent: &vehicle_agent::Agent, after_sequence: u64, n: usize) -> Vec<String> {
    let mut events = agent.link().subscribe_events(after_sequence).unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < n {
        kinds.push(
            within(SOON, events.next(), "an event reaches the app")
                .await
                .unwrap()
                .kind,
        );
    }
    kinds
}

#[tokio::test]
async fn events_published_while_no_app_listens_reach_the_app_that_subscribes_later_and_are_acked_only_then() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    // Published while the agent is down, then it comes up with no app listening.
    for i in 1..=5 {
        published(&mut partner, event(VIN_A, &format!("e{i}"), &format!("k{i}"))).await;
    }
    let config = platform.agent_config(VIN_A);
    let car = connected_agent(config.clone()).await;
    eventually("the agent keeps the 5 events", || car.link().kept_events() == 5).await;
    // The app subscribes later: all 5, in order. It does not acknowledge, and the agent stops.
    assert_eq!(shown_to_an_app(&car, 0, 5).await, ["k1", "k2", "k3", "k4", "k5"]);
    car.shutdown().await;
    // The gateway got no acknowledgement: another connection of the car gets all 5 again.
    let mut raw = listening_car(&platform, VIN_A).await;
    for sequence in 1..=5 {
        assert_eq!(raw.next_event().await.sequence, sequence);
    }
    drop(raw);

    // Restarted on its state directory: the app resumes after what it handled (3) and
    // acknowledges; the gateway then forgets them, and only a new event is delivered.
    let car = connected_agent(config).await;
    assert_eq!(shown_to_an_app(&car, 3, 2).await, ["k4", "k5"]);
    assert_eq!(car.link().ack_events(5).await.unwrap(), 0);
    published(&mut partner, event(VIN_A, "e6", "k6")).await;
    assert_eq!(
        shown_to_an_app(&car, 0, 1).await,
        ["k6"],
        "nothing taken is shown again"
    );
    car.shutdown().await;
    let mut raw = listening_car(&platform, VIN_A).await;
    assert_eq!(raw.next_event().await.sequence, 6, "1 to 5 were acknowledged");
}

#[tokio::test]
async fn unacknowledged_events_are_redelivered_after_reconnect_and_acked_ones_are_not() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    let car = a_car_that_read(&platform, &mut partner, event(VIN_A, "gate-1", "session.ended")).await;
    drop(car); // gone without acknowledging

    let mut car = listening_car(&platform, VIN_A).await;
    assert_eq!(car.next_event().await.sequence, 1, "redelivered");
    car.ack_events(1).await;
    drop(car);

    partner
        .publish(event(VIN_A, "gate-2", "session.started"))
        .await
        .unwrap();
    let mut car = listening_car(&platform, VIN_A).await;
    assert_eq!(
        car.next_event().await.sequence,
        2,
        "the acknowledged event is not sent again"
    );
}

/// A partner's publish may reach another node sharing the database: here the event is stored as
/// that node would store it, and this node is not told. The car connected here still gets it,
/// once this node looks for other nodes' events.
#[tokio::test]
async fn an_event_another_node_stored_reaches_the_car_connected_here() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    let mut car = a_car_that_read(&platform, &mut partner, event(VIN_A, "e1", "session.started")).await;
    let other_node = platform.gateway.store();
    let now = gateway::clock::now_ms();
    let stored = other_node
        .append_event(
            &gateway::store::NewEvent {
                vin: proto::Vin::parse(VIN_A).unwrap(),
                service: PARKING.into(),
                kind: "session.ended".into(),
                payload: b"session.ended".to_vec(),
                event_id: "e2".into(),
                created_at_ms: now,
                expires_at_ms: now + 3_600_000,
            },
            u64::MAX,
        )
        .await
        .expect("stored by the other node");
    assert_eq!(stored, gateway::store::Appended::Stored(2));
    let next = within(
        gateway::events::OTHER_NODES_INTERVAL + SOON,
        car.next_event(),
        "the other node's event",
    )
    .await;
    assert_eq!((next.sequence, next.kind.as_str()), (2, "session.ended"));
}

#[tokio::test]
async fn publishing_the_same_event_id_twice_stores_it_once() {
    let (_platform, mut partner) = platform_and_parking_partner().await;
    let a = published(&mut partner, event(VIN_A, "same", "x")).await;
    let b = published(&mut partner, event(VIN_A, "same", "x")).await;
    assert_eq!(a, b);
    let c = published(&mut partner, event(VIN_A, "other", "x")).await;
    assert_eq!(c, a + 1);
}

#[tokio::test]
async fn a_partner_may_publish_only_for_its_own_service() {
    let platform = platform_with_partner_api().await;
    let mut other = platform.partner_events(&platform.pki.partner("navigation")).await;
    let err = other
        .publish(event(VIN_A, "e1", "x"))
        .await
        .expect_err("not navigation's service");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut parking = parking_partner(&platform).await;
    let mut wrong_service = event(VIN_A, "e2", "x");
    wrong_service.service = "navigation.v1.Navigation".into();
    assert_eq!(
        parking.publish(wrong_service).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    let mut bad_vin = event("NOT-A-VIN", "e3", "x");
    bad_vin.service = PARKING.into();
    assert_eq!(
        parking.publish(bad_vin).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_car_or_operator_certificate_cannot_use_the_partner_api() {
    let platform = platform_with_partner_api().await;
    for (who, creds) in [
        ("a car", platform.pki.vehicle(VIN_A)),
        ("an operator", platform.pki.operator("night-shift")),
    ] {
        // The partners CA does not know them: refused at the handshake, which with TLS 1.3
        // the client may learn of on connect or on its first call.
        let refused = match platform.try_partner_events(&creds).await {
            Err(_) => true,
            Ok(mut client) => {
                let err = client
                    .publish(event(VIN_B, "e1", "x"))
                    .await
                    .expect_err("not a partner");
                matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
            }
        };
        assert!(refused, "{who} got through the partner API's handshake");
    }
}

#[tokio::test]
async fn behind_a_ca_that_admits_every_role_a_car_is_still_not_a_partner() {
    // A deployment that hands the partner API the root: the handshake admits cars, the role
    // in the certificate does not.
    let platform = Platform::start_with_pki(|pki, c| c.partner_api = partner_api(pki.ca_cert.clone())).await;
    let mut car_as_partner = platform.partner_events(&platform.pki.vehicle(VIN_A)).await;
    let err = car_as_partner
        .publish(event(VIN_B, "e1", "x"))
        .await
        .expect_err("cars are not partners");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("role partner"), "{}", err.message());

    let mut partner = parking_partner(&platform).await;
    partner
        .publish(event(VIN_B, "e1", "x"))
        .await
        .expect("a partner publishes");
}

#[tokio::test]
async fn a_partner_gets_resource_exhausted_beyond_the_events_waiting_for_one_car() {
    let platform = platform_with_partner_api_and(|c| c.events.max_pending_per_vin = 2).await;
    let mut partner = parking_partner(&platform).await;
    for id in ["e1", "e2"] {
        partner.publish(event(VIN_A, id, "x")).await.expect("within the quota");
    }
    let full = partner.publish(event(VIN_A, "e3", "x")).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("retry later with the same event_id"));
    // Another car has room; once the car acknowledges, so does it.
    partner.publish(event(VIN_B, "e1", "x")).await.expect("another car");
    let mut car = listening_car(&platform, VIN_A).await;
    let first = car.next_event().await.sequence;
    car.ack_events(first).await;
    // The acknowledgement is written behind the car's back: the partner retries until there is room.
    until_answered("the acknowledgement makes room", || {
        let mut partner = partner.clone();
        async move {
            match partner.publish(event(VIN_A, "e3", "x")).await {
                Ok(_) => Some(()),
                Err(e) if e.code() == tonic::Code::ResourceExhausted => None,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_partner_over_its_publish_rate_gets_resource_exhausted() {
    let platform = platform_with_partner_api_and(|c| {
        c.events.max_per_second_per_partner = std::num::NonZeroU32::new(1).unwrap();
        c.events.burst_per_partner = std::num::NonZeroU32::new(3).unwrap();
    })
    .await;
    let mut partner = parking_partner(&platform).await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let outcome = partner.publish(event(VIN_A, &format!("e{i}"), "x")).await;
        codes.push(outcome.map_or_else(|e| e.code(), |_| tonic::Code::Ok));
    }
    assert_eq!(
        codes,
        [[tonic::Code::Ok; 3].as_slice(), &[tonic::Code::ResourceExhausted; 2]].concat()
    );
}

#[tokio::test]
async fn one_cars_ack_flood_does_not_delay_another_cars_events() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    let flooder = a_car_that_read(&platform, &mut partner, event(VIN_A, "a-1", "x")).await;
    let mut car = listening_car(&platform, VIN_B).await;

    // Car A acknowledges over and over, at QoS 0, as fast as its publish rate lets it.
    let RawCar {
        client,
        mut eventloop,
        vin,
    } = flooder;
    let flood = tokio::spawn(async move {
        let ack = EventAck { sequence: 1 }.encode_to_vec();
        loop {
            let _ = client.try_publish(proto::topics::event_acks(&vin), QoS::AtMostOnce, false, ack.clone());
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    });
    // Meanwhile car B's events arrive, one after the other.
    for i in 1..=5 {
        partner.publish(event(VIN_B, &format!("b-{i}"), "x")).await.unwrap();
        assert_eq!(car.next_event().await.sequence, i);
    }
    flood.abort();
}

#[tokio::test]
async fn an_event_over_the_maximum_size_is_refused_and_nothing_is_stored() {
    let platform = platform_with_partner_api_and(|c| c.events.max_payload_bytes = 1024).await;
    let mut partner = parking_partner(&platform).await;
    let mut big = event(VIN_A, "big", "x");
    big.payload = vec![0; 1025];
    let refused = partner.publish(big).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("1024"), "the limit is named: {refused:?}");
    // Nothing was stored: the next event is the car's first.
    let first = partner.publish(event(VIN_A, "small", "x")).await.unwrap();
    assert_eq!(first.into_inner().sequence, 1);
}

/// The agent as a process, serving apps on `apps`, once it is connected to the gateway.
async fn agent_process(config: &std::path::Path, apps: &KeptPort) -> Process {
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut agent = Process::spawn_on(built_binary!("vehicle-agent"), &args, apps.socket());
    agent.wait_for_line("connected to the gateway").await;
    agent
}

#[tokio::test]
async fn events_published_across_eight_agent_kills_all_reach_the_app_once_in_order() {
    let (platform, mut partner) = platform_and_parking_partner().await;
    let apps = KeptPort::bind();
    let mut config = platform.agent_config(VIN_A);
    config.local_listen = apps.addr();
    let config = write_agent_toml(&platform.pki, &config);

    // The run: a partner publishes 150 events while the agent is killed 8 times, each
    // time while the gateway is delivering to it; no app listens meanwhile.
    let mut next = 1;
    for life in 0..8 {
        let agent = agent_process(&config, &apps).await;
        let last = if life == 7 { 150 } else { next + 18 };
        while next <= last {
            published(&mut partner, event_of(next)).await;
            next += 1;
        }
        agent.kill9().await;
    }

    // An app subscribes to the next agent and takes them as a real app does, acknowledging
    // as it goes (the gateway sends 100 at a time): every event, in order, once.
    let _agent = agent_process(&config, &apps).await;
    let url = format!("http://{}", apps.addr());
    let mut app = proto::agent::v1::vehicle_agent_client::VehicleAgentClient::connect(url)
        .await
        .unwrap();
    let request = proto::agent::v1::SubscribeEventsRequest { after_sequence: 0 };
    let mut stream = app.subscribe_events(request).await.unwrap().into_inner();
    let mut shown = Vec::new();
    while shown.len() < 151 {
        let event = within(SOON, stream.message(), "an event reaches the app")
            .await
            .unwrap();
        let event = event.expect("the stream goes on");
        assert_eq!(event.kind, format!("k{}", event.sequence));
        shown.push(event.sequence);
        if event.sequence % 25 == 0 {
            let ack = proto::agent::v1::AckEventsRequest {
                up_to_sequence: event.sequence,
            };
            app.ack_events(ack).await.unwrap();
        }
        if event.sequence == 150 {
            // Nothing comes again after the app acknowledged: the next is a new one.
            published(&mut partner, event_of(151)).await;
        }
    }
    assert_eq!(shown, (1..=151).collect::<Vec<u64>>());
}

fn event_of(sequence: u64) -> PublishRequest {
    event(VIN_A, &format!("e{sequence}"), &format!("k{sequence}"))
}
