//! Unit tests of the CA: the profile of every role's certificate and the CA hierarchy.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use proto::identity::Role;

use super::*;

const VIN: &str = "WBA3B5C50DF123456";

/// DER of a PEM certificate; X509Certificate borrows from it.
fn der(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    pem.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).expect("X.509").1
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    let mut names = cert.subject().iter_common_name();
    let cn = names.next().expect("CN").as_str().unwrap().to_owned();
    assert!(names.next().is_none(), "more than one CN");
    cn
}

fn role(cert: &X509Certificate<'_>) -> Option<String> {
    let mut units = cert.subject().iter_organizational_unit();
    let ou = units.next().map(|ou| ou.as_str().unwrap().to_owned());
    assert!(units.next().is_none(), "more than one OU");
    ou
}

/// (clientAuth, serverAuth)
fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    (eku.client_auth, eku.server_auth)
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                };
                format!("IP:{ip}")
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn assert_signed_by(leaf: &X509Certificate<'_>, ca_pem: &str) {
    let ca_der = der(ca_pem);
    let ca = parse(&ca_der);
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signature verifies with the CA key");
}

fn assert_leaf(cert: &X509Certificate<'_>) {
    assert!(!cert.is_ca());
    let bc = cert.basic_constraints().unwrap().expect("basic constraints").value;
    assert!(!bc.ca);
    assert!(cert.key_usage().unwrap().expect("key usage").value.digital_signature());
}

fn vin() -> proto::Vin {
    proto::Vin::parse(VIN).unwrap()
}

/// The certificates of a leaf PEM file, in order.
fn chain(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|pem| pem.expect("PEM").contents)
        .collect()
}

/// The leaf is followed by exactly its issuing CA, which the root signed.
fn assert_chains_through(issued: &IssuedCert, ca: &CertificateAuthority, which: IssuingCa) {
    let chain = chain(&issued.cert_pem);
    assert_eq!(chain.len(), 2, "leaf then its issuing CA");
    assert_eq!(chain[1], der(ca.issuing_cert_pem(which)));
    assert_signed_by(&parse(&chain[0]), ca.issuing_cert_pem(which));
    assert_signed_by(&parse(&chain[1]), ca.root_cert_pem());
}

/// What a leaf certificate must say: whom it names, in which role, for which uses, and the
/// issuing CA it chains through.
struct Profile<'a> {
    common_name: &'a str,
    role: &'a str,
    /// (clientAuth, serverAuth)
    eku: (bool, bool),
    issuer: IssuingCa,
}

impl<'a> Profile<'a> {
    /// A client certificate of `role` for `common_name`, issued by `issuer`.
    fn client(common_name: &'a str, role: &'a str, issuer: IssuingCa) -> Profile<'a> {
        Profile {
            common_name,
            role,
            eku: (true, false),
            issuer,
        }
    }
}

/// Checks `issued` against `profile` and returns its DER, for the caller's own checks.
#[track_caller]
fn assert_profile(issued: &IssuedCert, ca: &CertificateAuthority, profile: Profile<'_>) -> Vec<u8> {
    let der = der(&issued.cert_pem);
    let cert = parse(&der);
    assert_eq!(common_name(&cert), profile.common_name);
    assert_eq!(role(&cert).as_deref(), Some(profile.role));
    assert_eq!(eku(&cert), profile.eku);
    assert_leaf(&cert);
    assert_chains_through(issued, ca, profile.issuer);
    der
}

fn path_length(cert: &X509Certificate<'_>) -> Option<u32> {
    let bc = cert.basic_constraints().unwrap().expect("basic constraints").value;
    assert!(bc.ca);
    bc.path_len_constraint
}

#[test]
fn root_is_a_self_signed_ten_year_ca_over_one_level_of_intermediates() {
    let ca = CertificateAuthority::generate().unwrap();
    let der = der(ca.root_cert_pem());
    let cert = parse(&der);

    assert_eq!(common_name(&cert), CA_COMMON_NAME);
    assert!(cert.is_ca());
    assert_eq!(path_length(&cert), Some(1));
    let usage = cert.key_usage().unwrap().expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    cert.verify_signature(None).expect("self-signed");
    let years = (cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days() / 365;
    assert_eq!(years, 10);
}

#[test]
fn issuing_cas_are_distinct_intermediates_that_sign_leaves_only() {
    let ca = CertificateAuthority::generate().unwrap();
    let mut names = std::collections::HashSet::new();
    for which in IssuingCa::ALL {
        let der = der(ca.issuing_cert_pem(which));
        let cert = parse(&der);

        assert_eq!(common_name(&cert), which.common_name());
        assert!(names.insert(common_name(&cert)), "{which:?} shares a name");
        assert_eq!(path_length(&cert), Some(0), "{which:?}");
        let usage = cert.key_usage().unwrap().expect("key usage").value;
        assert!(usage.key_cert_sign() && usage.crl_sign(), "{which:?}");
        assert!(!usage.digital_signature(), "{which:?}");
        assert_signed_by(&cert, ca.root_cert_pem());
        assert_eq!(chain(ca.issuing_cert_pem(which)).len(), 1, "the intermediate alone");
    }
}

#[test]
fn vehicle_certificate_names_the_vin_and_only_allows_client_auth() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_vehicle(&vin()).unwrap();
    let profile = Profile::client(VIN, proto::identity::VEHICLE_ROLE, IssuingCa::Vehicles);
    let der = assert_profile(&issued, &ca, profile);
    let cert = parse(&der);
    let days = (cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
    assert!((824..=825).contains(&days), "{days} days");
    let started = OffsetDateTime::now_utc() - cert.validity().not_before.to_datetime();
    assert!(started >= time::Duration::minutes(59), "not backdated: {started}");
    assert!(KeyPair::from_pem(&issued.key_pem).is_ok());
}

#[test]
fn vehicle_certificates_get_distinct_random_serials() {
    let ca = CertificateAuthority::generate().unwrap();
    let a = der(&ca.issue_vehicle(&vin()).unwrap().cert_pem);
    let b = der(&ca.issue_vehicle(&vin()).unwrap().cert_pem);
    assert_ne!(parse(&a).raw_serial(), parse(&b).raw_serial());
    assert_eq!(parse(&a).raw_serial().len(), 16);
}

#[test]
fn expired_validity_ends_in_the_past() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_vehicle_with_validity(&vin(), Validity::expired()).unwrap();
    let der = der(&issued.cert_pem);
    let cert = parse(&der);

    assert!(cert.validity().not_after.to_datetime() < OffsetDateTime::now_utc());
    assert!(!cert.validity().is_valid());
    assert_chains_through(&issued, &ca, IssuingCa::Vehicles);
}

#[test]
fn gateway_certificate_is_a_server_certificate_for_localhost_and_extra_names() {
    let ca = CertificateAuthority::generate().unwrap();
    let extra = [
        "gw.example.com".to_owned(),
        "10.0.0.7".to_owned(),
        "localhost".to_owned(),
    ];
    let issued = ca.issue_gateway(&extra).unwrap();
    let der = der(&issued.cert_pem);
    let cert = parse(&der);

    assert_eq!(common_name(&cert), GATEWAY_COMMON_NAME);
    assert_eq!(role(&cert).as_deref(), Some(proto::identity::GATEWAY_ROLE));
    assert_eq!(eku(&cert), (false, true));
    assert_eq!(
        sans(&cert),
        [
            "DNS:localhost",
            "IP:127.0.0.1",
            "IP:::1",
            "DNS:gw.example.com",
            "IP:10.0.0.7"
        ]
    );
    assert_leaf(&cert);
    assert_signed_by(&cert, ca.root_cert_pem());
    assert_eq!(
        chain(&issued.cert_pem).len(),
        1,
        "the root signs it: no intermediate to send"
    );
}

#[test]
fn gateway_client_certificate_is_a_client_certificate_of_its_own_role() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_gateway_client().unwrap();
    let profile = Profile::client(
        GATEWAY_COMMON_NAME,
        proto::identity::GATEWAY_CLIENT_ROLE,
        IssuingCa::GatewayClients,
    );
    assert_profile(&issued, &ca, profile);
}

#[test]
fn operator_certificate_is_a_client_certificate_of_its_own_role() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_operator("night-shift").unwrap();
    let profile = Profile::client("night-shift", proto::identity::OPERATOR_ROLE, IssuingCa::Operators);
    let der = assert_profile(&issued, &ca, profile);
    assert_eq!(sans(&parse(&der)), Vec::<String>::new());

    let err = ca.issue_operator("Night Shift").unwrap_err();
    assert!(err.to_string().contains("operator name"), "{err}");
}

#[test]
fn gateway_refuses_names_that_are_neither_ip_nor_dns() {
    let ca = CertificateAuthority::generate().unwrap();
    for bad in [
        "",
        "two words",
        "-lead.example",
        "under_score.example",
        "a..b",
        "1.2.3.400",
    ] {
        let err = ca.issue_gateway(&[bad.to_owned()]).unwrap_err();
        assert!(
            matches!(err, CertsError::InvalidHostName(ref n) if n == bad),
            "{bad:?}: {err}"
        );
    }
    assert!(ca.issue_gateway(&["*.example.com".to_owned()]).is_ok());
}

#[test]
fn partner_certificate_is_client_and_server() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_partner("parking-1").unwrap();
    let profile = Profile {
        eku: (true, true),
        ..Profile::client("parking-1", proto::identity::PARTNER_ROLE, IssuingCa::Partners)
    };
    let der = assert_profile(&issued, &ca, profile);
    assert_eq!(sans(&parse(&der)), ["DNS:parking-1", "DNS:localhost", "IP:127.0.0.1"]);
}

#[test]
fn partner_names_that_are_not_dns_labels_get_no_dns_san_of_their_own() {
    let ca = CertificateAuthority::generate().unwrap();
    let der = der(&ca.issue_partner("-odd-").unwrap().cert_pem);
    assert_eq!(sans(&parse(&der)), ["DNS:localhost", "IP:127.0.0.1"]);
}

#[test]
fn partner_names_are_checked() {
    let ca = CertificateAuthority::generate().unwrap();
    let long = "a".repeat(65);
    for (bad, hint) in [
        ("", "0 characters"),
        (long.as_str(), "65 characters"),
        ("Parking", "'P'"),
        ("a.b", "'.'"),
    ] {
        let err = ca.issue_partner(bad).unwrap_err();
        assert!(
            matches!(
                err,
                CertsError::InvalidName {
                    role: Role::Partner,
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("partner name"), "{bad:?}: {err}");
        assert!(err.to_string().contains(hint), "{bad:?}: {err}");
    }
    assert!(ca.issue_partner(&"a".repeat(64)).is_ok());
}

#[test]
fn saved_ca_loads_and_issues_certificates_it_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate().unwrap();
    ca.save(dir.path()).unwrap();

    let loaded = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(loaded.root_cert_pem(), ca.root_cert_pem());
    for which in IssuingCa::ALL {
        assert_eq!(loaded.issuing_cert_pem(which), ca.issuing_cert_pem(which));
    }
    assert_chains_through(&loaded.issue_vehicle(&vin()).unwrap(), &ca, IssuingCa::Vehicles);
    assert_chains_through(&loaded.issue_partner("p").unwrap(), &ca, IssuingCa::Partners);
    assert_chains_through(&loaded.issue_gateway_client().unwrap(), &ca, IssuingCa::GatewayClients);
    assert_chains_through(&loaded.issue_operator("o").unwrap(), &ca, IssuingCa::Operators);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [
            CA_KEY_FILE,
            "vehicles-ca.key",
            "partners-ca.key",
            "gateway-clients-ca.key",
            "operators-ca.key",
        ] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
}

/// A directory holding a new CA, as `certs init` leaves it.
fn saved_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::generate().unwrap().save(dir.path()).unwrap();
    dir
}

/// A saved CA that lost `file`.
fn saved_ca_without(file: &str) -> tempfile::TempDir {
    let dir = saved_ca();
    std::fs::remove_file(dir.path().join(file)).unwrap();
    dir
}

/// A saved CA whose `files` were replaced by those of another CA.
fn saved_ca_with_files_of_another(files: &[&str]) -> tempfile::TempDir {
    let (dir, other) = (saved_ca(), saved_ca());
    for file in files {
        std::fs::copy(other.path().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// Why the CA in `dir` does not load.
fn load_error(dir: &tempfile::TempDir) -> CertsError {
    CertificateAuthority::load(dir.path()).unwrap_err()
}

#[test]
fn loading_without_a_ca_names_the_missing_file_and_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let message = load_error(&dir).to_string();
    assert!(
        message.contains(&dir.path().join("ca.pem").display().to_string()),
        "{message}"
    );
    assert!(message.contains("certs init"), "{message}");

    let err = load_error(&saved_ca_without("ca.key"));
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn loading_a_ca_with_someone_elses_key_fails() {
    let err = load_error(&saved_ca_with_files_of_another(&["ca.key"]));
    assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");
}

#[test]
fn loading_a_leaf_as_ca_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate().unwrap();
    ca.issue_vehicle(&vin()).unwrap().write(dir.path(), "ca").unwrap();

    let err = load_error(&dir);
    assert!(matches!(err, CertsError::BadCaCert { .. }), "{err}");
}

#[test]
fn loading_an_issuing_ca_of_another_root_fails() {
    let err = load_error(&saved_ca_with_files_of_another(&["partners-ca.pem", "partners-ca.key"]));
    assert!(
        matches!(err, CertsError::BadCaCert { ref path, .. } if path.ends_with("partners-ca.pem")),
        "{err}"
    );
    assert!(err.to_string().contains("not signed by the root"), "{err}");
}

#[test]
fn loading_without_an_issuing_ca_names_it() {
    let err = load_error(&saved_ca_without("gateway-clients-ca.key"));
    assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
    assert!(err.to_string().contains("gateway-clients-ca.key"), "{err}");
}
