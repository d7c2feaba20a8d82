//! The per-car packet rate: every packet that makes the gateway work (PUBLISH: requests,
//! acknowledgements, its own topics; SUBSCRIBE; UNSUBSCRIBE) draws from a token bucket keyed
//! by the car's VIN (GCRA, the `governor` crate), so the bucket survives reconnects and a
//! flooding car cannot reset it by reconnecting. CONNECTs have a bucket of their own
//! ([`ConnectLimiter`]): a car that reconnects in a loop costs a handshake each time.
//!
//! A car over its rate is slowed down first: its session stops reading until the bucket
//! allows the next packet, so TCP pushes back. A car still over its rate after
//! `flood_disconnect_after` of that is flooding, not bursting, and is disconnected with the
//! reason recorded. The burst is large enough for an agent resending its whole outbox after
//! an outage.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use proto::Vin;
use tokio::time::Instant;

/// The packet rate every car is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRate {
    /// Sustained packets per second.
    pub per_second: NonZeroU32,
    /// Packets allowed at once above the sustained rate.
    pub burst: NonZeroU32,
    /// How long a car may stay over its rate (throttled) before it is disconnected.
    pub flood_disconnect_after: Duration,
}

/// Token buckets of every car that sent packets recently. Memory is bounded by the cars
/// connected: [`PacketLimiter::prune`] drops the buckets that are full again.
#[derive(Debug)]
pub struct PacketLimiter {
    buckets: DefaultKeyedRateLimiter<Vin>,
    rate: PacketRate,
}

/// A session's memory of its car's rate: since when it has been over it, and whether its
/// current packet had to wait. Only a packet that passes without waiting proves the car is
/// back within its rate.
#[derive(Debug, Default)]
pub struct Throttle {
    since: Option<Instant>,
    waited: bool,
}

/// What a car's session does with its next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it now.
    Now,
    /// Over the rate: wait this long, then handle it.
    After(Duration),
    /// Over the rate for longer than allowed: disconnect.
    Flooding,
}

impl PacketLimiter {
    /// A limiter holding every car to `rate`.
    pub fn new(rate: PacketRate) -> PacketLimiter {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        PacketLimiter {
            buckets: RateLimiter::keyed(quota),
            rate,
        }
    }

    /// The rate cars are held to.
    pub fn rate(&self) -> PacketRate {
        self.rate
    }

    /// Takes one packet from `vin`'s bucket; `throttle` is the session's memory of its car.
    /// After [`Verdict::After`], the session waits and asks again for the same packet.
    pub fn check(&self, vin: &Vin, throttle: &mut Throttle) -> Verdict {
        match self.buckets.check_key(vin) {
            Ok(()) => {
                if !throttle.waited {
                    throttle.since = None;
                }
                throttle.waited = false;
                Verdict::Now
            }
            Err(not_until) => {
                let since = *throttle.since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.rate.flood_disconnect_after {
                    return Verdict::Flooding;
                }
                throttle.waited = true;
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

/// How often each car may connect: a car reconnecting in a loop (say, disconnected for a
/// bound it keeps breaking) gets CONNACK 3 (server unavailable) and backs off, instead of
/// costing a handshake and a connection-log row each time.
#[derive(Debug)]
pub struct ConnectLimiter {
    buckets: DefaultKeyedRateLimiter<Vin>,
}

impl ConnectLimiter {
    /// `per_minute` connects per car, with bursts of `burst`.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> ConnectLimiter {
        ConnectLimiter {
            buckets: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
        }
    }

    /// Whether `vin` may connect now (takes one connect from its bucket).
    pub fn admit(&self, vin: &Vin) -> bool {
        self.buckets.check_key(vin).is_ok()
    }

    /// Forgets the buckets that are full again.
    pub fn prune(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_per_second_burst_3(flood_disconnect_after: Duration) -> PacketLimiter {
        PacketLimiter::new(PacketRate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
            flood_disconnect_after,
        })
    }

    #[test]
    fn a_burst_passes_then_the_car_waits_then_it_is_flooding() {
        let limiter = one_per_second_burst_3(Duration::from_secs(3600));
        let mut throttle = Throttle::default();
        for _ in 0..3 {
            assert_eq!(limiter.check(&Vin::example(), &mut throttle), Verdict::Now);
        }
        assert!(matches!(limiter.check(&Vin::example(), &mut throttle), Verdict::After(wait) if wait > Duration::ZERO));
        assert!(throttle.since.is_some(), "the car is over its rate from now on");

        let strict = one_per_second_burst_3(Duration::ZERO);
        let mut throttle = Throttle::default();
        for _ in 0..3 {
            strict.check(&Vin::example(), &mut throttle);
        }
        assert_eq!(strict.check(&Vin::example(), &mut throttle), Verdict::Flooding);
    }

    #[test]
    fn a_publish_that_had_to_wait_does_not_prove_the_car_is_back_within_its_rate() {
        let limiter = one_per_second_burst_3(Duration::from_secs(3600));
        let mut throttle = Throttle::default();
        for _ in 0..3 {
            limiter.check(&Vin::example(), &mut throttle);
        }
        limiter.check(&Vin::example(), &mut throttle);
        let since = throttle.since;
        // The session waited, then the same publish passes: the car is still over its rate.
        throttle.waited = true;
        let unlimited = PacketLimiter::new(PacketRate {
            per_second: NonZeroU32::MAX,
            burst: NonZeroU32::MAX,
            flood_disconnect_after: Duration::from_secs(3600),
        });
        assert_eq!(unlimited.check(&Vin::example(), &mut throttle), Verdict::Now);
        assert_eq!(throttle.since, since);
        // The next one passes without waiting: it is back within its rate.
        assert_eq!(unlimited.check(&Vin::example(), &mut throttle), Verdict::Now);
        assert_eq!(throttle.since, None);
    }

    #[test]
    fn each_car_has_its_own_bucket() {
        let limiter = one_per_second_burst_3(Duration::from_secs(3600));
        let other = Vin::parse("LSVAU2180N2183294").unwrap();
        let (mut a, mut b) = (Throttle::default(), Throttle::default());
        for _ in 0..3 {
            limiter.check(&Vin::example(), &mut a);
        }
        assert_eq!(limiter.check(&other, &mut b), Verdict::Now);
        assert_eq!(limiter.len(), 2);
    }
}
