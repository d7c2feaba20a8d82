use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

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

#[test]
fn ca_is_a_self_signed_ten_year_ca() {
    let ca = CertificateAuthority::generate().unwrap();
    let der = der(ca.cert_pem());
    let cert = parse(&der);

    assert_eq!(common_name(&cert), CA_COMMON_NAME);
    assert!(cert.is_ca());
    let usage = cert.key_usage().unwrap().expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    cert.verify_signature(None).expect("self-signed");
    let years = (cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days() / 365;
    assert_eq!(years, 10);
}

#[test]
fn vehicle_certificate_names_the_vin_and_only_allows_client_auth() {
    let ca = CertificateAuthority::generate().unwrap();
    let issued = ca.issue_vehicle(&vin()).unwrap();
    let der = der(&issued.cert_pem);
    let cert = parse(&der);

    assert_eq!(common_name(&cert), VIN);
    assert_eq!(role(&cert).as_deref(), Some(proto::identity::VEHICLE_ROLE));
    assert_eq!(eku(&cert), (true, false));
    assert_leaf(&cert);
    assert_signed_by(&cert, ca.cert_pem());
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
    assert_signed_by(&cert, ca.cert_pem());
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
    assert_signed_by(&cert, ca.cert_pem());
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
    let der = der(&issued.cert_pem);
    let cert = parse(&der);

    assert_eq!(common_name(&cert), "parking-1");
    assert_eq!(role(&cert).as_deref(), Some(proto::identity::PARTNER_ROLE));
    assert_eq!(eku(&cert), (true, true));
    assert_eq!(sans(&cert), ["DNS:parking-1", "DNS:localhost", "IP:127.0.0.1"]);
    assert_leaf(&cert);
    assert_signed_by(&cert, ca.cert_pem());
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
        assert!(matches!(err, CertsError::InvalidPartnerName { .. }), "{bad:?}: {err}");
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
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let der = der(&loaded.issue_vehicle(&vin()).unwrap().cert_pem);
    assert_signed_by(&parse(&der), ca.cert_pem());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn loading_without_a_ca_names_the_missing_file_and_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().join("ca.pem").display().to_string()),
        "{message}"
    );
    assert!(message.contains("certs init"), "{message}");

    CertificateAuthority::generate().unwrap().save(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn loading_a_ca_with_someone_elses_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    CertificateAuthority::generate().unwrap().save(dir.path()).unwrap();
    CertificateAuthority::generate().unwrap().save(other.path()).unwrap();
    std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();

    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");
}

#[test]
fn loading_a_leaf_as_ca_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate().unwrap();
    let leaf = ca.issue_vehicle(&vin()).unwrap();
    leaf.write(dir.path(), "ca").unwrap();

    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(matches!(err, CertsError::BadCaCert { .. }), "{err}");
}
