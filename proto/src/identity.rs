//! The certificate profile: how an X.509 certificate says who it belongs to, and the one
//! parser that reads it.
//!
//! A certificate's subject carries exactly one organizational unit (OU), which is its
//! [`Role`], and exactly one common name (CN), which names the holder:
//! - a vehicle: `OU=vehicle`, `CN=<VIN>`, clientAuth; signed by the vehicles CA;
//! - a partner adapter: `OU=partner`, `CN=<name>`, clientAuth and serverAuth (its adapter's
//!   server certificate and its client certificate for the gateway's partner API); signed by
//!   the partners CA;
//! - the gateway's client certificate towards partner adapters: `OU=gateway-client`,
//!   `CN=gateway`, clientAuth; signed by the gateway-clients CA;
//! - an operator (fleet-ops tooling): `OU=operator`, `CN=<name>`, clientAuth; signed by the
//!   operators CA;
//! - the gateway's server certificate: `OU=gateway`, serverAuth, SANs for its host names;
//!   signed by the root.
//!
//! Each client role has its own issuing CA under one root, so a listener trusts exactly the
//! roles it serves by taking that role's CA as its only trust anchor: the gateway's MQTT port
//! trusts the vehicles CA, its partner API the partners CA, a partner adapter the
//! gateway-clients CA. Peers that verify servers trust the root.
//!
//! The trust anchor decides who may complete a handshake; [`identify`] then decides who the
//! peer is. It refuses every certificate whose subject could be read two ways (two CNs, two
//! OUs, an OU that is not one known role), so a certificate is never a vehicle on one port and
//! a partner on another.

use std::fmt;

use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// OU of a vehicle certificate.
pub const VEHICLE_ROLE: &str = "vehicle";
/// OU of a partner adapter certificate.
pub const PARTNER_ROLE: &str = "partner";
/// OU of the gateway's server certificate.
pub const GATEWAY_ROLE: &str = "gateway";
/// OU of the client certificate the gateway presents to partner adapters.
pub const GATEWAY_CLIENT_ROLE: &str = "gateway-client";
/// OU of an operator's certificate (fleet-ops tooling).
pub const OPERATOR_ROLE: &str = "operator";

/// What a certificate's holder is, from the subject's one OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A car; the name is its VIN.
    Vehicle,
    /// A partner adapter; the name is the partner's name.
    Partner,
    /// The gateway's server certificate.
    Gateway,
    /// The gateway when it calls partner adapters.
    GatewayClient,
    /// A person or tool of fleet operations.
    Operator,
}

impl Role {
    /// Every role, in the order of the profile above.
    pub const ALL: [Role; 5] = [
        Role::Vehicle,
        Role::Partner,
        Role::Gateway,
        Role::GatewayClient,
        Role::Operator,
    ];

    /// The OU value that names this role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Vehicle => VEHICLE_ROLE,
            Role::Partner => PARTNER_ROLE,
            Role::Gateway => GATEWAY_ROLE,
            Role::GatewayClient => GATEWAY_CLIENT_ROLE,
            Role::Operator => OPERATOR_ROLE,
        }
    }

    /// The role an OU value names, if it is exactly one of them (case and spaces matter).
    pub fn from_ou(ou: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == ou)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate belongs to: its role and the holder's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The role, from the subject's OU.
    pub role: Role,
    /// The holder, from the subject's CN: a VIN for a vehicle, a name otherwise.
    pub name: String,
}

/// Why a certificate does not name exactly one role and one holder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a DER-encoded X.509 certificate.
    #[error("the certificate is not valid X.509: {0}")]
    Unparseable(String),
    /// The subject has no CN, or an empty one.
    #[error("the certificate's subject has no common name (CN)")]
    NoCommonName,
    /// The subject has several CNs: whichever a reader took first would be its identity.
    #[error("the certificate's subject has {0} common names (CN); exactly one is allowed")]
    MultipleCommonNames(usize),
    /// The CN is not a text string.
    #[error("the certificate's common name (CN) is not readable text")]
    UnreadableCommonName,
    /// The subject has no OU, so no role.
    #[error("the certificate's subject has no organizational unit (OU) naming its role")]
    NoRole,
    /// The subject has several OUs: it could pass for one role here and another there.
    #[error("the certificate's subject has {0} organizational units (OU); exactly one role is allowed")]
    MultipleRoles(usize),
    /// The OU is not one of the known roles.
    #[error("the certificate's organizational unit (OU) {0:?} is not a role (expected one of: {roles})", roles = role_list())]
    UnknownRole(String),
}

fn role_list() -> String {
    Role::ALL.map(Role::as_str).join(", ")
}

/// Reads the role and holder of a DER-encoded leaf certificate.
///
/// Only the subject is read: whether the certificate is genuine is for the TLS layer to
/// decide first, with the trust anchor of the role it serves.
pub fn identify(leaf_der: &[u8]) -> Result<Identity, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(leaf_der).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Unparseable(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    let subject = cert.subject();
    let name = common_name(subject)?;
    let role = role(subject)?;
    Ok(Identity { role, name })
}

fn common_name(subject: &X509Name<'_>) -> Result<String, IdentityError> {
    let names: Vec<_> = subject.iter_common_name().collect();
    match names.as_slice() {
        [] => Err(IdentityError::NoCommonName),
        [cn] => match cn.as_str() {
            Ok("") => Err(IdentityError::NoCommonName),
            Ok(cn) => Ok(cn.to_owned()),
            Err(_) => Err(IdentityError::UnreadableCommonName),
        },
        many => Err(IdentityError::MultipleCommonNames(many.len())),
    }
}

fn role(subject: &X509Name<'_>) -> Result<Role, IdentityError> {
    let units: Vec<_> = subject.iter_organizational_unit().collect();
    match units.as_slice() {
        [] => Err(IdentityError::NoRole),
        [ou] => {
            let text = ou
                .as_str()
                .map_err(|_| IdentityError::UnknownRole("(not text)".into()))?;
            Role::from_ou(text).ok_or_else(|| IdentityError::UnknownRole(text.to_owned()))
        }
        many => Err(IdentityError::MultipleRoles(many.len())),
    }
}

/// The identity of a gRPC caller, required to have `role`: for servers behind mutual TLS.
///
/// UNAUTHENTICATED when the connection carried no client certificate (plaintext, or TLS
/// without client authentication); PERMISSION_DENIED, saying why, when the certificate names
/// no single role or another role than `role`.
pub fn require_peer_role<T>(request: &tonic::Request<T>, role: Role) -> Result<Identity, tonic::Status> {
    let certs = request.peer_certs();
    let leaf = certs
        .as_deref()
        .and_then(|chain| chain.first())
        .ok_or_else(|| tonic::Status::unauthenticated(format!("a client certificate with role {role} is required")))?;
    let identity = identify(leaf.as_ref())
        .map_err(|e| tonic::Status::permission_denied(format!("client certificate refused: {e}")))?;
    if identity.role != role {
        return Err(tonic::Status::permission_denied(format!(
            "a client certificate with role {role} is required, this one has role {} (CN={})",
            identity.role, identity.name
        )));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    use super::*;

    /// The OIDs of CN and OU, as rcgen's custom types: its own CN/OU types hold one value each.
    fn second_cn() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 3])
    }

    fn second_ou() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 11])
    }

    /// A self-signed certificate whose subject has exactly `attributes`, in order.
    fn cert(attributes: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in attributes {
            params
                .distinguished_name
                .push(ty.clone(), DnValue::Utf8String((*value).to_owned()));
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn every_role_is_read_with_its_holder() {
        for role in Role::ALL {
            let der = cert(&[
                (DnType::OrganizationalUnitName, role.as_str()),
                (DnType::CommonName, "LSVAU2180N2183294"),
            ]);
            assert_eq!(
                identify(&der),
                Ok(Identity {
                    role,
                    name: "LSVAU2180N2183294".into()
                })
            );
        }
    }

    #[test]
    fn other_subject_attributes_do_not_matter() {
        let der = cert(&[
            (DnType::OrganizationName, "Carlink"),
            (DnType::CommonName, "parking"),
            (DnType::OrganizationalUnitName, "partner"),
        ]);
        assert_eq!(identify(&der).unwrap().role, Role::Partner);
    }

    #[test]
    fn two_common_names_are_refused() {
        let der = cert(&[
            (DnType::OrganizationalUnitName, "vehicle"),
            (DnType::CommonName, "LSVAU2180N2183294"),
            (second_cn(), "WBA3B5C50DF123456"),
        ]);
        assert_eq!(identify(&der), Err(IdentityError::MultipleCommonNames(2)));
    }

    #[test]
    fn two_roles_are_refused_even_when_they_agree() {
        // A vehicle that is also a partner, and a vehicle twice.
        for second_role in ["partner", "vehicle"] {
            let der = cert(&[
                (DnType::OrganizationalUnitName, "vehicle"),
                (second_ou(), second_role),
                (DnType::CommonName, "LSVAU2180N2183294"),
            ]);
            let err = identify(&der).unwrap_err();
            assert_eq!(err, IdentityError::MultipleRoles(2), "vehicle and {second_role}");
            assert!(err.to_string().contains("exactly one role"), "{err}");
        }
    }

    #[test]
    fn no_role_is_refused() {
        let der = cert(&[(DnType::CommonName, "LSVAU2180N2183294")]);
        assert_eq!(identify(&der), Err(IdentityError::NoRole));
    }

    #[test]
    fn unknown_roles_are_refused_with_the_known_ones_listed() {
        for ou in ["admin", "Vehicle", " vehicle", "vehicle,partner", ""] {
            let der = cert(&[(DnType::OrganizationalUnitName, ou), (DnType::CommonName, "someone")]);
            let err = identify(&der).unwrap_err();
            assert_eq!(err, IdentityError::UnknownRole(ou.into()), "{ou:?}");
            assert!(err.to_string().contains("gateway-client"), "{err}");
        }
    }

    #[test]
    fn no_or_empty_common_name_is_refused() {
        let der = cert(&[(DnType::OrganizationalUnitName, "partner")]);
        assert_eq!(identify(&der), Err(IdentityError::NoCommonName));
        let der = cert(&[(DnType::OrganizationalUnitName, "partner"), (DnType::CommonName, "")]);
        assert_eq!(identify(&der), Err(IdentityError::NoCommonName));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_unparseable() {
        assert!(matches!(identify(b"not DER"), Err(IdentityError::Unparseable(_))));
        let mut der = cert(&[
            (DnType::OrganizationalUnitName, "vehicle"),
            (DnType::CommonName, "LSVAU2180N2183294"),
        ]);
        der.push(0);
        assert!(matches!(identify(&der), Err(IdentityError::Unparseable(_))));
    }

    #[test]
    fn a_call_without_a_certificate_is_unauthenticated() {
        let status = require_peer_role(&tonic::Request::new(()), Role::GatewayClient).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("gateway-client"), "{}", status.message());
    }

    #[test]
    fn roles_round_trip_through_their_ou() {
        for role in Role::ALL {
            assert_eq!(Role::from_ou(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
    }
}
