//! The demo's files: the development PKI (with a certificate for each partner, the car and the
//! demo's operator), the gateway's partner entries and ops listener, and the sample `gateway.toml` / `agent.toml` that let you run
//! the binaries yourself in the demo's place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use certs::{DevPki, IssuingCa};
use gateway::GatewayConfig;
use gateway::config::{OpsConfig, PartnerApiConfig, PartnerConfig};
use proto::Vin;
use proto::adapter::cli::read_text;
use vehicle_agent::AgentConfig;

use crate::DEMO_VIN;

/// The name (certificate CN) of the demo's fleet operator.
pub const DEMO_OPERATOR: &str = "demo-operator";

/// The gRPC services of the three reference partners, which the car forwards.
pub const SERVICES: [&str; 3] = [
    proto::parking::v1::parking_payment_server::SERVICE_NAME,
    proto::navigation::v1::navigation_server::SERVICE_NAME,
    proto::social_login::v1::social_login_server::SERVICE_NAME,
];

/// A partner's server certificate and key.
pub struct PartnerFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl PartnerFiles {
    /// The certificate and key as PEM text.
    pub async fn read(&self) -> Result<(String, String)> {
        Ok((read_text(&self.cert).await?, read_text(&self.key).await?))
    }
}

/// Where the three partners listen, as the gateway reaches them.
#[derive(Debug, Clone, Copy)]
pub struct PartnerAddrs {
    /// `parking.v1.ParkingPayment`.
    pub parking: SocketAddr,
    /// `navigation.v1.Navigation`.
    pub navigation: SocketAddr,
    /// `identity.v1.SocialLogin` (its gRPC side, not the page).
    pub identity: SocketAddr,
}

/// The addresses of one run, for the sample configurations.
pub struct RunAddrs {
    /// The gateway's MQTT listener.
    pub mqtt: SocketAddr,
    /// The gateway's partner API, where partners push events.
    pub partner_api: SocketAddr,
    /// The gateway's ops listener.
    pub ops: SocketAddr,
    /// The car's local endpoint for in-car apps.
    pub agent: SocketAddr,
    /// The partners.
    pub partners: PartnerAddrs,
}

/// The demo's development PKI, its files by role.
pub struct DemoFiles {
    /// Where they are (absolute).
    pub dir: PathBuf,
    /// The root: what the car and the gateway verify servers with.
    pub ca_cert: PathBuf,
    /// What the gateway's MQTT port trusts.
    pub vehicles_ca: PathBuf,
    /// What the partners trust: it signs only the gateway's client certificate.
    pub gateway_clients_ca: PathBuf,
    /// What the gateway's partner API trusts: it signs only partners.
    pub partners_ca: PathBuf,
    /// The gateway's server certificate.
    pub gateway_cert: PathBuf,
    /// Its key.
    pub gateway_key: PathBuf,
    /// The certificate the gateway presents to partners.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// The demo car's certificate.
    pub vehicle_cert: PathBuf,
    /// Its key.
    pub vehicle_key: PathBuf,
    /// What the gateway's ops listener trusts: it signs only operators.
    pub operators_ca: PathBuf,
    /// The demo operator's certificate ([`DEMO_OPERATOR`]), for the dashboard and the CLI.
    pub operator_cert: PathBuf,
    /// Its key.
    pub operator_key: PathBuf,
    /// The parking partner's server certificate.
    pub parking: PartnerFiles,
    /// The navigation partner's.
    pub navigation: PartnerFiles,
    /// The identity partner's.
    pub identity: PartnerFiles,
}

impl DemoFiles {
    /// Reuses the PKI in `dir` if there is a complete one, so repeated runs keep the same CAs.
    pub fn ensure(dir: &Path) -> Result<DemoFiles> {
        // Absolute paths, so that the sample configurations work from any directory.
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = &std::fs::canonicalize(dir)?;
        let existing = DevPki::open(dir);
        let pki = if existing.is_complete() {
            existing
        } else if existing.ca_cert().exists() {
            // Made before the per-role CAs: its certificates would not pass the new trust.
            println!(
                "replacing the development PKI in {}/: it predates the per-role CAs",
                dir.display()
            );
            DevPki::init(dir, &[], true)?
        } else {
            DevPki::init(dir, &[], false)?
        };
        let ca = pki.authority()?;
        let vin = Vin::parse(DEMO_VIN)?;
        let (vehicle_cert, vehicle_key) = ca.issue_vehicle(&vin)?.write(dir, vin.as_str())?;
        let (operator_cert, operator_key) = ca.issue_operator(DEMO_OPERATOR)?.write(dir, DEMO_OPERATOR)?;
        // Each partner its own certificate, as each would be a different company.
        let partner = |name: &str| -> Result<PartnerFiles> {
            let (cert, key) = ca.issue_partner(name)?.write(dir, name)?;
            Ok(PartnerFiles { cert, key })
        };
        Ok(DemoFiles {
            dir: dir.clone(),
            ca_cert: pki.ca_cert(),
            vehicles_ca: pki.issuing_ca_cert(IssuingCa::Vehicles),
            gateway_clients_ca: pki.issuing_ca_cert(IssuingCa::GatewayClients),
            partners_ca: pki.issuing_ca_cert(IssuingCa::Partners),
            gateway_cert: pki.gateway_cert(),
            gateway_key: pki.gateway_key(),
            client_cert: pki.gateway_client_cert(),
            client_key: pki.gateway_client_key(),
            vehicle_cert,
            vehicle_key,
            operators_ca: pki.issuing_ca_cert(IssuingCa::Operators),
            operator_cert,
            operator_key,
            parking: partner("parking")?,
            navigation: partner("navigation")?,
            identity: partner("identity")?,
        })
    }

    /// The CA partners trust, as PEM text.
    pub async fn gateway_clients_ca_pem(&self) -> Result<String> {
        Ok(read_text(&self.gateway_clients_ca).await?)
    }

    /// The root CA as PEM text: what partners verify the gateway's partner API with.
    pub async fn ca_cert_pem(&self) -> Result<String> {
        Ok(read_text(&self.ca_cert).await?)
    }

    /// The gateway's configuration for this run: MQTT on `mqtt`, the partner API (for events)
    /// on `partner_api`, the three partners at `partners`.
    pub fn gateway_config(&self, mqtt: SocketAddr, partner_api: SocketAddr, partners: PartnerAddrs) -> GatewayConfig {
        let mut config = GatewayConfig::new(
            self.gateway_cert.clone(),
            self.gateway_key.clone(),
            self.vehicles_ca.clone(),
        );
        config.mqtt.listen = mqtt;
        config.partner_api = Some(PartnerApiConfig {
            listen: partner_api,
            client_ca: self.partners_ca.clone(),
        });
        config.storage.url = format!("sqlite://{}", self.dir.join("gateway.db").display());
        config.partners = vec![
            self.partner_entry(
                SERVICES[0],
                "parking",
                &["ListNearbyLots", "GetReceipt"],
                partners.parking,
            ),
            self.partner_entry(
                SERVICES[1],
                "navigation",
                &["SearchPlaces", "Route"],
                partners.navigation,
            ),
            // Polls are reads, and a LINKED answer holds a token the ledger must not keep.
            self.partner_entry(SERVICES[2], "identity", &["PollDeviceLogin"], partners.identity),
        ];
        config
    }

    /// The gateway's ops listener on `listen` (fleet ops gRPC and the dashboard), for operator
    /// certificates of the operators CA only.
    pub fn ops_config(&self, listen: SocketAddr) -> OpsConfig {
        OpsConfig::new(listen, self.operators_ca.clone())
    }

    /// The car's configuration: the gateway's MQTT port on `mqtt`, apps on `local`, all three services.
    pub fn agent_config(&self, mqtt: SocketAddr, local: SocketAddr) -> AgentConfig {
        let mut config = AgentConfig::new(
            format!("localhost:{}", mqtt.port()),
            self.ca_cert.clone(),
            self.vehicle_cert.clone(),
            self.vehicle_key.clone(),
        );
        config.local_listen = local;
        config.state_dir = self.dir.join("agent-state");
        config.services = SERVICES.iter().map(|s| (*s).to_owned()).collect();
        config
    }

    fn partner_entry(&self, service: &str, name: &str, read_only: &[&str], addr: SocketAddr) -> PartnerConfig {
        let endpoint = format!("https://localhost:{}", addr.port());
        let files = (self.ca_cert.clone(), self.client_cert.clone(), self.client_key.clone());
        PartnerConfig {
            name: Some(name.into()),
            read_only_methods: read_only.iter().map(|m| (*m).to_owned()).collect(),
            timeout: Some(Duration::from_secs(10)),
            ..PartnerConfig::new(service, endpoint).over_mtls(files.0, files.1, files.2)
        }
    }

    /// `gateway.toml` and `agent.toml` matching this run of the demo (the addresses it bound,
    /// its database and the car's state directory), for `gateway run` / `vehicle-agent run` in
    /// its place: the configuration structs themselves, serialized, so every setting is there
    /// with its default.
    pub async fn write_sample_configs(&self, run: &RunAddrs) -> Result<()> {
        let mut gateway = self.gateway_config(run.mqtt, run.partner_api, run.partners);
        gateway.ops = Some(self.ops_config(run.ops));
        let agent = self.agent_config(run.mqtt, run.agent);
        let header = |what: &str| format!("# Sample {what} configuration written by `demo`.\n");
        let gateway = header("gateway") + &toml::to_string(&gateway)?;
        let agent = header("vehicle agent") + &toml::to_string(&agent)?;
        tokio::fs::write(self.dir.join("gateway.toml"), gateway).await?;
        tokio::fs::write(self.dir.join("agent.toml"), agent).await?;
        Ok(())
    }
}
