//! What operators see of each partner ([`PartnerStatus`]): request rate, p50 and p99 latency
//! and error rate over the last minute, with its breaker and load-shedding figures; and the
//! request counters and latency histogram of the metrics, fed at the same point (one call
//! when a request is answered, [`ServiceStats::record`]).
//!
//! The minute is a ring of 60 one-second slots ([`Window`]); each slot counts requests and
//! errors and keeps a latency histogram of [`LATENCY_BUCKETS`] log-spaced buckets, so a
//! partner's window is a fixed ~20 KiB whatever its traffic, and partners are the configured
//! ones only (a request for any other service counts in the metrics as `unknown`, and has no
//! window).
//!
//! **Error** means what routing already counts against a partner
//! ([`resilience::is_partner_failure`]): the car's answer was UNAVAILABLE (unreachable, or
//! refused by the open breaker), DEADLINE_EXCEEDED, INTERNAL, UNKNOWN or DATA_LOSS. The car's
//! own errors (INVALID_ARGUMENT, NOT_FOUND, its rate or the partner's shedding:
//! RESOURCE_EXHAUSTED, ...) are not errors of the partner.
//!
//! **Latency** is the request's time in the gateway, from its arrival to its answer (ledger,
//! retries and partner call included), as the car sees it minus the MQTT hops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::partners::PartnerDirectory;
use super::resilience::{BreakerState, is_partner_failure};
use crate::metrics::{Metrics, ServiceMetrics, UNKNOWN_SERVICE};

/// How far back the figures of [`PartnerStatus`] look.
pub const WINDOW: Duration = Duration::from_secs(60);
const SLOTS: usize = 60;
/// Upper bound of the first latency bucket, in microseconds.
const FIRST_BOUND_US: f64 = 100.0;
/// Buckets per doubling of latency: each bucket's bounds differ by 2^(1/4) ≈ 1.19.
const STEPS_PER_DOUBLING: f64 = 4.0;
/// Latency buckets: from 100 µs up to 100 µs × 2^(79/4) ≈ 88 s, beyond any deadline.
pub const LATENCY_BUCKETS: usize = 80;

/// One partner's figures, for operators (`fleet.v1.PartnerStatus`).
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerStatus {
    /// The partner's gRPC service.
    pub service: String,
    /// Requests answered per second over the window (or since start, if shorter).
    pub requests_per_second: f64,
    /// Median latency in the window (zero without requests); see [`Window::figures`] for its error.
    pub p50_latency: Duration,
    /// 99th percentile latency in the window (zero without requests).
    pub p99_latency: Duration,
    /// Share of the window's requests that were errors (see the module doc), 0 to 1.
    pub error_rate: f64,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Calls to it in flight now.
    pub calls_in_flight: usize,
    /// Calls shed at once since start (its limit of calls in flight).
    pub shed_total: u64,
    /// Calls refused at once since start (its breaker open).
    pub refused_total: u64,
}

/// What a [`Window`] holds at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Requests in the window.
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// Requests per second over the window (or the time since the window began, if shorter,
    /// and at least a second).
    pub requests_per_second: f64,
    /// `errors / requests`, 0 without requests.
    pub error_rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// One second's counts.
#[derive(Debug, Clone)]
struct Slot {
    /// Which second since the window began this slot holds; `u64::MAX`: none yet.
    second: u64,
    requests: u32,
    errors: u32,
    latency: [u32; LATENCY_BUCKETS],
}

impl Slot {
    const EMPTY: Slot = Slot {
        second: u64::MAX,
        requests: 0,
        errors: 0,
        latency: [0; LATENCY_BUCKETS],
    };
}

/// The last minute of one partner's requests in one-second slots, on a clock given to each
/// call (so tests drive it without sleeping).
#[derive(Debug, Clone)]
pub struct Window {
    began: Instant,
    slots: Vec<Slot>,
}

impl Window {
    /// An empty window starting at `now`.
    pub fn new(now: Instant) -> Window {
        Window {
            began: now,
            slots: vec![Slot::EMPTY; SLOTS],
        }
    }

    /// Counts one request answered at `now` after `latency`, and whether it was an error.
    pub fn record(&mut self, now: Instant, latency: Duration, error: bool) {
        let second = self.second(now);
        let slot = &mut self.slots[(second % SLOTS as u64) as usize];
        if slot.second != second {
            *slot = Slot { second, ..Slot::EMPTY };
        }
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(error));
        let bucket = &mut slot.latency[bucket_of(latency)];
        *bucket = bucket.saturating_add(1);
    }

    /// The figures of the slots within [`WINDOW`] of `now`.
    ///
    /// Percentiles are estimated from the buckets: a percentile is reported as the geometric
    /// middle of the bucket it falls in, so for latencies between 100 µs and 88 s the reported
    /// value is within a factor 2^(1/8) of the true one (relative error at most ±9.1 %);
    /// below 100 µs it reads about 92 µs, above 88 s about 81 s.
    pub fn figures(&self, now: Instant) -> Figures {
        let current = self.second(now);
        let mut latency = [0u64; LATENCY_BUCKETS];
        let (mut requests, mut errors) = (0u64, 0u64);
        for slot in &self.slots {
            // A slot a concurrent record filled a moment "after" `now` still counts.
            if slot.second == u64::MAX || current.saturating_sub(slot.second) >= SLOTS as u64 {
                continue;
            }
            requests += u64::from(slot.requests);
            errors += u64::from(slot.errors);
            for (total, n) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(*n);
            }
        }
        let span = now
            .saturating_duration_since(self.began)
            .clamp(Duration::from_secs(1), WINDOW);
        Figures {
            requests,
            errors,
            requests_per_second: requests as f64 / span.as_secs_f64(),
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50: percentile(&latency, requests, 0.50),
            p99: percentile(&latency, requests, 0.99),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.began).as_secs()
    }
}

/// The bucket of a latency: 0 up to 100 µs, then one per factor 2^(1/4), the last unbounded.
fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    let i = ((us / FIRST_BOUND_US).log2() * STEPS_PER_DOUBLING).ceil();
    (i as usize).min(LATENCY_BUCKETS - 1)
}

/// The geometric middle of bucket `i`.
fn middle_of(i: usize) -> Duration {
    let us = FIRST_BOUND_US * ((i as f64 - 0.5) / STEPS_PER_DOUBLING).exp2();
    Duration::from_secs_f64(us / 1e6)
}

fn percentile(latency: &[u64; LATENCY_BUCKETS], n: u64, q: f64) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = ((q * n as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, count) in latency.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return middle_of(i);
        }
    }
    middle_of(LATENCY_BUCKETS - 1)
}

/// One service's counters: its metrics handles and, for a configured partner, its window.
#[derive(Debug)]
pub struct ServiceStats {
    metrics: ServiceMetrics,
    window: Option<Mutex<Window>>,
}

impl ServiceStats {
    /// Counts one answered request with gRPC code `code` that took `elapsed`. Atomics for the
    /// metrics; the window's lock is held for a few additions, never across IO.
    pub fn record(&self, code: i32, elapsed: Duration) {
        self.metrics.observe(code, elapsed);
        if let Some(window) = &self.window {
            let error = is_partner_failure(tonic::Code::from(code));
            let now = Instant::now();
            window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(now, elapsed, error);
        }
    }

    fn figures(&self, now: Instant) -> Option<Figures> {
        let window = self.window.as_ref()?;
        Some(window.lock().unwrap_or_else(PoisonError::into_inner).figures(now))
    }
}

/// Every configured partner's [`ServiceStats`], and one for requests no partner serves.
#[derive(Debug)]
pub struct RequestStats {
    by_service: HashMap<String, Arc<ServiceStats>>,
    unknown: Arc<ServiceStats>,
}

impl RequestStats {
    /// Stats for `partners`' services, counting into `metrics`.
    pub fn new(partners: &PartnerDirectory, metrics: &Metrics) -> RequestStats {
        let now = Instant::now();
        let by_service = partners
            .services()
            .map(|service| {
                let stats = ServiceStats {
                    metrics: metrics.service(service),
                    window: Some(Mutex::new(Window::new(now))),
                };
                (service.to_owned(), Arc::new(stats))
            })
            .collect();
        let unknown = Arc::new(ServiceStats {
            metrics: metrics.service(UNKNOWN_SERVICE),
            window: None,
        });
        RequestStats { by_service, unknown }
    }

    /// The stats a request for `method` (`/package.Service/Method`) counts in: its service's
    /// if a partner is configured for it, else `unknown`'s.
    pub fn for_method(&self, method: &str) -> &ServiceStats {
        method
            .strip_prefix('/')
            .and_then(|m| m.split_once('/'))
            .and_then(|(service, _)| self.by_service.get(service))
            .unwrap_or(&self.unknown)
    }

    /// Each partner's status as of `now`, by service name, from its window and `partners`'
    /// limits and breakers.
    pub fn partner_status(&self, partners: &PartnerDirectory, now: Instant) -> Vec<PartnerStatus> {
        partners
            .health()
            .into_iter()
            .map(|health| {
                let figures = self
                    .by_service
                    .get(&health.service)
                    .and_then(|stats| stats.figures(now));
                let (rate, p50, p99, error_rate) = figures.map_or((0.0, Duration::ZERO, Duration::ZERO, 0.0), |f| {
                    (f.requests_per_second, f.p50, f.p99, f.error_rate)
                });
                PartnerStatus {
                    service: health.service,
                    requests_per_second: rate,
                    p50_latency: p50,
                    p99_latency: p99,
                    error_rate,
                    breaker: health.breaker,
                    calls_in_flight: health.calls_in_flight,
                    shed_total: health.shed_total,
                    refused_total: health.refused_while_open_total,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn within(estimate: Duration, truth: Duration) -> bool {
        let ratio = estimate.as_secs_f64() / truth.as_secs_f64();
        (1.0 / 1.0906..=1.0906).contains(&ratio)
    }

    #[test]
    fn rate_counts_the_requests_of_the_last_minute() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 0..120 {
            w.record(t0 + Duration::from_millis(500 * i), 10 * MS, false);
        }
        let f = w.figures(t0 + Duration::from_secs(60));
        assert_eq!(f.requests, 118, "the first second's two fell out of the window");
        assert!((f.requests_per_second - 118.0 / 60.0).abs() < 1e-9, "{f:?}");
        assert_eq!(f.error_rate, 0.0);
    }

    #[test]
    fn a_young_window_divides_by_its_age_not_a_minute() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for _ in 0..10 {
            w.record(t0 + Duration::from_millis(1500), MS, false);
        }
        let f = w.figures(t0 + Duration::from_secs(2));
        assert!((f.requests_per_second - 5.0).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn percentiles_are_within_the_stated_error() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        // 1..=1000 ms: p50 is 500 ms, p99 is 990 ms.
        for ms in 1..=1000u32 {
            w.record(t0, ms * MS, false);
        }
        let f = w.figures(t0);
        assert!(within(f.p50, 500 * MS), "{f:?}");
        assert!(within(f.p99, 990 * MS), "{f:?}");
        assert!(f.p99 >= f.p50);
    }

    #[test]
    fn old_slots_expire_and_a_reused_slot_starts_empty() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        w.record(t0, 5 * Duration::from_secs(1), true);
        assert_eq!(w.figures(t0 + Duration::from_secs(59)).requests, 1);
        assert_eq!(
            w.figures(t0 + Duration::from_secs(60)).requests,
            0,
            "a minute later it is gone"
        );
        // The same slot, a minute on: the old counts do not leak into it.
        w.record(t0 + Duration::from_secs(60), MS, false);
        let f = w.figures(t0 + Duration::from_secs(60));
        assert_eq!((f.requests, f.errors), (1, 0));
        assert!(within(f.p99, MS), "{f:?}");
    }

    #[test]
    fn error_rate_is_the_share_of_errors() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 0..8 {
            w.record(t0 + Duration::from_secs(i), MS, i % 4 == 0);
        }
        let f = w.figures(t0 + Duration::from_secs(10));
        assert_eq!((f.requests, f.errors), (8, 2));
        assert!((f.error_rate - 0.25).abs() < 1e-9);
    }

    #[test]
    fn an_empty_window_reads_zero() {
        let t0 = Instant::now();
        let f = Window::new(t0).figures(t0 + Duration::from_secs(90));
        assert_eq!(
            (f.requests, f.p50, f.p99, f.error_rate),
            (0, Duration::ZERO, Duration::ZERO, 0.0)
        );
    }

    #[test]
    fn extreme_latencies_land_in_the_end_buckets() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        assert!(middle_of(LATENCY_BUCKETS - 1) > Duration::from_secs(60));
    }
}
