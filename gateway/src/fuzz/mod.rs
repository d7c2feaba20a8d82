//! Entry points for the fuzzers and the corpus replay test; not an API.
//!
//! Each function takes bytes that a car or a partner could send, runs them through the code
//! the gateway runs on such bytes, and panics if that code panics, does not finish, or breaks
//! one of the invariants checked here. `fuzz/fuzz_targets/` calls them under libFuzzer, and
//! `gateway/tests/fuzz_corpus.rs` replays every file of `fuzz/corpus/<target>/` through the
//! function of that name ([`TARGETS`]), so that `cargo test` keeps checking what the fuzzers
//! found.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use proto::Vin;
use proto::events::v1::PublishRequest;
use proto::topics;
use proto::vehicle::v1::{Code, Event, EventAck, Request, Response};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, SubscribeReasonCode};
use rumqttc::mqttbytes::{self, Protocol, QoS, matches};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::mqtt::{MqttIo, reserved_bits_problem};
use crate::broker::session::serve_vehicle;
use crate::broker::subscriptions::{Subscriptions, acceptable_filter};
use crate::broker::{
    ConnectLimiter, ConnectionEvent, ConnectionEventSink, DisconnectReason, PacketLimiter, PacketRate, Peer,
    RetainedLimits, SavedSessions, SessionLimits, SessionServices,
};
use crate::bus::{AckInbox, MailboxLimits, MailboxState, Mailboxes, Outbound, RequestInbox};
use crate::config::{EventsConfig, GatewayConfig, RequestLimits};
use crate::events::EventDelivery;
use crate::events::service::{new_event, permitted};
use crate::routing::{Dispatcher, Ledger, PartnerDirectory, RequestRouter};
use crate::store::Store;

mod mqtt;

pub use mqtt::{mqtt_packet, mqtt_session};

/// The car whose bytes are fuzzed: every session and request here is authenticated as it.
pub const VIN: &str = "WBA3B5C50DF123456";
/// Another car, whose state nothing the fuzzed car does may touch.
pub const OTHER_VIN: &str = "LSVAU2180N2183294";

/// An entry point: takes the bytes, panics if an invariant does not hold.
pub type Target = fn(&[u8]);

/// Every target, by name: the fuzz target and the directory under `fuzz/corpus/` of that name.
/// (The `config` target also feeds the agent's configuration; the agent replays that half.)
pub const TARGETS: &[(&str, Target)] = &[
    ("mqtt_packet", mqtt_packet),
    ("mqtt_session", mqtt_session),
    ("request_envelope", request_envelope),
    ("event_ack", event_ack),
    ("topics", topics),
    ("config", config),
    ("partner_event", partner_event),
];

/// Largest MQTT packet the fuzzed sessions accept: small, so fuzzed input reaches the limit.
const MAX_PACKET_BYTES: usize = 2048;
/// Time a session may take. The car's stream always ends, so a session never waits for a
/// timer and takes milliseconds at most; one that stops making progress fails here instead of
/// hanging the fuzzer. Below the sessions' own timeouts, so that none of them hides a hang.
const SESSION_TIME_LIMIT: Duration = Duration::from_secs(5);
/// The partner service the fuzzed partner may publish events for.
const PARTNER_SERVICE: &str = "parking.v1.ParkingPayment";

thread_local! {
    /// Where every target runs: one current-thread runtime per thread, made once. Leaked, so
    /// that no runtime is dropped while the thread's locals are torn down.
    static RUNTIME: &'static Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime"),
    ));
    static STORE: &'static Store = Box::leak(Box::new(
        RUNTIME.with(|rt| rt.block_on(Store::connect("sqlite::memory:"))).expect("an in-memory SQLite store"),
    ));
    static DELIVERY: &'static EventDelivery = Box::leak(Box::new(RUNTIME.with(|rt| {
        let _entered = rt.enter();
        EventDelivery::spawn(
            STORE.with(|store| (*store).clone()),
            Mailboxes::new(MAILBOX_LIMITS),
            CancellationToken::new(),
            TaskTracker::new(),
        )
    })));
}

/// The fuzzed car.
fn car() -> Vin {
    Vin::parse(VIN).expect("a valid VIN")
}

/// The other car.
fn other_car() -> Vin {
    Vin::parse(OTHER_VIN).expect("a valid VIN")
}

const MAILBOX_LIMITS: MailboxLimits = MailboxLimits {
    max_messages: 8,
    max_bytes: 4096,
};

/// Per-car bounds of the fuzzed sessions: small, so that fuzzed input reaches each of them.
fn session_limits() -> SessionLimits {
    SessionLimits {
        connect_timeout: Duration::from_secs(10),
        max_keep_alive: Duration::from_secs(60),
        write_stall_timeout: Duration::from_secs(30),
        max_packet_bytes: MAX_PACKET_BYTES,
        max_requests_in_flight: 2,
        max_subscriptions: 4,
        max_topic_bytes: 64,
        max_qos2_awaiting_release: 2,
        retained: RetainedLimits {
            max_messages: 2,
            max_bytes: 256,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// request_envelope

/// Hands `data` to the request dispatcher as a car's `v1/req` payload, with a router serving no
/// partner. The car must get exactly one response, in its own mailbox, echoing its request id
/// (cut to size), never larger than what it sent plus a bounded message, and its request slot back.
pub fn request_envelope(data: &[u8]) {
    let store = STORE.with(|store| (*store).clone());
    RUNTIME.with(|rt| rt.block_on(route_request(data, store)));
}

/// Room for the status message and framing of an answer, beyond what the car sent.
const ANSWER_OVERHEAD_BYTES: usize = 512;

async fn route_request(data: &[u8], store: Store) {
    let car = car();
    let ledger = Arc::new(Ledger::new(store, "fuzz".into(), Duration::from_secs(3600)));
    let router = Arc::new(RequestRouter::new(
        PartnerDirectory::default(),
        RequestLimits::default(),
        ledger,
    ));
    let mailboxes = Mailboxes::new(MAILBOX_LIMITS);
    let mailbox = mailboxes.open(&car, false);
    let tasks = TaskTracker::new();
    let dispatcher = Dispatcher::new(router, mailboxes.clone(), tasks.clone());
    let slots = Arc::new(Semaphore::new(1));
    let slot = slots.clone().try_acquire_owned().expect("a free slot");
    dispatcher.request(car.clone(), Bytes::copy_from_slice(data), slot);
    tasks.close();
    tasks.wait().await;

    assert_eq!(slots.available_permits(), 1, "the request's slot was not given back");
    let answer = mailbox.pop().expect("a response in the car's mailbox");
    assert!(mailbox.pop().is_none(), "more than one response to one request");
    assert_eq!(answer.topic, Outbound::Responses);
    assert!(
        answer.payload.len() <= data.len() + ANSWER_OVERHEAD_BYTES,
        "an answer of {} bytes to {} bytes",
        answer.payload.len(),
        data.len()
    );
    let response = Response::decode(answer.payload).expect("the answer is a vehicle.v1.Response");
    let code = response.status.as_ref().expect("a status").code();
    assert_ne!(code, Code::Ok, "no partner is configured, yet a request succeeded");
    match Request::decode(data) {
        Err(_) => {
            assert_eq!(code, Code::InvalidArgument);
            assert_eq!(response.request_id, "");
        }
        Ok(request) => {
            let echoed: String = request.request_id.chars().take(255).collect();
            assert_eq!(
                response.request_id, echoed,
                "the request id is echoed, cut to 255 characters"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// event_ack

/// Hands `data` to event delivery as a car's `v1/events/ack` payload. It must return at once,
/// and however many acknowledgements a car sends, they hold one entry until written.
pub fn event_ack(data: &[u8]) {
    let delivery = DELIVERY.with(|delivery| *delivery);
    delivery.acknowledged(&car(), Bytes::copy_from_slice(data));
    let waiting = delivery.acks_waiting();
    assert!(waiting <= 1, "one car's acknowledgements hold {waiting} entries");
    if EventAck::decode(data).is_ok() {
        assert_eq!(waiting, 1, "a valid acknowledgement was dropped");
    }
}

// ---------------------------------------------------------------------------------------------
// topics

/// Takes a filter and a topic from `data` (split at the first newline) and checks the topic
/// scheme's parsers and the subscription checks the session makes: a filter the car [`VIN`]
/// may hold never matches another car's topic.
pub fn topics(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (filter, topic) = text.split_once('\n').unwrap_or((&text, ""));
    let car = car();
    // Other cars: a fixed one, one a character away from this car, and any the topic names.
    let mut others = vec![other_car(), Vin::parse("WBA3B5C50DF123457").expect("a valid VIN")];
    others.extend(
        topic
            .strip_prefix("/tenants/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|vin| Vin::parse(vin).ok())
            .filter(|v| *v != car),
    );
    for s in [filter, topic] {
        if let Some(vin) = topics::vin_of_request_topic(s) {
            assert_eq!(s, topics::requests(&vin));
        }
        if let Some(vin) = topics::vin_of_event_ack_topic(s) {
            assert_eq!(s, topics::event_acks(&vin));
        }
        if topics::may_publish(&car, s) {
            assert!(topics::is_within_tenant(&car, s));
            assert!(!s.contains(['+', '#']), "may publish on a wildcard topic {s:?}");
            assert!(
                s != topics::responses(&car) && s != topics::events(&car),
                "may publish on {s:?}"
            );
        }
        if topics::is_within_tenant(&car, s) {
            assert!(s.starts_with(&topics::namespace(&car)));
            for other in &others {
                assert!(!topics::is_within_tenant(other, s), "{s:?} is within {car} and {other}");
            }
        }
    }

    let max_topic_bytes = session_limits().max_topic_bytes;
    if !acceptable_filter(&car, filter, max_topic_bytes) {
        return;
    }
    let mut subscriptions = Subscriptions::default();
    let granted = subscriptions
        .add(&car, filter, QoS::AtLeastOnce, 1)
        .expect("room for one filter");
    assert_eq!(granted.events, matches(&topics::events(&car), filter));
    for other in &others {
        let mut theirs = vec![
            topics::requests(other),
            topics::responses(other),
            topics::events(other),
            topics::event_acks(other),
            format!("{}{}", topics::namespace(other), topic.trim_start_matches('/')),
        ];
        theirs.extend(topics::is_within_tenant(other, topic).then(|| topic.to_owned()));
        for theirs in theirs {
            assert!(
                !matches(&theirs, filter),
                "{car}'s filter {filter:?} matches {theirs:?}"
            );
            assert_eq!(subscriptions.qos_for_topic(&theirs), None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// Stands for a file that exists in a fuzzed configuration, so that validation, which checks
/// that the certificate files exist, can accept one.
pub const EXISTING_FILE: &str = "@FILE@";

/// Parses `data` as the gateway's TOML configuration (with [`EXISTING_FILE`] replaced by the
/// path of the running executable) and validates it. What validation accepts, the gateway must
/// be able to use: its deadlines and expiries fit the clocks they are added to.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let exe = std::env::current_exe().expect("the running executable");
    let text = text.replace(EXISTING_FILE, &exe.to_string_lossy());
    let Ok(config) = GatewayConfig::from_toml(&text) else {
        return;
    };
    let now = tokio::time::Instant::now();
    let r = &config.requests;
    for (field, deadline) in [
        ("requests.max_timeout", r.max_timeout),
        ("mqtt.max_keep_alive", config.mqtt.max_keep_alive.mul_f32(1.5)),
    ] {
        assert!(
            now.checked_add(deadline).is_some(),
            "{field} = {deadline:?} overflows a deadline"
        );
    }
    let now_ms = crate::clock::now_ms();
    for (field, expiry) in [
        ("idempotency.retention", config.idempotency.retention),
        ("events.max_ttl", config.events.max_ttl),
    ] {
        let fits = i64::try_from(expiry.as_millis()).is_ok_and(|ms| now_ms.checked_add(ms).is_some());
        assert!(fits, "{field} = {expiry:?} overflows a unix-millisecond expiry");
    }
}

// ---------------------------------------------------------------------------------------------
// partner_event

/// Decodes `data` as an `events.v1.PublishRequest` from the partner `parking` (which serves
/// `parking.v1.ParkingPayment`) and runs the partner API's checks. An accepted event is for a
/// valid VIN and the partner's own service, with a valid kind and id, a payload within the
/// limit and an expiry within the TTL bounds; a refused one gets a status a partner can act on.
pub fn partner_event(data: &[u8]) {
    let Ok(request) = PublishRequest::decode(data) else {
        return;
    };
    let services = HashSet::from([PARTNER_SERVICE.to_owned()]);
    let limits = EventsConfig::default();
    let now = crate::clock::now_ms();
    let outcome =
        permitted("parking", Some(&services), &request).and_then(|vin| new_event(request.clone(), vin, &limits, now));
    match outcome {
        Ok(event) => {
            assert_eq!(event.vin.as_str(), request.vin);
            assert_eq!(event.service, PARTNER_SERVICE);
            let id = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
            assert!(id(&event.kind, 64), "kind {:?} accepted", event.kind);
            assert!(id(&event.event_id, 255), "event_id {:?} accepted", event.event_id);
            assert!(event.payload.len() <= limits.max_payload_bytes);
            assert_eq!(event.created_at_ms, now);
            let ttl_ms = event.expires_at_ms - event.created_at_ms;
            assert!(
                ttl_ms > 0 && u128::try_from(ttl_ms).is_ok_and(|ms| ms <= limits.max_ttl.as_millis()),
                "a TTL of {ttl_ms} ms"
            );
        }
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted
            ),
            "refused with {status:?}"
        ),
    }
}
