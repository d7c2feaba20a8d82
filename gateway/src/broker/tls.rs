//! The rustls server configuration of the vehicle-facing listener.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why the listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {problem}")]
    File {
        /// The file at fault.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, problem: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in file"));
    }
    Ok(certs)
}

/// Builds a server config that requires a client certificate chaining to `client_ca`,
/// checks the configured CRLs, and resumes sessions (tickets and a session cache) so a
/// reconnecting car skips the expensive part of the handshake.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    // Every CA in the file is a trust anchor, so CAs can be rotated by listing old and new.
    for ca in read_certs(&tls.client_ca)? {
        roots.add(ca).map_err(|e| file_error(&tls.client_ca, e))?;
    }
    let mut crls = Vec::new();
    for path in &tls.crls {
        for crl in CertificateRevocationListDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
            crls.push(crl.map_err(|e| file_error(path, e))?);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let chain = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| file_error(&tls.key, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    config.session_storage = ServerSessionMemoryCache::new(64 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}
