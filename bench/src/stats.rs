//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Latency samples in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<u64>);

/// Percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nearest-rank percentiles (zeros when empty).
    pub fn summary(&self) -> Summary {
        let mut v = self.0.clone();
        v.sort_unstable();
        let at = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1] as f64 / 1e3
        };
        Summary {
            count: v.len(),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.summary().count, 0);
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
    }
}
