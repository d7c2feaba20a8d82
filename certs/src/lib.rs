//! Development PKI for the connected-car platform.
//!
//! A root CA (`ca.pem`, path length 1) signs the gateway's server certificate and one issuing
//! CA per role that authenticates as a client ([`IssuingCa`]); each issuing CA signs that role
//! only, so a listener admits exactly one role by trusting that CA alone. The certificate
//! profile (subject OU = role, CN = who) is the one described in [`proto::identity`]:
//! - the gateway's server certificate (`OU=gateway`, serverAuth), signed by the root;
//! - one certificate per vehicle (`OU=vehicle`, `CN=<VIN>`, clientAuth), by `vehicles-ca`;
//! - one certificate per partner (`OU=partner`, `CN=<name>`, clientAuth and serverAuth), by
//!   `partners-ca`;
//! - the gateway's client certificate towards partner adapters (`OU=gateway-client`,
//!   `CN=gateway`, clientAuth), by `gateway-clients-ca`;
//! - one certificate per operator (`OU=operator`, `CN=<name>`, clientAuth), by `operators-ca`.
//!
//! A leaf's PEM holds the leaf then its issuing CA, so a peer trusting only the root can
//! verify it. [`DevPki::init`] lays the whole PKI out on disk, as `certs init` does.

mod authority;
mod files;
mod pki;

use std::path::PathBuf;

use time::{Duration, OffsetDateTime};

pub use authority::{
    CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, CertificateAuthority, GATEWAY_COMMON_NAME, IssuingCa, check_name,
};
pub use files::{IssuedCert, write_revocation_list};
pub use pki::{DevPki, GATEWAY_CLIENT_STEM, GATEWAY_STEM};

/// Default lifetime of leaf certificates: the longest browsers and most TLS stacks accept.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Default lifetime of the root and issuing CA certificates (ten years).
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
    /// The PKI directory lacks the root's or an issuing CA's certificate or key.
    #[error(
        "no complete CA in {dir}: {missing} does not exist (run `certs init --out {dir}` first; add --force to replace a PKI made by an older version, which had no issuing CAs)"
    )]
    CaMissing {
        /// The directory that should hold the CA.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// `init` would overwrite an existing CA file.
    #[error(
        "{0} already exists; refusing to replace the CA (use --force to replace it, which invalidates every certificate it signed)"
    )]
    CaExists(PathBuf),
    /// A certificate to revoke is not a PEM X.509 certificate.
    #[error("certificate {index} to revoke is not a PEM X.509 certificate: {reason}")]
    NotACertificate {
        /// Its position in the list, from 1.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA certificate file is not usable.
    #[error("{path} is not a usable CA certificate: {reason}")]
    BadCaCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA key file is not a usable private key.
    #[error("{path} is not a usable private key: {source}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: rcgen::Error,
    },
    /// A CA key does not belong to its certificate.
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
    /// A partner's or operator's name breaks the naming rules.
    #[error("{name:?} is not a valid {role} name: {reason}")]
    InvalidName {
        /// Whose name it was meant to be.
        role: proto::identity::Role,
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
    /// How an IO error on `path` while doing `action` is reported.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertsError {
        let path = path.into();
        move |source| CertsError::Io { action, path, source }
    }
}
