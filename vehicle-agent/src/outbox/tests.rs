//! Unit tests of the outbox.

use super::*;

#[test]
fn answer_retries_back_off_to_a_bound() {
    let delays: Vec<u64> = (1..=8).map(|n| millis(retry_delay(n))).collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(retry_delay(u32::MAX), ANSWER_RETRY_MAX);
}
