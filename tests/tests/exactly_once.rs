//! Nothing done twice: duplicated deliveries, retries and reused idempotency keys meet the
//! gateway's ledger, so a driver is charged once and always sees the result.

use integration_tests::*;
use prost::Message;
use proto::parking::v1::EndSessionRequest;
use proto::vehicle::v1::Code;

fn end(session_id: &str) -> Vec<u8> {
    EndSessionRequest {
        session_id: session_id.into(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_duplicated_mqtt_delivery_charges_once_and_answers_twice_alike() {
    let (platform, partner) = Platform::start_scripted(|p| p).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session = car.park().await;
    let envelope = keyed_envelope("end-1", "pay-once", END, end(&session));
    car.publish_request(envelope.clone()).await;
    let first = car.ask(envelope).await;
    let second = car.next_response().await;
    assert_eq!((status_code(&first), status_code(&second)), (Code::Ok, Code::Ok));
    assert_eq!(first.payload, second.payload, "the retry replays the first response");
    assert_eq!(platform.parking.charges(), 1);
    assert_eq!(partner.end_calls(), 1, "the partner was called once");
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_refused() {
    let (platform, _partner) = Platform::start_scripted(|p| p).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session = car.park().await;
    car.publish_request(keyed_envelope("end-1", "k-1", END, end(&session)))
        .await;
    assert_eq!(status_code(&car.next_response().await), Code::Ok);
    let refused = car.ask(keyed_envelope("end-2", "k-1", END, end("ps-other"))).await;
    assert_eq!(refused.request_id, "end-2");
    assert_eq!(status_code(&refused), Code::FailedPrecondition);
    assert!(refused.status.unwrap().message.contains("different request"));
    assert_eq!(platform.parking.charges(), 1);
}

#[tokio::test]
async fn a_retry_while_the_first_attempt_is_in_flight_waits_for_it() {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::holding_ends).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session = car.park().await;
    let arrived = partner.end_arrived();
    car.publish_request(keyed_envelope("end-1", "pay", END, end(&session)))
        .await;
    while_connected(&mut car.eventloop, arrived, "the first attempt reaches the partner").await;
    // The retry (new request id, same key) arrives while the partner is still working.
    car.publish_request(keyed_envelope("end-2", "pay", END, end(&session)))
        .await;
    // Make sure the retry reached the gateway before releasing: its PUBACK comes back first.
    car.puback().await;
    partner.release(2);
    let mut answers = [car.next_response().await, car.next_response().await];
    answers.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(
        answers.iter().map(status_code).collect::<Vec<_>>(),
        vec![Code::Ok, Code::Ok]
    );
    assert_eq!(answers[0].payload, answers[1].payload);
    assert_eq!(partner.end_calls(), 1, "the retry did not call the partner");
    assert_eq!(platform.parking.charges(), 1);
}

#[tokio::test]
async fn a_partner_failing_the_first_attempt_is_retried_and_charges_once() {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::failing_first_end).await;
    let (car, mut app) = platform.car_and_app(VIN_A).await;
    let session = park_from_the_app(&mut app).await;
    let ended = pay_from_the_app(&mut app, &session.session_id).await;
    assert!(ended.receipt.is_some());
    assert_eq!(partner.end_calls(), 2, "first attempt failed, second succeeded");
    assert_eq!(platform.parking.charges(), 1);
    car.shutdown().await;
}

#[tokio::test]
async fn the_link_dropping_after_the_request_left_the_car_loses_nothing() {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::holding_ends).await;
    let (car, mut app) = platform.car_and_app(VIN_A).await;
    let session = park_from_the_app(&mut app).await;
    let arrived = partner.end_arrived();
    let mut request = tonic::Request::new(EndSessionRequest {
        session_id: session.session_id,
    });
    request.set_timeout(std::time::Duration::from_secs(30));
    let call = tokio::spawn(async move { app.end_session(request).await });
    within(SOON, arrived, "the request reaches the partner").await;

    // The link drops: another connection with the car's certificate takes the session over.
    let mut state = car.link().connection_state();
    let usurper = RawCar::connect(&platform, VIN_A).await;
    within(SOON, state.wait_for(|up| !*up), "the agent loses the link")
        .await
        .unwrap();
    drop(usurper);
    partner.release(2);

    let ended = within(std::time::Duration::from_secs(20), call, "answer after reconnect")
        .await
        .unwrap()
        .expect("ends");
    assert!(ended.into_inner().receipt.is_some());
    assert_eq!(platform.parking.charges(), 1);
    car.shutdown().await;
}

#[tokio::test]
async fn every_session_is_recorded_with_who_where_and_why_it_ended() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let car = platform.agent(VIN_A).await;
    car.shutdown().await;
    assert_eq!(disconnected(&mut events, VIN_A).await, gateway::DisconnectReason::Clean);
    let vin = proto::Vin::parse(VIN_A).unwrap();
    let sessions = platform.gateway.store().connections_of(&vin, 10).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s.disconnect_reason.as_deref(), Some("clean"));
    assert!(s.disconnected_at_ms.unwrap() >= s.connection.connected_at_ms);
    assert_eq!(s.connection.cert_fingerprint.len(), 64);
    assert!(s.connection.remote_addr.starts_with("127.0.0.1:"));
    // The agent names itself and its version in CONNECT's user name.
    let agent = format!("vehicle-agent/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(s.connection.agent_version.as_deref(), Some(agent.as_str()));
}

#[tokio::test]
async fn read_only_methods_skip_the_ledger_and_reach_the_partner_each_time() {
    // Declared read-only (here, wrongly, EndSession, to make the partner's count visible).
    let (platform, partner) = Platform::start_scripted_with(
        |p| p,
        |_, c| c.partners[0].read_only_methods = vec!["EndSession".into()],
    )
    .await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session = car.park().await;
    let envelope = keyed_envelope("end-1", "same-key", END, end(&session));
    car.publish_request(envelope.clone()).await;
    assert_eq!(status_code(&car.next_response().await), Code::Ok);
    car.publish_request(envelope).await;
    assert_eq!(status_code(&car.next_response().await), Code::Ok);
    assert_eq!(partner.end_calls(), 2, "no replay: the partner answered both");
    assert_eq!(
        platform.parking.charges(),
        1,
        "the reference partner deduplicates on its own"
    );
}
