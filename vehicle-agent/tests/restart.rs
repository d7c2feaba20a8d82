//! What survives an agent restart on the same state directory, against a stand-in gateway
//! (which shows what the restarted agent sends again, and redelivers events, acknowledged or
//! not). A kill -9 is in `cli.rs`.

mod common;

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc::error::TryRecvError;
use tonic::Code;

use common::{Rig, VIN, connected_agent, soon};
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{AckEventsRequest, GetResultRequest, GetResultResponse, ResultState, SubscribeEventsRequest};
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{ParkingSession, StartSessionRequest, StartSessionResponse};
use proto::vehicle::v1::{Event, Response};
use vehicle_agent::Agent;

/// An app's StartSession through `agent` with its own request id and idempotency key.
fn start_session(
    agent: &Agent,
    request_id: &'static str,
) -> tokio::task::JoinHandle<Result<tonic::Response<StartSessionResponse>, tonic::Status>> {
    let url = format!("http://{}", agent.local_addr());
    tokio::spawn(async move {
        let mut client = ParkingPaymentClient::connect(url).await.unwrap();
        let mut request = tonic::Request::new(StartSessionRequest {
            lot_id: "lot-1".into(),
            plate: "沪A12345".into(),
        });
        request.set_timeout(Duration::from_secs(30));
        let meta = request.metadata_mut();
        meta.insert("x-request-id", request_id.parse().unwrap());
        meta.insert("idempotency-key", "intent-7".parse().unwrap());
        client.start_session(request).await
    })
}

async fn api(agent: &Agent) -> VehicleAgentClient<tonic::transport::Channel> {
    VehicleAgentClient::connect(format!("http://{}", agent.local_addr()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_outlives_the_agent_and_its_result_is_kept() {
    let rig = Rig::with_stand_in().await;
    let config = rig.car_config();
    let mut gw = rig.gateway;

    let agent = connected_agent(&config).await;
    let app = start_session(&agent, "pay-1");
    let (_, sent) = gw.next_request().await;
    assert_eq!(
        (sent.request_id.as_str(), sent.idempotency_key.as_str()),
        ("pay-1", "intent-7")
    );
    let pending = result_of(&mut api(&agent).await, "pay-1").await;
    assert_eq!(pending.state(), ResultState::Pending);

    // The agent stops before the gateway answers; the state on disk is what a crash leaves,
    // since nothing is written at shutdown.
    agent.shutdown().await;
    let err = app.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    let agent = connected_agent(&config).await;
    let (_, again) = gw.next_request().await;
    assert_eq!(again.request_id, "pay-1");
    assert_eq!(again.idempotency_key, "intent-7");
    assert_eq!(again.method, sent.method);
    assert_eq!(again.payload, sent.payload);
    assert!(
        again.timeout_ms <= sent.timeout_ms && again.timeout_ms > 20_000,
        "{} then {}",
        sent.timeout_ms,
        again.timeout_ms
    );

    // The restarted app asks again with the same id: it gets the one answer, nothing is resent.
    let app = start_session(&agent, "pay-1");
    let reply = StartSessionResponse {
        session: Some(ParkingSession {
            session_id: "ps-1".into(),
            ..Default::default()
        }),
    };
    gw.respond(VIN, Response::ok("pay-1", reply.encode_to_vec())).await;
    assert_eq!(app.await.unwrap().unwrap().into_inner(), reply);

    let mut client = api(&agent).await;
    let done = client
        .get_result(GetResultRequest {
            request_id: "pay-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        done.metadata().get("x-agent-method").unwrap(),
        "/parking.v1.ParkingPayment/StartSession"
    );
    let done = done.into_inner();
    assert_eq!(done.state(), ResultState::Done);
    assert_eq!(done.response, Some(Response::ok("pay-1", reply.encode_to_vec())));
    let unknown = result_of(&mut client, "never-made").await;
    assert_eq!(unknown.state(), ResultState::Unknown);
    let bad = client
        .get_result(GetResultRequest {
            request_id: "../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Another call goes out next: pay-1 was not sent a third time.
    let app = start_session(&agent, "pay-2");
    let (_, next) = gw.next_request().await;
    assert_eq!(next.request_id, "pay-2");
    gw.respond(VIN, Response::ok("pay-2", reply.encode_to_vec())).await;
    app.await.unwrap().unwrap();
    assert_eq!(gw.requests.try_recv().unwrap_err(), TryRecvError::Empty);

    agent.shutdown().await;
}

/// What the agent says of `request_id` to an anonymous app.
async fn result_of(api: &mut VehicleAgentClient<tonic::transport::Channel>, request_id: &str) -> GetResultResponse {
    let asked = GetResultRequest {
        request_id: request_id.into(),
    };
    api.get_result(asked).await.unwrap().into_inner()
}

/// The events `agent` shows its apps after `after_sequence`.
async fn events_of(agent: &Agent, after_sequence: u64) -> tonic::Streaming<Event> {
    let subscribed = api(agent)
        .await
        .subscribe_events(SubscribeEventsRequest { after_sequence })
        .await;
    subscribed.unwrap().into_inner()
}

/// The next event `stream` shows, by sequence.
async fn next_sequence(stream: &mut tonic::Streaming<Event>) -> u64 {
    let event = soon("an event reaches the app", stream.message()).await.unwrap();
    event.expect("the stream goes on").sequence
}

fn event(sequence: u64) -> Event {
    Event {
        partner: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: vec![sequence as u8],
        sequence,
    }
}

/// Polls (bounded) until `agent` keeps `n` events on disk.
async fn keeps(agent: &Agent, n: usize) {
    soon(&format!("the agent keeps {n} events"), async {
        while agent.link().kept_events() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn events_kept_across_restarts_reach_the_app_once_in_order_and_are_acknowledged_once_taken() {
    let mut rig = Rig::with_stand_in().await;
    let config = rig.car_config();
    let topic = proto::topics::events(&VIN.parse().unwrap());

    // Three events arrive while no app listens; the app sees two of them, then the agent
    // stops (what is on disk is what a crash leaves: nothing about events is written at
    // shutdown) before the app acknowledged anything.
    let agent = connected_agent(&config).await;
    for sequence in 1..=3 {
        rig.gateway.publish(&topic, event(sequence).encode_to_vec()).await;
    }
    keeps(&agent, 3).await;
    let mut stream = events_of(&agent, 0).await;
    assert_eq!(next_sequence(&mut stream).await, 1);
    assert_eq!(next_sequence(&mut stream).await, 2);
    soon("the agent shuts down with a subscriber", agent.shutdown()).await;
    // The stream ends (after event 3 if it was on its way already).
    let mut rest = Vec::new();
    while let Ok(Some(event)) = soon("the stream ends", stream.message()).await {
        rest.push(event.sequence);
    }
    assert!(rest.is_empty() || rest == [3], "{rest:?}");

    // Unacknowledged, they are redelivered by the gateway: kept once. The app resumes after
    // the last one it handled and sees the rest once, in order, with the new one.
    let agent = connected_agent(&config).await;
    assert_eq!(agent.link().kept_events(), 3, "kept across the restart");
    for sequence in 1..=4 {
        rig.gateway.publish(&topic, event(sequence).encode_to_vec()).await;
    }
    let mut stream = events_of(&agent, 2).await;
    assert_eq!(next_sequence(&mut stream).await, 3);
    assert_eq!(next_sequence(&mut stream).await, 4);
    keeps(&agent, 4).await;
    let mut app = api(&agent).await;
    let acked = app.ack_events(AckEventsRequest { up_to_sequence: 4 }).await.unwrap();
    assert_eq!(acked.into_inner().kept, 0);
    // The first acknowledgement the gateway ever sees is the app's.
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 4);
    agent.shutdown().await;

    // After another restart nothing taken comes back: a redelivery of 4 (its ack was lost,
    // say) is acknowledged again, and the app sees only what is new.
    let agent = connected_agent(&config).await;
    let mut stream = events_of(&agent, 0).await;
    rig.gateway.publish(&topic, event(4).encode_to_vec()).await;
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 4);
    rig.gateway.publish(&topic, event(5).encode_to_vec()).await;
    assert_eq!(next_sequence(&mut stream).await, 5, "nothing taken is shown again");
    let cursor = std::fs::read_to_string(rig.pki.state_dir().join("events/last_sequence")).unwrap();
    assert_eq!(cursor.trim(), "4");
    assert_eq!(rig.gateway.acks.try_recv().unwrap_err(), TryRecvError::Empty);

    agent.shutdown().await;
}
