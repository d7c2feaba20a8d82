//! Partner events reach in-car apps and nothing is lost: the agent keeps each event on disk
//! until an app acknowledges it (`AckEvents`), and only then acknowledges it to the gateway.
//! Against the stand-in gateway (see `common`), which shows every acknowledgement and
//! SUBSCRIBE and redelivers when told, with apps on the agent's real local gRPC API.
//! Restarts are in `restart.rs` (in process) and `cli.rs` (kill -9).

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc::error::TryRecvError;
use tonic::Code;

use common::{Rig, StandIn, VIN, connected_agent, soon};
use proto::MethodPath;
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{AckEventsRequest, SubscribeEventsRequest};
use proto::vehicle::v1::{Event, Response};
use vehicle_agent::store::{Disk, StateFiles};
use vehicle_agent::{Agent, GatewayLink};

type App = VehicleAgentClient<tonic::transport::Channel>;

/// An in-car app of `agent`, on its local gRPC endpoint.
async fn app(agent: &Agent) -> App {
    VehicleAgentClient::connect(format!("http://{}", agent.local_addr()))
        .await
        .unwrap()
}

/// The events `app` is shown after `after_sequence`.
async fn subscribe(app: &mut App, after_sequence: u64) -> Result<tonic::Streaming<Event>, tonic::Status> {
    let subscribed = app.subscribe_events(SubscribeEventsRequest { after_sequence }).await;
    subscribed.map(tonic::Response::into_inner)
}

/// `app` acknowledges every event up to `up_to_sequence`: how many the agent still keeps.
async fn ack(app: &mut App, up_to_sequence: u64) -> Result<u64, tonic::Status> {
    let acked = app.ack_events(AckEventsRequest { up_to_sequence }).await;
    acked.map(|r| r.into_inner().kept)
}

/// The next `n` events of `stream`, by sequence.
async fn next_sequences(stream: &mut tonic::Streaming<Event>, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = soon("an event reaches the app", stream.message()).await.unwrap();
        got.push(event.expect("the stream goes on").sequence);
    }
    got
}

fn event(sequence: u64) -> Event {
    Event {
        partner: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: sequence.to_be_bytes().to_vec(),
        sequence,
    }
}

/// The stand-in delivers events `sequences` to the car, as the gateway does.
async fn deliver(gw: &StandIn, sequences: impl IntoIterator<Item = u64>) {
    let topic = proto::topics::events(&VIN.parse().unwrap());
    for sequence in sequences {
        gw.publish(&topic, event(sequence).encode_to_vec()).await;
    }
}

/// A request and its answer, through the stand-in: once the request reaches it, every
/// acknowledgement the link sent before is in `gw.acks` (one connection, in order), and once
/// the answer is back, the link has handled everything delivered before it. Then no
/// acknowledgement must have come.
async fn no_ack_so_far(link: &GatewayLink, gw: &mut StandIn) {
    let method = MethodPath::parse("/parking.v1.ParkingPayment/ListNearbyLots").unwrap();
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call(&method, Bytes::new(), Duration::from_secs(10), None).await }
    });
    let (_, request) = gw.next_request().await;
    assert_eq!(
        gw.acks.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "an ack came too soon"
    );
    gw.respond(VIN, Response::ok(request.request_id, vec![])).await;
    soon("the round trip ends", call).await.unwrap().unwrap();
    assert_eq!(
        gw.acks.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "an ack came too soon"
    );
}

#[tokio::test]
async fn events_that_arrive_while_no_app_listens_reach_the_app_that_subscribes_later_in_order() {
    let mut rig = Rig::with_stand_in().await;
    let agent = rig.connected_agent().await;
    deliver(&rig.gateway, 1..=5).await;
    // Nobody listens: the events are kept, and not acknowledged.
    no_ack_so_far(agent.link(), &mut rig.gateway).await;
    assert_eq!(agent.link().kept_events(), 5);

    let mut dashboard = app(&agent).await;
    let mut stream = subscribe(&mut dashboard, 0).await.unwrap();
    assert_eq!(next_sequences(&mut stream, 5).await, [1, 2, 3, 4, 5]);
    let mut again = subscribe(&mut dashboard, 0).await.unwrap();
    let first = soon("a second subscription starts over", again.message()).await;
    assert_eq!(first.unwrap(), Some(event(1)), "the event as the partner sent it");
    // Shown is not taken: still no acknowledgement.
    no_ack_so_far(agent.link(), &mut rig.gateway).await;

    // The app takes 1 to 3: the gateway gets that acknowledgement, and those events are gone
    // for every app (one cursor per car); an app passing its own cursor skips what it saw.
    assert_eq!(ack(&mut dashboard, 3).await.unwrap(), 2);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 3);
    let mut other = app(&agent).await;
    let mut from_start = subscribe(&mut other, 0).await.unwrap();
    assert_eq!(next_sequences(&mut from_start, 2).await, [4, 5]);
    let mut after_four = subscribe(&mut other, 4).await.unwrap();
    // New events follow the kept ones, to every subscriber, once.
    deliver(&rig.gateway, [6]).await;
    assert_eq!(next_sequences(&mut after_four, 2).await, [5, 6]);
    assert_eq!(next_sequences(&mut stream, 1).await, [6]);
    assert_eq!(next_sequences(&mut from_start, 1).await, [6]);

    assert_eq!(ack(&mut other, 6).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 6);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_ack_or_a_cursor_beyond_the_last_event_received_is_out_of_range() {
    let mut rig = Rig::with_stand_in().await;
    let agent = rig.connected_agent().await;
    let mut dashboard = app(&agent).await;
    let refused = ack(&mut dashboard, 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    assert_eq!(refused.message(), "no event after 0 has arrived, so 1 is out of range");

    deliver(&rig.gateway, [1, 2]).await;
    no_ack_so_far(agent.link(), &mut rig.gateway).await;
    let refused = ack(&mut dashboard, 3).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    assert_eq!(refused.message(), "no event after 2 has arrived, so 3 is out of range");
    let refused = subscribe(&mut dashboard, 3).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    assert_eq!(refused.message(), "no event after 2 has arrived, so 3 is out of range");
    no_ack_so_far(agent.link(), &mut rig.gateway).await;

    // Acknowledging nothing, or again, is fine and sends nothing new.
    assert_eq!(ack(&mut dashboard, 0).await.unwrap(), 2);
    assert_eq!(ack(&mut dashboard, 2).await.unwrap(), 0);
    assert_eq!(ack(&mut dashboard, 1).await.unwrap(), 0);
    assert_eq!(ack(&mut dashboard, 2).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 2);
    no_ack_so_far(agent.link(), &mut rig.gateway).await;
    agent.shutdown().await;
}

#[tokio::test]
async fn beyond_max_kept_events_the_agent_takes_no_more_until_an_app_acks() {
    let mut rig = Rig::with_stand_in().await;
    let mut config = rig.car_config();
    config.max_kept_events = 3;
    let agent = connected_agent(&config).await;
    let topic = proto::topics::events(&VIN.parse().unwrap());
    assert_eq!(
        rig.gateway.next_subscribe().await.len(),
        2,
        "the connection's SUBSCRIBE"
    );

    deliver(&rig.gateway, 1..=5).await;
    no_ack_so_far(agent.link(), &mut rig.gateway).await;
    assert_eq!(agent.link().kept_events(), 3, "4 and 5 are left with the gateway");

    let mut dashboard = app(&agent).await;
    let mut stream = subscribe(&mut dashboard, 0).await.unwrap();
    assert_eq!(next_sequences(&mut stream, 3).await, [1, 2, 3]);
    // 6 comes before the gateway sends 4 again: not kept either, or it would pass 4.
    deliver(&rig.gateway, [6]).await;
    assert_eq!(ack(&mut dashboard, 3).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 3);
    // Room again: the agent subscribes to its events again, and the gateway sends what is
    // unacknowledged, in order.
    assert_eq!(rig.gateway.next_subscribe().await, [topic]);
    deliver(&rig.gateway, 4..=6).await;
    assert_eq!(next_sequences(&mut stream, 3).await, [4, 5, 6]);
    assert_eq!(ack(&mut dashboard, 6).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 6);
    agent.shutdown().await;
}

/// A disk that refuses to keep events while `full` is set, and their cursor while
/// `cursor_full` is.
#[derive(Default)]
struct NoRoomForEvents {
    full: AtomicBool,
    cursor_full: AtomicBool,
}

impl StateFiles for NoRoomForEvents {
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        let refused = match name.ends_with(".pb") {
            true => &self.full,
            false => &self.cursor_full,
        };
        if dir.ends_with("events") && refused.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        Disk.write(dir, name, bytes)
    }

    fn remove(&self, dir: &Path, name: &str) -> io::Result<()> {
        Disk.remove(dir, name)
    }
}

#[tokio::test]
async fn an_event_the_disk_refuses_is_not_acknowledged_and_is_kept_when_it_comes_again() {
    let mut rig = Rig::with_stand_in().await;
    let disk = Arc::new(NoRoomForEvents::default());
    disk.full.store(true, Ordering::SeqCst);
    let link = GatewayLink::start_with(&rig.car_config(), disk.clone()).unwrap();
    soon("the link connects", link.wait_connected()).await;
    assert_eq!(
        rig.gateway.next_subscribe().await.len(),
        2,
        "the connection's SUBSCRIBE"
    );
    let mut feed = link.subscribe_events(0).unwrap();

    deliver(&rig.gateway, [1, 2]).await;
    no_ack_so_far(&link, &mut rig.gateway).await;
    assert_eq!(link.kept_events(), 0);
    // The agent asks the gateway to deliver again a little later.
    let topic = proto::topics::events(&VIN.parse().unwrap());
    assert_eq!(rig.gateway.next_subscribe().await, [topic]);

    disk.full.store(false, Ordering::SeqCst);
    deliver(&rig.gateway, [1, 2]).await;
    assert_eq!(soon("event 1", feed.next()).await, Some(event(1)));
    assert_eq!(soon("event 2", feed.next()).await, Some(event(2)));
    assert_eq!(link.ack_events(2).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 2);
    link.shutdown().await;
    assert_eq!(soon("the feed ends at shutdown", feed.next()).await, None);
    let refused = link.ack_events(2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "nothing is written after shutdown");
}

#[tokio::test]
async fn event_subscriptions_beyond_the_limit_are_refused() {
    let rig = Rig::with_stand_in().await;
    let agent = rig.connected_agent().await;
    let mut dashboard = app(&agent).await;
    let mut open = Vec::new();
    for _ in 0..vehicle_agent::events::MAX_EVENT_FEEDS {
        open.push(subscribe(&mut dashboard, 0).await.unwrap());
    }
    let refused = subscribe(&mut dashboard, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("close one first"), "{}", refused.message());
    agent.shutdown().await;
}

#[tokio::test]
async fn an_ack_the_disk_cannot_record_is_unavailable_and_acknowledges_nothing() {
    let mut rig = Rig::with_stand_in().await;
    let disk = Arc::new(NoRoomForEvents::default());
    let link = GatewayLink::start_with(&rig.car_config(), disk.clone()).unwrap();
    soon("the link connects", link.wait_connected()).await;
    let mut feed = link.subscribe_events(0).unwrap();
    deliver(&rig.gateway, [1, 2]).await;
    assert_eq!(soon("event 1", feed.next()).await, Some(event(1)));
    assert_eq!(soon("event 2", feed.next()).await, Some(event(2)));

    disk.cursor_full.store(true, Ordering::SeqCst);
    let refused = link.ack_events(2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("no space left on device"),
        "{}",
        refused.message()
    );
    assert_eq!(link.kept_events(), 2, "still kept for the app to acknowledge again");
    no_ack_so_far(&link, &mut rig.gateway).await;

    disk.cursor_full.store(false, Ordering::SeqCst);
    assert_eq!(link.ack_events(2).await.unwrap(), 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 2);
    link.shutdown().await;
}
