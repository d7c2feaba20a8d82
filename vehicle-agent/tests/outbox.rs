//! The durable outbox on its own: what survives a reload, what is refused, whose it is, and
//! what happens when the disk is full or slow (a [`StateFiles`] standing in for it).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;

use proto::vehicle::v1::{Code as EnvCode, Request, Response};
use vehicle_agent::outbox::{Lookup, Outbox, Submitted};
use vehicle_agent::owner::Owner;
use vehicle_agent::store::{Disk, StateFiles};

const START: &str = "/parking.v1.ParkingPayment/StartSession";
const T0: u64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);
/// Generous bound for what must not wait: a failure, not a synchronisation.
const SOON: Duration = Duration::from_secs(20);

fn req(id: &str) -> Request {
    Request {
        request_id: id.into(),
        idempotency_key: format!("key-{id}"),
        method: START.into(),
        timeout_ms: 0,
        payload: vec![1, 2, 3],
    }
}

/// The app of most tests here: a TCP caller without a token.
fn anon() -> Owner {
    Owner::anonymous()
}

fn open(dir: &Path, capacity: usize, now: u64) -> Outbox {
    Outbox::open(dir, capacity, DAY, now).unwrap()
}

/// A new outbox for `capacity` requests, opened at `T0`, and its directory.
fn an_outbox(capacity: usize) -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), capacity, T0);
    (dir, outbox)
}

/// Submits request `id` of the anonymous app, due in a minute: it must be accepted.
fn accept(outbox: &Outbox, id: &str) {
    assert_eq!(
        outbox.submit(req(id), &anon(), T0 + 60_000, T0).unwrap(),
        Submitted::Accepted
    );
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
    let (dir, outbox) = an_outbox(10);
    assert_eq!(
        outbox.submit(req("b-first"), &anon(), T0 + 60_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("a-second"), &anon(), T0 + 30_000, T0 + 1).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("done"), &anon(), T0 + 30_000, T0 + 2).unwrap(),
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
    assert!(outbox.due(1, T0 + 10_000).is_empty(), "published once per MQTT session");
    assert_eq!(outbox.prepare("b-first", 2, T0 + 11_000).unwrap().timeout_ms, 49_000);
    assert_eq!(outbox.lookup("b-first", &anon()).unwrap(), Lookup::Pending);
    assert_eq!(outbox.lookup("nope", &anon()).unwrap(), Lookup::Unknown);
    let Lookup::Done(result) = outbox.lookup("done", &anon()).unwrap() else {
        panic!("done has a result");
    };
    assert_eq!(result.method, START);
    assert_eq!(result.response, Some(answer));
    assert_eq!(result.completed_unix_ms, T0 + 5);
}

#[test]
fn corrupt_files_are_removed_and_the_rest_loads() {
    let (dir, outbox) = an_outbox(10);
    accept(&outbox, "good");
    accept(&outbox, "answered");
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
        outbox.lookup("answered", &anon()).unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
    assert_eq!(outbox.lookup("answered", &anon()).unwrap(), Lookup::Unknown);
}

#[test]
fn a_crash_between_result_and_removal_keeps_the_result() {
    let (dir, outbox) = an_outbox(10);
    accept(&outbox, "r");
    let request_file = std::fs::read(dir.path().join("outbox/r.pb")).unwrap();
    outbox.complete(&Response::ok("r", b"x".to_vec()), T0 + 1).unwrap();
    drop(outbox);
    // As if the agent died after writing the result but before removing the request.
    std::fs::write(dir.path().join("outbox/r.pb"), request_file).unwrap();
    let outbox = open(dir.path(), 10, T0 + 2);
    assert_eq!(outbox.len(), 0);
    assert!(files(&dir.path().join("outbox")).is_empty());
    assert!(matches!(outbox.lookup("r", &anon()).unwrap(), Lookup::Done(_)));
}

#[test]
fn a_full_outbox_refuses_new_requests() {
    let (dir, outbox) = an_outbox(2);
    accept(&outbox, "a");
    accept(&outbox, "b");
    let err = outbox.submit(req("c"), &anon(), T0 + 60_000, T0).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "outbox full: 2 requests waiting for the gateway");
    assert!(!dir.path().join("outbox/c.pb").exists());
    // Known ids are not new requests: still answered while full.
    assert_eq!(
        outbox.submit(req("a"), &anon(), T0 + 60_000, T0).unwrap(),
        Submitted::Pending
    );
    outbox.complete(&Response::ok("a", vec![]), T0).unwrap();
    assert_eq!(
        outbox.submit(req("c"), &anon(), T0 + 60_000, T0).unwrap(),
        Submitted::Accepted
    );
}

#[test]
fn a_deadline_passed_while_stopped_becomes_deadline_exceeded() {
    let (dir, outbox) = an_outbox(10);
    outbox.submit(req("late"), &anon(), T0 + 1_000, T0).unwrap();
    outbox.submit(req("still-on"), &anon(), T0 + 100_000, T0).unwrap();
    drop(outbox);

    let outbox = open(dir.path(), 10, T0 + 2_000);
    assert_eq!(outbox.len(), 1);
    assert_eq!(files(&dir.path().join("outbox")), vec!["still-on.pb".to_owned()]);
    let Lookup::Done(result) = outbox.lookup("late", &anon()).unwrap() else {
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
    let (dir, outbox) = an_outbox(10);
    // A regular file where the directory was: every write under it fails, even for root.
    let ob = dir.path().join("outbox");
    std::fs::remove_dir(&ob).unwrap();
    std::fs::write(&ob, b"not a directory").unwrap();
    let err = outbox.submit(req("a"), &anon(), T0 + 60_000, T0).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("cannot store the request in ") && err.message().ends_with("it was not accepted"),
        "{}",
        err.message()
    );
    assert_eq!(outbox.len(), 0);
    assert_eq!(outbox.lookup("a", &anon()).unwrap(), Lookup::Unknown);

    // A state directory that cannot be created at all fails to open.
    let e = Outbox::open(&ob.join("state"), 10, DAY, T0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
}

#[test]
fn request_ids_must_be_safe_file_names() {
    let (dir, outbox) = an_outbox(10);
    for bad in ["", "../escape", "a/b", "with space", "é", &"x".repeat(129)] {
        let err = outbox.submit(req(bad), &anon(), T0 + 1_000, T0).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("1 to 128 characters"), "{}", err.message());
    }
    assert_eq!(
        outbox.submit(req(&"x".repeat(128)), &anon(), T0 + 1_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        outbox.submit(req("A.b_c-9"), &anon(), T0 + 1_000, T0).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(files(&dir.path().join("outbox")).len(), 2);
}

#[test]
fn a_known_id_returns_its_result_and_keeps_its_method() {
    let (_dir, outbox) = an_outbox(10);
    accept(&outbox, "r");
    let other = Request {
        method: "/parking.v1.ParkingPayment/GetReceipt".into(),
        ..req("r")
    };
    assert_eq!(
        outbox.submit(other.clone(), &anon(), T0, T0).unwrap_err().code(),
        Code::InvalidArgument
    );
    outbox
        .complete(&Response::error("r", EnvCode::NotFound, "no lot"), T0)
        .unwrap();
    let Submitted::Done(result) = outbox.submit(req("r"), &anon(), T0 + 60_000, T0).unwrap() else {
        panic!("r is done");
    };
    assert_eq!(result.response.unwrap().status.unwrap().message, "no lot");
    let err = outbox.submit(other, &anon(), T0, T0).unwrap_err();
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
    accept(&outbox, "r");
    outbox.complete(&Response::ok("r", vec![]), T0 + 10).unwrap();
    assert_eq!(outbox.purge(T0 + 1_009).unwrap(), 0);
    assert_eq!(outbox.purge(T0 + 1_010).unwrap(), 1);
    assert_eq!(outbox.lookup("r", &anon()).unwrap(), Lookup::Unknown);
    assert!(files(&dir.path().join("results")).is_empty());
    // Old results are also dropped on startup.
    accept(&outbox, "s");
    outbox.complete(&Response::ok("s", vec![]), T0 + 10).unwrap();
    drop(outbox);
    let outbox = Outbox::open(dir.path(), 10, Duration::from_secs(1), T0 + 5_000).unwrap();
    assert_eq!(outbox.results(), 0);
}

/// The disk, but result files cannot be written while it is full.
#[derive(Default)]
struct FullDisk {
    full: AtomicBool,
}

impl StateFiles for FullDisk {
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        if dir.ends_with("results") && self.full.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        Disk.write(dir, name, bytes)
    }

    fn remove(&self, dir: &Path, name: &str) -> io::Result<()> {
        Disk.remove(dir, name)
    }
}

fn full_disk() -> Arc<FullDisk> {
    let disk = FullDisk::default();
    disk.full.store(true, Ordering::SeqCst);
    Arc::new(disk)
}

#[test]
fn an_answer_the_disk_refuses_is_the_outcome_and_is_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let disk = full_disk();
    let outbox = Outbox::open_with(dir.path(), 10, DAY, T0, disk.clone()).unwrap();
    outbox.submit(req("r"), &anon(), T0 + 1_000, T0).unwrap();
    let paid = Response::ok("r", b"paid".to_vec());
    let e = outbox.complete(&paid, T0 + 10).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);

    // It is the outcome now: shown, not sent again, never expired, never replaced.
    let Lookup::Done(shown) = outbox.lookup("r", &anon()).unwrap() else {
        panic!("r has its answer");
    };
    assert_eq!(shown.response.as_ref(), Some(&paid));
    assert_eq!(
        outbox.submit(req("r"), &anon(), T0 + 1_000, T0 + 20).unwrap(),
        Submitted::Done(shown)
    );
    assert!(outbox.due(1, T0 + 20).is_empty());
    assert!(outbox.expired(T0 + 5_000).is_empty());
    assert_eq!(outbox.next_deadline(), None);
    let late = Response::error("r", EnvCode::DeadlineExceeded, "too late");
    assert!(!outbox.complete(&late, T0 + 5_000).unwrap(), "the first answer stands");
    assert_eq!((outbox.len(), outbox.unstored_answers()), (1, 1));

    // Written again with backoff: 100 ms after the failure, then 200 ms after the next one.
    assert_eq!(outbox.next_retry(), Some(T0 + 110));
    assert!(outbox.store_answers(T0 + 109).is_empty());
    let tried = outbox.store_answers(T0 + 110);
    assert_eq!(tried.len(), 1);
    assert!(tried[0].1.is_err());
    assert_eq!(outbox.next_retry(), Some(T0 + 310));

    disk.full.store(false, Ordering::SeqCst);
    let tried = outbox.store_answers(T0 + 5_000);
    assert_eq!(tried.len(), 1);
    tried[0].1.as_ref().unwrap();
    assert_eq!(
        (outbox.len(), outbox.unstored_answers(), outbox.next_retry()),
        (0, 0, None)
    );
    assert!(files(&dir.path().join("outbox")).is_empty());
    drop(outbox);

    let outbox = open(dir.path(), 10, T0 + 10_000);
    let Lookup::Done(stored) = outbox.lookup("r", &anon()).unwrap() else {
        panic!("r is stored");
    };
    assert_eq!(stored.response, Some(paid));
    assert_eq!(
        stored.completed_unix_ms,
        T0 + 10,
        "when the answer came, not when it was written"
    );
}

#[test]
fn an_answer_still_unstored_when_the_agent_stops_leaves_its_request_to_be_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_with(dir.path(), 10, DAY, T0, full_disk()).unwrap();
    accept(&outbox, "r");
    outbox
        .complete(&Response::ok("r", b"paid".to_vec()), T0 + 10)
        .unwrap_err();
    drop(outbox);

    // The gateway's ledger answers the same key with the same answer.
    let outbox = open(dir.path(), 10, T0 + 1_000);
    assert_eq!(outbox.lookup("r", &anon()).unwrap(), Lookup::Pending);
    let due = outbox.due(1, T0 + 1_000);
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].request_id.as_str(), due[0].idempotency_key.as_str()),
        ("r", "key-r")
    );
}

/// The disk, but the first write of one file waits, once it has begun, until released.
struct SlowWrite {
    name: String,
    began: Sender<()>,
    release: Mutex<Option<Receiver<()>>>,
}

impl SlowWrite {
    /// The disk, and how to see the slow write begin and to let it finish.
    fn of(name: &str) -> (Arc<SlowWrite>, Receiver<()>, Sender<()>) {
        let (began, begun) = channel();
        let (release, released) = channel();
        let disk = SlowWrite {
            name: name.to_owned(),
            began,
            release: Mutex::new(Some(released)),
        };
        (Arc::new(disk), begun, release)
    }
}

impl StateFiles for SlowWrite {
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        let gate = if name == self.name {
            self.release.lock().unwrap().take()
        } else {
            None
        };
        if let Some(released) = gate {
            self.began.send(()).unwrap();
            // Released, or the test failed and dropped the sender: go on either way.
            let _ = released.recv();
        }
        Disk.write(dir, name, bytes)
    }

    fn remove(&self, dir: &Path, name: &str) -> io::Result<()> {
        Disk.remove(dir, name)
    }
}

#[test]
fn a_slow_write_holds_up_only_its_own_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, began, release) = SlowWrite::of("slow.pb");
    let outbox = Outbox::open_with(dir.path(), 3, DAY, T0, disk).unwrap();
    accept(&outbox, "other");
    std::thread::scope(|threads| {
        // Owned here, so that a failing assertion drops it and the slow write ends.
        let release = release;
        let slow = threads.spawn(|| outbox.submit(req("slow"), &anon(), T0 + 60_000, T0));
        began.recv().unwrap();

        // While slow.pb is being written, nothing else waits for it (checked on a thread of
        // its own, so that waiting fails the test instead of hanging it).
        let (checked, done) = channel();
        let outbox = &outbox;
        threads.spawn(move || {
            assert_eq!(outbox.lookup("other", &anon()).unwrap(), Lookup::Pending);
            assert_eq!(
                outbox.lookup("slow", &anon()).unwrap(),
                Lookup::Unknown,
                "not accepted yet"
            );
            assert_eq!(
                outbox.submit(req("fast"), &anon(), T0 + 60_000, T0).unwrap(),
                Submitted::Accepted
            );
            assert!(outbox.complete(&Response::ok("other", vec![]), T0).unwrap());
            let due: Vec<String> = outbox.due(1, T0).into_iter().map(|r| r.request_id).collect();
            assert_eq!(due, vec!["fast".to_owned()]);
            assert!(outbox.purge(T0).is_ok());
            // The write under way counts against the capacity: fast, slow, then one more.
            assert_eq!(
                outbox.submit(req("third"), &anon(), T0 + 60_000, T0).unwrap(),
                Submitted::Accepted
            );
            let full = outbox.submit(req("fourth"), &anon(), T0 + 60_000, T0).unwrap_err();
            assert_eq!(full.code(), Code::ResourceExhausted);
            checked.send(()).unwrap();
        });
        match done.recv_timeout(SOON) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => panic!("other requests waited for slow.pb's write"),
            Err(RecvTimeoutError::Disconnected) => panic!("the checks during slow.pb's write failed"),
        }

        // The same id waits for the write under way, then finds the one request.
        let same = threads.spawn(|| outbox.submit(req("slow"), &anon(), T0 + 60_000, T0));
        release.send(()).unwrap();
        assert_eq!(slow.join().unwrap().unwrap(), Submitted::Accepted);
        assert_eq!(same.join().unwrap().unwrap(), Submitted::Pending);
    });
    assert_eq!(outbox.len(), 3);
}

#[test]
fn close_waits_for_the_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, began, release) = SlowWrite::of("slow.pb");
    let outbox = Outbox::open_with(dir.path(), 4, DAY, T0, disk).unwrap();
    let written = dir.path().join("outbox/slow.pb");
    std::thread::scope(|threads| {
        // Owned here, so that a failing assertion drops it and the slow write ends.
        let release = release;
        let slow = threads.spawn(|| outbox.submit(req("slow"), &anon(), T0 + 60_000, T0));
        began.recv().unwrap();
        let closer = threads.spawn(|| {
            outbox.close();
            written.exists()
        });
        release.send(()).unwrap();
        assert!(
            closer.join().unwrap(),
            "close returned before the write it had to wait for"
        );
        assert_eq!(slow.join().unwrap().unwrap(), Submitted::Accepted);
    });
    let refused = outbox.submit(req("late"), &anon(), T0 + 60_000, T0).unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
}

#[test]
fn a_request_is_its_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Owner::uid(1000), Owner::token("the-token-of-app-b").unwrap());
    let outbox = open(dir.path(), 10, T0);
    outbox.submit(req("r"), &a, T0 + 60_000, T0).unwrap();
    outbox.submit(req("s"), &a, T0 + 60_000, T0).unwrap();

    assert_eq!(outbox.lookup("r", &a).unwrap(), Lookup::Pending);
    for other in [&b, &anon(), &Owner::uid(1001)] {
        assert_eq!(outbox.lookup("r", other).unwrap(), Lookup::Unknown, "{other}");
        let e = outbox.submit(req("r"), other, T0 + 60_000, T0).unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{other}");
        assert!(
            !e.message().contains("uid") && !e.message().contains("StartSession"),
            "{}",
            e.message()
        );
    }
    outbox.complete(&Response::ok("r", b"paid".to_vec()), T0 + 1).unwrap();
    assert!(matches!(outbox.lookup("r", &a).unwrap(), Lookup::Done(_)));
    assert_eq!(outbox.lookup("r", &b).unwrap(), Lookup::Unknown);
    assert_eq!(
        outbox.submit(req("r"), &b, T0 + 60_000, T0).unwrap_err().code(),
        Code::NotFound
    );
    drop(outbox);

    // Owners are stored with requests and results.
    let outbox = open(dir.path(), 10, T0 + 2);
    assert!(matches!(outbox.lookup("r", &a).unwrap(), Lookup::Done(_)));
    assert_eq!(outbox.lookup("r", &b).unwrap(), Lookup::Unknown);
    assert_eq!(outbox.lookup("s", &a).unwrap(), Lookup::Pending);
    assert_eq!(outbox.lookup("s", &b).unwrap(), Lookup::Unknown);
}
