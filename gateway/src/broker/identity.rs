//! Who is on the other end of a connection: read from the verified client certificate only.

use std::fmt::Write;

use proto::Vin;
use proto::identity::{self, Role};
use rustls_pki_types::CertificateDer;

use super::revocation::CertificateFacts;

/// A vehicle, as its certificate proves it.
#[derive(Debug, Clone)]
pub struct VehicleIdentity {
    /// The VIN from the certificate's common name.
    pub vin: Vin,
    /// SHA-256 of the certificate (hex), to tell certificates of one VIN apart in logs.
    pub fingerprint: String,
    /// Serial and notBefore, for the revocation check.
    pub certificate: CertificateFacts,
}

/// Why a verified certificate still does not identify a vehicle.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The TLS layer handed over no certificate (cannot happen with client auth required).
    #[error("no client certificate")]
    NoCertificate,
    /// Not parseable, or its subject names no single role and holder (two CNs, two OUs, ...).
    #[error("client certificate refused: {0}")]
    Unreadable(#[from] identity::IdentityError),
    /// Chains to a trusted CA but is for another role (a partner's, say).
    #[error("client certificate is a {0} certificate, not a vehicle certificate")]
    NotAVehicle(Role),
    /// The common name is not a VIN.
    #[error("client certificate's common name is not a VIN: {0}")]
    BadVin(String),
}

/// Extracts the vehicle identity from the leaf of a verified client chain.
pub fn vehicle_identity(chain: Option<&[CertificateDer<'_>]>) -> Result<VehicleIdentity, IdentityError> {
    let leaf = chain.and_then(|c| c.first()).ok_or(IdentityError::NoCertificate)?;
    let holder = identity::identify(leaf.as_ref())?;
    if holder.role != Role::Vehicle {
        return Err(IdentityError::NotAVehicle(holder.role));
    }
    let vin = Vin::parse(&holder.name).map_err(|e| IdentityError::BadVin(e.to_string()))?;
    Ok(VehicleIdentity {
        vin,
        fingerprint: fingerprint(leaf.as_ref()),
        // `identify` parsed it already, so this cannot fail; were it to, notBefore 0 is older
        // than any revocation: the safe side.
        certificate: CertificateFacts::of(leaf.as_ref()).unwrap_or_default(),
    })
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
