//! Who is calling: the in-car app that a request and its result belong to.
//!
//! On the agent's Unix socket an app is its uid, from the kernel's peer credentials, which it
//! cannot forge. On the TCP loopback endpoint any local process can connect, so an app proves
//! who it is with a token of its own choosing in `x-app-token` metadata; only the token's
//! SHA-256 is kept, never the token. A TCP call without a token is *anonymous*: its results
//! can be read by every other anonymous call, so apps that care use the socket or a token.
//!
//! Only the owner sees a request: to anyone else its id looks unused.

use std::fmt;

use ring::digest::{SHA256, digest};
use tonic::Status;
use tonic::transport::server::UdsConnectInfo;

/// Metadata naming the calling app on the TCP endpoint (ignored on the Unix socket).
pub const APP_TOKEN_METADATA: &str = "x-app-token";

/// Fewest characters in an app token: shorter ones could be guessed by another app.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Most characters in an app token.
pub const MAX_TOKEN_CHARS: usize = 1024;

/// The app a request belongs to, as stored with it: `uid:<uid>`, `token:<SHA-256 hex>`, or
/// empty for anonymous (also what requests stored before owners existed load as).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Owner(String);

impl Owner {
    /// A TCP caller without a token.
    pub fn anonymous() -> Owner {
        Owner(String::new())
    }

    /// A caller on the Unix socket, by its uid.
    pub fn uid(uid: u32) -> Owner {
        Owner(format!("uid:{uid}"))
    }

    /// A TCP caller presenting `token`: 16 to 1024 printable ASCII characters.
    pub fn token(token: &str) -> Result<Owner, Status> {
        let chars = token.chars().count();
        let printable = token.bytes().all(|b| b.is_ascii_graphic());
        if !printable || !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&chars) {
            // The message must not echo the token: it may be logged by the app.
            return Err(Status::invalid_argument(format!(
                "{APP_TOKEN_METADATA} must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} printable ASCII characters without spaces"
            )));
        }
        let hash = digest(&SHA256, token.as_bytes());
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Owner(format!("token:{hex}")))
    }

    /// The caller of `request`: its uid on the Unix socket, else its `x-app-token`, else anonymous.
    pub fn of_request<T>(request: &tonic::Request<T>) -> Result<Owner, Status> {
        if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
            return info.peer_cred.map(|cred| Owner::uid(cred.uid())).ok_or_else(|| {
                Status::unauthenticated(
                    "the agent cannot tell which app is calling: the socket gave no peer credentials",
                )
            });
        }
        match request.metadata().get(APP_TOKEN_METADATA) {
            None => Ok(Owner::anonymous()),
            Some(value) => {
                let token = value.to_str().map_err(|_| {
                    Status::invalid_argument(format!("{APP_TOKEN_METADATA} metadata must be printable ASCII"))
                })?;
                Owner::token(token)
            }
        }
    }

    /// An owner as read back from the state directory.
    pub fn from_stored(stored: String) -> Owner {
        Owner(stored)
    }

    /// The form stored with requests and results.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a TCP caller without a token.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_empty()
    }
}

/// For logs: the uid, or the first 8 hex digits of a token's hash.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once(':') {
            None => f.write_str("anonymous"),
            Some(("token", hash)) => write!(f, "token {}…", &hash[..hash.len().min(8)]),
            Some((kind, id)) => write!(f, "{kind} {id}"),
        }
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_as_their_hash() {
        let owner = Owner::token("correct-horse-battery").unwrap();
        // echo -n correct-horse-battery | sha256sum
        assert_eq!(
            owner.as_str(),
            "token:62249369389075490555a758353aec61500c6218fa597252d52dc4bd0148f12d"
        );
        assert!(!owner.as_str().contains("horse"));
        assert_eq!(owner, Owner::token("correct-horse-battery").unwrap());
        assert_ne!(owner, Owner::token("correct-horse-batterz").unwrap());
        assert_eq!(owner.to_string(), "token 62249369…");
        assert!(!format!("{owner:?}").contains("horse"));
    }

    #[test]
    fn weak_or_odd_tokens_are_refused_without_echoing_them() {
        for bad in [
            "short",
            "with a space in it!!",
            "tab\there-and-long-enough",
            &"x".repeat(1025),
            "ünïcödé-but-long-enough",
        ] {
            let e = Owner::token(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(!e.message().contains(bad), "{}", e.message());
        }
        Owner::token(&"x".repeat(16)).unwrap();
        Owner::token(&"x".repeat(1024)).unwrap();
    }

    #[test]
    fn kinds_of_owner_differ() {
        assert!(Owner::anonymous().is_anonymous());
        assert_eq!(Owner::from_stored(String::new()), Owner::anonymous());
        assert_eq!(Owner::uid(1000).as_str(), "uid:1000");
        assert_eq!(Owner::uid(1000).to_string(), "uid 1000");
        assert_eq!(Owner::anonymous().to_string(), "anonymous");
        assert_ne!(Owner::uid(0), Owner::anonymous());
    }
}
