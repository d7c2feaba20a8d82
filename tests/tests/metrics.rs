//! What operators are shown of the gateway: the Prometheus metrics text (parsed as a
//! Prometheus server would), readiness with the database up and gone, and each partner's
//! rate, latency and error rate after real requests through a real partner.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::NotReady;
use integration_tests::*;
use prometheus_parse::{Sample, Scrape, Value};
use proto::vehicle::v1::Code;

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the metrics text parses")
}

fn matching<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// The value of the counter or gauge sample `name{labels}`, if present.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match &matching(scrape, name, labels)?.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        other => panic!("{name} is not a single value: {other:?}"),
    }
}

fn must(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// The conventions every scrape holds to, whatever happened before it.
fn assert_conventions(text: &str) {
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(name.starts_with("carlink_"), "one prefix: {line}");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "counters and only they end in _total: {line}"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("carlink_"), "{line}");
    }
    for vin in [VIN_A, VIN_B] {
        assert!(!text.contains(vin), "no VIN in the metrics");
    }
}

#[tokio::test]
async fn the_metrics_text_parses_and_counts_a_cars_session_and_requests() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask_for_lots("lots-1").await;
    assert_eq!(status_code(&answer), Code::Ok, "{answer:?}");
    let nobody = car.ask(envelope("nobody-1", "/nobody.v1.Nobody/Call", vec![])).await;
    assert_eq!(status_code(&nobody), Code::Unimplemented, "{nobody:?}");

    let text = platform.gateway.metrics_text().await;
    assert_conventions(&text);
    let live = parse(&text);
    assert_eq!(must(&live, "carlink_vehicles_connected", &[]), 1.0, "{text}");
    assert!(must(&live, "carlink_connects_total", &[("result", "accepted")]) >= 1.0);
    assert_eq!(must(&live, "carlink_connects_total", &[("result", "client_id")]), 0.0);
    let ok = [("service", PARKING), ("code", "OK")];
    assert!(must(&live, "carlink_requests_total", &ok) >= 1.0, "{text}");
    assert_eq!(
        must(
            &live,
            "carlink_requests_total",
            &[("service", "unknown"), ("code", "UNIMPLEMENTED")]
        ),
        1.0,
        "a service no partner serves is labelled unknown, not by its name: {text}"
    );
    assert!(!text.contains("nobody.v1"), "{text}");
    let histogram = matching(&live, "carlink_request_duration_seconds", &[("service", PARKING)]).expect("histogram");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}")
    };
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(buckets.last().unwrap().less_than.is_infinite());
    assert!(buckets.last().unwrap().count >= 1.0, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative: {buckets:?}"
    );
    assert_eq!(
        must(&live, "carlink_partner_breaker_open", &[("service", PARKING)]),
        0.0
    );
    assert_eq!(
        must(&live, "carlink_partner_calls_in_flight", &[("service", PARKING)]),
        0.0
    );
    assert_eq!(must(&live, "carlink_store_up", &[]), 1.0);
    assert!(value(&live, "carlink_ledger_entries", &[]).is_some(), "{text}");
    assert!(value(&live, "carlink_events_stored", &[]).is_some(), "{text}");
    assert_eq!(must(&live, "carlink_events_pending", &[("service", PARKING)]), 0.0);
    assert!(value(&live, "carlink_handshake_failures_total", &[("reason", "tls_error")]).is_some());
    assert_eq!(
        must(&live, "carlink_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(must(&live, "carlink_certificate_expiry_timestamp_seconds", &[]) > now);

    car.client.disconnect().await.expect("DISCONNECT queued");
    while car.eventloop.poll().await.is_ok() {}
    assert_eq!(disconnected(&mut events, VIN_A).await, gateway::DisconnectReason::Clean);
    let text = platform.gateway.metrics_text().await;
    assert_conventions(&text);
    let after = parse(&text);
    assert_eq!(must(&after, "carlink_vehicles_connected", &[]), 0.0, "{text}");
    assert_eq!(
        must(&after, "carlink_disconnects_total", &[("reason", "clean")]),
        1.0,
        "{text}"
    );
    assert_eq!(must(&after, "carlink_session_takeovers_total", &[]), 0.0);
    platform.gateway.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_car_counts_as_a_takeover() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let _first = RawCar::connect(&platform, VIN_A).await;
    let _second = RawCar::connect(&platform, VIN_A).await;
    assert_eq!(
        disconnected(&mut events, VIN_A).await,
        gateway::DisconnectReason::Kicked
    );
    let scrape = parse(&platform.gateway.metrics_text().await);
    assert_eq!(must(&scrape, "carlink_session_takeovers_total", &[]), 1.0);
    assert_eq!(must(&scrape, "carlink_disconnects_total", &[("reason", "kicked")]), 1.0);
    assert_eq!(must(&scrape, "carlink_connects_total", &[("result", "accepted")]), 2.0);
}

#[tokio::test]
async fn ready_with_the_database_up_and_not_ready_saying_so_when_it_is_gone() {
    let db = postgres::Database::create("readiness");
    let platform = Platform::start_with(|c| c.storage.url = db.url()).await;
    assert_eq!(platform.gateway.readiness().await, Ok(()));
    // The store's counts run on PostgreSQL too.
    let up = parse(&platform.gateway.metrics_text().await);
    assert_eq!(must(&up, "carlink_store_up", &[]), 1.0);
    assert_eq!(must(&up, "carlink_ledger_entries", &[]), 0.0);
    assert_eq!(must(&up, "carlink_events_pending", &[("service", PARKING)]), 0.0);

    db.go_away();
    let not_ready = platform.gateway.readiness().await.expect_err("the database is gone");
    assert!(matches!(not_ready, NotReady::Store { .. }), "{not_ready:?}");
    let said = not_ready.to_string();
    assert!(said.contains("database") && said.contains(&db.name), "{said}");
    // The scrape still answers: the store's gauges are left out and store_up says why.
    let text = platform.gateway.metrics_text().await;
    let scrape = parse(&text);
    assert_eq!(must(&scrape, "carlink_store_up", &[]), 0.0, "{text}");
    assert!(value(&scrape, "carlink_ledger_entries", &[]).is_none(), "{text}");
    assert!(value(&scrape, "carlink_connects_total", &[("result", "accepted")]).is_some());

    db.come_back();
    within(
        SOON,
        async {
            while platform.gateway.readiness().await.is_err() {
                tokio::task::yield_now().await;
            }
        },
        "ready again once the database is back",
    )
    .await;
    platform.gateway.shutdown().await;
}

#[tokio::test]
async fn partner_status_shows_rate_latency_and_errors_from_real_requests() {
    let mut platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    for i in 0..5 {
        let answer = car.ask_for_lots(&format!("lots-{i}")).await;
        assert_eq!(status_code(&answer), Code::Ok, "{answer:?}");
    }
    let status = parking_status(&platform);
    assert!(status.requests_per_second > 0.0, "{status:?}");
    assert!(status.p50_latency > Duration::ZERO, "{status:?}");
    assert!(status.p99_latency >= status.p50_latency, "{status:?}");
    assert_eq!(status.error_rate, 0.0, "{status:?}");
    assert_eq!(status.breaker.name(), "closed");
    assert_eq!(
        (status.calls_in_flight, status.shed_total, status.refused_total),
        (0, 0, 0)
    );

    // The partner stops: once its server is gone, the car's requests fail with UNAVAILABLE.
    let addr = platform.parking_server.addr;
    let (stand_in, _) = tokio::sync::oneshot::channel();
    drop(std::mem::replace(
        &mut platform.parking_server,
        RunningPartner::new(addr, stand_in),
    ));
    within(
        SOON,
        async {
            for i in 0.. {
                if status_code(&car.ask_for_lots(&format!("down-{i}")).await) == Code::Unavailable {
                    return;
                }
            }
        },
        "a request failing once the partner stopped",
    )
    .await;
    let status = parking_status(&platform);
    assert!(status.error_rate > 0.0 && status.error_rate < 1.0, "{status:?}");
    platform.gateway.shutdown().await;
}

fn parking_status(platform: &Platform) -> gateway::routing::PartnerStatus {
    let all = platform.gateway.partner_status();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}
