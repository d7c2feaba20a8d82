//! Trust per role, checked with the verifiers the listeners use: rustls' `WebPkiClientVerifier`
//! with one issuing CA file as its only anchor admits that role and refuses every other, and
//! the root verifies every certificate of the PKI from the chain in its PEM file.

use std::path::Path;
use std::sync::Arc;

use certs::{DevPki, IssuingCa};
use proto::identity::Role;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

const VIN: &str = "LSVAU2180N2183294";

/// A development PKI on disk with one certificate file of each client role.
struct Pki {
    _dir: tempfile::TempDir,
    layout: DevPki,
    /// (role, PEM file of the leaf and its issuing CA)
    clients: Vec<(Role, std::path::PathBuf)>,
}

fn pki() -> Pki {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let layout = DevPki::init(dir.path(), &[], false).unwrap();
    let ca = layout.authority().unwrap();
    let vin = proto::Vin::parse(VIN).unwrap();
    let write = |issued: certs::IssuedCert, stem: &str| issued.write(dir.path(), stem).unwrap().0;
    let clients = vec![
        (Role::Vehicle, write(ca.issue_vehicle(&vin).unwrap(), VIN)),
        (Role::Partner, write(ca.issue_partner("parking").unwrap(), "parking")),
        (Role::GatewayClient, layout.gateway_client_cert()),
        (
            Role::Operator,
            write(ca.issue_operator("night-shift").unwrap(), "night-shift"),
        ),
    ];
    Pki {
        _dir: dir,
        layout,
        clients,
    }
}

fn certs_in(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn anchors(path: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_in(path) {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

/// The client verifier of a listener whose only trust anchors are the certificates in `anchor`.
fn client_verifier(anchor: &Path) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder(anchors(anchor)).build().unwrap()
}

/// Verifies the chain in `cert_file` as a client certificate, the way a TLS handshake does.
fn verify_client(verifier: &dyn ClientCertVerifier, cert_file: &Path) -> Result<(), rustls::Error> {
    let chain = certs_in(cert_file);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

#[test]
fn each_issuing_ca_admits_its_own_role_and_refuses_every_other() {
    let pki = pki();
    for which in IssuingCa::ALL {
        let verifier = client_verifier(&pki.layout.issuing_ca_cert(which));
        for (role, cert_file) in &pki.clients {
            let verdict = verify_client(verifier.as_ref(), cert_file);
            if *role == which.role() {
                assert!(verdict.is_ok(), "{which:?} refused its own {role}: {verdict:?}");
            } else {
                assert!(
                    matches!(
                        verdict,
                        Err(rustls::Error::InvalidCertificate(
                            rustls::CertificateError::UnknownIssuer
                        ))
                    ),
                    "{which:?} admitted a {role} certificate: {verdict:?}"
                );
            }
        }
    }
}

#[test]
fn the_root_verifies_every_client_through_the_chain_in_its_file() {
    let pki = pki();
    let any_role = client_verifier(&pki.layout.ca_cert());
    for (role, cert_file) in &pki.clients {
        assert!(
            verify_client(any_role.as_ref(), cert_file).is_ok(),
            "{role} does not chain to the root"
        );
        // Without the issuing CA the file carries, the root alone cannot place the leaf.
        let leaf = &certs_in(cert_file)[0];
        assert!(
            any_role.verify_client_cert(leaf, &[], UnixTime::now()).is_err(),
            "{role} verified without its issuing CA"
        );
    }
}

#[test]
fn servers_verify_against_the_root() {
    let pki = pki();
    let verifier = WebPkiServerVerifier::builder(anchors(&pki.layout.ca_cert()))
        .build()
        .unwrap();
    let localhost = ServerName::try_from("localhost").unwrap();
    // The gateway (signed by the root) and a partner adapter (through partners-ca).
    for server in [pki.layout.gateway_cert(), pki.layout.dir.join("parking.pem")] {
        let chain = certs_in(&server);
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &localhost, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{}: {e}", server.display()));
    }
}

#[test]
fn a_leaf_file_names_its_role_for_the_one_parser() {
    let pki = pki();
    for (role, cert_file) in &pki.clients {
        let leaf = &certs_in(cert_file)[0];
        assert_eq!(proto::identity::identify(leaf).unwrap().role, *role);
    }
    let gateway = &certs_in(&pki.layout.gateway_cert())[0];
    assert_eq!(proto::identity::identify(gateway).unwrap().role, Role::Gateway);
}
