//! Replays every file of `fuzz/corpus/<target>/` through the `gateway::fuzz` entry point of
//! that name, so `cargo test` (stable, in CI) keeps checking the hand-written seeds and what
//! the fuzzers found. The agent's half of the `config` corpus is replayed by the agent's tests.
//!
//! The seeds are made here, with rumqttc's encoder and prost; after changing them, write them
//! out with `WRITE_FUZZ_SEEDS=1 cargo test -p gateway --test fuzz_corpus`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use gateway::fuzz::{OTHER_VIN, TARGETS, VIN};
use prost::Message;
use proto::events::v1::PublishRequest;
use proto::vehicle::v1::{EventAck, Request};
use rumqttc::mqttbytes::v4::{
    Connect, LastWill, Login, Packet, PubRel, Publish, Subscribe, SubscribeFilter, Unsubscribe,
};
use rumqttc::mqttbytes::{Protocol, QoS};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Runs every file of `target`'s corpus through its entry point; returns how many there were.
fn replay(target: &str) -> usize {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let dir = corpus().join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            panic!("{target} fails on {} (the panic is above)", file.display());
        }
    }
    files.len()
}

macro_rules! replays {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            let files = replay(stringify!($target));
            assert!(files > 0, "the {} corpus is empty", stringify!($target));
        }
    )*};
}

replays!(
    mqtt_packet,
    mqtt_session,
    request_envelope,
    event_ack,
    topics,
    config,
    partner_event
);

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let mut dirs: Vec<String> = std::fs::read_dir(corpus())
        .expect("fuzz/corpus")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

/// Set to write the seed files from the seeds made here (after changing them), instead of
/// checking that they match: `WRITE_FUZZ_SEEDS=1 cargo test -p gateway --test fuzz_corpus`.
const WRITE_SEEDS: &str = "WRITE_FUZZ_SEEDS";

#[test]
fn the_seed_files_are_the_seeds_made_here() {
    let write = std::env::var_os(WRITE_SEEDS).is_some();
    for (target, name, bytes) in seeds() {
        let dir = corpus().join(target);
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(&dir).expect("a corpus directory");
            std::fs::write(&path, &bytes).expect("a seed file");
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; write the seeds with {WRITE_SEEDS}=1", path.display()));
        assert!(
            on_disk == bytes,
            "{} is stale; write the seeds again with {WRITE_SEEDS}=1",
            path.display()
        );
    }
}

#[test]
fn the_valid_configuration_seeds_are_accepted() {
    // Otherwise the config target would never get past validation to check what it accepted.
    let exe = std::env::current_exe().unwrap();
    for (name, text) in configs().into_iter().filter(|(name, _)| name.starts_with("gateway")) {
        let text = text.replace(gateway::fuzz::EXISTING_FILE, &exe.to_string_lossy());
        if let Err(e) = gateway::GatewayConfig::from_toml(&text) {
            panic!("seed {name}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The seeds

// The crate root is this file, so the path is spelled out.
#[path = "fuzz_corpus/mqtt_seeds.rs"]
mod mqtt_seeds;
use mqtt_seeds::mqtt_streams;

fn vin() -> proto::Vin {
    proto::Vin::parse(VIN).unwrap()
}

fn other() -> proto::Vin {
    proto::Vin::parse(OTHER_VIN).unwrap()
}

fn own(level: &str) -> String {
    format!("{}{level}", proto::topics::namespace(&vin()))
}

fn envelope(request_id: &str, key: &str, method: &str, timeout_ms: u32, payload: Vec<u8>) -> Vec<u8> {
    Request::new(request_id, key, method, timeout_ms, payload).encode_to_vec()
}

const START: &str = "/parking.v1.ParkingPayment/StartSession";

/// The hand-written seeds: (target, name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, bytes) in mqtt_streams() {
        // The packet target's first byte says how the stream is split.
        let mut split = vec![7];
        split.extend(&bytes);
        seeds.push(("mqtt_packet", name, split));
        seeds.push(("mqtt_session", name, bytes));
    }
    for (name, bytes) in envelopes() {
        seeds.push(("request_envelope", name, bytes));
    }
    seeds.push(("event_ack", "valid", EventAck { sequence: 1 }.encode_to_vec()));
    seeds.push(("event_ack", "largest", EventAck { sequence: u64::MAX }.encode_to_vec()));
    seeds.push(("event_ack", "wrong-wire-type", vec![0x0a, 0x03, 1, 2, 3]));
    for (name, text) in topic_pairs() {
        seeds.push(("topics", name, text.into_bytes()));
    }
    for (name, text) in configs().into_iter().chain(durations_past_a_century()) {
        seeds.push(("config", name, text.into_bytes()));
    }
    for (name, request) in partner_events() {
        seeds.push(("partner_event", name, request.encode_to_vec()));
    }
    seeds.extend(found());
    seeds
}

/// What the fuzzers found, byte for byte, kept here so that minimizing a corpus never drops it.
fn found() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![(
        // A CONNECT with a remaining length of 1: the reserved-flag check read its "flags" from
        // the next packet's bytes, so the verdict depended on how the stream was split.
        "mqtt_packet",
        "found-connect-flags-past-its-frame",
        b"\x07\x10\x01\x00\x04icl\xff\xff\xff\xffe-ag*nt/0\x00\x1e\x00\x00\x00\x00\x13ve\xff\xff\xff\xffhicle-agent/0.1.0"
            .to_vec(),
    )]
}

/// Configurations validation once accepted though the gateway could not use them: a
/// request's deadline overflowed the clock, the ledger's expiry wrapped negative.
fn durations_past_a_century() -> Vec<(&'static str, String)> {
    let tls = "[tls]\ncert = \"@FILE@\"\nkey = \"@FILE@\"\nclient_ca = \"@FILE@\"\n";
    vec![
        (
            "retention-past-a-century",
            format!("{tls}[idempotency]\nretention = \"300000000years\"\n"),
        ),
        (
            "max-timeout-past-a-century",
            format!("{tls}[requests]\nmax_timeout = \"500000000000years\"\n"),
        ),
        (
            "max-ttl-past-a-century",
            format!("{tls}[events]\nmax_ttl = \"300000000years\"\n"),
        ),
    ]
}

fn envelopes() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "valid",
            envelope("r-1", "k-1", START, 5_000, vec![0x0a, 0x02, b'h', b'i']),
        ),
        ("no-key-no-deadline", envelope("r-2", "", START, 0, Vec::new())),
        ("empty", Vec::new()),
        ("request-id-with-a-space", envelope("r 1", "", START, 0, Vec::new())),
        (
            "request-id-too-long",
            envelope(&"r".repeat(300), "", START, 0, Vec::new()),
        ),
        ("request-id-not-ascii", envelope("停车", "", START, 0, Vec::new())),
        ("key-with-a-newline", envelope("r-1", "k\n1", START, 0, Vec::new())),
        (
            "method-not-a-path",
            envelope("r-1", "", "parking.v1.ParkingPayment", 0, Vec::new()),
        ),
        (
            "method-of-no-partner",
            envelope("r-1", "", "/navigation.v1.Routes/Plan", 0, Vec::new()),
        ),
        ("largest-deadline", envelope("r-1", "", START, u32::MAX, Vec::new())),
        ("string-not-utf8", vec![0x0a, 0x02, 0xc3, 0x28]),
        (
            "truncated",
            envelope("r-1", "k-1", START, 5_000, vec![1, 2, 3])[..12].to_vec(),
        ),
    ]
}

fn topic_pairs() -> Vec<(&'static str, String)> {
    let o = other();
    let theirs = |level: &str| format!("{}{level}", proto::topics::namespace(&o));
    vec![
        ("own-wildcard", format!("{}\n{}", own("#"), theirs("x"))),
        (
            "own-plus",
            format!("{}\n{}", own("+/events"), proto::topics::events(&o)),
        ),
        ("hash", format!("#\n{}", theirs("v1/resp"))),
        ("plus-levels", format!("+/+/+/+\n{}", theirs("v1/resp"))),
        ("any-tenant", format!("/tenants/+/v1/resp\n{}", theirs("v1/resp"))),
        ("share", format!("$share/g{}\n{}", own("#"), theirs("x"))),
        ("vin-prefix", format!("/tenants/{VIN}7/#\n/tenants/{VIN}7/x")),
        ("no-slash", format!("/tenants/{VIN}\n/tenants/{VIN}")),
        (
            "request-topic",
            format!("{}\n{}", proto::topics::requests(&vin()), proto::topics::requests(&o)),
        ),
        (
            "ack-topic",
            format!(
                "{}\n{}",
                proto::topics::event_acks(&vin()),
                proto::topics::event_acks(&o)
            ),
        ),
        ("nul", format!("{}\n{}", own("a\0"), theirs("a\0"))),
        ("multibyte-first", format!("é{}\né{}", own("#"), theirs("x"))),
        (
            "long",
            format!("{}\n{}", own(&"x/".repeat(40)), theirs(&"x/".repeat(40))),
        ),
    ]
}

fn configs() -> Vec<(&'static str, String)> {
    vec![
        (
            "gateway",
            r#"[mqtt]
listen = "127.0.0.1:8883"
max_keep_alive = "20m"
session_expiry = "2h"

[tls]
cert = "@FILE@"
key = "@FILE@"
client_ca = "@FILE@"

[requests]
max_payload_bytes = 131072
default_timeout = "30s"
max_timeout = "5m"

[storage]
url = "sqlite://gateway.db"
node = "gateway-1"

[idempotency]
retention = "24h"

[events]
max_ttl = "7d"
default_ttl = "1d"

[[partners]]
service = "parking.v1.ParkingPayment"
name = "parking"
endpoint = "http://127.0.0.1:50061"
timeout = "5s"
read_only_methods = ["ListNearbyLots"]

[partner_api]
listen = "127.0.0.1:8443"
client_ca = "@FILE@"
"#
            .to_owned(),
        ),
        (
            "agent",
            r#"gateway = "localhost:8883"
ca_cert = "dev-certs/ca.pem"
cert = "dev-certs/LSVAU2180N2183294.pem"
key = "dev-certs/LSVAU2180N2183294.key"
local_listen = "127.0.0.1:50051"
local_socket = "/run/vehicle-agent/agent.sock"
keep_alive = "30s"
backoff_initial = "500ms"
backoff_max = "60s"
default_timeout = "30s"
max_payload_bytes = 131072
state_dir = "/var/lib/vehicle-agent"
outbox_capacity = 1000
result_retention = "24h"
"#
            .to_owned(),
        ),
        (
            "gateway-minimal",
            "[tls]\ncert = \"@FILE@\"\nkey = \"@FILE@\"\nclient_ca = \"@FILE@\"\n".to_owned(),
        ),
        (
            "unknown-key",
            "[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\ncrl = []\n".to_owned(),
        ),
        ("not-toml", "[mqtt\nlisten = ".to_owned()),
        (
            "wrong-types",
            "[mqtt]\nmax_connections = -1\nconnect_timeout = 5\n".to_owned(),
        ),
    ]
}

fn partner_events() -> Vec<(&'static str, PublishRequest)> {
    let valid = PublishRequest {
        vin: VIN.into(),
        service: "parking.v1.ParkingPayment".into(),
        kind: "session.ended".into(),
        payload: vec![0x0a, 0x01, b'x'],
        event_id: "evt-1".into(),
        ttl_seconds: 3600,
    };
    vec![
        ("valid", valid.clone()),
        (
            "default-ttl",
            PublishRequest {
                ttl_seconds: 0,
                ..valid.clone()
            },
        ),
        (
            "largest-ttl",
            PublishRequest {
                ttl_seconds: u32::MAX,
                ..valid.clone()
            },
        ),
        (
            "another-service",
            PublishRequest {
                service: "navigation.v1.Routes".into(),
                ..valid.clone()
            },
        ),
        (
            "bad-vin",
            PublishRequest {
                vin: "WBA3B5C50DF12345O".into(),
                ..valid.clone()
            },
        ),
        (
            "kind-with-a-space",
            PublishRequest {
                kind: "session ended".into(),
                ..valid.clone()
            },
        ),
        (
            "empty-event-id",
            PublishRequest {
                event_id: String::new(),
                ..valid
            },
        ),
    ]
}
