//! The gateway link against a stand-in gateway over mutual TLS (see `common`): what the link
//! sends, sends again and acknowledges, and what it makes of what a gateway sends it.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Code;

use common::{Goodbye, Rig, VIN, connected_agent, connected_link, soon};
use proto::MethodPath;
use proto::parking::v1::{ListNearbyLotsResponse, Lot, ParkingSession, StartSessionRequest, StartSessionResponse};
use proto::vehicle::v1::{Code as EnvCode, Event, Response};
use vehicle_agent::outbox::{Lookup, StoredResult};
use vehicle_agent::owner::Owner;
use vehicle_agent::store::{Disk, StateFiles};
use vehicle_agent::{CallIds, GatewayLink};

fn list() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/ListNearbyLots").unwrap()
}

fn start_session() -> MethodPath {
    MethodPath::parse("/parking.v1.ParkingPayment/StartSession").unwrap()
}

#[tokio::test]
async fn calls_errors_duplicates_and_events() {
    let rig = Rig::with_stand_in().await;
    let link = rig.connected_link().await;
    let mut gw = rig.gateway;
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

    // Events are kept for apps in order, duplicates (same sequence) and garbage dropped, and
    // acknowledged to the gateway once an app has taken them (tests/events.rs has the rest).
    let mut events = link.subscribe_events(0).unwrap();
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
    // Unnumbered events cannot be kept in order: dropped.
    gw.publish(&topic, event(0).encode_to_vec()).await;
    gw.publish(&topic, event(2).encode_to_vec()).await;
    assert_eq!(soon("event 1 reaches the app", events.next()).await, Some(event(1)));
    assert_eq!(soon("event 2 reaches the app", events.next()).await, Some(event(2)));
    assert_eq!(link.ack_events(2).await.unwrap(), 0);
    // The first acknowledgement the gateway sees is the app's.
    let (vin, ack) = gw.next_ack().await;
    assert_eq!((vin.as_str(), ack.sequence), (VIN, 2));
    // A redelivery of a taken event is acknowledged again, not shown.
    gw.publish(&topic, event(1).encode_to_vec()).await;
    gw.publish(&topic, event(3).encode_to_vec()).await;
    assert_eq!(gw.next_ack().await.1.sequence, 2);
    assert_eq!(soon("event 3 reaches the app", events.next()).await, Some(event(3)));

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
}

#[tokio::test]
async fn requests_made_before_the_link_is_up_go_out_on_connect() {
    let mut rig = Rig::with_stand_in().await;
    let link = GatewayLink::start(&rig.car_config()).unwrap();

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
        let (_, req) = rig.gateway.next_request().await;
        assert_eq!(req.payload, b"queued");
        assert_eq!(req.idempotency_key, "k");
        assert!(
            req.timeout_ms <= 30_000 && req.timeout_ms > 10_000,
            "timeout_ms {}",
            req.timeout_ms
        );
        rig.gateway
            .respond(VIN, Response::ok(req.request_id, b"done".to_vec()))
            .await;
    };
    let (got, ()) = tokio::join!(call, gateway);
    assert_eq!(got.unwrap(), Bytes::from_static(b"done"));
    assert!(link.is_connected());
    link.shutdown().await;
}

#[tokio::test]
async fn pending_requests_survive_a_link_drop() {
    let mut rig = Rig::with_stand_in().await;
    let config = rig.car_config();
    let link = connected_link(&config).await;

    let call = tokio::spawn({
        let link = link.clone();
        async move {
            link.call(&list(), Bytes::from_static(b"again"), Duration::from_secs(30), None)
                .await
        }
    });
    let (_, first) = rig.gateway.next_request().await;

    // Before the gateway answers, the connection drops.
    let state = link.connection_state();
    rig.gateway.hang_up(Goodbye::Close);

    let (_, again) = rig.gateway.next_request().await;
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(again.idempotency_key, first.idempotency_key);
    assert_eq!(again.payload, first.payload);
    assert!(again.timeout_ms <= first.timeout_ms);
    // The link went down and came back in between.
    assert!(state.has_changed().unwrap());
    rig.gateway
        .respond(VIN, Response::ok(again.request_id, b"once".to_vec()))
        .await;
    assert_eq!(call.await.unwrap().unwrap(), Bytes::from_static(b"once"));
    link.shutdown().await;
}

#[tokio::test]
async fn agent_serves_partner_services_to_apps() {
    let rig = Rig::with_stand_in().await;
    let mut gw = rig.gateway;
    // Dial the IP while checking the certificate against a configured name.
    let mut config = rig.pki.agent_config(VIN, &format!("127.0.0.1:{}", gw.port));
    config.server_name = Some("localhost".into());
    let agent = connected_agent(&config).await;
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
}

/// A disk on which result files cannot be written while it is full. Every attempt to write
/// a result is reported: when, what it held, whether it was written.
struct FullDisk {
    full: AtomicBool,
    attempts: mpsc::UnboundedSender<(Instant, StoredResult, bool)>,
}

impl FullDisk {
    fn new() -> (Arc<FullDisk>, mpsc::UnboundedReceiver<(Instant, StoredResult, bool)>) {
        let (attempts, seen) = mpsc::unbounded_channel();
        let disk = FullDisk {
            full: AtomicBool::new(false),
            attempts,
        };
        (Arc::new(disk), seen)
    }
}

impl StateFiles for FullDisk {
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        if !dir.ends_with("results") {
            return Disk.write(dir, name, bytes);
        }
        let result = StoredResult::decode(bytes).unwrap();
        let written = if self.full.load(Ordering::SeqCst) {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"))
        } else {
            Disk.write(dir, name, bytes)
        };
        let _ = self.attempts.send((Instant::now(), result, written.is_ok()));
        written
    }

    fn remove(&self, dir: &Path, name: &str) -> io::Result<()> {
        Disk.remove(dir, name)
    }
}

#[tokio::test]
async fn an_answer_the_disk_refuses_is_what_the_app_got_and_what_is_stored() {
    let mut rig = Rig::with_stand_in().await;
    let (disk, mut attempts) = FullDisk::new();
    let link = GatewayLink::start_with(&rig.car_config(), disk.clone()).unwrap();
    soon("the link connects", link.wait_connected()).await;
    let app = Owner::uid(1000);
    let ids = CallIds {
        request_id: Some("pay-1".into()),
        idempotency_key: Some("intent-1".into()),
        owner: app.clone(),
    };

    disk.full.store(true, Ordering::SeqCst);
    let timeout = Duration::from_millis(800);
    let deadline = Instant::now() + timeout;
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.call_with_ids(&start_session(), Bytes::new(), timeout, ids).await }
    });
    let (_, request) = rig.gateway.next_request().await;
    let paid = Response::ok("pay-1", b"session s-1".to_vec());
    rig.gateway.respond(VIN, paid.clone()).await;

    // The app is told OK, though the disk refused the result.
    assert_eq!(call.await.unwrap().unwrap(), Bytes::from_static(b"session s-1"));
    let (_, first, written) = soon("the result is written", attempts.recv()).await.unwrap();
    assert!(!written);
    assert_eq!(first.response.as_ref(), Some(&paid));

    // The deadline passes while the disk stays full: every write tried still holds the OK,
    // never DEADLINE_EXCEEDED, and GetResult (which expires due requests) says OK too.
    loop {
        let (at, tried, written) = soon("the result is written again", attempts.recv()).await.unwrap();
        assert!(!written);
        assert_eq!(
            tried.response.as_ref(),
            Some(&paid),
            "only the answer the app got is written"
        );
        if at > deadline {
            break;
        }
    }
    let Lookup::Done(shown) = link.result("pay-1", &app).await.unwrap() else {
        panic!("pay-1 has its answer");
    };
    assert_eq!(shown.response.as_ref(), Some(&paid));
    assert_eq!(link.pending_requests(), 1, "kept until stored");

    // Room again: the same OK is stored, and the request leaves the outbox.
    disk.full.store(false, Ordering::SeqCst);
    loop {
        let (_, tried, written) = soon("the result is written at last", attempts.recv()).await.unwrap();
        assert_eq!(tried.response.as_ref(), Some(&paid));
        if written {
            break;
        }
    }
    let on_disk = std::fs::read(rig.pki.state_dir().join("results/pay-1.pb")).unwrap();
    let on_disk = StoredResult::decode(on_disk.as_slice()).unwrap();
    assert_eq!(on_disk.response.as_ref(), Some(&paid));
    assert_eq!(on_disk.owner, app.as_str());
    soon("the request leaves the outbox", async {
        while link.pending_requests() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // It was never sent again, and an app asking again gets the same OK.
    let again = CallIds {
        request_id: Some("pay-1".into()),
        owner: app.clone(),
        ..CallIds::default()
    };
    let got = link.call_with_ids(&start_session(), Bytes::new(), timeout, again).await;
    assert_eq!(got.unwrap(), Bytes::from_static(b"session s-1"));
    assert!(rig.gateway.requests.try_recv().is_err(), "{request:?} was sent once");

    // And after a restart.
    link.shutdown().await;
    let link = GatewayLink::start(&rig.car_config()).unwrap();
    let Lookup::Done(kept) = link.result("pay-1", &app).await.unwrap() else {
        panic!("pay-1 is stored");
    };
    assert_eq!(kept.response, Some(paid));
    link.shutdown().await;
}

#[tokio::test]
async fn an_answer_still_unstored_at_a_restart_is_asked_for_again() {
    let mut rig = Rig::with_stand_in().await;
    let (disk, mut attempts) = FullDisk::new();
    disk.full.store(true, Ordering::SeqCst);
    let link = GatewayLink::start_with(&rig.car_config(), disk.clone()).unwrap();
    soon("the link connects", link.wait_connected()).await;
    let ids = CallIds {
        request_id: Some("pay-2".into()),
        idempotency_key: Some("intent-2".into()),
        ..CallIds::default()
    };
    let call = tokio::spawn({
        let link = link.clone();
        async move {
            link.call_with_ids(&start_session(), Bytes::new(), Duration::from_secs(60), ids)
                .await
        }
    });
    let (_, sent) = rig.gateway.next_request().await;
    rig.gateway.respond(VIN, Response::ok("pay-2", b"ok".to_vec())).await;
    assert_eq!(call.await.unwrap().unwrap(), Bytes::from_static(b"ok"));
    assert!(!soon("the result is written", attempts.recv()).await.unwrap().2);
    // The agent stops with the disk still full: the request is still in the outbox ...
    link.shutdown().await;

    // ... so the next agent sends it again, with the same idempotency key: the gateway's
    // ledger answers with the same OK, which is then stored.
    let link = connected_link(&rig.car_config()).await;
    let (_, again) = rig.gateway.next_request().await;
    assert_eq!(
        (again.request_id.as_str(), again.idempotency_key.as_str()),
        (sent.request_id.as_str(), sent.idempotency_key.as_str())
    );
    rig.gateway.respond(VIN, Response::ok("pay-2", b"ok".to_vec())).await;
    let done = soon("the replayed answer is stored", async {
        loop {
            if let Lookup::Done(result) = link.result("pay-2", &Owner::anonymous()).await.unwrap() {
                return result;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(done.response, Some(Response::ok("pay-2", b"ok".to_vec())));
    link.shutdown().await;
}

#[tokio::test]
async fn a_deadline_that_passes_before_sending_says_the_link_was_up() {
    let rig = Rig::with_stand_in().await;
    let link = rig.connected_link().await;

    let err = link
        .call(&list(), Bytes::new(), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(
        err.message(),
        "no response within 0s: the deadline passed before the request could be sent (the link to the gateway is up)"
    );

    // 1 ms may or may not see the request out; either way the message says the link was up.
    let err = link
        .call(&list(), Bytes::new(), Duration::from_millis(1), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let message = err.message();
    assert!(
        message.starts_with("no response within 1ms: ") && message.ends_with("(the link to the gateway is up)"),
        "{message}"
    );
    assert!(!message.contains("down"), "{message}");
    link.shutdown().await;
}
