//! The durable outbox on its own: what survives a reload, and what is refused.

use std::path::Path;
use std::time::Duration;

use tonic::Code;

use proto::vehicle::v1::{Code as EnvCode, Request, Response};
use vehicle_agent::outbox::{Lookup, Outbox, Submitted};

const START: &str = "/parking.v1.ParkingPayment/StartSession";
const T0: u64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn req(id: &str) -> Request {
    Request {
        request_id: id.into(),
        idempotency_key: format!("key-{id}"),
        method: START.into(),
        timeout_ms: 0,
        payload: vec![1, 2, 3],
    }
}

fn open(dir: &Path, capacity: usize, now: u64) -> Outbox {
    Outbox::open(dir, capacity, DAY, now).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn entries_and_results_survive_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    assert_eq!(
        outbox.submit(req("b-first"), T0 + 60_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("a-second"), T0 + 30_000, T0 + 1).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("done"), T0 + 30_000, T0 + 2).unwrap(),
        Submitted::Accepted
    );
    let answer = Response::ok("done", b"receipt".to_vec());
    assert!(outbox.complete(&answer, T0 + 5).unwrap());
    assert!(
        !outbox.complete(&answer, T0 + 6).unwrap(),
        "a duplicate answer is ignored"
    );
    drop(outbox);
    assert_eq!(
        files(&dir.path().join("outbox")),
        vec!["a-second.pb".to_owned(), "b-first.pb".to_owned()]
    );
    assert_eq!(files(&dir.path().join("results")), vec!["done.pb".to_owned()]);

    let outbox = open(dir.path(), 10, T0 + 10_000);
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox.results(), 1);
    // In acceptance order, same ids and keys, timeout_ms recomputed from the stored deadline.
    let due = outbox.due(1, T0 + 10_000);
    let got: Vec<(&str, &str, u32)> = due
        .iter()
        .map(|r| (r.request_id.as_str(), r.idempotency_key.as_str(), r.timeout_ms))
        .collect();
    assert_eq!(
        got,
        vec![("b-first", "key-b-first", 50_000), ("a-second", "key-a-second", 20_000)]
    );
    assert_eq!(due[0].payload, vec![1, 2, 3]);
    assert_eq!(due[0].method, START);
    assert!(outbox.due(1, T0 + 10_000).is_empty(), "published once per link session");
    assert_eq!(outbox.prepare("b-first", 2, T0 + 11_000).unwrap().timeout_ms, 49_000);
    assert_eq!(outbox.lookup("b-first").unwrap(), Lookup::Pending);
    assert_eq!(outbox.lookup("nope").unwrap(), Lookup::Unknown);
    let Lookup::Done(result) = outbox.lookup("done").unwrap() else {
        panic!("done has a result");
    };
    assert_eq!(result.method, START);
    assert_eq!(result.response, Some(answer));
    assert_eq!(result.completed_unix_ms, T0 + 5);
}

#[test]
fn corrupt_files_are_removed_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    outbox.submit(req("good"), T0 + 60_000, T0).unwrap();
    outbox.submit(req("answered"), T0 + 60_000, T0).unwrap();
    outbox.complete(&Response::ok("answered", vec![]), T0).unwrap();
    drop(outbox);
    let (ob, res) = (dir.path().join("outbox"), dir.path().join("results"));
    std::fs::write(ob.join("garbage.pb"), [0xff, 0xff, 0xff]).unwrap();
    std::fs::copy(ob.join("good.pb"), ob.join("other-name.pb")).unwrap();
    std::fs::write(ob.join("not an id.pb"), b"").unwrap();
    std::fs::write(ob.join("half.pb.tmp"), b"interrupted write").unwrap();
    std::fs::write(res.join("garbage.pb"), [0x0a, 0xff]).unwrap();

    let outbox = open(dir.path(), 10, T0 + 1);
    assert_eq!(files(&ob), vec!["good.pb".to_owned()]);
    assert_eq!(files(&res), vec!["answered.pb".to_owned()]);
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox.results(), 1);

    // A result file that went bad while running is reported once, then forgotten.
    std::fs::write(res.join("answered.pb"), [0xff]).unwrap();
    assert_eq!(
        outbox.lookup("answered").unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
    assert_eq!(outbox.lookup("answered").unwrap(), Lookup::Unknown);
}

#[test]
fn a_crash_between_result_and_removal_keeps_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    outbox.submit(req("r"), T0 + 60_000, T0).unwrap();
    let request_file = std::fs::read(dir.path().join("outbox/r.pb")).unwrap();
    outbox.complete(&Response::ok("r", b"x".to_vec()), T0 + 1).unwrap();
    drop(outbox);
    // As if the agent died after writing the result but before removing the request.
    std::fs::write(dir.path().join("outbox/r.pb"), request_file).unwrap();
    let outbox = open(dir.path(), 10, T0 + 2);
    assert_eq!(outbox.len(), 0);
    assert!(files(&dir.path().join("outbox")).is_empty());
    assert!(matches!(outbox.lookup("r").unwrap(), Lookup::Done(_)));
}

#[test]
fn a_full_outbox_refuses_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 2, T0);
    outbox.submit(req("a"), T0 + 60_000, T0).unwrap();
    outbox.submit(req("b"), T0 + 60_000, T0).unwrap();
    let err = outbox.submit(req("c"), T0 + 60_000, T0).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "outbox full: 2 requests waiting for the gateway");
    assert!(!dir.path().join("outbox/c.pb").exists());
    // Known ids are not new requests: still answered while full.
    assert_eq!(outbox.submit(req("a"), T0 + 60_000, T0).unwrap(), Submitted::Pending);
    outbox.complete(&Response::ok("a", vec![]), T0).unwrap();
    assert_eq!(outbox.submit(req("c"), T0 + 60_000, T0).unwrap(), Submitted::Accepted);
}

#[test]
fn a_deadline_passed_while_stopped_becomes_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    outbox.submit(req("late"), T0 + 1_000, T0).unwrap();
    outbox.submit(req("still-on"), T0 + 100_000, T0).unwrap();
    drop(outbox);

    let outbox = open(dir.path(), 10, T0 + 2_000);
    assert_eq!(outbox.len(), 1);
    assert_eq!(files(&dir.path().join("outbox")), vec!["still-on.pb".to_owned()]);
    let Lookup::Done(result) = outbox.lookup("late").unwrap() else {
        panic!("late has a result");
    };
    let status = result.response.unwrap().status.unwrap();
    assert_eq!(status.code(), EnvCode::DeadlineExceeded);
    assert_eq!(
        status.message,
        "no response before the deadline: it passed while the vehicle agent was not running"
    );
    assert_eq!(result.method, START);
    // While running, the same test is the caller's or the housekeeping's.
    assert!(outbox.expired(T0 + 99_999).is_empty());
    assert_eq!(outbox.expired(T0 + 100_000), vec!["still-on".to_owned()]);
    assert_eq!(outbox.prepare("still-on", 1, T0 + 100_000), None);
}

#[test]
fn a_failed_disk_write_refuses_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    // A regular file where the directory was: every write under it fails, even for root.
    let ob = dir.path().join("outbox");
    std::fs::remove_dir(&ob).unwrap();
    std::fs::write(&ob, b"not a directory").unwrap();
    let err = outbox.submit(req("a"), T0 + 60_000, T0).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("cannot store the request in ") && err.message().ends_with("it was not accepted"),
        "{}",
        err.message()
    );
    assert_eq!(outbox.len(), 0);
    assert_eq!(outbox.lookup("a").unwrap(), Lookup::Unknown);

    // A state directory that cannot be created at all fails to open.
    let e = Outbox::open(&ob.join("state"), 10, DAY, T0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
}

#[test]
fn request_ids_must_be_safe_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    for bad in ["", "../escape", "a/b", "with space", "é", &"x".repeat(129)] {
        let err = outbox.submit(req(bad), T0 + 1_000, T0).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("1 to 128 characters"), "{}", err.message());
    }
    assert_eq!(
        outbox.submit(req(&"x".repeat(128)), T0 + 1_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("A.b_c-9"), T0 + 1_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(files(&dir.path().join("outbox")).len(), 2);
}

#[test]
fn a_known_id_returns_its_result_and_keeps_its_method() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 10, T0);
    outbox.submit(req("r"), T0 + 60_000, T0).unwrap();
    let other = Request {
        method: "/parking.v1.ParkingPayment/GetReceipt".into(),
        ..req("r")
    };
    assert_eq!(
        outbox.submit(other.clone(), T0, T0).unwrap_err().code(),
        Code::InvalidArgument
    );
    outbox
        .complete(&Response::error("r", EnvCode::NotFound, "no lot"), T0)
        .unwrap();
    let Submitted::Done(result) = outbox.submit(req("r"), T0 + 60_000, T0).unwrap() else {
        panic!("r is done");
    };
    assert_eq!(result.response.unwrap().status.unwrap().message, "no lot");
    let err = outbox.submit(other, T0, T0).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("already used for /parking.v1.ParkingPayment/StartSession")
    );
    assert_eq!(outbox.len(), 0);
}

#[test]
fn results_are_purged_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), 10, Duration::from_secs(1), T0).unwrap();
    outbox.submit(req("r"), T0 + 60_000, T0).unwrap();
    outbox.complete(&Response::ok("r", vec![]), T0 + 10).unwrap();
    assert_eq!(outbox.purge(T0 + 1_009).unwrap(), 0);
    assert_eq!(outbox.purge(T0 + 1_010).unwrap(), 1);
    assert_eq!(outbox.lookup("r").unwrap(), Lookup::Unknown);
    assert!(files(&dir.path().join("results")).is_empty());
    // Old results are also dropped on startup.
    outbox.submit(req("s"), T0 + 60_000, T0).unwrap();
    outbox.complete(&Response::ok("s", vec![]), T0 + 10).unwrap();
    drop(outbox);
    let outbox = Outbox::open(dir.path(), 10, Duration::from_secs(1), T0 + 5_000).unwrap();
    assert_eq!(outbox.results(), 0);
}
