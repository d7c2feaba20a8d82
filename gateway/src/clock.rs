//! The wall clock as the gateway records it: unix milliseconds, the unit of every time the
//! store keeps. A leaf module, so the broker, routing and events read the same clock without
//! importing each other.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in unix milliseconds (0 if the clock is set before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
