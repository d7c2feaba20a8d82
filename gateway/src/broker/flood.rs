//! The per-car publish rate: every PUBLISH a car makes (requests, acknowledgements, its own
//! topics) draws from a token bucket keyed by its VIN (GCRA, the `governor` crate), so the
//! bucket survives reconnects and a flooding car cannot reset it by reconnecting.
//!
//! A car over its rate is slowed down first: its session stops reading until the bucket
//! allows the next publish, so TCP pushes back. A car still over its rate after
//! `flood_disconnect_after` of that is flooding, not bursting, and is disconnected with the
//! reason recorded. The burst is large enough for an agent resending its whole outbox after
//! an outage.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use proto::Vin;
use tokio::time::Instant;

/// The publish rate every car is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRate {
    /// Sustained publishes per second.
    pub per_second: NonZeroU32,
    /// Publishes allowed at once above the sustained rate.
    pub burst: NonZeroU32,
    /// How long a car may stay over its rate (throttled) before it is disconnected.
    pub flood_disconnect_after: Duration,
}

/// Token buckets of every car that published recently. Memory is bounded by the cars
/// connected: [`PublishLimiter::prune`] drops the buckets that are full again.
#[derive(Debug)]
pub struct PublishLimiter {
    buckets: DefaultKeyedRateLimiter<Vin>,
    rate: PublishRate,
}

/// What a car's session does with its next publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it now.
    Now,
    /// Over the rate: wait this long, then handle it.
    After(Duration),
    /// Over the rate for longer than allowed: disconnect.
    Flooding,
}

impl PublishLimiter {
    /// A limiter holding every car to `rate`.
    pub fn new(rate: PublishRate) -> PublishLimiter {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        PublishLimiter {
            buckets: RateLimiter::keyed(quota),
            rate,
        }
    }

    /// The rate cars are held to.
    pub fn rate(&self) -> PublishRate {
        self.rate
    }

    /// Takes one publish from `vin`'s bucket. `throttled_since` is the session's memory of
    /// when the car went over its rate (cleared as soon as a publish is within it).
    pub fn check(&self, vin: &Vin, throttled_since: &mut Option<Instant>) -> Verdict {
        match self.buckets.check_key(vin) {
            Ok(()) => {
                *throttled_since = None;
                Verdict::Now
            }
            Err(not_until) => {
                let since = *throttled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.rate.flood_disconnect_after {
                    return Verdict::Flooding;
                }
                Verdict::After(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Forgets the buckets that are full again (their cars stayed within the rate lately).
    pub fn prune(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vin() -> Vin {
        Vin::parse("WBA3B5C50DF123456").unwrap()
    }

    fn limiter(flood_disconnect_after: Duration) -> PublishLimiter {
        PublishLimiter::new(PublishRate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
            flood_disconnect_after,
        })
    }

    #[test]
    fn a_burst_passes_then_the_car_waits_then_it_is_flooding() {
        let limiter = limiter(Duration::from_secs(3600));
        let mut since = None;
        for _ in 0..3 {
            assert_eq!(limiter.check(&vin(), &mut since), Verdict::Now);
        }
        assert!(matches!(limiter.check(&vin(), &mut since), Verdict::After(wait) if wait > Duration::ZERO));
        assert!(since.is_some(), "the car is over its rate from now on");

        let strict = limiter_that_disconnects_at_once();
        let mut since = None;
        for _ in 0..3 {
            strict.check(&vin(), &mut since);
        }
        assert_eq!(strict.check(&vin(), &mut since), Verdict::Flooding);
    }

    fn limiter_that_disconnects_at_once() -> PublishLimiter {
        limiter(Duration::ZERO)
    }

    #[test]
    fn each_car_has_its_own_bucket() {
        let limiter = limiter(Duration::from_secs(3600));
        let other = Vin::parse("LSVAU2180N2183294").unwrap();
        let (mut a, mut b) = (None, None);
        for _ in 0..3 {
            limiter.check(&vin(), &mut a);
        }
        assert_eq!(limiter.check(&other, &mut b), Verdict::Now);
        assert_eq!(limiter.len(), 2);
    }
}
