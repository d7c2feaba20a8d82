//! Revoked vehicle certificates, checked at every CONNECT.
//!
//! rustls checks the configured CRLs on a full handshake only: a resumed handshake carries the
//! verdict of the full one in its ticket, so a car revoked since would get back in. The
//! connection layer therefore asks this list at every CONNECT, whatever the handshake was.
//! Two sources fill it: operators revoke a VIN (every certificate of that VIN issued before the
//! revocation, so a re-provisioned car with a newer certificate is let in), and CRL files
//! (certificate serials), reloaded when they change.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use proto::Vin;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;

/// What the revocation check needs of a vehicle certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateFacts {
    /// The certificate's serial number (big-endian, no leading zero bytes).
    pub serial: Vec<u8>,
    /// Its notBefore, unix ms.
    pub not_before_ms: i64,
}

impl CertificateFacts {
    /// Reads serial and notBefore from a DER certificate.
    pub fn of(der: &[u8]) -> Option<CertificateFacts> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertificateFacts {
            serial: cert.tbs_certificate.serial.to_bytes_be(),
            not_before_ms: cert.validity().not_before.timestamp().saturating_mul(1000),
        })
    }
}

/// Why a certificate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// An operator revoked the VIN after this certificate was issued.
    Vin,
    /// Its serial is on a loaded CRL.
    Crl,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revoked::Vin => "certificate revoked by an operator",
            Revoked::Crl => "certificate serial on a certificate revocation list",
        })
    }
}

/// The revoked VINs and CRL serials; shared by every session (`Arc`).
#[derive(Debug, Default)]
pub struct RevocationList {
    vins: RwLock<HashMap<Vin, i64>>,
    serials: RwLock<HashSet<Vec<u8>>>,
}

impl RevocationList {
    /// Revokes every certificate of `vin` issued before `at_ms`; whether that put a revocation
    /// in force that was not (a new VIN, or a later time). A revocation is never taken back.
    pub fn revoke_vin(&self, vin: Vin, at_ms: i64) -> bool {
        let mut vins = self.vins.write().unwrap_or_else(PoisonError::into_inner);
        match vins.get_mut(&vin) {
            Some(at) if *at >= at_ms => false,
            Some(at) => {
                *at = at_ms;
                true
            }
            None => {
                vins.insert(vin, at_ms);
                true
            }
        }
    }

    /// Replaces the serials revoked by CRLs.
    pub fn set_crl_serials(&self, serials: HashSet<Vec<u8>>) {
        *self.serials.write().unwrap_or_else(PoisonError::into_inner) = serials;
    }

    /// Whether `vin`'s certificate `cert` is refused, and why.
    pub fn check(&self, vin: &Vin, cert: &CertificateFacts) -> Option<Revoked> {
        let by_vin = self
            .vins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vin)
            .is_some_and(|&at| cert.not_before_ms < at);
        if by_vin {
            return Some(Revoked::Vin);
        }
        self.serials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&cert.serial)
            .then_some(Revoked::Crl)
    }
}

/// Why a CRL file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct CrlError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The revoked serials of every CRL in `paths` (PEM files, each with one or more CRLs).
/// Blocking file IO: call it on a blocking thread.
pub fn read_crl_serials(paths: &[PathBuf]) -> Result<HashSet<Vec<u8>>, CrlError> {
    let mut serials = HashSet::new();
    for path in paths {
        let error = |problem: String| CrlError {
            path: path.display().to_string(),
            problem,
        };
        let crls = CertificateRevocationListDer::pem_file_iter(path).map_err(|e| error(e.to_string()))?;
        for crl in crls {
            let crl = crl.map_err(|e| error(e.to_string()))?;
            let (_, parsed) =
                x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| error(format!("not a CRL: {e}")))?;
            serials.extend(parsed.iter_revoked_certificates().map(|r| r.serial().to_bytes_be()));
        }
    }
    Ok(serials)
}

/// When each CRL file was last changed, to reload only when one did.
pub fn crl_versions(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths.iter().map(|p| modified(p)).collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_vin_refuses_older_certificates_only() {
        let list = RevocationList::default();
        let old = CertificateFacts {
            serial: vec![1],
            not_before_ms: 1_000,
        };
        let newer = CertificateFacts {
            serial: vec![2],
            not_before_ms: 3_000,
        };
        assert_eq!(list.check(&Vin::example(), &old), None);
        assert!(list.revoke_vin(Vin::example(), 2_000), "newly in force");
        assert_eq!(list.check(&Vin::example(), &old), Some(Revoked::Vin));
        assert_eq!(list.check(&Vin::example(), &newer), None);
        // The same revocation again, or an earlier one, changes nothing: the cut-off never moves back.
        assert!(!list.revoke_vin(Vin::example(), 2_000));
        assert!(!list.revoke_vin(Vin::example(), 500));
        assert_eq!(list.check(&Vin::example(), &old), Some(Revoked::Vin));
        // A later one moves it forward.
        assert!(list.revoke_vin(Vin::example(), 4_000));
        assert_eq!(list.check(&Vin::example(), &newer), Some(Revoked::Vin));
    }

    #[test]
    fn a_crl_serial_is_refused_for_any_vin() {
        let list = RevocationList::default();
        list.set_crl_serials(HashSet::from([vec![7, 7]]));
        let cert = CertificateFacts {
            serial: vec![7, 7],
            not_before_ms: 0,
        };
        assert_eq!(list.check(&Vin::example(), &cert), Some(Revoked::Crl));
    }
}
