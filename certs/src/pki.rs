//! A development PKI directory as `certs init` lays it out.

use std::path::{Path, PathBuf};

use crate::authority::{CA_CERT_FILE, CA_KEY_FILE};
use crate::{CertificateAuthority, CertsError};

/// File stem of the gateway's server certificate and key.
pub const GATEWAY_STEM: &str = "gateway";

/// A whole development PKI on disk, as `certs init` lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The directory holding `ca.pem`, `ca.key`, `gateway.pem` and `gateway.key`.
    pub dir: PathBuf,
}

impl DevPki {
    /// Creates `dir/ca.pem`, `ca.key`, `gateway.pem` and `gateway.key`; refuses to replace a CA unless `force`.
    pub fn init(dir: &Path, extra_names: &[String], force: bool) -> Result<DevPki, CertsError> {
        let pki = DevPki { dir: dir.to_path_buf() };
        if !force {
            // Replacing a CA silently would orphan every certificate issued so far.
            for existing in [pki.ca_cert(), pki.ca_key()] {
                if existing.exists() {
                    return Err(CertsError::CaExists(existing));
                }
            }
        }
        let ca = CertificateAuthority::generate()?;
        // Issue before writing anything so that a bad extra name leaves the directory untouched.
        let gateway = ca.issue_gateway(extra_names)?;
        ca.save(dir)?;
        gateway.write(dir, GATEWAY_STEM)?;
        Ok(pki)
    }

    /// Refers to an existing PKI directory (nothing is checked until a file is used).
    pub fn open(dir: &Path) -> DevPki {
        DevPki { dir: dir.to_path_buf() }
    }

    /// Loads the CA of this PKI, to issue vehicle or partner certificates.
    pub fn authority(&self) -> Result<CertificateAuthority, CertsError> {
        CertificateAuthority::load(&self.dir)
    }

    /// Path of the CA certificate (the trust anchor).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Path of the CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// Path of the gateway's server certificate.
    pub fn gateway_cert(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_STEM}.pem"))
    }

    /// Path of the gateway's server private key.
    pub fn gateway_key(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_STEM}.key"))
    }

    /// Every file [`DevPki::init`] writes, in the order a reader would want them listed.
    pub fn files(&self) -> [PathBuf; 4] {
        [self.ca_cert(), self.ca_key(), self.gateway_cert(), self.gateway_key()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_ca_and_a_gateway_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::init(dir.path(), &["gw.example.com".to_owned()], false).unwrap();

        for file in pki.files() {
            assert!(file.is_file(), "{} missing", file.display());
        }
        let ca = pki.authority().unwrap();
        assert_eq!(ca.cert_pem(), std::fs::read_to_string(pki.ca_cert()).unwrap());
    }

    #[test]
    fn init_twice_without_force_fails_and_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::init(dir.path(), &[], false).unwrap();
        let before = std::fs::read_to_string(pki.ca_cert()).unwrap();

        let err = DevPki::init(dir.path(), &[], false).unwrap_err();

        assert!(
            matches!(&err, CertsError::CaExists(path) if *path == pki.ca_cert()),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(pki.ca_cert()).unwrap(), before);
    }

    #[test]
    fn init_with_force_replaces_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::init(dir.path(), &[], false).unwrap();
        let before = std::fs::read_to_string(pki.ca_cert()).unwrap();

        DevPki::init(dir.path(), &[], true).unwrap();

        assert_ne!(std::fs::read_to_string(pki.ca_cert()).unwrap(), before);
    }

    #[test]
    fn a_bad_extra_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");

        let err = DevPki::init(&out, &["not a host".to_owned()], false).unwrap_err();

        assert!(matches!(err, CertsError::InvalidHostName(_)), "{err}");
        assert!(!out.exists());
    }
}
