//! kill -9 of the adapter: a restarted adapter on the same database (and, by socket
//! activation, the same port) knows every open session, charges it once, and replays the
//! answers it gave before the crash.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::adapter_on_passed_socket;
use parking_adapter::ParkingService;
use proto::metadata;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{EndSessionRequest, StartSessionRequest};
use tokio::process::Child;
use tonic::Request;
use tonic::transport::Channel;

const CAR: &str = "LSVAU2180N2183294";

/// The adapter binary serving on `socket` (fd 3, as a service manager passes it) over the
/// database `db`, once it says it is listening.
async fn adapter(socket: &std::net::TcpListener, db: &Path) -> Child {
    let (child, line) = adapter_on_passed_socket(socket, &[OsStr::new("--database"), db.as_os_str()]).await;
    assert!(line.starts_with("parking adapter listening on"), "{line}");
    child
}

/// SIGKILL, and wait until the process is gone.
async fn kill9(mut child: Child) {
    child.kill().await.unwrap();
}

fn call<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(metadata::VIN, CAR.parse().unwrap());
    request
        .metadata_mut()
        .insert(metadata::IDEMPOTENCY_KEY, key.parse().unwrap());
    request
}

async fn client(socket: &std::net::TcpListener) -> ParkingPaymentClient<Channel> {
    let addr = socket.local_addr().unwrap();
    ParkingPaymentClient::connect(format!("http://{addr}")).await.unwrap()
}

#[tokio::test]
async fn a_session_started_before_kill_9_is_ended_after_it_and_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("parking.db");
    // The service manager's socket, held across the adapter's lives.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let start = StartSessionRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪A12345".into(),
    };

    let first_life = adapter(&socket, &db).await;
    let started = client(&socket)
        .await
        .start_session(call(start.clone(), "start-1"))
        .await;
    let session = started.unwrap().into_inner().session.unwrap();
    kill9(first_life).await;

    let second_life = adapter(&socket, &db).await;
    let mut app = client(&socket).await;
    // The retry of the start replays the session instead of "already active".
    let replayed = app.start_session(call(start, "start-1")).await.unwrap().into_inner();
    assert_eq!(replayed.session.as_ref(), Some(&session));
    let end = EndSessionRequest {
        session_id: session.session_id.clone(),
    };
    let ended = app
        .end_session(call(end.clone(), "end-1"))
        .await
        .expect("the session survived");
    let ended = ended.into_inner();
    assert!(ended.receipt.is_some());
    kill9(second_life).await;

    let _third_life = adapter(&socket, &db).await;
    let retry = client(&socket).await.end_session(call(end, "end-1")).await.unwrap();
    assert_eq!(retry.into_inner(), ended, "the same answer after the restart");

    // Read the database the adapter wrote, as another process would.
    let records = ParkingService::open(&db).await.unwrap();
    assert_eq!(records.charges_recorded().await.unwrap(), 1, "charged exactly once");
}

#[tokio::test]
async fn payments_in_flight_at_kill_9_are_each_charged_once_after_the_restart() {
    const CARS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("parking.db");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let car = |i: usize| format!("LTESTCAR{i:09}");
    let as_car = |i: usize, request: EndSessionRequest| {
        let mut request = call(request, &format!("end-{i}"));
        request.metadata_mut().insert(metadata::VIN, car(i).parse().unwrap());
        request
    };

    let first_life = adapter(&socket, &db).await;
    let mut app = client(&socket).await;
    let mut ends = Vec::new();
    for i in 0..CARS {
        let mut start = call(
            StartSessionRequest {
                lot_id: "lot-xintiandi-01".into(),
                plate: format!("沪A{i:05}"),
            },
            "start",
        );
        start.metadata_mut().insert(metadata::VIN, car(i).parse().unwrap());
        let session = app.start_session(start).await.unwrap().into_inner().session.unwrap();
        ends.push(EndSessionRequest {
            session_id: session.session_id,
        });
    }
    // Every car pays at once, and the adapter is killed as soon as the first payment is
    // answered, with the others under way: whichever committed before the kill and whichever
    // did not, each is charged once.
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for (i, end) in ends.iter().enumerate() {
        let mut app = app.clone();
        let request = as_car(i, end.clone());
        let answered = answered.clone();
        tokio::spawn(async move {
            let _ = answered.send((i, app.end_session(request).await.ok().map(|r| r.into_inner())));
        });
    }
    drop(answered);
    let mut before_the_kill = vec![None; CARS];
    let (first, answer) = answers.recv().await.unwrap();
    before_the_kill[first] = answer;
    kill9(first_life).await;
    while let Some((i, answer)) = answers.recv().await {
        before_the_kill[i] = answer;
    }
    assert!(
        before_the_kill.iter().any(Option::is_some),
        "the first payment was answered"
    );

    let _second_life = adapter(&socket, &db).await;
    let mut app = client(&socket).await;
    for (i, end) in ends.into_iter().enumerate() {
        let retried = app.end_session(as_car(i, end)).await.expect("paid after the restart");
        let retried = retried.into_inner();
        assert!(retried.receipt.is_some());
        if let Some(answered) = &before_the_kill[i] {
            assert_eq!(&retried, answered, "car {i}: the answer given before the kill");
        }
    }
    let records = ParkingService::open(&db).await.unwrap();
    assert_eq!(records.charges_recorded().await.unwrap(), CARS as u64);
}
