//! The CA and the certificate profile of each role.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use proto::identity::{GATEWAY_ROLE, PARTNER_ROLE, VEHICLE_ROLE};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

use crate::files::{self, IssuedCert};
use crate::{CA_VALIDITY_DAYS, CertsError, LEAF_VALIDITY_DAYS, Validity};

/// Common name of the CA certificate.
pub const CA_COMMON_NAME: &str = "Carlink Development CA";
/// Common name of the gateway's server certificate.
pub const GATEWAY_COMMON_NAME: &str = "gateway";
/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

const MAX_PARTNER_NAME_LEN: usize = 64;

/// A CA able to issue gateway, vehicle and partner certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Creates a new self-signed CA valid for ten years.
    pub fn generate() -> Result<Self, CertsError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        // Path length 0: this CA signs leaves only, never intermediate CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let validity = Validity::days_from_now(CA_VALIDITY_DAYS);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `<dir>/ca.pem` and `<dir>/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let missing = |file: &Path| CertsError::CaMissing {
            dir: dir.to_path_buf(),
            missing: file.to_path_buf(),
        };
        let cert_pem = files::read_to_string(&cert_path, || missing(&cert_path))?;
        let key_pem = files::read_to_string(&key_path, || missing(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsError::BadKey {
            path: key_path.clone(),
            source,
        })?;

        let bad_cert = |reason: String| CertsError::BadCaCert {
            path: cert_path.clone(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad_cert(format!("not a PEM certificate ({e})")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| bad_cert(format!("not an X.509 certificate ({e})")))?;
        if !cert.is_ca() {
            return Err(bad_cert(
                "it is not a CA certificate (basic constraints CA:FALSE)".into(),
            ));
        }
        // Signing with a foreign key would produce certificates nobody can verify.
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertsError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(CertificateAuthority { cert_pem, issuer })
    }

    /// Writes `<dir>/ca.pem` and `<dir>/ca.key` (mode 0600), creating `dir` if needed.
    pub fn save(&self, dir: &Path) -> Result<(), CertsError> {
        files::create_dir(dir)?;
        // Key first: a complete ca.pem then implies that its key is there too.
        files::write_key(&dir.join(CA_KEY_FILE), &self.issuer.key().serialize_pem())?;
        files::write_cert(&dir.join(CA_CERT_FILE), &self.cert_pem)
    }

    /// The CA certificate, PEM-encoded: the trust anchor for gateway, vehicles and partners.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues the gateway's server certificate for localhost plus `extra_names` (IP addresses or DNS names).
    pub fn issue_gateway(&self, extra_names: &[String]) -> Result<IssuedCert, CertsError> {
        let mut sans = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for name in extra_names {
            let san = host_san(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let mut params = leaf_params(GATEWAY_ROLE, GATEWAY_COMMON_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = sans;
        self.issue(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues the certificate of one vehicle (`OU=vehicle`, `CN=<VIN>`).
    pub fn issue_vehicle(&self, vin: &proto::Vin) -> Result<IssuedCert, CertsError> {
        self.issue_vehicle_with_validity(vin, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues the certificate of one vehicle with a chosen validity (e.g. [`Validity::expired`]).
    pub fn issue_vehicle_with_validity(&self, vin: &proto::Vin, validity: Validity) -> Result<IssuedCert, CertsError> {
        let mut params = leaf_params(VEHICLE_ROLE, vin.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    /// Issues a partner adapter's certificate, usable both as gRPC client and server certificate.
    pub fn issue_partner(&self, name: &str) -> Result<IssuedCert, CertsError> {
        check_partner_name(name)?;
        let mut params = leaf_params(PARTNER_ROLE, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let mut sans = Vec::new();
        if is_dns_name(name) && name != "localhost" {
            sans.push(SanType::DnsName(name.try_into()?));
        }
        sans.push(SanType::DnsName("localhost".try_into()?));
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names = sans;
        self.issue(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    fn issue(&self, mut params: CertificateParams, validity: Validity) -> Result<IssuedCert, CertsError> {
        let key = new_key()?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn new_key() -> Result<KeyPair, CertsError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Parameters shared by every leaf: subject `OU=<role>, CN=<cn>`, not a CA, a random serial.
fn leaf_params(role: &str, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationalUnitName, role);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params
}

/// 127 random bits: unique per certificate without any state, and positive in DER.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Clear the sign bit, and set the next one so the encoding always keeps its 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A SAN for an extra gateway name: an IP address if it parses as one, else a DNS name.
fn host_san(name: &str) -> Result<SanType, CertsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_dns_name(name) {
        return Err(CertsError::InvalidHostName(name.to_owned()));
    }
    let ia5 = name
        .try_into()
        .map_err(|_| CertsError::InvalidHostName(name.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

/// A host name as TLS clients match it; `*.` is allowed as the first label for wildcards.
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = rest.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|label| is_dns_label(label))
        // An all-numeric last label would be confused with an IPv4 address.
        && labels.last().is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Checks a partner name: 1 to 64 characters of `a-z`, `0-9` and `-`.
// Partner names end up in subjects, file names and DNS SANs, hence the strict alphabet.
pub fn check_partner_name(name: &str) -> Result<(), CertsError> {
    let invalid = |reason: String| CertsError::InvalidPartnerName {
        name: name.to_owned(),
        reason,
    };
    let len = name.chars().count();
    if !(1..=MAX_PARTNER_NAME_LEN).contains(&len) {
        return Err(invalid(format!(
            "it has {len} characters, a partner name has 1 to {MAX_PARTNER_NAME_LEN}"
        )));
    }
    if let Some((i, c)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(invalid(format!(
            "{c:?} at position {} is not allowed (use lowercase letters a-z, digits and '-')",
            i + 1
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
