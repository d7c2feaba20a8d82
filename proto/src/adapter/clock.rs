//! Where an adapter gets the time from.
//!
//! Fees depend on how long a car parked and codes expire, so tests must be able to move time
//! forward without sleeping. An adapter therefore never reads the system clock directly: it
//! asks a [`Clock`], which is [`SystemClock`] in production and [`ManualClock`] in tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        // A clock set before 1970 is a broken host; report the epoch rather than panic mid-call.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// Hand one clone to the service and keep another in the test to
/// [`advance`](ManualClock::advance) it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `start_unix_ms`.
    pub fn new(start_unix_ms: i64) -> Self {
        ManualClock {
            now_ms: Arc::new(AtomicI64::new(start_unix_ms)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `unix_ms`.
    pub fn set(&self, unix_ms: i64) {
        self.now_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// Starts at 2025-01-01T00:00:00Z, so timestamps in tests look realistic.
    fn default() -> Self {
        ManualClock::new(1_735_689_600_000)
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(1_000);
        let seen_by_service = clock.clone();
        clock.advance(Duration::from_secs(90 * 60));
        assert_eq!(seen_by_service.now_unix_ms(), 1_000 + 90 * 60 * 1_000);
        clock.set(5);
        assert_eq!(seen_by_service.now_unix_ms(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_unix_ms() > 1_577_836_800_000);
    }
}
