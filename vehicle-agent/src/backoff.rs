//! Reconnection delays: capped exponential backoff with full jitter.
//!
//! A fleet that loses the gateway at once (a gateway restart, a cell outage) would otherwise
//! reconnect in lockstep; drawing each delay uniformly from `[0, ceiling]` spreads the cars
//! over the whole window instead of stacking them at its end.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Capped exponential backoff with full jitter: `delay = uniform(0, min(max, initial * 2^attempt))`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(initial, max, StdRng::from_os_rng())
    }

    /// Like [`Backoff::new`] with a fixed seed, for reproducible tests.
    pub fn seeded(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff::with_rng(initial, max, StdRng::seed_from_u64(seed))
    }

    fn with_rng(initial: Duration, max: Duration, rng: StdRng) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the delay drawn for `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // Past 2^31 the product saturates anyway; the shift must not overflow.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(Duration::MAX).min(self.max)
    }

    /// Draws the delay before the next attempt and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// How many delays were drawn since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `initial`, after a connection succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::seeded(500 * MS, Duration::from_secs(60), 1);
        assert_eq!(b.ceiling(0), 500 * MS);
        assert_eq!(b.ceiling(1), 1000 * MS);
        assert_eq!(b.ceiling(3), 4000 * MS);
        assert_eq!(b.ceiling(6), 32_000 * MS);
        assert_eq!(b.ceiling(7), Duration::from_secs(60));
        assert_eq!(b.ceiling(200), Duration::from_secs(60));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn delays_stay_within_full_jitter_bounds() {
        for seed in 0..50 {
            let mut b = Backoff::seeded(100 * MS, 5000 * MS, seed);
            for attempt in 0..40 {
                let bound = b.ceiling(attempt);
                let d = b.next_delay();
                assert!(d <= bound, "seed {seed} attempt {attempt}: {d:?} > {bound:?}");
                assert!(d <= 5000 * MS);
            }
        }
    }

    #[test]
    fn jitter_spreads_delays_over_the_window() {
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(1), 7);
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        let low = delays.iter().filter(|d| **d < 250 * MS).count();
        let high = delays.iter().filter(|d| **d > 750 * MS).count();
        // Uniform over [0, 1s]: about a quarter in each tail; far from all at the cap.
        assert!(low > 150 && high > 150, "low {low}, high {high}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::seeded(10 * MS, Duration::from_secs(10), 3);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 10);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= 10 * MS);
    }

    #[test]
    fn max_below_initial_caps_at_initial() {
        let mut b = Backoff::seeded(Duration::from_secs(2), Duration::from_secs(1), 0);
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert!(b.next_delay() <= Duration::from_secs(2));
    }
}
