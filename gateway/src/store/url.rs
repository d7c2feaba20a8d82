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
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match head.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _password)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(head),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
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
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite:///var/lib/gw.db?mode=rwc", "sqlite:///var/lib/gw.db?mode=rwc"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
