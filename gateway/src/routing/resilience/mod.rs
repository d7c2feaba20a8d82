//! Per-partner resilience: a limit on calls in flight that sheds the excess at once, and a
//! circuit breaker that stops calling a partner that keeps failing, so that one partner that
//! hangs or fails costs cars a quick, clear answer instead of their deadlines, and costs the
//! gateway a bounded number of waiting tasks.
//!
//! - **Load shedding.** Each partner has `max_concurrent_calls` slots (a tokio semaphore). A
//!   call takes one with `try_acquire`, never waiting: with every slot taken, the car gets
//!   RESOURCE_EXHAUSTED at once and the partner is not called. This is what tower's
//!   `LoadShed<ConcurrencyLimit<_>>` does (its limit is the same semaphore, and the shed turns
//!   "not ready" into an error); our partner call is not a tower `Service`, and the breaker
//!   must sit between the slot and the call and see the gRPC status, so we take the
//!   semaphore directly rather than wrap the call in a boxed service to reach it.
//! - **Circuit breaker.** Closed: calls go through; `breaker_failures` consecutive failures
//!   open it. Open: calls are refused with UNAVAILABLE at once for `breaker_open_for`. Then
//!   half-open: the next call is the one probe (others are refused while it runs); its
//!   success closes the breaker, its failure opens it again for as long. Each change is
//!   logged once (warn when opening, with the failure count and the last error; info
//!   otherwise). Outcomes of calls admitted before the last change are ignored, so a slow
//!   straggler cannot close a breaker that opened since, or reopen one a probe closed.
//!
//! What counts against a partner ([`CallOutcome::of`]): it could not be reached, it did not
//! answer in time (only when it had at least [`MIN_TELLING_DEADLINE`]: a shorter deadline is
//! the car's choice and says nothing about the partner, and would let one car open the
//! breaker for all), or it answered UNAVAILABLE, INTERNAL, UNKNOWN or DATA_LOSS. Every other
//! answer, the car's own errors included (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
//! PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...), shows a partner that works.
//!
//! Why not `tower-resilience` (0.13, whose circuit breaker we evaluated): its consecutive
//! failure model and failure classifier would fit, but it times the open interval with
//! `std::time::Instant` read inside (so a test cannot drive it and would have to sleep; here
//! every step takes the time as an argument), its state-change event carries neither the failure count nor the last error (which the
//! log line when opening must say), it needs the call wrapped in a tower `Service` with a
//! boxed future and an async mutex taken twice per call, and it is a young 0.x family of
//! fifteen crates. The state machine here is small and tested on its own (below).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::PartnerConfig;
use crate::logsafe::printable;

/// Shortest deadline whose expiry counts against the partner: a partner that cannot answer
/// within a second is failing a car-facing call; a car that gives less chose to.
pub const MIN_TELLING_DEADLINE: Duration = Duration::from_secs(1);

/// One partner's limit and breaker settings (from its `[[partners]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResilienceSettings {
    /// Calls in flight at once; beyond them calls are shed.
    pub max_concurrent_calls: usize,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_open_for: Duration,
}

impl From<&PartnerConfig> for ResilienceSettings {
    fn from(p: &PartnerConfig) -> Self {
        ResilienceSettings {
            max_concurrent_calls: p.max_concurrent_calls,
            breaker_failures: p.breaker_failures,
            breaker_open_for: p.breaker_open_for,
        }
    }
}

/// What a finished call says about the partner's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The partner answered (whatever it answered): it works.
    Answered,
    /// The partner failed; the text says how (for the log line when the breaker opens).
    Failed(String),
    /// Nothing learned (the car's own short deadline ran out).
    Inconclusive,
}

impl CallOutcome {
    /// Classifies a call's result by its status code, given the deadline it had.
    pub fn of(result: Result<(), &tonic::Status>, deadline: Duration) -> CallOutcome {
        let Err(status) = result else {
            return CallOutcome::Answered;
        };
        match status.code() {
            tonic::Code::DeadlineExceeded if deadline < MIN_TELLING_DEADLINE => CallOutcome::Inconclusive,
            code if is_partner_failure(code) => {
                CallOutcome::Failed(format!("{:?}: {}", status.code(), status.message()))
            }
            _ => CallOutcome::Answered,
        }
    }
}

/// Whether a call ending with `code` shows a failing partner: unreachable or too slow
/// (UNAVAILABLE, DEADLINE_EXCEEDED) or broken (INTERNAL, UNKNOWN, DATA_LOSS). Every other code,
/// the car's own errors included, comes from a partner that works.
pub fn is_partner_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::DeadlineExceeded
            | tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DataLoss
    )
}

/// Why a call was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken (load shedding): RESOURCE_EXHAUSTED.
    Overloaded {
        /// The partner's limit.
        max_concurrent_calls: usize,
    },
    /// The breaker is open: UNAVAILABLE.
    BreakerOpen {
        /// Until the next probe; zero while a probe is running.
        retry_in: Duration,
    },
}

impl Refusal {
    /// The status the car gets, naming the partner and what to do.
    pub fn to_status(&self, service: &str) -> tonic::Status {
        const RETRY: &str = "retry later with the same idempotency key";
        match self {
            Refusal::Overloaded { max_concurrent_calls } => tonic::Status::resource_exhausted(format!(
                "partner {service} has {max_concurrent_calls} calls in flight, its limit; {RETRY}"
            )),
            Refusal::BreakerOpen { retry_in } if retry_in.is_zero() => tonic::Status::unavailable(format!(
                "partner {service} is failing; a probe call is checking whether it is back; {RETRY}"
            )),
            Refusal::BreakerOpen { retry_in } => tonic::Status::unavailable(format!(
                "partner {service} is failing; calls to it are paused for another {}ms; {RETRY}",
                retry_in.as_millis()
            )),
        }
    }
}

/// The breaker's state as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused; the next probe is due in `retry_in`.
    Open {
        /// Until the next probe.
        retry_in: Duration,
    },
    /// The next call (or the one running) is the probe.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`, for operators.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// A snapshot of one partner's limit and breaker, for operators and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerHealth {
    /// The partner's gRPC service.
    pub service: String,
    /// Its breaker.
    pub breaker: BreakerState,
    /// Failures in a row so far (while closed).
    pub consecutive_failures: u32,
    /// Calls in flight now.
    pub calls_in_flight: usize,
    /// Its limit on calls in flight.
    pub max_concurrent_calls: usize,
    /// Calls shed (RESOURCE_EXHAUSTED) since start.
    pub shed_total: u64,
    /// Calls refused by the open breaker (UNAVAILABLE) since start.
    pub refused_while_open_total: u64,
    /// Times the breaker opened since start.
    pub opened_total: u64,
}

/// One partner's slots and breaker, shared by every call to it.
#[derive(Debug)]
pub struct PartnerGuard {
    service: String,
    settings: ResilienceSettings,
    slots: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    shed: AtomicU64,
    refused_while_open: AtomicU64,
    opened: AtomicU64,
}

#[derive(Debug)]
struct Breaker {
    phase: Phase,
    /// Bumped at every change, so outcomes of calls admitted before it are ignored.
    epoch: u64,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Breaker {
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch += 1;
    }
}

/// A change of the breaker's state, logged once, outside the lock.
enum Change {
    Opened { failures: u32, last_error: String },
    ProbeFailed { last_error: String },
    HalfOpened,
    Closed,
}

impl PartnerGuard {
    /// A guard for `service` with every slot free and the breaker closed.
    pub fn new(service: &str, settings: ResilienceSettings) -> Arc<PartnerGuard> {
        Arc::new(PartnerGuard {
            service: service.to_owned(),
            settings,
            slots: Arc::new(Semaphore::new(settings.max_concurrent_calls)),
            breaker: Mutex::new(Breaker {
                phase: Phase::Closed { failures: 0 },
                epoch: 0,
            }),
            shed: AtomicU64::new(0),
            refused_while_open: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        })
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a call through, or says at once why not. The permit holds a slot until dropped and
    /// takes the call's outcome ([`CallPermit::finish`]).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<CallPermit, Refusal> {
        let (epoch, probe, change) = {
            let mut breaker = self.breaker();
            match breaker.phase {
                Phase::Closed { .. } => (breaker.epoch, false, None),
                Phase::Open { until } if now < until => {
                    drop(breaker);
                    self.refused_while_open.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal::BreakerOpen { retry_in: until - now });
                }
                Phase::Open { .. } => {
                    breaker.enter(Phase::HalfOpen { probing: true });
                    (breaker.epoch, true, Some(Change::HalfOpened))
                }
                Phase::HalfOpen { probing: true } => {
                    drop(breaker);
                    self.refused_while_open.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal::BreakerOpen {
                        retry_in: Duration::ZERO,
                    });
                }
                Phase::HalfOpen { ref mut probing } => {
                    *probing = true;
                    (breaker.epoch, true, None)
                }
            }
        };
        if let Some(change) = change {
            self.log(change);
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(CallPermit {
                guard: self.clone(),
                epoch,
                probe,
                finished: false,
                _slot: slot,
            }),
            Err(_) => {
                if probe {
                    self.probe_abandoned(epoch);
                }
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Overloaded {
                    max_concurrent_calls: self.settings.max_concurrent_calls,
                })
            }
        }
    }

    fn record(&self, epoch: u64, probe: bool, outcome: CallOutcome, now: Instant) {
        let change = {
            let mut breaker = self.breaker();
            if breaker.epoch != epoch {
                return;
            }
            let reopen = Phase::Open {
                until: now + self.settings.breaker_open_for,
            };
            match (&mut breaker.phase, outcome) {
                (Phase::Closed { failures }, CallOutcome::Answered) => {
                    *failures = 0;
                    None
                }
                (Phase::Closed { failures }, CallOutcome::Failed(last_error)) => {
                    *failures += 1;
                    let failures = *failures;
                    (failures >= self.settings.breaker_failures).then(|| {
                        breaker.enter(reopen);
                        Change::Opened { failures, last_error }
                    })
                }
                (Phase::HalfOpen { .. }, CallOutcome::Answered) if probe => {
                    breaker.enter(Phase::Closed { failures: 0 });
                    Some(Change::Closed)
                }
                (Phase::HalfOpen { .. }, CallOutcome::Failed(last_error)) if probe => {
                    breaker.enter(reopen);
                    Some(Change::ProbeFailed { last_error })
                }
                (Phase::HalfOpen { probing }, CallOutcome::Inconclusive) if probe => {
                    *probing = false;
                    None
                }
                _ => None,
            }
        };
        if let Some(change) = change {
            self.log(change);
        }
    }

    /// A probe that ended without an outcome (cancelled, or shed): the next call probes.
    fn probe_abandoned(&self, epoch: u64) {
        let mut breaker = self.breaker();
        if breaker.epoch == epoch
            && let Phase::HalfOpen { probing } = &mut breaker.phase
        {
            *probing = false;
        }
    }

    fn log(&self, change: Change) {
        let partner = &self.service;
        let open_for = self.settings.breaker_open_for;
        match change {
            Change::Opened { failures, last_error } => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                warn!(
                    partner,
                    failures,
                    last_error = %printable(&last_error),
                    ?open_for,
                    "partner circuit breaker open after consecutive failures: its calls are refused with UNAVAILABLE until a probe succeeds"
                );
            }
            Change::ProbeFailed { last_error } => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                warn!(
                    partner,
                    last_error = %printable(&last_error),
                    ?open_for,
                    "partner circuit breaker open again: the probe call failed"
                );
            }
            Change::HalfOpened => info!(
                partner,
                "partner circuit breaker half-open: one probe call goes through"
            ),
            Change::Closed => info!(partner, "partner circuit breaker closed: the probe call succeeded"),
        }
    }

    /// A snapshot of the slots and the breaker as of `now`.
    pub fn health(&self, now: Instant) -> PartnerHealth {
        let (breaker, consecutive_failures) = match self.breaker().phase {
            Phase::Closed { failures } => (BreakerState::Closed, failures),
            Phase::Open { until } if now < until => (BreakerState::Open { retry_in: until - now }, 0),
            Phase::Open { .. } | Phase::HalfOpen { .. } => (BreakerState::HalfOpen, 0),
        };
        let max = self.settings.max_concurrent_calls;
        PartnerHealth {
            service: self.service.clone(),
            breaker,
            consecutive_failures,
            calls_in_flight: max - self.slots.available_permits(),
            max_concurrent_calls: max,
            shed_total: self.shed.load(Ordering::Relaxed),
            refused_while_open_total: self.refused_while_open.load(Ordering::Relaxed),
            opened_total: self.opened.load(Ordering::Relaxed),
        }
    }
}

/// A call let through: holds its slot until dropped. Dropped without
/// [`CallPermit::finish`] (the call was cancelled), it tells the breaker nothing.
#[derive(Debug)]
pub struct CallPermit {
    guard: Arc<PartnerGuard>,
    epoch: u64,
    probe: bool,
    finished: bool,
    _slot: OwnedSemaphorePermit,
}

impl CallPermit {
    /// Whether this call is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Tells the breaker how the call went, then frees the slot.
    pub fn finish(mut self, outcome: CallOutcome, now: Instant) {
        self.finished = true;
        self.guard.record(self.epoch, self.probe, outcome, now);
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            self.guard.probe_abandoned(self.epoch);
        }
    }
}

#[cfg(test)]
mod tests;
