//! Who is on the other end of a connection: read from the verified client certificate only.

use std::fmt::Write;

use proto::Vin;
use proto::identity::VEHICLE_ROLE;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A vehicle, as its certificate proves it.
#[derive(Debug, Clone)]
pub struct VehicleIdentity {
    /// The VIN from the certificate's common name.
    pub vin: Vin,
    /// SHA-256 of the certificate (hex), to tell certificates of one VIN apart in logs.
    pub fingerprint: String,
}

/// Why a verified certificate still does not identify a vehicle.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The TLS layer handed over no certificate (cannot happen with client auth required).
    #[error("no client certificate")]
    NoCertificate,
    /// Not parseable as X.509.
    #[error("client certificate is not valid X.509: {0}")]
    Unparseable(String),
    /// Signed by our CA but for another role (a partner's, say).
    #[error("client certificate is not a vehicle certificate (OU is not {VEHICLE_ROLE:?})")]
    NotAVehicle,
    /// The common name is not a VIN.
    #[error("client certificate's common name is not a VIN: {0}")]
    BadVin(String),
}

/// Extracts the vehicle identity from the leaf of a verified client chain.
pub fn vehicle_identity(chain: Option<&[CertificateDer<'_>]>) -> Result<VehicleIdentity, IdentityError> {
    let leaf = chain.and_then(|c| c.first()).ok_or(IdentityError::NoCertificate)?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let subject = cert.subject();
    let is_vehicle = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str().is_ok_and(|s| s == VEHICLE_ROLE));
    if !is_vehicle {
        return Err(IdentityError::NotAVehicle);
    }
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| IdentityError::BadVin("(none)".into()))?;
    let vin = Vin::parse(cn).map_err(|e| IdentityError::BadVin(e.to_string()))?;
    Ok(VehicleIdentity {
        vin,
        fingerprint: fingerprint(leaf.as_ref()),
    })
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
