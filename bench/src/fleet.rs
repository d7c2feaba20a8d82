//! The simulated fleet: deterministic VINs, one certificate per vehicle issued in-process by
//! the workspace's development CA (its vehicles CA), and the rustls client configurations the
//! vehicles use; also an operator's certificate for the gateway's ops API.
//!
//! Each vehicle gets its own [`ClientConfig`] (its own identity and its own TLS session cache),
//! so reconnecting with the same config resumes the TLS session exactly as the real agent does.
//! The configs are built by the agent's own code (`vehicle_agent::tls`), whose verifier counts
//! server-certificate verifications in a shared [`HandshakeCounter`]: a full handshake
//! verifies the server's certificate, a resumed one does not, which tells the two apart
//! without trusting either broker's word for it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use certs::{CertificateAuthority, DevPki, GATEWAY_CLIENT_STEM, IssuedCert, IssuingCa};
use proto::Vin;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
pub use vehicle_agent::tls::HandshakeCounter;
use vehicle_agent::tls::{GatewayVerifier, client_config};

/// Characters a VIN may contain (ISO 3779: digits and capital letters except I, O and Q).
const VIN_ALPHABET: &[u8; 33] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
/// The first five characters of every simulated VIN; the other twelve count in base 33.
const VIN_PREFIX: &str = "LFBSM";

/// The `index`-th simulated VIN: the same index always gives the same VIN.
pub fn vin(index: u64) -> Vin {
    let mut tail = [b'0'; 17 - VIN_PREFIX.len()];
    let mut n = index;
    for slot in tail.iter_mut().rev() {
        *slot = VIN_ALPHABET[(n % 33) as usize];
        n /= 33;
    }
    let text = format!("{VIN_PREFIX}{}", String::from_utf8_lossy(&tail));
    Vin::parse(&text).expect("simulated VINs use only the VIN alphabet")
}

/// One simulated vehicle's identity.
pub struct Vehicle {
    /// Its VIN (the CN of its certificate).
    pub vin: Vin,
    /// Its certificate and key as issued.
    pub pem: IssuedCert,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Files a server or partner presents.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// A CA, the brokers' and the partner's certificates, and the vehicles, all in one directory.
pub struct Fleet {
    /// Where the PEM files are.
    pub dir: PathBuf,
    /// The root CA certificate: vehicles verify the brokers with it, and both brokers verify
    /// vehicles with it, so that they do the same work (Mosquitto, through OpenSSL, wants a
    /// self-signed anchor and cannot take the vehicles CA alone).
    pub ca_file: PathBuf,
    /// The CA that signs only the gateway's client certificate: what the adapter trusts.
    pub gateway_clients_ca_file: PathBuf,
    /// The CA that signs partners' certificates: what the gateway's partner API trusts.
    pub partners_ca_file: PathBuf,
    /// The CA that signs operators' certificates: what the gateway's ops listener trusts.
    pub operators_ca_file: PathBuf,
    /// An operator's certificate (OU=operator, CN=`fleet-bench`), for `fleet.v1.FleetOps`.
    pub operator: CertFiles,
    /// The MQTT server certificate, shared by the gateway and Mosquitto so both do the same work.
    pub server: CertFiles,
    /// The parking adapter's certificate (gRPC server), also the partner `parking`'s client
    /// certificate for the gateway's partner API.
    pub adapter: CertFiles,
    /// The gateway's client certificate towards the adapter (role gateway-client).
    pub gateway_client: CertFiles,
    /// The vehicles, in VIN order of their index.
    pub vehicles: Vec<Vehicle>,
    /// How long issuing every vehicle certificate took.
    pub issue_time: Duration,
    gateway_clients_ca_pem: String,
    roots: Arc<RootCertStore>,
}

impl Fleet {
    /// Creates a CA in `dir`, a server certificate valid for `hosts` (plus localhost), the
    /// partner certificates, and `vehicles` vehicle certificates (in memory).
    pub fn create(dir: &Path, vehicles: usize, hosts: &[IpAddr]) -> Result<Fleet> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ca = CertificateAuthority::generate().context("generate CA")?;
        ca.save(dir).context("save CA")?;
        let layout = DevPki::open(dir);
        let names: Vec<String> = hosts.iter().map(IpAddr::to_string).collect();
        let server = write(dir, "server", ca.issue_gateway(&names)?)?;
        let adapter = write(dir, "parking", ca.issue_partner("parking")?)?;
        let gateway_client = write(dir, GATEWAY_CLIENT_STEM, ca.issue_gateway_client()?)?;
        let operator = write(dir, "operator-fleet-bench", ca.issue_operator("fleet-bench")?)?;

        let started = Instant::now();
        let issued = issue_vehicles(&ca, vehicles)?;
        let issue_time = started.elapsed();

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.root_cert_pem().as_bytes()) {
            roots.add(cert.context("CA certificate")?)?;
        }
        Ok(Fleet {
            dir: dir.to_path_buf(),
            ca_file: layout.ca_cert(),
            gateway_clients_ca_file: layout.issuing_ca_cert(IssuingCa::GatewayClients),
            partners_ca_file: layout.issuing_ca_cert(IssuingCa::Partners),
            operators_ca_file: layout.issuing_ca_cert(IssuingCa::Operators),
            operator,
            server,
            adapter,
            gateway_client,
            vehicles: issued,
            issue_time,
            gateway_clients_ca_pem: ca.issuing_cert_pem(IssuingCa::GatewayClients).to_owned(),
            roots: Arc::new(roots),
        })
    }

    /// The CA that signs only the gateway's client certificate, PEM: what the adapter trusts.
    pub fn gateway_clients_ca_pem(&self) -> &str {
        &self.gateway_clients_ca_pem
    }

    /// A gRPC channel to a gateway listener at `addr` presenting `identity` (one of this
    /// fleet's certificates), verifying the gateway's certificate (issued for `localhost`)
    /// against the fleet's root; connected before it returns.
    pub async fn grpc_channel(&self, identity: &CertFiles, addr: SocketAddr) -> Result<Channel> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file)?))
            .identity(Identity::from_pem(read(&identity.cert)?, read(&identity.key)?))
            .domain_name("localhost");
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    /// Writes vehicle `index`'s certificate and key to files (for the real agent, which reads files).
    pub fn vehicle_files(&self, index: usize) -> Result<CertFiles> {
        let v = &self.vehicles[index];
        let (cert, key) = v.pem.write(&self.dir, v.vin.as_str())?;
        Ok(CertFiles { cert, key })
    }

    /// One fresh client config per vehicle in `range`, counting full handshakes in `counter`.
    /// Fresh configs have empty session caches: their first connection is a full handshake.
    pub fn client_configs(
        &self,
        range: std::ops::Range<usize>,
        counter: &HandshakeCounter,
    ) -> Result<Vec<Arc<ClientConfig>>> {
        // The agent's own verifier and config builder, verifying the dialled host.
        let verifier = GatewayVerifier::new(self.roots.clone(), None, counter.clone())?;
        self.vehicles[range]
            .iter()
            .map(|v| Ok(client_config(verifier.clone(), v.chain.clone(), v.key.clone_key())?))
            .collect()
    }
}

fn write(dir: &Path, stem: &str, pem: IssuedCert) -> Result<CertFiles> {
    let (cert, key) = pem.write(dir, stem)?;
    Ok(CertFiles { cert, key })
}

/// Issues `count` vehicle certificates, on every core (the CA only signs; it is shared read-only).
fn issue_vehicles(ca: &CertificateAuthority, count: usize) -> Result<Vec<Vehicle>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8);
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vehicle>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(count);
                scope.spawn(move || (start..end).map(|i| issue_one(ca, i)).collect::<Result<Vec<_>>>())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("issuing thread panicked")))
            })
            .collect()
    });
    let mut vehicles = Vec::with_capacity(count);
    for part in parts {
        vehicles.extend(part?);
    }
    Ok(vehicles)
}

fn issue_one(ca: &CertificateAuthority, index: usize) -> Result<Vehicle> {
    let vin = vin(index as u64);
    let pem = ca.issue_vehicle(&vin)?;
    let chain = CertificateDer::pem_slice_iter(pem.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes())?;
    Ok(Vehicle { vin, pem, chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vins_are_valid_distinct_and_deterministic() {
        let vins: Vec<Vin> = (0..2000).map(vin).collect();
        let distinct: std::collections::HashSet<_> = vins.iter().collect();
        assert_eq!(distinct.len(), vins.len());
        assert_eq!(vin(0).as_str(), "LFBSM000000000000");
        assert_eq!(vin(34).as_str(), "LFBSM000000000011");
        assert_eq!(vin(1_000_000), vin(1_000_000));
        // The largest index still parses (and Vin::parse rejects I, O and Q).
        assert_eq!(vin(u64::MAX).as_str().len(), 17);
    }
}
