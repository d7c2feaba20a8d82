//! What survives an agent restart on the same state directory, against a stand-in gateway
//! (which shows what the restarted agent sends again, and redelivers an acknowledged event).

mod common;

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc::error::TryRecvError;
use tonic::Code;

use common::{Rig, VIN, connected_agent, soon};
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{GetResultRequest, GetResultResponse, ResultState, SubscribeEventsRequest};
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

/// The events `agent` shows its apps, from now on.
async fn events_of(agent: &Agent) -> tonic::Streaming<Event> {
    let subscribed = api(agent).await.subscribe_events(SubscribeEventsRequest {}).await;
    subscribed.unwrap().into_inner()
}

fn event(sequence: u64) -> Event {
    Event {
        partner: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: vec![sequence as u8],
        sequence,
    }
}

#[tokio::test]
async fn events_are_deduplicated_across_restarts_and_acknowledged() {
    let mut rig = Rig::with_stand_in().await;
    let config = rig.car_config();
    let topic = proto::topics::events(&VIN.parse().unwrap());

    let agent = connected_agent(&config).await;
    let mut stream = events_of(&agent).await;
    for sequence in [1, 2] {
        rig.gateway.publish(&topic, event(sequence).encode_to_vec()).await;
    }
    for sequence in [1, 2] {
        let got = soon("the event reaches the app", stream.message()).await.unwrap();
        assert_eq!(got, Some(event(sequence)));
        assert_eq!(rig.gateway.next_ack().await.1.sequence, sequence);
    }
    // Shutdown ends open event streams instead of waiting for them.
    soon("the agent shuts down with a subscriber", agent.shutdown()).await;
    assert!(matches!(stream.message().await, Ok(None) | Err(_)));

    let agent = connected_agent(&config).await;
    let mut stream = events_of(&agent).await;
    // The gateway redelivers event 2 (its ack was lost, say): acknowledged, not shown again.
    rig.gateway.publish(&topic, event(2).encode_to_vec()).await;
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 2);
    rig.gateway.publish(&topic, event(3).encode_to_vec()).await;
    let got = soon("event 3 reaches the app", stream.message()).await.unwrap();
    assert_eq!(got, Some(event(3)), "event 2 was not shown twice");
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 3);
    let stored = std::fs::read_to_string(rig.pki.state_dir().join("events/last_sequence")).unwrap();
    assert_eq!(stored.trim(), "3");

    agent.shutdown().await;
}
