//! A vehicle can only ever act as itself: its certificate is its identity, its namespace is
//! `/tenants/{VIN}/`, and nothing it does reaches another car.

use gateway::DisconnectReason;
use integration_tests::*;
use proto::Vin;
use rumqttc::{ConnectReturnCode, ConnectionError, Packet, QoS, SubscribeReasonCode};

#[tokio::test]
async fn a_response_goes_to_the_car_that_asked_and_no_other() {
    let platform = Platform::start().await;
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let mut b = RawCar::connect(&platform, VIN_B).await;

    a.publish_request(envelope("a-1", LIST, nearby_lots())).await;
    let answer = a.next_response().await;
    assert_eq!(answer.request_id, "a-1");

    // If A's answer had leaked to B, B would see it before its own.
    b.publish_request(envelope("b-1", LIST, nearby_lots())).await;
    assert_eq!(b.next_response().await.request_id, "b-1");
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
        a.client.subscribe(filter.clone(), QoS::AtLeastOnce).await.unwrap();
        let codes = next_incoming(&mut a.eventloop, |p| match p {
            Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
        .expect("suback");
        assert_eq!(codes, vec![SubscribeReasonCode::Failure], "{filter}");
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
    let codes = next_incoming(&mut a.eventloop, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("suback");
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    // Still connected and served after the refusals.
    a.publish_request(envelope("a-after", LIST, nearby_lots())).await;
    assert_eq!(a.next_response().await.request_id, "a-after");
}

#[tokio::test]
async fn publishing_into_another_cars_namespace_disconnects_the_offender() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let mut b = RawCar::connect(&platform, VIN_B).await;

    // A forges a request as B, and a response into B's inbox.
    let b_vin = Vin::parse(VIN_B).unwrap();
    a.client
        .publish(
            proto::topics::requests(&b_vin),
            QoS::AtLeastOnce,
            false,
            envelope("forged", LIST, nearby_lots()),
        )
        .await
        .unwrap();
    closed(&mut a.eventloop).await;
    let reason = disconnected(&mut events, VIN_A).await;
    assert!(
        matches!(reason, DisconnectReason::ProtocolError(ref why) if why.contains("namespace")),
        "{reason:?}"
    );

    // B never saw a response to the forged request: its first response is its own.
    b.publish_request(envelope("b-1", LIST, nearby_lots())).await;
    assert_eq!(b.next_response().await.request_id, "b-1");
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
    second.publish_request(envelope("second", LIST, nearby_lots())).await;
    assert_eq!(second.next_response().await.request_id, "second");
}

#[tokio::test]
async fn a_car_cannot_forge_gateway_responses_even_to_itself() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let own = a.vin.clone();
    a.client
        .publish(
            proto::topics::responses(&own),
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    closed(&mut a.eventloop).await;
    let reason = disconnected(&mut events, VIN_A).await;
    assert!(
        matches!(reason, DisconnectReason::ProtocolError(ref why) if why.contains("gateway-owned")),
        "{reason:?}"
    );
}
