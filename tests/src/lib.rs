//! Fixtures for end-to-end tests: a throwaway PKI, a reference parking adapter on mTLS, the
//! gateway, agents and raw MQTT clients, all real and on 127.0.0.1 port 0.
//!
//! Tests read like sentences: `let platform = Platform::start().await; let car =
//! platform.agent(VIN_A).await; ...`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use certs::{CertificateAuthority, DevPki, IssuedCert, IssuingCa, Validity};
use gateway::config::PartnerConfig;
use gateway::{Gateway, GatewayConfig, SessionEvent};
use parking_adapter::ParkingService;
use proto::Vin;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tonic::transport::Channel;
use vehicle_agent::{Agent, AgentConfig};

/// A VIN for the car most tests drive.
pub const VIN_A: &str = "LSVAU2180N2183294";
/// A second car, for isolation tests.
pub const VIN_B: &str = "WBA3B5C50DF123456";
/// The parking partner's gRPC service.
pub const PARKING: &str = "parking.v1.ParkingPayment";

/// Installs the process's one crypto provider and a test log subscriber.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// Certificate and key files of one party.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Certificate (PEM) path.
    pub cert: PathBuf,
    /// Key (PEM) path.
    pub key: PathBuf,
    /// The PEMs themselves.
    pub pem: IssuedCert,
}

/// A development PKI as `certs init` lays it out (a root and one issuing CA per client
/// role), and everything issued from it, in a temporary directory.
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

    /// The vehicles CA file: the only anchor of the gateway's MQTT port.
    pub fn vehicles_ca(&self) -> PathBuf {
        self.layout.issuing_ca_cert(IssuingCa::Vehicles)
    }

    /// The partners CA file: the only anchor of the gateway's partner API.
    pub fn partners_ca(&self) -> PathBuf {
        self.layout.issuing_ca_cert(IssuingCa::Partners)
    }

    /// The gateway-clients CA, PEM: the only anchor of partner adapters.
    pub fn gateway_clients_ca_pem(&self) -> &str {
        self.ca.issuing_cert_pem(IssuingCa::GatewayClients)
    }

    /// A vehicle certificate for `vin`.
    pub fn vehicle(&self, vin: &str) -> Credentials {
        let vin = Vin::parse(vin).expect("valid VIN");
        write(
            &self.dir,
            vin.as_str(),
            self.ca.issue_vehicle(&vin).expect("vehicle cert"),
        )
    }

    /// A vehicle certificate for `vin` that expired yesterday.
    pub fn expired_vehicle(&self, vin: &str) -> Credentials {
        let vin = Vin::parse(vin).expect("valid VIN");
        let pem = self
            .ca
            .issue_vehicle_with_validity(&vin, Validity::expired())
            .expect("expired cert");
        write(&self.dir, &format!("{vin}-expired"), pem)
    }

    /// A partner certificate named `name`.
    pub fn partner(&self, name: &str) -> Credentials {
        write(&self.dir, name, self.ca.issue_partner(name).expect("partner cert"))
    }

    /// An operator certificate named `name`.
    pub fn operator(&self, name: &str) -> Credentials {
        write(&self.dir, name, self.ca.issue_operator(name).expect("operator cert"))
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

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn write(dir: &TempDir, stem: &str, pem: IssuedCert) -> Credentials {
    let (cert, key) = pem.write(dir.path(), stem).expect("write cert");
    Credentials { cert, key, pem }
}

/// A running parking adapter (the reference one, or any tonic service standing in for it).
pub struct RunningPartner {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RunningPartner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the reference parking adapter on mTLS, trusting only `pki`'s gateway-clients CA.
pub async fn start_parking(pki: &TestPki, service: ParkingService) -> RunningPartner {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind adapter");
    let addr = listener.local_addr().unwrap();
    let tls = partner_tls(pki);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(parking_adapter::serve(listener, Some(tls), service, async {
        let _ = stopped.await;
    }));
    RunningPartner { addr, stop: Some(stop) }
}

/// The TLS of a partner adapter: its partner certificate, and only the gateway-clients CA trusted.
fn partner_tls(pki: &TestPki) -> tonic::transport::ServerTlsConfig {
    let me = pki.partner("parking");
    parking_adapter::mtls_config(&me.pem.cert_pem, &me.pem.key_pem, pki.gateway_clients_ca_pem())
}

/// Starts any tonic service over mTLS as if it were a partner adapter (the reference one's TLS
/// and its check that every call comes from the gateway).
pub async fn start_partner_service<S>(pki: &TestPki, service: S) -> RunningPartner
where
    S: tower_service_bound::Routable,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind partner");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tls_config(partner_tls(pki))
        .expect("tls")
        .layer(tonic::service::InterceptorLayer::new(
            parking_adapter::require_gateway_client,
        ))
        .add_service(service);
    tokio::spawn(server.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    RunningPartner { addr, stop: Some(stop) }
}

/// The bound a service must meet to be served by tonic, spelled once.
pub mod tower_service_bound {
    use std::convert::Infallible;

    /// A tonic-servable service.
    pub trait Routable:
        tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static
    {
    }

    impl<T> Routable for T where
        T: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
                Future: Send + 'static,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static
    {
    }
}

/// A partner entry pointing at `addr` over mTLS: the gateway presents its client certificate
/// and verifies the adapter against the root.
pub fn partner_entry(pki: &TestPki, service: &str, addr: SocketAddr) -> PartnerConfig {
    let client = &pki.gateway_client;
    PartnerConfig {
        service: service.into(),
        name: Some("parking".into()),
        read_only_methods: vec!["ListNearbyLots".into(), "GetReceipt".into()],
        endpoint: format!("https://localhost:{}", addr.port()),
        timeout: Some(Duration::from_secs(5)),
        connect_timeout: Duration::from_secs(2),
        ca_cert: Some(pki.ca_cert.clone()),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
        tls_server_name: None,
    }
}

/// Gateway configuration for `pki` with the given partners (its MQTT port trusting only the
/// vehicles CA); tweak fields before starting.
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
        Ok("postgres") => postgres_schema_url(),
        _ => format!("sqlite://{}", pki.dir.path().join("gateway.db").display()),
    }
}

/// A URL for a new, empty schema in the test PostgreSQL (`TEST_POSTGRES_URL`, default local).
pub fn postgres_schema_url() -> String {
    let base = std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // Schemas of earlier runs (older than an hour) are dropped, once per test process.
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let sweep = "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace \
            WHERE nspname ~ '^it_[0-9]+_[0-9]+_[0-9]+$' \
            AND split_part(nspname, '_', 3)::numeric < (extract(epoch from now()) - 3600) * 1e9 \
            LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END $$";
        let _ = std::process::Command::new("psql")
            .args([base.as_str(), "-qc", sweep])
            .status();
    });
    let schema = format!("it_{}", uuid_like());
    let status = std::process::Command::new("psql")
        .args([base.as_str(), "-qc", &format!("CREATE SCHEMA {schema}")])
        .status()
        .expect("psql");
    assert!(status.success(), "cannot create schema {schema}");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}_{}_{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// The whole system: PKI, the reference parking adapter, and the gateway routing to it.
pub struct Platform {
    /// The PKI everything trusts.
    pub pki: TestPki,
    /// The reference adapter's state (counts charges).
    pub parking: ParkingService,
    /// The running adapter.
    pub parking_server: RunningPartner,
    /// The gateway.
    pub gateway: Gateway,
}

impl Platform {
    /// Starts adapter and gateway with default settings.
    pub async fn start() -> Platform {
        Platform::start_with(|_| {}).await
    }

    /// Starts adapter and gateway, letting `tweak` adjust the gateway's configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Platform {
        Platform::start_with_pki(|_, config| tweak(config)).await
    }

    /// [`Platform::start_with`], with the PKI at hand for settings that name its files.
    pub async fn start_with_pki(tweak: impl FnOnce(&TestPki, &mut GatewayConfig)) -> Platform {
        init();
        let pki = TestPki::new();
        let parking = ParkingService::new();
        let parking_server = start_parking(&pki, parking.clone()).await;
        let mut config = gateway_config(&pki, vec![partner_entry(&pki, PARKING, parking_server.addr)]);
        tweak(&pki, &mut config);
        let gateway = start_gateway(config).await;
        Platform {
            pki,
            parking,
            parking_server,
            gateway,
        }
    }

    /// Where cars connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.gateway.mqtt_addr()
    }

    /// Agent configuration for `vin` against this gateway (local gRPC on port 0).
    pub fn agent_config(&self, vin: &str) -> AgentConfig {
        let me = self.pki.vehicle(vin);
        let mut config = AgentConfig::new(
            format!("localhost:{}", self.mqtt_addr().port()),
            self.pki.ca_cert.clone(),
            me.cert,
            me.key,
        );
        config.local_listen = "127.0.0.1:0".parse().unwrap();
        config.state_dir = self.pki.dir.path().join(format!("agent-{vin}-{}", uuid_like()));
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        config
    }

    /// A started agent for `vin`, connected to the gateway.
    pub async fn agent(&self, vin: &str) -> Agent {
        let agent = Agent::start(self.agent_config(vin)).await.expect("agent starts");
        within(Duration::from_secs(10), agent.wait_connected(), "agent connects").await;
        agent
    }

    /// A raw MQTT client presenting `creds`, with client id `client_id`.
    pub fn mqtt_client(&self, creds: &Credentials, client_id: &str) -> (AsyncClient, EventLoop) {
        mqtt_client(self.mqtt_addr(), &self.pki.ca_cert, creds, client_id)
    }

    /// A raw MQTT client for `vin` (its own certificate and client id) with `tweak` applied
    /// to its options.
    pub fn mqtt_client_with(&self, vin: &str, tweak: impl FnOnce(&mut MqttOptions)) -> (AsyncClient, EventLoop) {
        let mut options = mqtt_options(self.mqtt_addr(), &self.pki.ca_cert, &self.pki.vehicle(vin), vin);
        tweak(&mut options);
        AsyncClient::new(options, 100)
    }

    /// Session events from now on.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.gateway.session_events()
    }
}

/// Starts a gateway, panicking with the reason if it cannot.
pub async fn start_gateway(config: GatewayConfig) -> Gateway {
    let listener = TcpListener::bind(config.mqtt.listen).await.expect("bind gateway");
    Gateway::start_on(config, listener).await.expect("gateway starts")
}

/// A rustls client config trusting `ca` and presenting `creds`.
pub fn client_tls(ca: &PathBuf, creds: &Credentials) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&creds.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&creds.key).unwrap();
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// A raw MQTT 3.1.1 client over mTLS, for tests that play a misbehaving car.
pub fn mqtt_client(addr: SocketAddr, ca: &PathBuf, creds: &Credentials, client_id: &str) -> (AsyncClient, EventLoop) {
    AsyncClient::new(mqtt_options(addr, ca, creds, client_id), 100)
}

/// The options of [`mqtt_client`] (clean session, 30 s keep-alive), for tests that change some.
pub fn mqtt_options(addr: SocketAddr, ca: &PathBuf, creds: &Credentials, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "localhost", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client_tls(
        ca, creds,
    ))));
    options
}

/// The method most tests call: read-only, cheap.
pub const LIST: &str = "/parking.v1.ParkingPayment/ListNearbyLots";

/// An encoded `ListNearbyLotsRequest` around the Bund, Shanghai.
pub fn nearby_lots() -> Vec<u8> {
    use prost::Message;
    proto::parking::v1::ListNearbyLotsRequest {
        near: Some(proto::parking::v1::GeoPoint {
            latitude: 31.23,
            longitude: 121.47,
        }),
        radius_m: 5000,
        max_results: 1,
    }
    .encode_to_vec()
}

/// The status code of a response envelope.
pub fn status_code(response: &proto::vehicle::v1::Response) -> proto::vehicle::v1::Code {
    response.status.clone().unwrap_or_default().code()
}

/// The parking the tests' driver does: lot `lot-bund-01` in Shanghai, plate 沪A12345.
pub fn parking_at_the_bund() -> proto::parking::v1::StartSessionRequest {
    proto::parking::v1::StartSessionRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪A12345".into(),
    }
}

/// Starts [`parking_at_the_bund`] from an in-car app and returns the session the partner opened.
pub async fn park_from_the_app(app: &mut ParkingPaymentClient<Channel>) -> proto::parking::v1::ParkingSession {
    app.start_session(parking_at_the_bund())
        .await
        .expect("the parking session starts")
        .into_inner()
        .session
        .expect("a started session")
}

/// A generated parking client talking to an agent's local gRPC endpoint, as an in-car app would.
pub async fn in_car_app(agent: &Agent) -> ParkingPaymentClient<Channel> {
    ParkingPaymentClient::connect(format!("http://{}", agent.local_addr()))
        .await
        .expect("connect to agent")
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`. A guard against
/// hangs, not a synchronisation device.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits for the next `Disconnected` event of `vin` and returns its reason.
pub async fn disconnected(events: &mut broadcast::Receiver<SessionEvent>, vin: &str) -> gateway::DisconnectReason {
    within(
        Duration::from_secs(10),
        async {
            loop {
                match events.recv().await.expect("session events") {
                    SessionEvent::Disconnected { vin: v, reason, .. } if v.as_str() == vin => return reason,
                    _ => {}
                }
            }
        },
        "disconnect event",
    )
    .await
}

/// Polls a raw client until its CONNACK arrives (or the connection fails).
pub async fn connack(eventloop: &mut EventLoop) -> Result<rumqttc::ConnAck, rumqttc::ConnectionError> {
    within(
        Duration::from_secs(10),
        async {
            loop {
                if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) = eventloop.poll().await? {
                    return Ok(ack);
                }
            }
        },
        "CONNACK",
    )
    .await
}

/// Polls a raw client until a packet matching `pick` arrives, returning what `pick` returns.
pub async fn next_incoming<T>(
    eventloop: &mut EventLoop,
    mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>,
) -> Result<T, rumqttc::ConnectionError> {
    within(
        Duration::from_secs(10),
        async {
            loop {
                if let rumqttc::Event::Incoming(packet) = eventloop.poll().await?
                    && let Some(found) = pick(&packet)
                {
                    return Ok(found);
                }
            }
        },
        "incoming packet",
    )
    .await
}

/// Polls until the gateway closes the connection, returning the error that ended it.
pub async fn closed(eventloop: &mut EventLoop) -> rumqttc::ConnectionError {
    within(
        Duration::from_secs(10),
        async {
            loop {
                if let Err(e) = eventloop.poll().await {
                    return e;
                }
            }
        },
        "connection closed",
    )
    .await
}

/// Encodes a vehicle request envelope.
pub fn envelope(request_id: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    use prost::Message;
    proto::vehicle::v1::Request {
        request_id: request_id.into(),
        idempotency_key: String::new(),
        method: method.into(),
        timeout_ms: 5_000,
        payload,
    }
    .encode_to_vec()
}

/// Decodes the payload of a publish as a response envelope.
pub fn response_of(packet: &rumqttc::Packet) -> Option<proto::vehicle::v1::Response> {
    use prost::Message;
    match packet {
        rumqttc::Packet::Publish(p) => proto::vehicle::v1::Response::decode(p.payload.clone()).ok(),
        _ => None,
    }
}

/// A car speaking MQTT 3.1.1 on a TLS stream of its own with rumqttc's encoder only: unlike
/// rumqttc's client, it sends any filter, topic or packet, valid or not.
pub struct WireCar {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    read: bytes::BytesMut,
}

impl WireCar {
    /// Opens a TLS connection to `platform`'s gateway presenting `tls`'s certificate (see
    /// [`client_tls`]); no MQTT packet is sent yet.
    pub async fn open(platform: &Platform, tls: Arc<ClientConfig>) -> WireCar {
        let tcp = tokio::net::TcpStream::connect(platform.mqtt_addr())
            .await
            .expect("connect to the gateway");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a server name");
        let stream = within(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            "TLS handshake",
        )
        .await
        .expect("TLS handshake");
        WireCar {
            stream,
            read: bytes::BytesMut::new(),
        }
    }

    /// Writes `packets`; fails if the gateway has closed the connection.
    pub async fn send(&mut self, packets: &[rumqttc::Packet]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut bytes = bytes::BytesMut::new();
        for packet in packets {
            packet.write(&mut bytes, usize::MAX).expect("an encodable packet");
        }
        self.stream.write_all(&bytes).await
    }

    /// Ends the car's side of the stream (TLS close_notify), as a car that goes away without
    /// DISCONNECT; it can still read.
    pub async fn close_sending(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.shutdown().await
    }

    /// The next packet from the gateway, or `None` once it has closed the connection.
    pub async fn next(&mut self) -> Option<rumqttc::Packet> {
        use tokio::io::AsyncReadExt;
        within(
            Duration::from_secs(10),
            async {
                loop {
                    match rumqttc::Packet::read(&mut self.read, usize::MAX) {
                        Ok(packet) => return Some(packet),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("the gateway sent a malformed packet: {e}"),
                    }
                    match self.stream.read_buf(&mut self.read).await {
                        Ok(0) | Err(_) => {
                            assert!(self.read.is_empty(), "the gateway closed mid-packet");
                            return None;
                        }
                        Ok(_) => {}
                    }
                }
            },
            "a packet from the gateway",
        )
        .await
    }

    /// Every packet until the gateway closes the connection.
    pub async fn until_closed(&mut self) -> Vec<rumqttc::Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.next().await {
            packets.push(packet);
        }
        packets
    }
}

/// A raw car: connected, subscribed to its own responses, ready to publish envelopes.
pub struct RawCar {
    /// The VIN.
    pub vin: Vin,
    /// The client.
    pub client: AsyncClient,
    /// Its event loop; poll it to make progress.
    pub eventloop: EventLoop,
}

impl RawCar {
    /// Connects as `vin` with its own certificate and subscribes to its responses.
    pub async fn connect(platform: &Platform, vin: &str) -> RawCar {
        let creds = platform.pki.vehicle(vin);
        let (client, mut eventloop) = platform.mqtt_client(&creds, vin);
        connack(&mut eventloop).await.expect("raw car connects");
        let vin = Vin::parse(vin).unwrap();
        client
            .subscribe(proto::topics::responses(&vin), rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        next_incoming(&mut eventloop, |p| {
            matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
        })
        .await
        .unwrap();
        RawCar { vin, client, eventloop }
    }

    /// Publishes raw bytes on this car's request topic.
    pub async fn publish_request(&mut self, bytes: Vec<u8>) {
        self.client
            .publish(
                proto::topics::requests(&self.vin),
                rumqttc::QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }

    /// The next response envelope delivered to this car.
    pub async fn next_response(&mut self) -> proto::vehicle::v1::Response {
        next_incoming(&mut self.eventloop, response_of).await.expect("response")
    }

    /// Starts [`parking_at_the_bund`] over raw MQTT (idempotency key `start-key`) and returns
    /// the session id.
    pub async fn park(&mut self) -> String {
        use prost::Message;
        let start = "/parking.v1.ParkingPayment/StartSession";
        self.publish_request(keyed_envelope(
            "start-1",
            "start-key",
            start,
            parking_at_the_bund().encode_to_vec(),
        ))
        .await;
        let r = self.next_response().await;
        assert_eq!(
            r.status.clone().unwrap_or_default().code(),
            proto::vehicle::v1::Code::Ok,
            "{r:?}"
        );
        proto::parking::v1::StartSessionResponse::decode(r.payload.as_slice())
            .expect("a StartSessionResponse")
            .session
            .expect("a started session")
            .session_id
    }
}

/// A parking partner that wraps the reference one with scripted faults: it can fail the first
/// EndSession with UNAVAILABLE, or hold EndSession calls until the test releases them. It
/// counts the EndSession calls that reach it (the reference service counts actual charges).
#[derive(Clone)]
pub struct ScriptedParking {
    inner: ParkingService,
    fail_first_end: Arc<std::sync::atomic::AtomicBool>,
    hold: Arc<tokio::sync::Semaphore>,
    holding: bool,
    arrived: Arc<tokio::sync::Notify>,
    end_calls: Arc<std::sync::atomic::AtomicU64>,
}

impl ScriptedParking {
    /// Behaves exactly like `inner`.
    pub fn new(inner: ParkingService) -> ScriptedParking {
        ScriptedParking {
            inner,
            fail_first_end: Arc::default(),
            hold: Arc::new(tokio::sync::Semaphore::new(0)),
            holding: false,
            arrived: Arc::default(),
            end_calls: Arc::default(),
        }
    }

    /// The first EndSession answers UNAVAILABLE without touching the session.
    pub fn failing_first_end(self) -> Self {
        self.fail_first_end.store(true, std::sync::atomic::Ordering::SeqCst);
        self
    }

    /// Every EndSession waits for [`ScriptedParking::release`] before running.
    pub fn holding_ends(mut self) -> Self {
        self.holding = true;
        self
    }

    /// Lets `n` held EndSession calls proceed.
    pub fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    /// Resolves when an EndSession call has reached the partner (register before triggering).
    pub fn end_arrived(&self) -> tokio::sync::futures::OwnedNotified {
        self.arrived.clone().notified_owned()
    }

    /// EndSession calls that reached this partner.
    pub fn end_calls(&self) -> u64 {
        self.end_calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once `n` EndSession calls in all have reached the partner.
    pub async fn ends_arrived(&self, n: u64) {
        loop {
            // Registered before the check, so an arrival in between is not missed.
            let arrived = self.end_arrived();
            if self.end_calls() >= n {
                return;
            }
            arrived.await;
        }
    }
}

#[tonic::async_trait]
impl proto::parking::v1::parking_payment_server::ParkingPayment for ScriptedParking {
    async fn list_nearby_lots(
        &self,
        r: tonic::Request<proto::parking::v1::ListNearbyLotsRequest>,
    ) -> Result<tonic::Response<proto::parking::v1::ListNearbyLotsResponse>, tonic::Status> {
        self.inner.list_nearby_lots(r).await
    }

    async fn start_session(
        &self,
        r: tonic::Request<proto::parking::v1::StartSessionRequest>,
    ) -> Result<tonic::Response<proto::parking::v1::StartSessionResponse>, tonic::Status> {
        self.inner.start_session(r).await
    }

    async fn end_session(
        &self,
        r: tonic::Request<proto::parking::v1::EndSessionRequest>,
    ) -> Result<tonic::Response<proto::parking::v1::EndSessionResponse>, tonic::Status> {
        self.end_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.arrived.notify_waiters();
        if self.fail_first_end.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("payment provider briefly unavailable"));
        }
        if self.holding {
            self.hold.acquire().await.expect("hold semaphore").forget();
        }
        self.inner.end_session(r).await
    }

    async fn get_receipt(
        &self,
        r: tonic::Request<proto::parking::v1::GetReceiptRequest>,
    ) -> Result<tonic::Response<proto::parking::v1::Receipt>, tonic::Status> {
        self.inner.get_receipt(r).await
    }
}

impl Platform {
    /// Starts the gateway in front of a scripted parking partner instead of the plain one.
    pub async fn start_scripted(
        script: impl FnOnce(ScriptedParking) -> ScriptedParking,
    ) -> (Platform, ScriptedParking) {
        Platform::start_scripted_with(script, |_| {}).await
    }

    /// [`Platform::start_scripted`], letting `tweak` adjust the gateway's configuration.
    pub async fn start_scripted_with(
        script: impl FnOnce(ScriptedParking) -> ScriptedParking,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> (Platform, ScriptedParking) {
        init();
        let pki = TestPki::new();
        let parking = ParkingService::new();
        let scripted = script(ScriptedParking::new(parking.clone()));
        let server = start_partner_service(
            &pki,
            proto::parking::v1::parking_payment_server::ParkingPaymentServer::new(scripted.clone()),
        )
        .await;
        let mut config = gateway_config(&pki, vec![partner_entry(&pki, PARKING, server.addr)]);
        tweak(&mut config);
        let gateway = start_gateway(config).await;
        (
            Platform {
                pki,
                parking,
                parking_server: server,
                gateway,
            },
            scripted,
        )
    }
}

/// Encodes a request envelope with an explicit idempotency key.
pub fn keyed_envelope(request_id: &str, key: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    use prost::Message;
    proto::vehicle::v1::Request {
        request_id: request_id.into(),
        idempotency_key: key.into(),
        method: method.into(),
        timeout_ms: 10_000,
        payload,
    }
    .encode_to_vec()
}

/// A binary of the workspace, as `cargo test --workspace` builds it next to the test binary.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds every binary), or `cargo build --bins` first",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 for a process that must come back on the same port after a kill.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose output is watched line by line; killed with SIGKILL when dropped.
pub struct Process {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Spawns `binary` with `args`, capturing stdout and stderr.
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut cmd = tokio::process::Command::new(workspace_binary(binary));
        cmd.args(args)
            .env("RUST_LOG", "info,rumqttd=off")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut reader = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Process { child, lines }
    }

    /// Waits for an output line containing `needle` (and returns it).
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        within(
            Duration::from_secs(30),
            async {
                let mut seen = Vec::new();
                while let Some(line) = self.lines.recv().await {
                    if line.contains(needle) {
                        return line;
                    }
                    seen.push(line);
                }
                panic!(
                    "process ended without printing {needle:?}; it printed:\n{}",
                    seen.join("\n")
                );
            },
            needle,
        )
        .await
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Waits for the process to exit and returns its code and everything it printed.
    pub async fn exit(mut self) -> (Option<i32>, String) {
        let status = within(Duration::from_secs(30), self.child.wait(), "process exit")
            .await
            .expect("wait");
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        // Output may still be in flight after exit; drain what is left.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), self.lines.recv()).await {
            out.push(line);
        }
        (status.code(), out.join("\n"))
    }
}

/// Writes a gateway TOML configuration for `config` next to the PKI and returns its path.
pub fn write_gateway_toml(pki: &TestPki, config: &GatewayConfig) -> PathBuf {
    let mut toml = format!(
        "[mqtt]\nlisten = \"{}\"\n\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\n[storage]\nurl = {:?}\n",
        config.mqtt.listen, config.tls.cert, config.tls.key, config.tls.client_ca, config.storage.url
    );
    for p in &config.partners {
        toml.push_str(&format!(
            "\n[[partners]]\nservice = {:?}\nname = \"parking\"\nread_only_methods = [\"ListNearbyLots\", \"GetReceipt\"]\nendpoint = {:?}\ntimeout = \"30s\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            p.service,
            p.endpoint,
            p.ca_cert.as_ref().unwrap(),
            p.client_cert.as_ref().unwrap(),
            p.client_key.as_ref().unwrap()
        ));
    }
    let path = pki.dir.path().join(format!("gateway-{}.toml", uuid_like()));
    std::fs::write(&path, toml).expect("write gateway.toml");
    path
}
