//! A throwaway development PKI, as `certs init` lays it out, and certificates of every role
//! issued from it: the parties' identities, and the TLS clients that present them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certs::{CertificateAuthority, DevPki, IssuedCert, IssuingCa, Validity};
use proto::Vin;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Certificate and key files of one party.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Certificate (PEM) path: the leaf, then its issuing CA.
    pub cert: PathBuf,
    /// Key (PEM) path.
    pub key: PathBuf,
    /// The PEMs themselves.
    pub pem: IssuedCert,
}

/// A development PKI (a root and one issuing CA per client role) and everything issued from
/// it, in a temporary directory that the whole test also uses for its other files.
pub struct TestPki {
    /// Where the files are.
    pub dir: TempDir,
    /// The paths of the files `certs init` writes.
    pub layout: DevPki,
    /// The root and issuing CAs.
    pub ca: CertificateAuthority,
    /// The root CA certificate file: what verifies the gateway's and adapters' server certificates.
    pub ca_cert: PathBuf,
    /// The gateway's server certificate.
    pub gateway: Credentials,
    /// The gateway's client certificate towards partner adapters.
    pub gateway_client: Credentials,
}

impl TestPki {
    /// A fresh PKI with a gateway certificate for localhost and the gateway's client certificate.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = DevPki::init(dir.path(), &[], false).expect("certs init");
        let ca = layout.authority().expect("load the CAs");
        let gateway = Credentials::read(layout.gateway_cert(), layout.gateway_key());
        let gateway_client = Credentials::read(layout.gateway_client_cert(), layout.gateway_client_key());
        TestPki {
            ca_cert: layout.ca_cert(),
            dir,
            layout,
            ca,
            gateway,
            gateway_client,
        }
    }

    /// A path for `name` in this test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The vehicles CA file: the only anchor of the gateway's MQTT port.
    pub fn vehicles_ca(&self) -> PathBuf {
        self.layout.issuing_ca_cert(IssuingCa::Vehicles)
    }

    /// The partners CA file: the only anchor of the gateway's partner API.
    pub fn partners_ca(&self) -> PathBuf {
        self.layout.issuing_ca_cert(IssuingCa::Partners)
    }

    /// The operators CA file: the only anchor of the gateway's ops listener.
    pub fn operators_ca(&self) -> PathBuf {
        self.layout.issuing_ca_cert(IssuingCa::Operators)
    }

    /// The gateway-clients CA, PEM: the only anchor of partner adapters.
    pub fn gateway_clients_ca_pem(&self) -> &str {
        self.ca.issuing_cert_pem(IssuingCa::GatewayClients)
    }

    /// A vehicle certificate for `vin`.
    pub fn vehicle(&self, vin: &str) -> Credentials {
        let vin = Vin::parse(vin).expect("valid VIN");
        self.write(vin.as_str(), self.ca.issue_vehicle(&vin).expect("vehicle cert"))
    }

    /// A vehicle certificate for `vin` that expired yesterday.
    pub fn expired_vehicle(&self, vin: &str) -> Credentials {
        let vin = Vin::parse(vin).expect("valid VIN");
        let pem = self
            .ca
            .issue_vehicle_with_validity(&vin, Validity::expired())
            .expect("expired cert");
        self.write(&format!("{vin}-expired"), pem)
    }

    /// A partner certificate named `name`.
    pub fn partner(&self, name: &str) -> Credentials {
        self.write(name, self.ca.issue_partner(name).expect("partner cert"))
    }

    /// An operator certificate named `name`.
    pub fn operator(&self, name: &str) -> Credentials {
        self.write(name, self.ca.issue_operator(name).expect("operator cert"))
    }

    fn write(&self, stem: &str, pem: IssuedCert) -> Credentials {
        let (cert, key) = pem.write(self.dir.path(), stem).expect("write cert");
        Credentials { cert, key, pem }
    }

    /// A gRPC connection over mTLS to `localhost:{addr.port()}`, presenting `creds` and
    /// verifying the server against the root.
    pub async fn grpc_channel(
        &self,
        addr: SocketAddr,
        creds: &Credentials,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(&self.ca_cert).expect("read the root"),
            ))
            .identity(Identity::from_pem(&creds.pem.cert_pem, &creds.pem.key_pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
            .expect("a valid URI")
            .tls_config(tls)?
            .connect()
            .await
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl Credentials {
    /// The certificate and key files `certs init` wrote.
    fn read(cert: PathBuf, key: PathBuf) -> Credentials {
        let pem = IssuedCert {
            cert_pem: std::fs::read_to_string(&cert).expect("read certificate"),
            key_pem: std::fs::read_to_string(&key).expect("read key"),
        };
        Credentials { cert, key, pem }
    }
}

/// A rustls client config trusting `ca` and presenting `creds`.
pub fn client_tls(ca: &Path, creds: &Credentials) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(cert.expect("a CA certificate")).expect("a usable CA");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&creds.cert)
        .expect("read the certificate")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&creds.key).expect("read the key");
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a usable certificate and key"),
    )
}
