//! gRPC metadata the gateway sets on every call to a partner adapter.

/// The calling car's VIN, taken from its certificate. Authoritative: never from a payload.
pub const VIN: &str = "x-vehicle-vin";
/// The car's request id, for correlating logs across car, gateway and partner.
pub const REQUEST_ID: &str = "x-request-id";
/// Identical on every retry of one driver intent; partners deduplicate side effects on it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Response metadata a partner sets on an answer that moved money: `<minor units> <ISO 4217>`,
/// e.g. `1250 CNY` (12.50 yuan charged); negative for money given back (a refund). The gateway
/// records it in the vehicle's journal; a value it cannot parse is ignored, never an error.
pub const AMOUNT: &str = "carlink-amount";

/// Response metadata an identity partner sets on the answer that completes a driver's sign-in:
/// `<provider> <subject>`, e.g. `wechat wx-8f3k2`. The gateway links that social identity to
/// the car's customer (creating a customer, with the car as one they drive, if the car has
/// none), so the sign-in shows in that customer's history. Provider: 1 to 64 of `a-z`, `0-9`,
/// `-`; subject: 1 to 255 visible ASCII characters. A value that does not parse is ignored.
pub const SIGNED_IN: &str = "carlink-signed-in";

/// The [`SIGNED_IN`] header's value for `subject` at `provider`, if both fit its rules.
pub fn format_signed_in(provider: &str, subject: &str) -> Option<String> {
    let value = format!("{provider} {subject}");
    parse_signed_in(&value).map(|_| value)
}

/// Reads a [`SIGNED_IN`] header's value: `(provider, subject)`.
pub fn parse_signed_in(value: &str) -> Option<(String, String)> {
    let (provider, subject) = value.split_once(' ')?;
    let provider_ok = (1..=64).contains(&provider.len())
        && provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let subject_ok = (1..=255).contains(&subject.len()) && subject.bytes().all(|b| b.is_ascii_graphic());
    (provider_ok && subject_ok).then(|| (provider.to_owned(), subject.to_owned()))
}

/// The [`AMOUNT`] header's value for `minor_units` of `currency`.
pub fn format_amount(minor_units: i64, currency: &str) -> String {
    format!("{minor_units} {currency}")
}

/// Reads an [`AMOUNT`] header's value: an integer, one space, three uppercase ASCII letters.
pub fn parse_amount(value: &str) -> Option<(i64, String)> {
    let (minor, currency) = value.split_once(' ')?;
    let minor: i64 = minor.parse().ok()?;
    (currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())).then(|| (minor, currency.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ins_round_trip_and_junk_is_refused() {
        let value = format_signed_in("wechat", "wx-8f3k2").unwrap();
        assert_eq!(parse_signed_in(&value), Some(("wechat".into(), "wx-8f3k2".into())));
        assert_eq!(format_signed_in("WeChat", "wx"), None, "provider is lowercase");
        assert_eq!(format_signed_in("wechat", "two words"), None);
        assert_eq!(format_signed_in("wechat", ""), None);
        assert_eq!(parse_signed_in("wechat"), None);
        assert_eq!(parse_signed_in(&format!("wechat {}", "x".repeat(256))), None);
    }

    #[test]
    fn amounts_round_trip_and_junk_is_refused() {
        assert_eq!(parse_amount(&format_amount(1250, "CNY")), Some((1250, "CNY".into())));
        assert_eq!(parse_amount("-300 EUR"), Some((-300, "EUR".into())));
        for junk in [
            "",
            "1250",
            "CNY 1250",
            "12.50 CNY",
            "1250 cny",
            "1250  CNY",
            "1250 CNYX",
            "99999999999999999999 CNY",
        ] {
            assert_eq!(parse_amount(junk), None, "{junk:?}");
        }
    }
}
