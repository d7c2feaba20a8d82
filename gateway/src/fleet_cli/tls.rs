//! Why a connection to the ops listener failed, when the failure is the listener refusing our
//! certificate. The ops listener trusts the operators CA only, so a vehicle's or a partner's
//! certificate is refused by the TLS handshake itself, before any gRPC role check could answer
//! PERMISSION_DENIED; in TLS 1.3 the client learns of it only on its first read, and hyper
//! reports that as "connection closed", the alert lost. So after a transport failure this
//! handshakes once more by hand and reads the alert.

use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the diagnosis may take; past it, the listener did not refuse us.
const PATIENCE: Duration = Duration::from_secs(5);

/// What to connect to and present, as given on the command line.
pub(super) struct Target<'a> {
    /// `host:port` of the ops listener.
    pub(super) authority: &'a str,
    /// The name its certificate must bear.
    pub(super) server_name: &'a str,
    /// PEM: the operator certificate chain, its key, the root CA.
    pub(super) cert: &'a [u8],
    pub(super) key: &'a [u8],
    pub(super) ca: &'a [u8],
}

/// The alert with which the ops listener refused our certificate, if that is what it did.
pub(super) async fn refused_certificate(target: &Target<'_>) -> Option<AlertDescription> {
    tokio::time::timeout(PATIENCE, handshake_alert(target))
        .await
        .ok()
        .flatten()
}

async fn handshake_alert(target: &Target<'_>) -> Option<AlertDescription> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(target.ca) {
        roots.add(cert.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(target.cert)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(target.key).ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(target.server_name.to_owned()).ok()?;
    let tcp = TcpStream::connect(target.authority).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return certificate_alert(&e),
    };
    // The HTTP/2 preface: the listener answers it with its SETTINGS if it accepted us.
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
        return certificate_alert(&e);
    }
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Err(e) => certificate_alert(&e),
        Ok(_) => None,
    }
}

/// The alert in `e` if it is one a server sends about the client's certificate.
fn certificate_alert(e: &std::io::Error) -> Option<AlertDescription> {
    let rustls::Error::AlertReceived(alert) = e.get_ref()?.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    use AlertDescription::*;
    matches!(
        alert,
        BadCertificate
            | UnsupportedCertificate
            | CertificateRevoked
            | CertificateExpired
            | CertificateUnknown
            | UnknownCA
            | AccessDenied
            | CertificateRequired
    )
    .then_some(*alert)
}
