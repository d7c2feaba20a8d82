//! MQTT session behaviour a stock client relies on: flow control, persistent sessions, QoS 2,
//! wills and ordinary pub/sub on a car's own topics besides the gateway's.

use std::time::Duration;

use integration_tests::*;
use prost::Message;
use proto::Vin;
use proto::parking::v1::EndSessionRequest;
use proto::vehicle::v1::Code;
use rumqttc::{Event, LastWill, Outgoing, Packet, QoS, SubscribeReasonCode};

#[tokio::test]
async fn a_car_flooding_requests_is_slowed_down_and_every_request_is_answered() {
    let (platform, partner) =
        Platform::start_scripted_with(ScriptedParking::holding_ends, |_, c| c.mqtt.max_requests_in_flight = 2).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session_id = car.park().await;
    let pay = EndSessionRequest { session_id }.encode_to_vec();
    // Three payments with distinct keys: the partner holds every one it gets.
    for i in 0..3 {
        car.publish_request(keyed_envelope(
            &format!("end-{i}"),
            &format!("key-{i}"),
            END,
            pay.clone(),
        ))
        .await;
    }
    // Until two reached the partner, drive the car's connection and note what comes back.
    let mut seen = Vec::new();
    within(
        Duration::from_secs(10),
        async {
            loop {
                tokio::select! {
                    _ = partner.ends_arrived(2) => break,
                    event = car.eventloop.poll() => seen.push(event.expect("connection stays up")),
                }
            }
        },
        "two payments reach the partner",
    )
    .await;
    partner.release(3);
    // The third is read (and acknowledged) only once one of the first two is answered.
    let mut responses = 0;
    let mut payments_sent = Vec::new();
    let mut third_acked_after = None;
    within(
        Duration::from_secs(10),
        async {
            while responses < 3 {
                let event = match seen.is_empty() {
                    false => seen.remove(0),
                    true => car.eventloop.poll().await.expect("connection stays up"),
                };
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let r = proto::vehicle::v1::Response::decode(p.payload).unwrap();
                        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
                        responses += 1;
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => payments_sent.push(pkid),
                    Event::Incoming(Packet::PubAck(ack)) if payments_sent.get(2) == Some(&ack.pkid) => {
                        third_acked_after = Some(responses)
                    }
                    _ => {}
                }
            }
        },
        "every payment answered",
    )
    .await;
    assert!(
        third_acked_after.is_some_and(|answered| answered >= 1),
        "the third payment was acknowledged before any payment was answered: {third_acked_after:?}"
    );
    assert_eq!(partner.end_calls(), 3);
}

#[tokio::test]
async fn a_cars_other_topics_are_ordinary_pub_sub_inside_its_namespace() {
    let platform = Platform::start().await;
    let (a, mut a_loop) = platform.mqtt_client_with(VIN_A, |_| {});
    connack(&mut a_loop).await.unwrap();
    let (b, mut b_loop) = platform.mqtt_client_with(VIN_B, |_| {});
    connack(&mut b_loop).await.unwrap();
    let vin_a = Vin::parse(VIN_A).unwrap();
    // One wildcard covers the car's telemetry (the router) and its responses (the gateway).
    let everything = format!("/tenants/{VIN_A}/#");
    assert_eq!(
        subscribe(&a, &mut a_loop, &everything).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        subscribe(&b, &mut b_loop, &format!("/tenants/{VIN_B}/#")).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let telemetry = format!("/tenants/{VIN_A}/telemetry/speed");
    a.publish(&telemetry, QoS::AtLeastOnce, false, b"42 km/h".to_vec())
        .await
        .unwrap();
    let got = next_incoming(&mut a_loop, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone(), p.qos)),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        (telemetry, bytes::Bytes::from_static(b"42 km/h"), QoS::AtLeastOnce)
    );

    let answer = ask_for_lots(&a, &mut a_loop, &vin_a, "via-wildcard").await;
    assert_eq!(outcome(&answer), ("via-wildcard", Code::Ok));

    // B saw neither A's telemetry nor A's answer: its first message is its own.
    b.publish(
        format!("/tenants/{VIN_B}/telemetry/speed"),
        QoS::AtLeastOnce,
        false,
        b"b".to_vec(),
    )
    .await
    .unwrap();
    let first = next_incoming(&mut b_loop, |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(first, format!("/tenants/{VIN_B}/telemetry/speed"));
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions_across_connections() {
    let platform = Platform::start().await;
    let vin = Vin::parse(VIN_A).unwrap();
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let (client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    assert!(!connack(&mut eventloop).await.unwrap().session_present);
    subscribe(&client, &mut eventloop, &proto::topics::responses(&vin)).await;
    let mut events = platform.connection_events();
    client.disconnect().await.unwrap();
    within(
        Duration::from_secs(10),
        async {
            while !matches!(
                eventloop.poll().await,
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
            ) {}
        },
        "disconnect sent",
    )
    .await;
    disconnected(&mut events, VIN_A).await;

    // Back without subscribing again: the answer still arrives.
    let (client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    assert!(connack(&mut eventloop).await.unwrap().session_present);
    let answer = ask_for_lots(&client, &mut eventloop, &vin, "after-reconnect").await;
    assert_eq!(answer.request_id, "after-reconnect");

    // A clean session starts from nothing.
    drop((client, eventloop));
    disconnected(&mut events, VIN_A).await;
    let (_client, mut eventloop) = platform.mqtt_client_with(VIN_A, |_| {});
    assert!(!connack(&mut eventloop).await.unwrap().session_present);
}

#[tokio::test]
async fn a_qos2_request_is_answered_once() {
    let platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.client
        .publish(
            proto::topics::requests(&car.vin),
            QoS::ExactlyOnce,
            false,
            envelope("qos2", LIST, nearby_lots()),
        )
        .await
        .unwrap();
    let mut completed = false;
    let mut answers = 0;
    within(
        Duration::from_secs(10),
        async {
            while !(completed && answers == 1) {
                match car.eventloop.poll().await.expect("connection stays up") {
                    Event::Incoming(Packet::PubComp(_)) => completed = true,
                    Event::Incoming(Packet::Publish(p)) => {
                        let r = proto::vehicle::v1::Response::decode(p.payload).unwrap();
                        assert_eq!(r.request_id, "qos2");
                        answers += 1;
                    }
                    _ => {}
                }
            }
        },
        "QoS 2 flow completes and the answer arrives",
    )
    .await;
    // A later request's answer is the next message: nothing else was queued for the car.
    assert_eq!(car.ask_for_lots("after").await.request_id, "after");
}

#[tokio::test]
async fn a_dropped_cars_will_reaches_its_next_session() {
    let platform = Platform::start().await;
    let status = format!("/tenants/{VIN_A}/status");
    let will = LastWill::new(&status, "offline", QoS::AtLeastOnce, true);
    let (_first, mut first_loop) = platform.mqtt_client_with(VIN_A, |o| {
        o.set_last_will(will);
    });
    connack(&mut first_loop).await.unwrap();
    // The car comes back on a new connection before the old one died: the old session is
    // taken over, and its will (retained) is published as it ends.
    let (second, mut second_loop) = platform.mqtt_client_with(VIN_A, |_| {});
    connack(&mut second_loop).await.unwrap();
    closed(&mut first_loop).await;
    subscribe(&second, &mut second_loop, &status).await;
    let will = next_incoming(&mut second_loop, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(will, (status, bytes::Bytes::from_static(b"offline")));
}

#[tokio::test]
async fn an_answer_that_comes_while_a_persistent_session_is_away_waits_for_it() {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::holding_ends).await;
    let vin = Vin::parse(VIN_A).unwrap();
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut events = platform.connection_events();
    let session_id = {
        let mut car = RawCar::connect(&platform, VIN_A).await;
        car.park().await
    };
    disconnected(&mut events, VIN_A).await;

    // Subscribe in a persistent session, then pay and leave before the partner answers.
    let (client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    connack(&mut eventloop).await.unwrap();
    subscribe(&client, &mut eventloop, &proto::topics::responses(&vin)).await;
    let arrived = partner.end_arrived();
    client
        .publish(
            proto::topics::requests(&vin),
            QoS::AtLeastOnce,
            false,
            keyed_envelope(
                "pay-away",
                "pay-away",
                END,
                EndSessionRequest { session_id }.encode_to_vec(),
            ),
        )
        .await
        .unwrap();
    while_connected(&mut eventloop, arrived, "the payment reaches the partner").await;
    drop((client, eventloop));
    disconnected(&mut events, VIN_A).await;
    partner.release(1);

    // Back in the same persistent session: the answer is waiting.
    let (_client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    assert!(connack(&mut eventloop).await.unwrap().session_present);
    let answer = next_incoming(&mut eventloop, response_of).await.unwrap();
    assert_eq!(outcome(&answer), ("pay-away", Code::Ok));
    assert_eq!(platform.parking.charges(), 1);
}
