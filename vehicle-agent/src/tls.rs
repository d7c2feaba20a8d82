//! The car's TLS identity: CA, certificate and key files turned into a rustls client config.
//!
//! Error messages name files and fields but never echo file contents, so a misplaced key
//! cannot end up in a log.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use proto::Vin;
use proto::identity::{Role, identify};

use crate::config::{AgentConfig, ConfigError};

/// Who this car is and how it proves it to the gateway.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The VIN in the certificate's subject CN.
    pub vin: Vin,
    /// Trusts only the configured CA, presents the car's certificate.
    pub client_config: Arc<ClientConfig>,
}

impl Identity {
    /// Validates `config` and loads its CA, certificate and key.
    pub fn load(config: &AgentConfig) -> Result<Identity, ConfigError> {
        config.validate_values()?;
        let server_name = ServerName::try_from(config.server_name()?)
            .expect("validated by AgentConfig::server_name")
            .to_owned();

        let mut roots = RootCertStore::empty();
        for ca in read_certs("ca_cert", &config.ca_cert)? {
            roots.add(ca).map_err(|e| {
                ConfigError::invalid(
                    "ca_cert",
                    format!("{}: unusable CA certificate: {e}", config.ca_cert.display()),
                )
            })?;
        }
        let chain = read_certs("cert", &config.cert)?;
        let vin = vin_of_certificate(&chain[0])
            .map_err(|m| ConfigError::invalid("cert", format!("{}: {m}", config.cert.display())))?;
        let key = read_key(&config.key)?;

        let verifier = GatewayVerifier::new(Arc::new(roots), Some(server_name), HandshakeCounter::default())
            .map_err(|e| ConfigError::invalid("ca_cert", format!("{}: {e}", config.ca_cert.display())))?;
        let client_config = client_config(verifier, chain, key).map_err(|e| {
            ConfigError::invalid(
                "key",
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    config.key.display(),
                    config.cert.display()
                ),
            )
        })?;
        Ok(Identity { vin, client_config })
    }
}

/// The VIN a vehicle certificate names: its one subject CN, provided its one role (OU) is
/// `vehicle`. Read with the same parser the gateway uses, so a certificate the gateway would
/// refuse (two CNs, two roles) is refused here at startup, with the reason.
pub fn vin_of_certificate(der: &CertificateDer<'_>) -> Result<Vin, String> {
    let identity = identify(der).map_err(|e| e.to_string())?;
    if identity.role != Role::Vehicle {
        return Err(format!(
            "not a vehicle certificate: its role (OU) is {:?}, expected {:?}",
            identity.role.as_str(),
            Role::Vehicle.as_str()
        ));
    }
    Vin::parse(&identity.name).map_err(|e| format!("the subject CN is not a VIN: {e}"))
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            field,
            format!("{} contains no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        // pem errors can quote lines of the file: say only what kind of problem it was.
        let why = match e {
            pem::Error::NoItemsFound => "contains no PEM private key",
            _ => "is not a valid PEM private key (PKCS#8, PKCS#1 or SEC1)",
        };
        ConfigError::invalid("key", format!("{} {why}", path.display()))
    })
}

/// Counts full TLS handshakes: each verifies the gateway's certificate, a resumed handshake
/// does not. Cheap to clone; clones count together.
#[derive(Debug, Clone, Default)]
pub struct HandshakeCounter(Arc<AtomicU64>);

impl HandshakeCounter {
    /// Full handshakes so far.
    pub fn full_handshakes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Verifies the gateway's certificate with WebPKI against the CA roots, optionally against a
/// fixed name instead of the dialled host (rumqttc always verifies against the host it
/// connects to), and counts each verification.
#[derive(Debug)]
pub struct GatewayVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
    counter: HandshakeCounter,
}

impl GatewayVerifier {
    /// Trusts `roots`; `name` replaces the dialled host when given.
    pub fn new(
        roots: Arc<RootCertStore>,
        name: Option<ServerName<'static>>,
        counter: HandshakeCounter,
    ) -> Result<Arc<GatewayVerifier>, rustls::client::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(GatewayVerifier {
            inner: WebPkiServerVerifier::builder_with_provider(roots, provider).build()?,
            name,
            counter,
        }))
    }
}

/// A car's rustls client config: `verifier` for the gateway, `chain` and `key` as its identity.
pub fn client_config(
    verifier: Arc<GatewayVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    // Our own provider rather than the process default, so a second provider linked into the
    // binary cannot make the builder panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

impl ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.counter.0.fetch_add(1, Ordering::Relaxed);
        let name = self.name.as_ref().unwrap_or(dialled);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
