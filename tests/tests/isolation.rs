//! A vehicle can only ever act as itself: its certificate is its identity, its namespace is
//! `/tenants/{VIN}/`, and nothing it does reaches another car.

use gateway::DisconnectReason;
use integration_tests::*;
use proto::Vin;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};

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

#[tokio::test]
async fn publishing_into_another_cars_namespace_disconnects_the_offender() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let mut b = RawCar::connect(&platform, VIN_B).await;

    // A forges a request as B, and a response into B's inbox.
    let b_vin = Vin::parse(VIN_B).unwrap();
    a.publish(proto::topics::requests(&b_vin), envelope("forged", LIST, nearby_lots()))
        .await;
    closed(&mut a.eventloop).await;
    disconnected_for_protocol_error(&mut events, VIN_A, "namespace").await;

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
    let mut events = platform.connection_events();
    let mut a = RawCar::connect(&platform, VIN_A).await;
    let own = a.vin.clone();
    a.publish(proto::topics::responses(&own), b"forged".to_vec()).await;
    closed(&mut a.eventloop).await;
    disconnected_for_protocol_error(&mut events, VIN_A, "gateway-owned").await;
}
