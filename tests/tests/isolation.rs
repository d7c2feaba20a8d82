//! A vehicle can only ever act as itself: its certificate is its identity, its namespace is
//! `/tenants/{VIN}/`, and nothing it does reaches another car.

use gateway::DisconnectReason;
use integration_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::Vin;
use proto::topics::{is_within_tenant, namespace};
use rumqttc::{
    ConnectReturnCode, ConnectionError, LastWill, Packet, PubAck, Publish, QoS, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};

#[tokio::test]
async fn a_response_goes_to_the_car_that_asked_and_no_other() {
    let platform = Platform::start().await;
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let mut b = RawCar::connect(&platform, VIN_B).await;

    let answer = a.ask(envelope("a-1", LIST, nearby_lots())).await;
    assert_eq!(answer.request_id, "a-1");

    // If A's answer had leaked to B, B would see it before its own.
    assert_eq!(b.ask_for_lots("b-1").await.request_id, "b-1");
}

#[tokio::test]
async fn subscribing_outside_its_namespace_is_refused() {
    let platform = Platform::start().await;
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let other = Vin::parse(VIN_B).unwrap();
    for filter in [
        "#".to_string(),
        "/tenants/+/v1/resp".to_string(),
        proto::topics::responses(&other),
    ] {
        assert_eq!(
            a.subscribe(&filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // A mixed SUBSCRIBE: the car's own topic is granted, the other refused, in order.
    let own_events = proto::topics::events(&a.vin);
    a.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(own_events, QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = suback(&mut a.eventloop).await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    // Still connected and served after the refusals.
    assert_eq!(a.ask_for_lots("a-after").await.request_id, "a-after");
}

/// Connects car A, has it publish `bytes` on `topic`, and checks that the gateway closes its
/// connection for a protocol error naming `why`.
async fn assert_car_a_is_cut_off_for_publishing(platform: &Platform, topic: String, bytes: Vec<u8>, why: &str) {
    let mut events = platform.connection_events();
    let mut a = RawCar::connect(platform, VIN_A).await;
    a.publish(topic, bytes).await;
    closed(&mut a.eventloop).await;
    disconnected_for_protocol_error(&mut events, VIN_A, why).await;
}

#[tokio::test]
async fn publishing_into_another_cars_namespace_disconnects_the_offender() {
    let platform = Platform::start().await;
    let mut b = RawCar::connect(&platform, VIN_B).await;

    // A forges a request as B, and a response into B's inbox.
    let b_vin = Vin::parse(VIN_B).unwrap();
    let forged = envelope("forged", LIST, nearby_lots());
    assert_car_a_is_cut_off_for_publishing(&platform, proto::topics::requests(&b_vin), forged, "namespace").await;

    // B never saw a response to the forged request: its first response is its own.
    assert_eq!(b.ask_for_lots("b-1").await.request_id, "b-1");
    assert_eq!(platform.parking.charges(), 0);
}

#[tokio::test]
async fn a_client_id_claiming_another_vin_is_refused() {
    let platform = Platform::start().await;
    let creds = platform.pki.vehicle(VIN_A);
    let (_client, mut eventloop) = platform.mqtt_client(&creds, VIN_B);
    match connack(&mut eventloop).await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::BadClientId),
        other => panic!("expected refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_connection_with_the_same_certificate_takes_over_the_session() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut first = RawCar::connect(&platform, VIN_A).await;
    let mut second = RawCar::connect(&platform, VIN_A).await;
    closed(&mut first.eventloop).await;
    assert_eq!(disconnected(&mut events, VIN_A).await, DisconnectReason::Kicked);
    assert_eq!(second.ask_for_lots("second").await.request_id, "second");
}

#[tokio::test]
async fn a_car_cannot_forge_gateway_responses_even_to_itself() {
    let platform = Platform::start().await;
    let own = proto::topics::responses(&Vin::parse(VIN_A).unwrap());
    assert_car_a_is_cut_off_for_publishing(&platform, own, b"forged".to_vec(), "gateway-owned").await;
}

// ---------------------------------------------------------------------------------------------
// Whatever car A subscribes to and publishes on, nothing reaches car B.

/// What car A does in one case: subscribe to `filters`, publish on each of `topics`, then go
/// away without DISCONNECT (so its will, if any, is published).
#[derive(Debug, Clone)]
struct Moves {
    filters: Vec<String>,
    topics: Vec<String>,
    will: Option<String>,
}

/// One topic level: a name, a wildcard, empty, or odd characters.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}",
        Just("+".to_owned()),
        Just("#".to_owned()),
        Just(String::new()),
        "\\PC{1,6}",
        Just("v1".to_owned()),
        Just("resp".to_owned()),
    ]
}

fn levels() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 0..4).prop_map(|levels| levels.join("/"))
}

/// Filters and topics aimed at A's own namespace, at B's, at every tenant, or at nothing in
/// particular: wildcards, shared subscriptions, VIN prefixes, NUL, long and odd strings.
fn aim() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => levels().prop_map(|l| format!("/tenants/{VIN_A}/{l}")),
        2 => levels().prop_map(|l| format!("/tenants/{VIN_B}/{l}")),
        1 => levels().prop_map(|l| format!("/tenants/+/{l}")),
        1 => levels().prop_map(|l| format!("$share/fleet/tenants/{VIN_A}/{l}")),
        1 => levels().prop_map(|l| format!("$share/fleet//tenants/{VIN_B}/{l}")),
        1 => "[A-Z0-9]{0,3}".prop_map(|suffix| format!("/tenants/{VIN_A}{suffix}/#")),
        1 => "[A-Z0-9]{0,3}".prop_map(|suffix| format!("/tenants/{}{suffix}/#", &VIN_B[..16])),
        1 => prop_oneof![Just("#"), Just("+"), Just("/#"), Just("+/+/+/#"), Just("/tenants/#")].prop_map(str::to_owned),
        1 => Just(format!("/tenants/{VIN_A}/a\0b")),
        1 => "\\PC{0,40}",
        1 => "x{200,300}".prop_map(|x| format!("/tenants/{VIN_A}/{x}")),
    ]
}

fn moves() -> impl Strategy<Value = Moves> {
    (
        proptest::collection::vec(aim(), 1..6),
        proptest::collection::vec(aim(), 0..6),
        proptest::option::of(aim()),
    )
        .prop_map(|(filters, topics, will)| Moves { filters, topics, will })
}

/// What the gateway may grant car A, stated apart from the gateway's own check: a valid MQTT
/// filter, without NUL, of at most 256 bytes (the default), that names A's namespace literally.
fn grantable(filter: &str) -> bool {
    filter.starts_with(&format!("/tenants/{VIN_A}/"))
        && rumqttc::valid_filter(filter)
        && !filter.contains('\0')
        && filter.len() <= 256
}

/// Car A makes its `moves` in a session of its own and reads what it gets until the gateway
/// closes the connection; then car B (connected throughout, subscribed to its whole namespace)
/// publishes a marker to itself. B must receive the marker first: anything before it came from A.
async fn a_moves_and_b_sees_nothing(platform: &Platform, b: &mut WireCar, case: u16, moves: Moves) {
    let a_vin = Vin::parse(VIN_A).unwrap();
    let mut a = WireCar::open(platform, VIN_A).await;
    let mut connect = rumqttc::Connect::new(VIN_A);
    connect.keep_alive = 30;
    connect.last_will = moves
        .will
        .clone()
        .map(|topic| LastWill::new(topic, "gone", QoS::AtLeastOnce, false));
    let mut packets = vec![
        Packet::Connect(connect),
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: moves
                .filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                .collect(),
        }),
    ];
    for (pkid, topic) in (2..).zip(&moves.topics) {
        let mut publish = Publish::new(topic.clone(), QoS::AtLeastOnce, "from A");
        publish.pkid = pkid;
        packets.push(Packet::Publish(publish));
    }
    // The gateway drops A at its first publish outside its namespace: A's last writes may fail.
    let _ = a.try_send_all(&packets).await;
    let _ = a.close_sending().await;
    let seen_by_a = a.read_until_closed().await;

    let will_allowed = moves
        .will
        .as_ref()
        .is_none_or(|will| proto::topics::may_publish(&a_vin, will) && !will.contains('\0') && will.len() <= 256);
    match seen_by_a.first() {
        Some(Packet::ConnAck(ack)) if will_allowed => assert_eq!(ack.code, ConnectReturnCode::Success),
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::NotAuthorized),
        other => panic!("A's first packet: {other:?}"),
    }
    for packet in &seen_by_a {
        match packet {
            Packet::SubAck(ack) => {
                let expected: Vec<_> = moves
                    .filters
                    .iter()
                    .map(|f| match grantable(f) {
                        true => SubscribeReasonCode::Success(QoS::AtLeastOnce),
                        false => SubscribeReasonCode::Failure,
                    })
                    .collect();
                assert_eq!(ack.return_codes, expected, "filters {:?}", moves.filters);
            }
            Packet::Publish(publish) => assert!(
                is_within_tenant(&a_vin, &publish.topic),
                "A received {:?}",
                publish.topic
            ),
            _ => {}
        }
    }

    let b_vin = Vin::parse(VIN_B).unwrap();
    let marker = format!("{}marker/{case}", namespace(&b_vin));
    let mut publish = Publish::new(marker.clone(), QoS::AtLeastOnce, "marker");
    publish.pkid = case + 1;
    b.send(&Packet::Publish(publish)).await;
    loop {
        match b.read().await.expect("B stays connected") {
            Packet::Publish(publish) if publish.topic == marker => {
                b.send(&Packet::PubAck(PubAck::new(publish.pkid))).await;
                break;
            }
            Packet::Publish(publish) => panic!("B received {:?} from A's moves {moves:?}", publish.topic),
            _ => {}
        }
    }
}

#[test]
fn nothing_car_a_subscribes_to_or_publishes_reaches_car_b() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Car A connects once per case, far faster than a car's connect rate allows: CONNACK 3
    // would hide what the gateway does with its moves.
    let platform = runtime.block_on(Platform::start_with(|c| {
        c.mqtt.max_connects_per_minute = std::num::NonZeroU32::MAX;
        c.mqtt.connect_burst = std::num::NonZeroU32::MAX;
    }));
    let b_vin = Vin::parse(VIN_B).unwrap();
    let b = runtime.block_on(async {
        let mut b = WireCar::open(&platform, VIN_B).await;
        let mut connect = rumqttc::Connect::new(VIN_B);
        connect.keep_alive = 60;
        let everything = SubscribeFilter::new(format!("{}#", namespace(&b_vin)), QoS::AtLeastOnce);
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![everything],
        };
        b.try_send_all(&[Packet::Connect(connect), Packet::Subscribe(subscribe)])
            .await
            .expect("B subscribes");
        assert!(matches!(b.read().await, Some(Packet::ConnAck(_))));
        assert!(matches!(b.read().await, Some(Packet::SubAck(_))));
        b
    });
    // The runner takes a `Fn`; cases run one at a time.
    let (b, case) = (std::cell::RefCell::new(b), std::cell::Cell::new(0));
    TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    })
    .run(&moves(), |moves| {
        case.set(case.get() + 1);
        runtime.block_on(a_moves_and_b_sees_nothing(
            &platform,
            &mut b.borrow_mut(),
            case.get(),
            moves,
        ));
        Ok(())
    })
    .unwrap();
}
