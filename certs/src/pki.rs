//! A development PKI directory as `certs init` lays it out.

use std::path::{Path, PathBuf};

use crate::authority::{CA_CERT_FILE, CA_KEY_FILE};
use crate::{CertificateAuthority, CertsError, IssuingCa};

/// File stem of the gateway's server certificate and key.
pub const GATEWAY_STEM: &str = "gateway";
/// File stem of the gateway's client certificate and key (presented to partner adapters).
pub const GATEWAY_CLIENT_STEM: &str = "gateway-client";

/// A whole development PKI on disk, as `certs init` lays it out:
///
/// | file | what |
/// |---|---|
/// | `ca.pem`, `ca.key` | the root CA: peers that verify a server trust it |
/// | `vehicles-ca.pem`, `.key` | signs vehicles; the gateway's MQTT port trusts it |
/// | `partners-ca.pem`, `.key` | signs partners; the gateway's partner API trusts it |
/// | `gateway-clients-ca.pem`, `.key` | signs the gateway's client certificate; adapters trust it |
/// | `operators-ca.pem`, `.key` | signs operators |
/// | `gateway.pem`, `.key` | the gateway's server certificate, signed by the root |
/// | `gateway-client.pem`, `.key` | the gateway's client certificate towards partner adapters |
///
/// Vehicle, partner and operator certificates (`<VIN>.pem`, `<name>.pem`) are added next to
/// them by `certs vehicle|partner|operator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The directory holding the files.
    pub dir: PathBuf,
}

impl DevPki {
    /// Creates the root, the issuing CAs and the gateway's server and client certificates in
    /// `dir`; refuses to replace any CA file unless `force`.
    pub fn init(dir: &Path, extra_names: &[String], force: bool) -> Result<DevPki, CertsError> {
        let pki = DevPki { dir: dir.to_path_buf() };
        if !force {
            // Replacing a CA silently would orphan every certificate issued so far.
            if let Some(existing) = pki.ca_files().into_iter().find(|file| file.exists()) {
                return Err(CertsError::CaExists(existing));
            }
        }
        let ca = CertificateAuthority::generate()?;
        // Issue before writing anything so that a bad extra name leaves the directory untouched.
        let gateway = ca.issue_gateway(extra_names)?;
        let gateway_client = ca.issue_gateway_client()?;
        ca.save(dir)?;
        gateway.write(dir, GATEWAY_STEM)?;
        gateway_client.write(dir, GATEWAY_CLIENT_STEM)?;
        Ok(pki)
    }

    /// Refers to an existing PKI directory (nothing is checked until a file is used).
    pub fn open(dir: &Path) -> DevPki {
        DevPki { dir: dir.to_path_buf() }
    }

    /// Loads the CAs of this PKI, to issue vehicle, partner or operator certificates.
    pub fn authority(&self) -> Result<CertificateAuthority, CertsError> {
        CertificateAuthority::load(&self.dir)
    }

    /// Whether every file [`DevPki::init`] writes is there (a directory from an older version
    /// of `certs` has a root but no issuing CAs).
    pub fn is_complete(&self) -> bool {
        self.files().iter().all(|file| file.is_file())
    }

    /// Path of the root CA certificate: the trust anchor for verifying the gateway and adapters.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Path of the root CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// Path of an issuing CA's certificate: the trust anchor that admits its role only.
    pub fn issuing_ca_cert(&self, which: IssuingCa) -> PathBuf {
        self.dir.join(format!("{}.pem", which.stem()))
    }

    /// Path of an issuing CA's private key.
    pub fn issuing_ca_key(&self, which: IssuingCa) -> PathBuf {
        self.dir.join(format!("{}.key", which.stem()))
    }

    /// Path of the gateway's server certificate (with no intermediate: the root signs it).
    pub fn gateway_cert(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_STEM}.pem"))
    }

    /// Path of the gateway's server private key.
    pub fn gateway_key(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_STEM}.key"))
    }

    /// Path of the gateway's client certificate chain, presented to partner adapters.
    pub fn gateway_client_cert(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_CLIENT_STEM}.pem"))
    }

    /// Path of the gateway's client private key.
    pub fn gateway_client_key(&self) -> PathBuf {
        self.dir.join(format!("{GATEWAY_CLIENT_STEM}.key"))
    }

    /// The certificate and key files of the root and every issuing CA.
    fn ca_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.ca_cert(), self.ca_key()];
        for which in IssuingCa::ALL {
            files.push(self.issuing_ca_cert(which));
            files.push(self.issuing_ca_key(which));
        }
        files
    }

    /// Every file [`DevPki::init`] writes, in the order a reader would want them listed.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.ca_files();
        files.extend([
            self.gateway_cert(),
            self.gateway_key(),
            self.gateway_client_cert(),
            self.gateway_client_key(),
        ]);
        files
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
        assert_eq!(pki.files().len(), 14);
        assert!(pki.is_complete());
        let ca = pki.authority().unwrap();
        assert_eq!(ca.root_cert_pem(), std::fs::read_to_string(pki.ca_cert()).unwrap());
        for which in IssuingCa::ALL {
            assert_eq!(
                ca.issuing_cert_pem(which),
                std::fs::read_to_string(pki.issuing_ca_cert(which)).unwrap()
            );
        }
    }

    #[test]
    fn init_refuses_to_replace_any_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::open(dir.path());
        let operators = pki.issuing_ca_key(IssuingCa::Operators);
        std::fs::write(&operators, "left over").unwrap();

        let err = DevPki::init(dir.path(), &[], false).unwrap_err();

        assert!(
            matches!(&err, CertsError::CaExists(path) if *path == operators),
            "{err}"
        );
        assert!(!pki.ca_cert().exists());
    }

    #[test]
    fn a_directory_from_before_issuing_cas_is_incomplete_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::init(dir.path(), &[], false).unwrap();
        std::fs::remove_file(pki.issuing_ca_cert(IssuingCa::Vehicles)).unwrap();

        assert!(!pki.is_complete());
        let err = pki.authority().unwrap_err().to_string();
        assert!(err.contains("vehicles-ca.pem") && err.contains("--force"), "{err}");
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
