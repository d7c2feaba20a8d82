//! What a stay costs: a lot's price rules applied to a duration.
//!
//! The rules, as the contract states them (`parking.v1.PriceRules`):
//!
//! 1. The first `free_minutes` of a stay are free; a stay no longer than that costs nothing.
//! 2. The rest is billed **per started hour** at `hourly_rate_fen`: 61 billed minutes are two
//!    hours. Per started hour rather than per minute because that is how Chinese car parks
//!    post their prices, and a driver can check the receipt with mental arithmetic. A lot
//!    without free minutes bills every stay, even an instant one, at least one hour.
//! 3. Each 24 hours of billed time, counted from the end of the free minutes, cost at most
//!    `daily_cap_fen`; a last, partial day is capped the same way.
//!
//! So the fee never decreases as a stay gets longer, and never exceeds the daily cap times the
//! started days of the stay. The property tests below check exactly that.

use proto::parking::v1::{FeeBreakdown, Money, PriceRules as PriceRulesProto};

const MS_PER_MINUTE: i64 = 60 * 1_000;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// A lot's prices, in fen (1/100 CNY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceRules {
    /// Minutes at the start of a stay that cost nothing.
    pub free_minutes: u32,
    /// Price of one started hour after the free minutes.
    pub hourly_rate_fen: i64,
    /// The most 24 hours of billed time cost.
    pub daily_cap_fen: i64,
}

/// The fee for one stay and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fee {
    /// What the car pays, in fen.
    pub amount_fen: i64,
    /// Minutes of the stay that were free.
    pub free_minutes_used: u32,
    /// Started hours billed after the free minutes.
    pub billed_hours: u64,
    /// `billed_hours × hourly rate`, before the daily cap.
    pub before_cap_fen: i64,
}

impl PriceRules {
    /// The fee for a stay of `duration_ms` (a negative duration, from a clock that stepped
    /// back, is an empty stay).
    pub fn fee(&self, duration_ms: i64) -> Fee {
        let duration_ms = duration_ms.max(0);
        let free_ms = i64::from(self.free_minutes) * MS_PER_MINUTE;
        let billed_ms = if free_ms > 0 && duration_ms <= free_ms {
            0
        } else {
            duration_ms.saturating_sub(free_ms).max(1)
        };
        let full_days = billed_ms / MS_PER_DAY;
        // Started hours: round up (billed_ms is never negative).
        let last_day_hours = (billed_ms % MS_PER_DAY + MS_PER_HOUR - 1) / MS_PER_HOUR;
        let day_fee = |hours: i64| self.hourly_rate_fen.saturating_mul(hours).min(self.daily_cap_fen);
        let amount_fen = full_days
            .saturating_mul(day_fee(24))
            .saturating_add(day_fee(last_day_hours));
        let billed_hours = full_days.saturating_mul(24).saturating_add(last_day_hours);
        Fee {
            amount_fen,
            // Whole minutes; at most free_minutes, so the cast cannot truncate.
            free_minutes_used: u32::try_from(duration_ms.min(free_ms) / MS_PER_MINUTE).unwrap_or(self.free_minutes),
            billed_hours: u64::try_from(billed_hours).unwrap_or(0),
            before_cap_fen: self.hourly_rate_fen.saturating_mul(billed_hours),
        }
    }

    /// The rules as the contract describes them.
    pub fn to_proto(&self) -> PriceRulesProto {
        PriceRulesProto {
            free_minutes: self.free_minutes,
            hourly_rate: Some(cny(self.hourly_rate_fen)),
            daily_cap: Some(cny(self.daily_cap_fen)),
        }
    }
}

impl Fee {
    /// The breakdown printed on the receipt, under `rules`.
    pub fn breakdown(&self, rules: &PriceRules) -> FeeBreakdown {
        FeeBreakdown {
            rules: Some(rules.to_proto()),
            free_minutes_used: self.free_minutes_used,
            billed_hours: self.billed_hours,
            before_cap: Some(cny(self.before_cap_fen)),
            cap_discount: Some(cny(self.before_cap_fen.saturating_sub(self.amount_fen))),
        }
    }
}

/// `amount_fen` as contract `Money` in the catalogue's currency.
pub fn cny(amount_fen: i64) -> Money {
    Money {
        currency: crate::catalogue::CURRENCY.to_owned(),
        amount_minor: amount_fen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: PriceRules = PriceRules {
        free_minutes: 15,
        hourly_rate_fen: 1_000,
        daily_cap_fen: 6_000,
    };

    fn minutes(m: i64) -> i64 {
        m * MS_PER_MINUTE
    }

    #[test]
    fn free_minutes_then_started_hours_then_the_daily_cap() {
        assert_eq!(RULES.fee(0).amount_fen, 0);
        assert_eq!(RULES.fee(-5).amount_fen, 0);
        assert_eq!(RULES.fee(minutes(15)).amount_fen, 0);
        assert_eq!(RULES.fee(minutes(15) + 1).amount_fen, 1_000);
        assert_eq!(RULES.fee(minutes(75)).amount_fen, 1_000);
        assert_eq!(RULES.fee(minutes(76)).amount_fen, 2_000);
        // Six hours reach the cap; a whole day costs the cap.
        assert_eq!(RULES.fee(minutes(15 + 7 * 60)).amount_fen, 6_000);
        assert_eq!(RULES.fee(minutes(15 + 24 * 60)).amount_fen, 6_000);
        // The next day starts billing again, and is capped too.
        assert_eq!(RULES.fee(minutes(15 + 25 * 60)).amount_fen, 7_000);
        assert_eq!(RULES.fee(minutes(15 + 48 * 60)).amount_fen, 12_000);

        let fee = RULES.fee(minutes(15 + 7 * 60));
        assert_eq!(fee.free_minutes_used, 15);
        assert_eq!(fee.billed_hours, 7);
        assert_eq!(fee.before_cap_fen, 7_000);
        let breakdown = fee.breakdown(&RULES);
        assert_eq!(breakdown.cap_discount, Some(cny(1_000)));
        assert_eq!(RULES.fee(minutes(10)).free_minutes_used, 10);
    }

    #[test]
    fn without_free_minutes_every_stay_starts_an_hour() {
        let no_free = PriceRules {
            free_minutes: 0,
            ..RULES
        };
        assert_eq!(no_free.fee(0).amount_fen, 1_000);
        assert_eq!(no_free.fee(minutes(60)).amount_fen, 1_000);
        assert_eq!(no_free.fee(minutes(60) + 1).amount_fen, 2_000);
    }

    #[test]
    fn extreme_durations_saturate_instead_of_overflowing() {
        let fee = RULES.fee(i64::MAX);
        assert!(fee.amount_fen > 0);
        let pricey = PriceRules {
            free_minutes: 0,
            hourly_rate_fen: i64::MAX,
            daily_cap_fen: i64::MAX,
        };
        assert_eq!(pricey.fee(i64::MAX).amount_fen, i64::MAX);
    }

    fn rules() -> impl Strategy<Value = PriceRules> {
        (0u32..=180, 0i64..=10_000, 0i64..=200_000).prop_map(|(free_minutes, hourly_rate_fen, daily_cap_fen)| {
            PriceRules {
                free_minutes,
                hourly_rate_fen,
                daily_cap_fen,
            }
        })
    }

    /// Up to a year of parking.
    const YEAR_MS: i64 = 366 * MS_PER_DAY;

    proptest! {
        #[test]
        fn never_above_the_cap_per_started_day(rules in rules(), duration in 0..YEAR_MS) {
            let started_days = (duration.max(1) + MS_PER_DAY - 1) / MS_PER_DAY;
            prop_assert!(rules.fee(duration).amount_fen <= rules.daily_cap_fen * started_days);
        }

        #[test]
        fn a_longer_stay_never_costs_less(rules in rules(), a in 0..YEAR_MS, b in 0..YEAR_MS) {
            let (short, long) = (a.min(b), a.max(b));
            prop_assert!(rules.fee(short).amount_fen <= rules.fee(long).amount_fen);
        }

        #[test]
        fn free_during_the_free_minutes(rules in rules(), fraction in 0.0..=1.0f64) {
            // A lot without free minutes bills even an instant stay (see the module docs).
            prop_assume!(rules.free_minutes > 0);
            let free_ms = i64::from(rules.free_minutes) * MS_PER_MINUTE;
            let duration = (free_ms as f64 * fraction) as i64;
            prop_assert_eq!(rules.fee(duration).amount_fen, 0);
        }

        #[test]
        fn the_breakdown_adds_up(rules in rules(), duration in 0..YEAR_MS) {
            let fee = rules.fee(duration);
            prop_assert!(fee.amount_fen <= fee.before_cap_fen);
            prop_assert_eq!(fee.before_cap_fen, rules.hourly_rate_fen * fee.billed_hours as i64);
            prop_assert!(fee.free_minutes_used <= rules.free_minutes);
        }
    }
}
