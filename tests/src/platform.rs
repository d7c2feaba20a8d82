//! The gateway in front of a parking partner ([`Platform`]), its configuration and database,
//! the partner API's clients, and the vehicles' port kept bound across gateway restarts.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use gateway::config::{PartnerApiConfig, PartnerConfig};
use gateway::{ConnectionEvent, Gateway, GatewayConfig};
use parking_adapter::ParkingService;
use proto::events::v1::partner_events_client::PartnerEventsClient;
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use proto::parking::v1::parking_payment_server::ParkingPayment;
use tokio::sync::broadcast;
use tonic::transport::Channel;

use crate::partner::{PARKING, RunningPartner, parking_service, partner_entry, start_parking, start_partner};
use crate::pki::{Credentials, TestPki};
use crate::stand_in::ScriptedParking;

/// The vehicles' port: a listener bound once on 127.0.0.1 port 0 and kept for the whole test,
/// of which each gateway (in this process or a child) gets a copy. While no gateway runs,
/// the kernel queues connecting cars in its backlog, as behind a socket-activated deploy.
pub struct KeptPort {
    listener: std::net::TcpListener,
}

impl KeptPort {
    /// Binds 127.0.0.1 port 0.
    pub fn bind() -> KeptPort {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1 port 0");
        KeptPort { listener }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// `localhost:<port>`, for a car's `gateway` setting.
    pub fn dial(&self) -> String {
        format!("localhost:{}", self.addr().port())
    }

    /// A copy of the listener for a server in this process.
    pub fn handed_over(&self) -> tokio::net::TcpListener {
        let copy = self.listener.try_clone().expect("dup the listener");
        copy.set_nonblocking(true).expect("non-blocking listener");
        tokio::net::TcpListener::from_std(copy).expect("a tokio listener")
    }

    /// The listener itself, to hand to a child process ([`crate::Process::spawn_on`]).
    pub fn socket(&self) -> &std::net::TcpListener {
        &self.listener
    }
}

impl Default for KeptPort {
    fn default() -> Self {
        KeptPort::bind()
    }
}

/// Makes the gateway's entry for a partner listening at an address: [`partner_entry`] and its
/// kin.
pub type PartnerEntry = dyn Fn(&TestPki, SocketAddr) -> PartnerConfig;

/// The whole system but the cars: PKI, a parking partner, and the gateway routing to it.
pub struct Platform {
    /// The PKI everything trusts.
    pub pki: TestPki,
    /// The reference adapter's state (counts charges), behind the scripted partner if any.
    pub parking: ParkingService,
    /// The running partner.
    pub parking_server: RunningPartner,
    /// The gateway.
    pub gateway: Gateway,
    /// Its configuration, to start it again.
    pub config: GatewayConfig,
    /// Its vehicles' port, which outlives it.
    pub port: KeptPort,
}

impl Platform {
    /// The reference parking adapter, and the gateway with default settings.
    pub async fn start() -> Platform {
        Platform::start_with(|_| {}).await
    }

    /// [`Platform::start`], letting `tweak` adjust the gateway's configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Platform {
        Platform::start_with_pki(|_, config| tweak(config)).await
    }

    /// [`Platform::start_with`], with the PKI at hand for settings that name its files.
    pub async fn start_with_pki(tweak: impl FnOnce(&TestPki, &mut GatewayConfig)) -> Platform {
        crate::init();
        let pki = TestPki::new();
        let parking = parking_service(&pki).await;
        let server = start_parking(&pki, parking.clone()).await;
        Platform::in_front_of(pki, parking, server, tweak).await
    }

    /// [`Platform::start`] with more partners: one listener bound on 127.0.0.1 port 0 per
    /// entry, returned for the test to start its partner on, and each `entries` function
    /// making the gateway's entry for the partner at its listener's address.
    pub async fn start_beside<const N: usize>(entries: [&PartnerEntry; N]) -> (Platform, [std::net::TcpListener; N]) {
        let listeners = entries.map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a partner"));
        let platform = Platform::start_with_pki(|pki, config| {
            for (entry, listener) in entries.iter().zip(&listeners) {
                config
                    .partners
                    .push(entry(pki, listener.local_addr().expect("a bound listener")));
            }
        })
        .await;
        (platform, listeners)
    }

    /// The gateway in front of a scripted parking partner instead of the plain one.
    pub async fn start_scripted(
        script: impl FnOnce(ScriptedParking) -> ScriptedParking,
    ) -> (Platform, ScriptedParking) {
        Platform::start_scripted_with(script, |_, _| {}).await
    }

    /// [`Platform::start_scripted`], letting `tweak` adjust the gateway's configuration.
    pub async fn start_scripted_with(
        script: impl FnOnce(ScriptedParking) -> ScriptedParking,
        tweak: impl FnOnce(&TestPki, &mut GatewayConfig),
    ) -> (Platform, ScriptedParking) {
        Platform::start_wrapping(|parking| script(ScriptedParking::new(parking)), tweak).await
    }

    /// The gateway in front of a partner that `wrap` makes around the reference adapter's
    /// state (a scripted or steered stand-in), `tweak` applied to the gateway's configuration.
    pub async fn start_wrapping<P: ParkingPayment + Clone>(
        wrap: impl FnOnce(ParkingService) -> P,
        tweak: impl FnOnce(&TestPki, &mut GatewayConfig),
    ) -> (Platform, P) {
        crate::init();
        let pki = TestPki::new();
        let parking = parking_service(&pki).await;
        let partner = wrap(parking.clone());
        let server = start_partner(&pki, partner.clone()).await;
        let platform = Platform::in_front_of(pki, parking, server, tweak).await;
        (platform, partner)
    }

    /// The gateway in front of `partner`, any `ParkingPayment` (a stalling one, a talkative one).
    pub async fn start_partner(partner: impl ParkingPayment) -> Platform {
        Platform::start_partner_with(partner, |_, _| {}).await
    }

    /// [`Platform::start_partner`], with `tweak` applied to the gateway's configuration (the
    /// PKI at hand); `parking` is a reference adapter's state of its own, which `partner` does
    /// not use.
    pub async fn start_partner_with(
        partner: impl ParkingPayment,
        tweak: impl FnOnce(&TestPki, &mut GatewayConfig),
    ) -> Platform {
        crate::init();
        let pki = TestPki::new();
        let parking = parking_service(&pki).await;
        let server = start_partner(&pki, partner).await;
        Platform::in_front_of(pki, parking, server, tweak).await
    }

    async fn in_front_of(
        pki: TestPki,
        parking: ParkingService,
        server: RunningPartner,
        tweak: impl FnOnce(&TestPki, &mut GatewayConfig),
    ) -> Platform {
        let port = KeptPort::bind();
        let mut config = gateway_config(&pki, vec![partner_entry(&pki, PARKING, server.addr)]);
        config.mqtt.listen = port.addr();
        tweak(&pki, &mut config);
        let gateway = Gateway::start_on(config.clone(), port.handed_over())
            .await
            .expect("the gateway starts");
        Platform {
            pki,
            parking,
            parking_server: server,
            gateway,
            config,
            port,
        }
    }

    /// Shuts the gateway down, runs `while_down`, then starts it again with the same
    /// configuration on the same port (and database): a deploy. Cars connecting meanwhile
    /// wait in the port's backlog.
    pub async fn restart_gateway<T>(mut self, while_down: impl Future<Output = T>) -> (Platform, T) {
        self.gateway.shutdown().await;
        let outcome = while_down.await;
        self.gateway = Gateway::start_on(self.config.clone(), self.port.handed_over())
            .await
            .expect("the gateway starts again");
        (self, outcome)
    }

    /// Where cars connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.gateway.mqtt_addr()
    }

    /// Connection events from now on.
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.gateway.connection_events()
    }

    /// A client of the gateway's partner API (which must be on) presenting `creds`.
    pub async fn try_partner_events(
        &self,
        creds: &Credentials,
    ) -> Result<PartnerEventsClient<Channel>, tonic::transport::Error> {
        let addr = self.gateway.partner_api_addr().expect("the partner API is on");
        Ok(PartnerEventsClient::new(self.pki.grpc_channel(addr, creds).await?))
    }

    /// A client of the gateway's ops listener (which must be on: [`ops`]) presenting `creds`.
    pub async fn try_fleet_ops(&self, creds: &Credentials) -> Result<FleetOpsClient<Channel>, tonic::transport::Error> {
        let addr = self.gateway.ops_addr().expect("the ops listener is on");
        Ok(FleetOpsClient::new(self.pki.grpc_channel(addr, creds).await?))
    }

    /// [`Platform::try_fleet_ops`], which must connect.
    pub async fn fleet_ops(&self, creds: &Credentials) -> FleetOpsClient<Channel> {
        self.try_fleet_ops(creds).await.expect("connect to the ops listener")
    }

    /// [`Platform::try_partner_events`], which must connect.
    pub async fn partner_events(&self, creds: &Credentials) -> PartnerEventsClient<Channel> {
        self.try_partner_events(creds)
            .await
            .expect("connect to the partner API")
    }
}

/// The ops listener on 127.0.0.1 port 0, trusting `pki`'s operators CA.
pub fn ops(pki: &TestPki) -> Option<gateway::config::OpsConfig> {
    Some(gateway::config::OpsConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        pki.operators_ca(),
    ))
}

/// The partner API on 127.0.0.1 port 0, trusting the CA file `client_ca`.
pub fn partner_api(client_ca: PathBuf) -> Option<PartnerApiConfig> {
    Some(PartnerApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_ca,
    })
}

/// Gateway configuration for `pki` with the given partners (its MQTT port trusting only the
/// vehicles CA, its database from [`storage_url`]); tweak fields before starting.
pub fn gateway_config(pki: &TestPki, partners: Vec<PartnerConfig>) -> GatewayConfig {
    let mut config = GatewayConfig::new(pki.gateway.cert.clone(), pki.gateway.key.clone(), pki.vehicles_ca());
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.partners = partners;
    config.storage.url = storage_url(pki);
    config
}

/// The database tests use: a fresh SQLite file in the PKI's temp dir, or, when
/// `TEST_GATEWAY_STORAGE=postgres`, a fresh schema in the local PostgreSQL.
pub fn storage_url(pki: &TestPki) -> String {
    match std::env::var("TEST_GATEWAY_STORAGE").as_deref() {
        Ok("postgres") => crate::postgres::schema_url(),
        _ => sqlite_url(pki),
    }
}

/// A SQLite database in the PKI's temp dir.
pub fn sqlite_url(pki: &TestPki) -> String {
    format!("sqlite://{}", pki.path("gateway.db").display())
}

/// Writes `config` as a gateway TOML file in the PKI's directory and returns its path.
pub fn write_gateway_toml(pki: &TestPki, config: &GatewayConfig) -> PathBuf {
    write_toml(pki, "gateway", config)
}

/// Writes `config` as an agent TOML file in the PKI's directory and returns its path.
pub fn write_agent_toml(pki: &TestPki, config: &vehicle_agent::AgentConfig) -> PathBuf {
    write_toml(pki, "agent", config)
}

fn write_toml(pki: &TestPki, what: &str, config: &impl serde::Serialize) -> PathBuf {
    let path = pki.path(&format!("{what}-{}.toml", crate::unique_name()));
    let toml = toml::to_string(config).unwrap_or_else(|e| panic!("{what} configuration as TOML: {e}"));
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
