//! Database URLs in messages, without their passwords.

/// `url` with the password of its user info and any `password=` query parameter replaced by
/// `***`, for logs and error messages.
///
/// ```
/// use gateway::store::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/gw"), "postgres://app:***@db:5432/gw");
/// assert_eq!(redact_url("postgres://db/gw?user=app&password=s3cret"), "postgres://db/gw?user=app&password=***");
/// assert_eq!(redact_url("sqlite://data/gateway.db"), "sqlite://data/gateway.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL we can read, so we cannot tell where a password would be: say nothing of it.
        return "(an unreadable database URL)".to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed
        .query_pairs()
        .any(|(key, _)| key.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key.eq_ignore_ascii_case("password") {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // The `url` crate writes `***` percent-encoded in the user info.
    parsed.as_str().replace("%2A%2A%2A", "***")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive() {
        for (url, want) in [
            ("postgres://u:p@h:1/d", "postgres://u:***@h:1/d"),
            (
                "postgresql://u:p%40x@h/d?sslmode=require",
                "postgresql://u:***@h/d?sslmode=require",
            ),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("postgres://u:p@h", "postgres://u:***@h"),
            ("postgres://h/d?password=p&user=u", "postgres://h/d?password=***&user=u"),
            ("postgres://u:p:q@h/d", "postgres://u:***@h/d"),
            ("not a url with password=p", "(an unreadable database URL)"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite:///var/lib/gw.db?mode=rwc", "sqlite:///var/lib/gw.db?mode=rwc"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
