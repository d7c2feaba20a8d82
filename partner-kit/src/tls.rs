//! The client certificates the kit presents (the gateway's, a car's, none, a forged one) and
//! the rustls configuration for each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// X.520 organizationalUnitName: where a certificate's role is.
const OU_OID: [u64; 4] = [2, 5, 4, 11];

/// An issuing CA, read once, for the kit to sign certificates with (no file is read while
/// checking).
#[derive(Debug, Clone)]
pub struct SigningCa {
    cert_pem: String,
    key_pem: String,
    /// Where the certificate came from, for messages.
    origin: PathBuf,
}

impl SigningCa {
    /// Reads a CA's PEM certificate and PEM key.
    pub fn read(cert: &Path, key: &Path) -> anyhow::Result<SigningCa> {
        Ok(SigningCa {
            cert_pem: std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            key_pem: std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?,
            origin: cert.to_owned(),
        })
    }
}

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientCertificate {
    fn clone(&self) -> Self {
        ClientCertificate {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientCertificate {
    /// Reads a PEM certificate file (leaf, then its issuing CA) and its PEM key.
    pub fn read(cert: &Path, key: &Path) -> anyhow::Result<ClientCertificate> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("{} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("cannot read a PEM key from {}", key.display()))?;
        Ok(ClientCertificate { chain, key })
    }

    /// A self-signed certificate whose subject claims to be the gateway (`OU=gateway-client`,
    /// `CN=gateway`), as someone without the gateway-clients CA's key could make.
    pub fn forged_gateway_client() -> anyhow::Result<ClientCertificate> {
        let key = rcgen::KeyPair::generate().context("generate a key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "gateway-client");
        params.distinguished_name.push(rcgen::DnType::CommonName, "gateway");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).context("self-sign")?;
        Ok(ClientCertificate {
            chain: vec![cert.der().clone()],
            key: private_key(&key)?,
        })
    }

    /// A car's certificate (`OU=vehicle`, `CN=<a VIN no car has>`) signed by the vehicles CA,
    /// as `certs vehicle` issues them.
    pub fn mint_vehicle(vehicles_ca: &SigningCa) -> anyhow::Result<ClientCertificate> {
        ClientCertificate::mint(vehicles_ca, &[proto::identity::VEHICLE_ROLE], &crate::probe_vin())
    }

    /// A certificate signed by `ca` whose subject has the OUs `ous` and the CN `cn`; the chain
    /// holds the leaf then the CA.
    pub fn mint(ca: &SigningCa, ous: &[&str], cn: &str) -> anyhow::Result<ClientCertificate> {
        let origin = ca.origin.display();
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem)
            .with_context(|| format!("the key of {origin} is not a PEM private key"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
            .with_context(|| format!("{origin} is not a CA certificate for that key"))?;
        let key = rcgen::KeyPair::generate().context("generate a key")?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (i, ou) in ous.iter().enumerate() {
            // rcgen's own OU type holds one value; a second OU goes in under the OU's OID.
            let ty = match i {
                0 => rcgen::DnType::OrganizationalUnitName,
                _ => rcgen::DnType::CustomDnType(OU_OID.to_vec()),
            };
            params
                .distinguished_name
                .push(ty, rcgen::DnValue::Utf8String((*ou).to_owned()));
        }
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).context("sign the certificate")?;
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
            .with_context(|| format!("{origin} is not a PEM certificate"))?;
        Ok(ClientCertificate {
            chain: vec![cert.der().clone(), ca_der],
            key: private_key(&key)?,
        })
    }
}

fn private_key(key: &rcgen::KeyPair) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("the generated key: {e}"))
}

/// The CA certificates the adapter's server certificate must chain to.
#[derive(Debug, Clone)]
pub struct TrustAnchors(Arc<RootCertStore>);

impl TrustAnchors {
    /// Reads every certificate of a PEM file as an anchor (`ca.pem`, the root).
    pub fn read(path: &Path) -> anyhow::Result<TrustAnchors> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))? {
            let cert = cert.with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("{} holds a certificate that is not a usable CA", path.display()))?;
        }
        if roots.is_empty() {
            anyhow::bail!("{} holds no certificate", path.display());
        }
        Ok(TrustAnchors(Arc::new(roots)))
    }

    /// A client configuration trusting these anchors and presenting `certificate`, if any.
    pub fn client_config(&self, certificate: Option<&ClientCertificate>) -> anyhow::Result<Arc<ClientConfig>> {
        // Its own provider, so that the kit works whether or not the process installed one.
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(self.0.clone());
        let mut config = match certificate {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .context("the client certificate and key do not go together")?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}
