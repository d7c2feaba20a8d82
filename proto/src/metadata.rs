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
