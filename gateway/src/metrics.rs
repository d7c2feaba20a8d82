//! Prometheus metrics: the counters the layers bump as things happen, and the text exposition
//! of those plus the figures read at scrape time ([`Scrape`]).
//!
//! Naming follows Prometheus's conventions: one `carlink_` prefix, counters end in `_total`,
//! base units (`_seconds`, `_bytes`). No label ever carries a VIN or anything else a car
//! chooses: label values come from the fixed enums and `&'static str`s here, or from the
//! configured partner services (routing labels a request for any other service `unknown`).
//!
//! Counting is a relaxed atomic add on a handle made once (the per-service handles in
//! [`ServiceMetrics`], the pre-made results in [`ConnectResult`]); only the rare disconnect
//! looks its label up in a family (a read lock, no IO under it).
//!
//! A leaf: uses nothing of the gateway, so every layer may count here.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request duration histogram's buckets: from a ledger replay
/// (about a millisecond) to the longest deadline a car may ask for by default (30 s).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The service label of a request whose service no partner is configured for.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// gRPC status codes (the `code` label): 0 to 16.
const CODES: usize = 17;

/// How a car's CONNECT ended (the `result` label of `carlink_connects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResult {
    /// Accepted: CONNACK 0 sent, the session is open.
    Accepted,
    /// Refused: reconnecting faster than its connect rate.
    Rate,
    /// Refused: not MQTT 3.1.1.
    ProtocolVersion,
    /// Refused: the client id is not the certificate's VIN.
    ClientId,
    /// Refused: the will topic is outside the car's namespace or too long.
    Will,
    /// Refused: the car's certificate is revoked.
    Revoked,
    /// No session began: no CONNECT in time, a first packet other than CONNECT, or the socket
    /// closed before the CONNACK went out.
    NoConnect,
}

impl ConnectResult {
    /// Every result, in label order.
    pub const ALL: [ConnectResult; 7] = [
        ConnectResult::Accepted,
        ConnectResult::Rate,
        ConnectResult::ProtocolVersion,
        ConnectResult::ClientId,
        ConnectResult::Will,
        ConnectResult::Revoked,
        ConnectResult::NoConnect,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnectResult::Accepted => "accepted",
            ConnectResult::Rate => "rate",
            ConnectResult::ProtocolVersion => "protocol_version",
            ConnectResult::ClientId => "client_id",
            ConnectResult::Will => "will",
            ConnectResult::Revoked => "revoked",
            ConnectResult::NoConnect => "no_connect",
        }
    }
}

type StaticLabel = [(&'static str, &'static str); 1];
type RequestLabels = [(&'static str, Cow<'static, str>); 2];
type ServiceLabel = [(&'static str, Cow<'static, str>); 1];

/// The gateway's long-lived metric families, shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    connects: Family<StaticLabel, Counter>,
    /// One handle per [`ConnectResult`], in [`ConnectResult::ALL`] order.
    connect_results: [Counter; 7],
    disconnects: Family<StaticLabel, Counter>,
    takeovers: Counter,
    requests: Family<RequestLabels, Counter>,
    durations: Family<ServiceLabel, DurationHistogram>,
    /// The gateway's own server certificate's notAfter (unix seconds), if it could be read.
    certificate_expiry: Option<i64>,
    version: &'static str,
}

impl Metrics {
    /// Empty families; `certificate_expiry` is the gateway's own certificate's notAfter
    /// (unix seconds), read once at startup.
    pub fn new(certificate_expiry: Option<i64>) -> Arc<Metrics> {
        let connects = Family::default();
        let connect_results = ConnectResult::ALL.map(|r| connects.get_or_create_owned(&[("result", r.label())]));
        Arc::new(Metrics {
            connects,
            connect_results,
            disconnects: Family::default(),
            takeovers: Counter::default(),
            requests: Family::default(),
            durations: Family::default(),
            certificate_expiry,
            version: env!("CARGO_PKG_VERSION"),
        })
    }

    /// Counts a CONNECT's outcome.
    pub fn connect(&self, result: ConnectResult) {
        let i = ConnectResult::ALL.iter().position(|r| *r == result).unwrap_or(0);
        self.connect_results[i].inc();
    }

    /// Counts a session that ended, by its reason's short fixed label.
    pub fn disconnected(&self, reason: &'static str) {
        self.disconnects.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a session taken over by a new connection with the same VIN.
    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// The handles for one service's requests (`service` is a configured partner service or
    /// [`UNKNOWN_SERVICE`]); made once per service, then counting is atomics only.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let name: Cow<'static, str> = Cow::Owned(service.to_owned());
        let by_code = std::array::from_fn(|code| {
            self.requests.get_or_create_owned(&[
                ("service", name.clone()),
                ("code", Cow::Borrowed(proto::status::code_name(code as i32))),
            ])
        });
        let duration = self.durations.get_or_create_owned(&[("service", name)]);
        ServiceMetrics { by_code, duration }
    }

    /// The text exposition of every family, with the figures of `scrape` read just before.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut r = Registry::with_prefix("carlink");
        r.register(
            "build_info",
            "The gateway's version (always 1)",
            labelled_gauge("version", self.version, 1),
        );
        r.register(
            "vehicles_connected",
            "Vehicles with a live MQTT session",
            gauge(scrape.vehicles_connected),
        );
        r.register("connects", "CONNECTs by result", self.connects.clone());
        r.register(
            "handshake_failures",
            "Vehicle sockets refused or dropped before their MQTT session, by reason",
            static_counters(&scrape.handshake_failures),
        );
        r.register(
            "disconnects",
            "Vehicle sessions that ended, by reason",
            self.disconnects.clone(),
        );
        r.register(
            "session_takeovers",
            "Sessions taken over by a new connection with the same certificate",
            self.takeovers.clone(),
        );
        r.register(
            "requests",
            "Vehicle requests answered, by partner service and gRPC status code",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer, by partner service",
            self.durations.clone(),
        );
        let in_flight = Family::<ServiceLabel, Gauge>::default();
        let breaker_open = Family::<ServiceLabel, Gauge>::default();
        for p in &scrape.partners {
            let label = [("service", Cow::Owned(p.service.clone()))];
            in_flight.get_or_create(&label).set(saturating(p.calls_in_flight));
            breaker_open.get_or_create(&label).set(i64::from(p.breaker_open));
        }
        r.register("partner_calls_in_flight", "Calls to a partner in flight now", in_flight);
        r.register(
            "partner_breaker_open",
            "1 while a partner's circuit breaker refuses calls (open or half-open)",
            breaker_open,
        );
        r.register(
            "mailboxes_parked",
            "Mailboxes kept for persistent sessions whose car is away",
            gauge(scrape.mailboxes_parked),
        );
        r.register(
            "mailboxes_parked_bytes",
            "Bytes held by parked mailboxes",
            gauge(scrape.mailboxes_parked_bytes),
        );
        r.register(
            "saved_sessions",
            "Persistent sessions whose car is away (subscriptions kept until session expiry)",
            gauge(scrape.saved_sessions),
        );
        r.register(
            "retained_messages",
            "Retained messages kept for cars",
            gauge(scrape.retained_messages),
        );
        r.register(
            "store_up",
            "1 if the database answered this scrape",
            gauge(usize::from(scrape.store.is_some())),
        );
        if let Some(store) = &scrape.store {
            r.register(
                "ledger_entries",
                "Entries in the idempotency ledger",
                gauge_u64(store.ledger_entries),
            );
            r.register(
                "events_stored",
                "Partner events stored (pending, acknowledged or expired, until purged)",
                gauge_u64(store.events_stored),
            );
            let pending = Family::<ServiceLabel, Gauge>::default();
            for (service, n) in &store.events_pending {
                pending
                    .get_or_create(&[("service", Cow::Owned(service.clone()))])
                    .set(saturating_u64(*n));
            }
            r.register(
                "events_pending",
                "Partner events neither acknowledged nor expired, by partner service",
                pending,
            );
        }
        if let Some(expiry) = self.certificate_expiry {
            r.register(
                "certificate_expiry_timestamp_seconds",
                "When the gateway's own server certificate expires (notAfter, unix seconds)",
                gauge_i64(expiry),
            );
        }
        let mut text = String::new();
        // Writing to a String cannot fail, and every label set here is well formed.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &r);
        text
    }
}

/// Figures read at scrape time from the parts that own them.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Vehicles with a live session.
    pub vehicles_connected: usize,
    /// Refused or dropped sockets by reason (fixed labels), counted since start.
    pub handshake_failures: Vec<(&'static str, u64)>,
    /// Each configured partner's calls in flight and breaker.
    pub partners: Vec<PartnerGauges>,
    /// Parked mailboxes and the bytes they hold.
    pub mailboxes_parked: usize,
    /// Bytes held by parked mailboxes.
    pub mailboxes_parked_bytes: usize,
    /// Persistent sessions of cars that are away.
    pub saved_sessions: usize,
    /// Retained messages kept.
    pub retained_messages: usize,
    /// The store's figures; `None` if the database did not answer in time.
    pub store: Option<StoreGauges>,
}

/// One partner's gauges.
#[derive(Debug, Clone)]
pub struct PartnerGauges {
    /// The configured service.
    pub service: String,
    /// Calls in flight now.
    pub calls_in_flight: usize,
    /// Whether its breaker refuses calls.
    pub breaker_open: bool,
}

/// The store's sizes, from COUNT queries.
#[derive(Debug, Clone, Default)]
pub struct StoreGauges {
    /// Idempotency ledger rows.
    pub ledger_entries: u64,
    /// Event rows.
    pub events_stored: u64,
    /// Pending events by service label.
    pub events_pending: Vec<(String, u64)>,
}

/// One service's request counters (one per gRPC code) and duration histogram.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    by_code: [Counter; CODES],
    duration: DurationHistogram,
}

impl ServiceMetrics {
    /// Counts one answered request with gRPC code `code` (0 to 16; others count as UNKNOWN)
    /// that took `elapsed`.
    pub fn observe(&self, code: i32, elapsed: Duration) {
        let i = usize::try_from(code).ok().filter(|i| *i < CODES).unwrap_or(2);
        self.by_code[i].inc();
        self.duration.observe(elapsed);
    }
}

/// A histogram over [`DURATION_BUCKETS`] on atomics only (prometheus-client's own takes a
/// mutex per observation). The sum is kept in whole microseconds.
#[derive(Debug, Clone, Default)]
pub struct DurationHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per bucket (not cumulative), plus one past the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        let cells = &self.inner;
        cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
        cells
            .sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.inner;
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&cells.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        buckets.push((
            f64::INFINITY,
            cells.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed),
        ));
        // The count is the buckets' total, read once, so `+Inf` always equals `_count`.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = cells.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn saturating(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn saturating_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn gauge(n: usize) -> Gauge {
    gauge_i64(saturating(n))
}

fn gauge_u64(n: u64) -> Gauge {
    gauge_i64(saturating_u64(n))
}

fn gauge_i64(n: i64) -> Gauge {
    let g = Gauge::default();
    g.set(n);
    g
}

fn labelled_gauge(key: &'static str, value: &'static str, n: i64) -> Family<StaticLabel, Gauge> {
    let family = Family::<StaticLabel, Gauge>::default();
    family.get_or_create(&[(key, value)]).set(n);
    family
}

/// Counters read from elsewhere at scrape time, under the `reason` label.
fn static_counters(values: &[(&'static str, u64)]) -> Family<StaticLabel, Counter> {
    let family = Family::<StaticLabel, Counter>::default();
    for (reason, n) in values {
        family.get_or_create(&[("reason", *reason)]).inc_by(*n);
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_counters_end_in_total() {
        let metrics = Metrics::new(Some(2_000_000_000));
        metrics.connect(ConnectResult::Accepted);
        metrics.disconnected("clean");
        metrics
            .service("parking.v1.ParkingPayment")
            .observe(0, Duration::from_millis(3));
        let text = metrics.render(&Scrape::default());
        assert!(text.contains("carlink_connects_total{result=\"accepted\"} 1"), "{text}");
        assert!(text.contains("carlink_connects_total{result=\"revoked\"} 0"), "{text}");
        assert!(text.contains("carlink_disconnects_total{reason=\"clean\"} 1"), "{text}");
        assert!(text.contains("carlink_store_up 0"), "{text}");
        assert!(
            !text.contains("carlink_ledger_entries"),
            "omitted without the store: {text}"
        );
        assert!(
            text.contains("carlink_requests_total{service=\"parking.v1.ParkingPayment\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "carlink_request_duration_seconds_bucket{service=\"parking.v1.ParkingPayment\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let [_, _, name, kind] = line.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{line}");
            };
            assert!(name.starts_with("carlink_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn the_histogram_counts_each_duration_once_in_its_bucket() {
        let h = DurationHistogram::default();
        for ms in [0, 1, 2, 40, 29_000, 31_000] {
            h.observe(Duration::from_millis(ms));
        }
        let n = |i: usize| h.inner.buckets[i].load(Ordering::Relaxed);
        assert_eq!(n(0), 2, "0 and 1 ms are within the first bound");
        assert_eq!(n(1), 1);
        assert_eq!(n(DURATION_BUCKETS.len() - 1), 1, "29 s");
        assert_eq!(n(DURATION_BUCKETS.len()), 1, "31 s is past the last bound");
        assert_eq!(h.inner.sum_us.load(Ordering::Relaxed), 60_043_000);
    }
}
