//! Development PKI for the connected-car platform.
//!
//! One CA signs everything; the certificate profile (subject OU = role, CN = who) is the one
//! described in [`proto::identity`]:
//! - the gateway's server certificate (`OU=gateway`, serverAuth);
//! - one certificate per vehicle (`OU=vehicle`, `CN=<VIN>`, clientAuth);
//! - one certificate per partner adapter (`OU=partner`, `CN=<name>`, clientAuth and serverAuth).
//!
//! [`DevPki::init`] lays out a CA and gateway certificate on disk, as `certs init` does.

mod authority;
mod files;
mod pki;

use std::path::PathBuf;

use time::{Duration, OffsetDateTime};

pub use authority::{
    CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, CertificateAuthority, GATEWAY_COMMON_NAME, check_partner_name,
};
pub use files::IssuedCert;
pub use pki::{DevPki, GATEWAY_STEM};

/// Default lifetime of leaf certificates: the longest browsers and most TLS stacks accept.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Default lifetime of the CA certificate (ten years).
pub const CA_VALIDITY_DAYS: i64 = 3652;

/// The period during which a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from an hour ago until `days` days from now.
    pub fn days_from_now(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            // Backdated so that a peer whose clock runs a little behind still accepts it.
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// A period that started 30 days ago and ended yesterday, for testing expiry handling.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }
}

/// Everything that can go wrong while issuing, loading or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file or directory could not be read or written.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA directory has no `ca.pem` or `ca.key`.
    #[error("no CA in {dir}: {missing} does not exist (run `certs init --out {dir}` first)")]
    CaMissing {
        /// The directory that should hold the CA.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// `init` would overwrite an existing CA.
    #[error(
        "{0} already exists; refusing to replace the CA (use --force to replace it, which invalidates every certificate it signed)"
    )]
    CaExists(PathBuf),
    /// `ca.pem` is not a usable CA certificate.
    #[error("{path} is not a usable CA certificate: {reason}")]
    BadCaCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca.key` is not a usable private key.
    #[error("{path} is not a usable private key: {source}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: rcgen::Error,
    },
    /// `ca.key` does not belong to `ca.pem`.
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The argument is not a VIN.
    #[error(transparent)]
    InvalidVin(#[from] proto::VinError),
    /// The partner name breaks the naming rules.
    #[error("{name:?} is not a valid partner name: {reason}")]
    InvalidPartnerName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// An extra gateway name is neither an IP address nor a DNS name.
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
    InvalidHostName(String),
    /// A file stem would escape the output directory or is empty.
    #[error("{0:?} cannot be used as a file name")]
    InvalidFileStem(String),
    /// Key generation or signing failed.
    #[error("could not create certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

impl CertsError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertsError {
        let path = path.into();
        move |source| CertsError::Io { action, path, source }
    }
}
