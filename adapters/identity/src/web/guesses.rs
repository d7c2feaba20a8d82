//! The limit on wrong user codes: a user code has ~34.6 bits, so guessing must be slow
//! (RFC 8628 §5.1). Each client address may submit [`GuessLimits::per_client`] wrong codes per
//! [`GuessLimits::window`], and everyone together [`GuessLimits::global`], so that many
//! addresses cannot add up to a fast guess either. Only wrong codes count: a driver who types
//! their code right is never held back by others' typos unless the page is under attack.
//!
//! Memory is bounded by the global limit: an address is tracked only while it has wrong codes
//! in the window, and those count toward the global limit too.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits on wrong user codes; every field has a safe default.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    /// Wrong codes one client address may submit per window. Default 5.
    pub per_client: usize,
    /// Wrong codes all clients together may submit per window. Default 100.
    pub global: usize,
    /// The sliding window. Default one minute.
    pub window: Duration,
}

impl Default for GuessLimits {
    fn default() -> Self {
        GuessLimits {
            per_client: 5,
            global: 100,
            window: Duration::from_secs(60),
        }
    }
}

/// Who is over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This client address.
    Client,
    /// Everyone: the page as a whole.
    Everyone,
}

/// Wrong codes in the current window, per client address and in all.
#[derive(Debug)]
pub struct GuessLimiter {
    limits: GuessLimits,
    by_client: HashMap<IpAddr, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

impl GuessLimiter {
    /// No wrong codes yet.
    pub fn new(limits: GuessLimits) -> GuessLimiter {
        GuessLimiter {
            limits,
            by_client: HashMap::new(),
            all: VecDeque::new(),
        }
    }

    /// Whether `client` may submit a code now.
    pub fn admit(&mut self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let window = self.limits.window;
        let expired = |t: &Instant| now.saturating_duration_since(*t) >= window;
        while self.all.front().is_some_and(expired) {
            self.all.pop_front();
        }
        if let Some(times) = self.by_client.get_mut(&client) {
            while times.front().is_some_and(expired) {
                times.pop_front();
            }
            if times.len() >= self.limits.per_client {
                return Err(Limited::Client);
            }
        }
        if self.all.len() >= self.limits.global {
            return Err(Limited::Everyone);
        }
        Ok(())
    }

    /// Counts a wrong code from `client` (admitted just before).
    pub fn wrong(&mut self, client: IpAddr, now: Instant) {
        // Addresses whose wrong codes all left the window are forgotten; with at most `global`
        // wrong codes in a window, at most `global` addresses remain.
        if self.by_client.len() > self.limits.global {
            let window = self.limits.window;
            self.by_client
                .retain(|_, times| times.back().is_some_and(|t| now.saturating_duration_since(*t) < window));
        }
        self.by_client.entry(client).or_default().push_back(now);
        self.all.push_back(now);
    }

    /// Client addresses tracked now.
    pub fn tracked_clients(&self) -> usize {
        self.by_client.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn five_wrong_codes_a_minute_per_client_then_refused_until_the_window_moves_on() {
        let mut limiter = GuessLimiter::new(GuessLimits::default());
        let t0 = Instant::now();
        for i in 0..5 {
            limiter.admit(ip(1), t0).unwrap();
            limiter.wrong(ip(1), t0 + Duration::from_secs(i));
        }
        assert_eq!(limiter.admit(ip(1), t0 + Duration::from_secs(5)), Err(Limited::Client));
        // Another client is not held back.
        assert_eq!(limiter.admit(ip(2), t0 + Duration::from_secs(5)), Ok(()));
        // A minute after the first wrong code, one more may be tried.
        assert_eq!(limiter.admit(ip(1), t0 + Duration::from_secs(60)), Ok(()));
        limiter.wrong(ip(1), t0 + Duration::from_secs(60));
        assert_eq!(limiter.admit(ip(1), t0 + Duration::from_secs(60)), Err(Limited::Client));
    }

    #[test]
    fn many_clients_together_hit_the_global_limit_and_memory_stays_bounded() {
        let limits = GuessLimits {
            per_client: 5,
            global: 20,
            window: Duration::from_secs(60),
        };
        let mut limiter = GuessLimiter::new(limits);
        let t0 = Instant::now();
        for n in 0..20 {
            limiter.admit(ip(n), t0).unwrap();
            limiter.wrong(ip(n), t0);
        }
        assert_eq!(limiter.admit(ip(999), t0), Err(Limited::Everyone));
        // Thousands of addresses over time leave no more than the global limit tracked.
        for n in 0..5_000 {
            let now = t0 + Duration::from_secs(61 + u64::from(n) * 4);
            limiter.admit(ip(1_000 + n), now).unwrap();
            limiter.wrong(ip(1_000 + n), now);
        }
        assert!(
            limiter.tracked_clients() <= limits.global + 1,
            "{}",
            limiter.tracked_clients()
        );
    }
}
