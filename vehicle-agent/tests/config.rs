//! Configuration validation against real certificate files.

mod common;

use std::path::PathBuf;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

use common::{CertFiles, Pki, VIN, install_provider};
use vehicle_agent::{AgentConfig, ConfigError};

fn config(pki: &Pki) -> AgentConfig {
    let car = pki.vehicle(VIN);
    AgentConfig::new("localhost:8883", pki.ca.clone(), car.cert, car.key)
}

/// A self-signed client certificate with subject `CN=cn, OU=ou` (when given): one the
/// development PKI refuses to issue, for the checks that must refuse it too.
fn unissuable(pki: &Pki, name: &str, cn: &str, ou: Option<&str>) -> CertFiles {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(ou) = ou {
        params.distinguished_name.push(DnType::OrganizationalUnitName, ou);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let files = CertFiles {
        cert: pki.dir.path().join(format!("{name}.pem")),
        key: pki.dir.path().join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

fn error(config: &AgentConfig) -> String {
    let e = config.validate().unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn the_vin_comes_from_the_certificate() {
    install_provider();
    let pki = Pki::new();
    assert_eq!(config(&pki).validate().unwrap().as_str(), VIN);
}

#[test]
fn missing_files_name_the_field_and_the_path() {
    install_provider();
    let pki = Pki::new();
    let missing = PathBuf::from("/nonexistent/car.pem");
    let mut c = config(&pki);
    c.cert = missing.clone();
    let e = error(&c);
    assert!(e.starts_with("cert: cannot read /nonexistent/car.pem"), "{e}");

    let mut c = config(&pki);
    c.ca_cert = missing.clone();
    assert!(error(&c).starts_with("ca_cert: cannot read"));

    let mut c = config(&pki);
    c.key = missing;
    assert!(error(&c).starts_with("key: cannot read"));
}

#[test]
fn only_vehicle_certificates_with_a_vin_are_accepted() {
    install_provider();
    let pki = Pki::new();
    let mut c = config(&pki);
    let partner = pki.partner("parking");
    (c.cert, c.key) = (partner.cert, partner.key);
    let e = error(&c);
    assert!(
        e.starts_with("cert: ") && e.contains("not a vehicle certificate"),
        "{e}"
    );

    let no_ou = unissuable(&pki, "no-ou", VIN, None);
    (c.cert, c.key) = (no_ou.cert, no_ou.key);
    let e = error(&c);
    assert!(
        e.starts_with("cert: ") && e.contains("no organizational unit (OU)"),
        "{e}"
    );

    let bad_vin = unissuable(&pki, "bad-vin", "WBA3B5C50DF12345O", Some("vehicle"));
    (c.cert, c.key) = (bad_vin.cert, bad_vin.key);
    let e = error(&c);
    assert!(e.contains("CN is not a VIN") && e.contains("'O'"), "{e}");
}

#[test]
fn unusable_pem_files_are_reported_without_their_contents() {
    install_provider();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();

    let mut c = config(&pki);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    c.ca_cert = empty.clone();
    assert!(error(&c).starts_with("ca_cert: ") && error(&c).contains("contains no PEM certificate"));

    let mut c = config(&pki);
    c.key = c.cert.clone();
    let e = error(&c);
    assert!(
        e.starts_with("key: ") && e.contains("contains no PEM private key"),
        "{e}"
    );

    let mut c = config(&pki);
    let garbage = dir.path().join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nSECRET+SECRET+SECRET!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    c.key = garbage;
    let e = error(&c);
    assert!(e.starts_with("key: ") && !e.contains("SECRET"), "{e}");

    let mut c = config(&pki);
    c.key = pki.vehicle("1HGCM82633A004352").key;
    let e = error(&c);
    assert!(
        e.starts_with("key: ") && e.contains("does not fit the certificate"),
        "{e}"
    );
}

#[test]
fn values_are_checked_before_files() {
    install_provider();
    let pki = Pki::new();
    let mut c = config(&pki);
    c.keep_alive = std::time::Duration::from_secs(7200);
    assert!(error(&c).starts_with("keep_alive: 2h is out of range"), "{}", error(&c));
}
