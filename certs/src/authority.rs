//! The development certificate authority: a root, one issuing CA per client role, and the
//! certificate profile of each role.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use proto::identity::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

use crate::files::{self, IssuedCert};
use crate::{CA_VALIDITY_DAYS, CertsError, LEAF_VALIDITY_DAYS, Validity};

/// Common name of the root CA certificate.
pub const CA_COMMON_NAME: &str = "Carlink Development Root CA";
/// Common name of the gateway's server certificate, and of its client certificate.
pub const GATEWAY_COMMON_NAME: &str = "gateway";
/// File name of the root CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the root CA private key inside a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File stem of the root CA.
const CA_STEM: &str = "ca";

const MAX_NAME_LEN: usize = 64;

/// An intermediate CA that signs the certificates of exactly one client role.
///
/// A listener that takes one of them as its only trust anchor admits that role and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssuingCa {
    /// Signs vehicle certificates (`vehicles-ca.pem`): the gateway's MQTT port trusts it.
    Vehicles,
    /// Signs partner certificates (`partners-ca.pem`): the gateway's partner API trusts it.
    Partners,
    /// Signs the gateway's client certificate (`gateway-clients-ca.pem`): partner adapters trust it.
    GatewayClients,
    /// Signs operator certificates (`operators-ca.pem`): fleet-ops endpoints will trust it.
    Operators,
}

impl IssuingCa {
    /// Every issuing CA, in the order `certs init` lists them.
    pub const ALL: [IssuingCa; 4] = [
        IssuingCa::Vehicles,
        IssuingCa::Partners,
        IssuingCa::GatewayClients,
        IssuingCa::Operators,
    ];

    /// The role of the certificates this CA signs.
    pub const fn role(self) -> Role {
        match self {
            IssuingCa::Vehicles => Role::Vehicle,
            IssuingCa::Partners => Role::Partner,
            IssuingCa::GatewayClients => Role::GatewayClient,
            IssuingCa::Operators => Role::Operator,
        }
    }

    /// File stem of its certificate and key, e.g. `vehicles-ca`.
    pub const fn stem(self) -> &'static str {
        match self {
            IssuingCa::Vehicles => "vehicles-ca",
            IssuingCa::Partners => "partners-ca",
            IssuingCa::GatewayClients => "gateway-clients-ca",
            IssuingCa::Operators => "operators-ca",
        }
    }

    /// Common name of its certificate.
    pub const fn common_name(self) -> &'static str {
        match self {
            IssuingCa::Vehicles => "Carlink Development Vehicles CA",
            IssuingCa::Partners => "Carlink Development Partners CA",
            IssuingCa::GatewayClients => "Carlink Development Gateway Clients CA",
            IssuingCa::Operators => "Carlink Development Operators CA",
        }
    }
}

/// One CA certificate and its key, ready to sign.
#[derive(Debug)]
struct SigningCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// What follows each leaf it signs in the leaf's PEM file: itself if it is an intermediate,
    /// so that a peer trusting only the root can build the path.
    chain_pem: String,
}

impl SigningCa {
    fn new(cert_pem: String, issuer: Issuer<'static, KeyPair>, intermediate: bool) -> SigningCa {
        SigningCa {
            chain_pem: if intermediate { cert_pem.clone() } else { String::new() },
            cert_pem,
            issuer,
        }
    }

    /// A CA certificate named `common_name`, self-signed when `parent` is None.
    fn generate(
        common_name: &str,
        path_length: u8,
        parent: Option<&SigningCa>,
        validity: Validity,
    ) -> Result<SigningCa, CertsError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        // The root's length 1 allows exactly one level of intermediates; theirs of 0 lets
        // them sign leaves only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_length));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = match parent {
            None => params.self_signed(&key)?,
            Some(parent) => {
                params.use_authority_key_identifier_extension = true;
                params.signed_by(&key, &parent.issuer)?
            }
        };
        Ok(SigningCa::new(cert.pem(), Issuer::new(params, key), parent.is_some()))
    }

    /// Loads `<dir>/<stem>.pem` and `<dir>/<stem>.key`; an intermediate must be signed by `parent`.
    fn load(dir: &Path, stem: &str, parent: Option<&SigningCa>) -> Result<SigningCa, CertsError> {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
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
        if let Some(parent) = parent {
            // An intermediate left over from an earlier root would issue certificates that
            // chain to a root nobody trusts any more.
            let (_, parent_pem) = x509_parser::pem::parse_x509_pem(parent.cert_pem.as_bytes())
                .map_err(|e| bad_cert(format!("its root is not a PEM certificate ({e})")))?;
            let parent_cert = parent_pem
                .parse_x509()
                .map_err(|e| bad_cert(format!("its root is not an X.509 certificate ({e})")))?;
            cert.verify_signature(Some(parent_cert.public_key())).map_err(|_| {
                bad_cert(format!(
                    "it was not signed by the root {CA_CERT_FILE} in the same directory (run `certs init --force` to replace the whole PKI)"
                ))
            })?;
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(SigningCa::new(cert_pem, issuer, parent.is_some()))
    }

    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (mode 0600).
    fn save(&self, dir: &Path, stem: &str) -> Result<(), CertsError> {
        // Key first: a complete certificate file then implies that its key is there too.
        files::write_key(&dir.join(format!("{stem}.key")), &self.issuer.key().serialize_pem())?;
        files::write_cert(&dir.join(format!("{stem}.pem")), &self.cert_pem)
    }

    /// Signs a leaf with a fresh key; its PEM is the leaf followed by this CA if an intermediate.
    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<IssuedCert, CertsError> {
        let key = new_key()?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem() + &self.chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

/// The development CA: a root (`ca.pem`) that signs the gateway's server certificate and one
/// [`IssuingCa`] per client role, each of which signs the certificates of its role only.
#[derive(Debug)]
pub struct CertificateAuthority {
    root: SigningCa,
    vehicles: SigningCa,
    partners: SigningCa,
    gateway_clients: SigningCa,
    operators: SigningCa,
}

impl CertificateAuthority {
    /// Creates a new root and its issuing CAs, all valid for ten years.
    pub fn generate() -> Result<Self, CertsError> {
        let validity = Validity::days_from_now(CA_VALIDITY_DAYS);
        let root = SigningCa::generate(CA_COMMON_NAME, 1, None, validity)?;
        CertificateAuthority::under(root, |which, root| {
            SigningCa::generate(which.common_name(), 0, Some(root), validity)
        })
    }

    /// Loads the root (`<dir>/ca.pem`, `ca.key`) and every issuing CA (`<dir>/vehicles-ca.pem`, ...).
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let root = SigningCa::load(dir, CA_STEM, None)?;
        CertificateAuthority::under(root, |which, root| SigningCa::load(dir, which.stem(), Some(root)))
    }

    /// `root` with the issuing CA of every role, each made by `issuing`.
    fn under(
        root: SigningCa,
        issuing: impl Fn(IssuingCa, &SigningCa) -> Result<SigningCa, CertsError>,
    ) -> Result<Self, CertsError> {
        Ok(CertificateAuthority {
            vehicles: issuing(IssuingCa::Vehicles, &root)?,
            partners: issuing(IssuingCa::Partners, &root)?,
            gateway_clients: issuing(IssuingCa::GatewayClients, &root)?,
            operators: issuing(IssuingCa::Operators, &root)?,
            root,
        })
    }

    /// Writes the root and every issuing CA to `dir` (keys mode 0600), creating `dir` if needed.
    pub fn save(&self, dir: &Path) -> Result<(), CertsError> {
        files::create_dir(dir)?;
        // The root last: a complete ca.pem then implies that the whole authority is there.
        for which in IssuingCa::ALL {
            self.issuing(which).save(dir, which.stem())?;
        }
        self.root.save(dir, CA_STEM)
    }

    /// The root certificate, PEM: the trust anchor that verifies every certificate of this CA.
    pub fn root_cert_pem(&self) -> &str {
        &self.root.cert_pem
    }

    /// The certificate of one issuing CA, PEM: the trust anchor that admits its role only.
    pub fn issuing_cert_pem(&self, which: IssuingCa) -> &str {
        &self.issuing(which).cert_pem
    }

    fn issuing(&self, which: IssuingCa) -> &SigningCa {
        match which {
            IssuingCa::Vehicles => &self.vehicles,
            IssuingCa::Partners => &self.partners,
            IssuingCa::GatewayClients => &self.gateway_clients,
            IssuingCa::Operators => &self.operators,
        }
    }

    /// A certificate revocation list (PEM) signed by the vehicles CA, revoking the vehicle
    /// certificates `revoked` (PEM), valid for `valid_days`. The gateway checks it (`tls.crls`)
    /// at every full handshake and every CONNECT, and reads it again when the file changes.
    pub fn vehicle_revocation_list(&self, revoked: &[&str], valid_days: i64) -> Result<String, CertsError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for (i, pem) in revoked.iter().enumerate() {
            let bad = |e: String| CertsError::NotACertificate {
                index: i + 1,
                reason: e,
            };
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&cert.tbs_certificate.serial.to_bytes_be()),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(valid_days.max(1)),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.vehicles.issuer)?.pem()?)
    }

    /// Issues the gateway's server certificate (signed by the root) for localhost plus
    /// `extra_names` (IP addresses or DNS names).
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
        let mut params = leaf_params(Role::Gateway, GATEWAY_COMMON_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = sans;
        self.root.sign(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues the client certificate the gateway presents to partner adapters
    /// (`OU=gateway-client`, `CN=gateway`, signed by the gateway-clients CA).
    pub fn issue_gateway_client(&self) -> Result<IssuedCert, CertsError> {
        let mut params = leaf_params(Role::GatewayClient, GATEWAY_COMMON_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.gateway_clients
            .sign(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues the certificate of one vehicle (`OU=vehicle`, `CN=<VIN>`, signed by the vehicles CA).
    pub fn issue_vehicle(&self, vin: &proto::Vin) -> Result<IssuedCert, CertsError> {
        self.issue_vehicle_with_validity(vin, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues the certificate of one vehicle with a chosen validity (e.g. [`Validity::expired`]).
    pub fn issue_vehicle_with_validity(&self, vin: &proto::Vin, validity: Validity) -> Result<IssuedCert, CertsError> {
        let mut params = leaf_params(Role::Vehicle, vin.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.vehicles.sign(params, validity)
    }

    /// Issues a partner's certificate (signed by the partners CA): its adapter's server
    /// certificate, and its client certificate for the gateway's partner API.
    pub fn issue_partner(&self, name: &str) -> Result<IssuedCert, CertsError> {
        check_name(Role::Partner, name)?;
        let mut params = leaf_params(Role::Partner, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let mut sans = Vec::new();
        if is_dns_name(name) && name != "localhost" {
            sans.push(SanType::DnsName(name.try_into()?));
        }
        sans.push(SanType::DnsName("localhost".try_into()?));
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names = sans;
        self.partners.sign(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }

    /// Issues an operator's client certificate (`OU=operator`, `CN=<name>`, signed by the operators CA).
    pub fn issue_operator(&self, name: &str) -> Result<IssuedCert, CertsError> {
        check_name(Role::Operator, name)?;
        let mut params = leaf_params(Role::Operator, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.operators.sign(params, Validity::days_from_now(LEAF_VALIDITY_DAYS))
    }
}

fn new_key() -> Result<KeyPair, CertsError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Parameters shared by every leaf: subject `OU=<role>, CN=<cn>`, not a CA, a random serial.
fn leaf_params(role: Role, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
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

/// Checks the name of a partner or an operator: 1 to 64 characters of `a-z`, `0-9` and `-`.
// Names end up in subjects, file names and DNS SANs, hence the strict alphabet.
pub fn check_name(role: Role, name: &str) -> Result<(), CertsError> {
    let invalid = |reason: String| CertsError::InvalidName {
        role,
        name: name.to_owned(),
        reason,
    };
    let len = name.chars().count();
    if !(1..=MAX_NAME_LEN).contains(&len) {
        return Err(invalid(format!(
            "it has {len} characters, a {role} name has 1 to {MAX_NAME_LEN}"
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
