//! Who is calling the ops listener: an operator by client certificate, or a browser signed in
//! with a one-time link an operator asked for (`CreateDashboardLink`), held in a cookie.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto::identity::{Role, identify};
use rustls_pki_types::CertificateDer;

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Their certificate's CN (for a browser, the CN of the operator who made its link).
    pub name: String,
}

/// Why a caller is not an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOperator {
    /// No client certificate (and, for the dashboard, no valid sign-in).
    #[error("an operator certificate (OU=operator) or a dashboard sign-in is required")]
    Anonymous,
    /// A certificate of another role, or one naming no single role.
    #[error("{0}")]
    Refused(String),
}

/// The operator a verified client chain names, if it names one.
pub fn operator_of(chain: Option<&[CertificateDer<'_>]>) -> Result<Operator, NotOperator> {
    let leaf = chain.and_then(|c| c.first()).ok_or(NotOperator::Anonymous)?;
    let holder =
        identify(leaf.as_ref()).map_err(|e| NotOperator::Refused(format!("client certificate refused: {e}")))?;
    if holder.role != Role::Operator {
        return Err(NotOperator::Refused(format!(
            "an operator certificate is required, this one has role {} (CN={})",
            holder.role, holder.name
        )));
    }
    Ok(Operator { name: holder.name })
}

/// The name of the dashboard's session cookie.
pub const COOKIE: &str = "carlink_ops";

/// How long a sign-in link may be used, at most.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug)]
enum Grant {
    /// A link not used yet: the first use turns it into a session.
    Link { operator: Operator, until: Instant },
    /// A signed-in browser.
    Session { operator: Operator, until: Instant },
}

impl Grant {
    fn until(&self) -> Instant {
        match self {
            Grant::Link { until, .. } | Grant::Session { until, .. } => *until,
        }
    }
}

/// Unused sign-in links and signed-in browsers, by secret token; at most `max` at once (the
/// one closest to expiry goes first), each for a bounded time.
#[derive(Debug)]
pub struct SignIns {
    grants: Mutex<HashMap<String, Grant>>,
    max: usize,
    session_ttl: Duration,
}

impl SignIns {
    /// Holds at most `max` links and sessions; a session lasts `session_ttl`.
    pub fn new(max: usize, session_ttl: Duration) -> SignIns {
        SignIns {
            grants: Mutex::new(HashMap::new()),
            max: max.max(1),
            session_ttl,
        }
    }

    /// A new one-time link token for `operator`, valid for `ttl` (capped at [`MAX_LINK_TTL`]).
    pub fn issue_link(&self, operator: Operator, ttl: Duration) -> String {
        let until = Instant::now() + ttl.min(MAX_LINK_TTL);
        self.insert(Grant::Link { operator, until })
    }

    /// Spends link `token`: a session token for the browser, or `None` if the link is unknown,
    /// used or expired.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let operator = {
            let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
            match grants.remove(token) {
                Some(Grant::Link { operator, until }) if until > Instant::now() => operator,
                Some(session @ Grant::Session { .. }) => {
                    // A session token is not a link: put it back untouched.
                    grants.insert(token.to_owned(), session);
                    return None;
                }
                _ => return None,
            }
        };
        let until = Instant::now() + self.session_ttl;
        Some(self.insert(Grant::Session { operator, until }))
    }

    /// The operator signed in with session `token`, if it is still valid.
    pub fn session(&self, token: &str) -> Option<Operator> {
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        match grants.get(token) {
            Some(Grant::Session { operator, until }) if *until > Instant::now() => Some(operator.clone()),
            _ => None,
        }
    }

    /// How long a signed-in browser stays signed in.
    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// Links and sessions held now (expired ones included until they are pushed out).
    pub fn len(&self) -> usize {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, grant: Grant) -> String {
        let token = random_token();
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        grants.retain(|_, g| g.until() > now);
        while grants.len() >= self.max {
            let Some(first) = grants.iter().min_by_key(|(_, g)| g.until()).map(|(t, _)| t.clone()) else {
                break;
            };
            grants.remove(&first);
        }
        grants.insert(token.clone(), grant);
        token
    }
}

/// 32 random bytes, hex: a bearer secret for a link or a cookie.
fn random_token() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Operator {
        Operator { name: "alice".into() }
    }

    #[test]
    fn a_link_signs_in_once() {
        let sign_ins = SignIns::new(10, Duration::from_secs(60));
        let link = sign_ins.issue_link(alice(), Duration::from_secs(60));
        assert_eq!(sign_ins.session(&link), None, "a link is not a session");
        let session = sign_ins.redeem(&link).expect("a fresh link signs in");
        assert_eq!(sign_ins.session(&session), Some(alice()));
        assert_eq!(sign_ins.redeem(&link), None, "a link works once");
        assert_eq!(sign_ins.redeem(&session), None, "a session is not a link");
        assert_eq!(sign_ins.session(&session), Some(alice()), "and stays a session");
    }

    #[test]
    fn an_expired_link_does_not_sign_in() {
        let sign_ins = SignIns::new(10, Duration::from_secs(60));
        let link = sign_ins.issue_link(alice(), Duration::ZERO);
        assert_eq!(sign_ins.redeem(&link), None);
    }

    #[test]
    fn sign_ins_beyond_the_bound_push_out_the_oldest() {
        let sign_ins = SignIns::new(3, Duration::from_secs(60));
        let first = sign_ins.issue_link(alice(), Duration::from_secs(1));
        for _ in 0..5 {
            sign_ins.issue_link(alice(), Duration::from_secs(60));
        }
        assert_eq!(sign_ins.len(), 3);
        assert_eq!(sign_ins.redeem(&first), None, "the one closest to expiry went first");
    }
}
