//! Test fixtures: a throwaway PKI, Mosquitto over mTLS standing in for the gateway's broker, a
//! fake gateway on it, a gateway that hangs up, an unreachable one, and cars wired to them.
//!
//! A test reads as what it sets up: `let mut rig = Rig::with_fake_gateway().await;` then
//! `let link = rig.connected_link().await;`, or `let offline = Offline::new();` for a car
//! whose gateway never answers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use proto::vehicle::v1::{EventAck, Request, Response};
use vehicle_agent::{Agent, AgentConfig, GatewayLink};

pub const VIN: &str = "WBA3B5C50DF123456";
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Generous bound for anything that should happen "soon": a failure, not a synchronisation.
pub const SOON: Duration = Duration::from_secs(20);

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Waits for `what` to happen, failing the test (saying what did not happen) after [`SOON`].
pub async fn soon<F: Future>(what: &str, happens: F) -> F::Output {
    match tokio::time::timeout(SOON, happens).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not within {SOON:?}"),
    }
}

/// A CA and the files of certificates it signed, in a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
}

/// A certificate file and its key file.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A certificate with subject `CN=cn, OU=ou` (when given) and the given SANs and usage.
    pub fn issue(
        &self,
        name: &str,
        cn: &str,
        ou: Option<&str>,
        sans: &[&str],
        eku: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            params.distinguished_name.push(DnType::OrganizationalUnitName, ou);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// Where [`Pki::agent_config`] keeps the agent's state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn vehicle(&self, vin: &str) -> CertFiles {
        self.issue(vin, vin, Some("vehicle"), &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn server(&self) -> CertFiles {
        self.issue(
            "server",
            "gateway",
            Some("gateway"),
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A config for the vehicle `vin` dialling `gateway`, with quick reconnects, its local
    /// endpoint on a port of its choosing and its state in `state/` of this PKI's directory
    /// (the same for every config of this PKI).
    pub fn agent_config(&self, vin: &str, gateway: &str) -> AgentConfig {
        let car = self.vehicle(vin);
        let mut config = AgentConfig::new(gateway, self.ca.clone(), car.cert, car.key);
        config.state_dir = self.state_dir();
        config.local_listen = "127.0.0.1:0".parse().unwrap();
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(300);
        config
    }

    /// The server side of TLS for a fake gateway: this CA's server certificate.
    pub fn server_tls(&self) -> rustls::ServerConfig {
        let server = self.server();
        let certs = CertificateDer::pem_file_iter(&server.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    }
}

/// The agent's link tests need Mosquitto; without it they fail, saying how to get it.
fn require_mosquitto() {
    assert!(
        Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: the agent's link tests use Mosquitto as the gateway's broker. \
         Install it with `apt-get install -y mosquitto` (CI's .ci/run does) and run the tests again."
    );
}

/// A port for Mosquitto to listen on: the one place a test picks a port for someone else.
///
/// Mosquitto must bind its TCP port itself and cannot be given port 0: 2.0 reads
/// `listener 0 <path>` as a Unix socket at `<path>`, and it never reports a port the kernel
/// chose. So the kernel picks a free port here, and [`Broker::start_with`] tries another if
/// some other process takes it before Mosquitto binds it.
fn port_for_mosquitto() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto broker requiring client certificates signed by the test CA.
pub struct Broker {
    child: Child,
    pub port: u16,
    _dir: TempDir,
    /// The broker's log lines after startup.
    pub log: mpsc::UnboundedReceiver<String>,
}

impl Broker {
    /// Clients are named by their certificate's CN, as the gateway does.
    pub async fn start(pki: &Pki) -> Broker {
        Broker::start_with(pki, "use_identity_as_username true\n").await
    }

    /// With `auth` as the authentication lines of the configuration.
    pub async fn start_with(pki: &Pki, auth: &str) -> Broker {
        require_mosquitto();
        for _ in 0..5 {
            match Broker::try_start(pki, port_for_mosquitto(), auth).await {
                Ok(broker) => return broker,
                Err(e) if e.contains("Address already in use") => continue,
                Err(e) => panic!("mosquitto: {e}"),
            }
        }
        panic!("mosquitto found no free port in 5 tries");
    }

    async fn try_start(pki: &Pki, port: u16, auth: &str) -> Result<Broker, String> {
        let server = pki.server();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 {auth}persistence false\nlog_dest stderr\nlog_type error\n\
                 log_type warning\nlog_type notice\nlog_type information\nuser root\n",
                pki.ca.display(),
                server.cert.display(),
                server.key.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let started = soon("mosquitto starts listening", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // Logged once every listener is open; "Opening ... listen socket" comes before listen().
                if line.contains(" running") {
                    return Ok(());
                }
                if line.contains("Error") {
                    return Err(line);
                }
            }
            Err("mosquitto exited".to_owned())
        })
        .await;
        started?;
        // Keep draining so the broker never blocks on a full pipe.
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Ok(Broker {
            child,
            port,
            _dir: dir,
            log,
        })
    }

    /// `localhost:<port>`, for a car's `gateway` setting.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A raw MQTT client over mutual TLS presenting `files`.
pub fn mqtt_client(pki: &Pki, files: &CertFiles, client_id: &str, port: u16) -> (AsyncClient, EventLoop) {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let mut options = MqttOptions::new(client_id, "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    options.set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(options, 64)
}

/// Stands in for the gateway: sees every car's requests and event acks, answers and pushes events.
pub struct FakeGateway {
    client: AsyncClient,
    pub requests: mpsc::UnboundedReceiver<(String, Request)>,
    pub acks: mpsc::UnboundedReceiver<(String, EventAck)>,
}

impl FakeGateway {
    pub async fn connect(pki: &Pki, port: u16) -> FakeGateway {
        let files = pki.issue(
            "fake-gateway",
            "gateway",
            Some("gateway"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (client, mut eventloop) = mqtt_client(pki, &files, "fake-gateway", port);
        client
            .subscribe_many([
                SubscribeFilter::new(proto::topics::ALL_REQUESTS.into(), QoS::AtLeastOnce),
                SubscribeFilter::new(proto::topics::ALL_EVENT_ACKS.into(), QoS::AtLeastOnce),
            ])
            .await
            .unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(vin) = proto::topics::vin_of_event_ack_topic(&p.topic) {
                            let _ = ack_tx.send((vin.to_string(), EventAck::decode(p.payload).unwrap()));
                            continue;
                        }
                        let vin = proto::topics::vin_of_request_topic(&p.topic).unwrap().to_string();
                        let request = Request::decode(p.payload).unwrap();
                        if tx.send((vin, request)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The broker went away: this fake gateway's job is over.
                    Err(e) => {
                        if subscribed_tx.is_some() {
                            eprintln!("fake gateway could not subscribe: {e}");
                        }
                        return;
                    }
                }
            }
        });
        soon("the fake gateway subscribes", subscribed).await.unwrap();
        FakeGateway { client, requests, acks }
    }

    /// The next request any car sent.
    pub async fn next_request(&mut self) -> (String, Request) {
        soon("a request reaches the gateway", self.requests.recv())
            .await
            .unwrap()
    }

    /// The next event acknowledgement any car sent.
    pub async fn next_ack(&mut self) -> (String, EventAck) {
        soon("an event ack reaches the gateway", self.acks.recv())
            .await
            .unwrap()
    }

    pub async fn respond(&self, vin: &str, response: Response) {
        self.publish(&format!("/tenants/{vin}/v1/resp"), response.encode_to_vec())
            .await;
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

/// One car (VIN [`VIN`]) and its world: a fresh PKI, Mosquitto standing in for the gateway's
/// broker, and a fake gateway subscribed on it.
pub struct Rig {
    pub pki: Pki,
    pub broker: Broker,
    pub gateway: FakeGateway,
}

impl Rig {
    pub async fn with_fake_gateway() -> Rig {
        let pki = Pki::new();
        let broker = Broker::start(&pki).await;
        let gateway = FakeGateway::connect(&pki, broker.port).await;
        Rig { pki, broker, gateway }
    }

    /// The car's configuration, dialling the broker.
    pub fn car_config(&self) -> AgentConfig {
        self.pki.agent_config(VIN, &self.broker.address())
    }

    /// The car's link, started and connected.
    pub async fn connected_link(&self) -> GatewayLink {
        connected_link(&self.car_config()).await
    }

    /// The car's agent, started and connected.
    pub async fn connected_agent(&self) -> Agent {
        connected_agent(&self.car_config()).await
    }

    pub async fn stop(self) {
        self.broker.stop().await;
    }
}

/// A link started with `config`, once connected.
pub async fn connected_link(config: &AgentConfig) -> GatewayLink {
    let link = GatewayLink::start(config).unwrap();
    soon("the link connects", link.wait_connected()).await;
    link
}

/// An agent started with `config`, once connected.
pub async fn connected_agent(config: &AgentConfig) -> Agent {
    let agent = Agent::start(config.clone()).await.unwrap();
    soon("the agent connects", agent.wait_connected()).await;
    agent
}

/// A gateway address where nothing ever answers: a listener that is bound for as long as this
/// lives but never accepts (a car's TLS handshake waits in its backlog until it times out).
pub struct Unreachable {
    _listener: std::net::TcpListener,
    port: u16,
}

impl Unreachable {
    pub fn new() -> Unreachable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        Unreachable {
            _listener: listener,
            port,
        }
    }

    /// `localhost:<port>`, for a car's `gateway` setting.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

/// One car whose gateway never answers.
pub struct Offline {
    pub pki: Pki,
    pub gateway: Unreachable,
}

impl Offline {
    pub fn new() -> Offline {
        Offline {
            pki: Pki::new(),
            gateway: Unreachable::new(),
        }
    }

    /// The car's configuration, dialling nowhere.
    pub fn car_config(&self) -> AgentConfig {
        self.pki.agent_config(VIN, &self.gateway.address())
    }

    /// The car's link, started (it never connects).
    pub fn link(&self) -> GatewayLink {
        GatewayLink::start(&self.car_config()).unwrap()
    }
}

/// How [`HangUpGateway`] ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// Sends MQTT DISCONNECT, then closes the TLS connection.
    Disconnect,
    /// Closes the TLS connection without a word, as a 3.1.1 server shutting down may.
    Close,
}

/// A gateway speaking just enough MQTT 3.1.1 over TLS (CONNACK, SUBACK) for a car to connect
/// and subscribe, which ends the car's connection when told to.
pub struct HangUpGateway {
    pub port: u16,
    goodbyes: mpsc::UnboundedSender<Goodbye>,
}

impl HangUpGateway {
    pub async fn start(pki: &Pki) -> HangUpGateway {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_tls()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (goodbyes, told) = mpsc::unbounded_channel();
        let told = Arc::new(tokio::sync::Mutex::new(told));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else { continue };
                tokio::spawn(serve_until_told(tls, told.clone()));
            }
        });
        HangUpGateway { port, goodbyes }
    }

    /// `localhost:<port>`, for a car's `gateway` setting.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Ends the car's connection (the one subscribed now, or the next) with `goodbye`.
    pub fn hang_up(&self, goodbye: Goodbye) {
        self.goodbyes.send(goodbye).unwrap();
    }
}

async fn serve_until_told<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: S,
    told: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Goodbye>>>,
) -> std::io::Result<()> {
    const CONNECT: u8 = 0x10;
    const SUBSCRIBE: u8 = 0x80;
    let (kind, _) = read_packet(&mut tls).await?;
    assert_eq!(kind & 0xf0, CONNECT, "the car starts with CONNECT");
    tls.write_all(&[0x20, 0x02, 0x00, 0x00]).await?;
    loop {
        let (kind, body) = read_packet(&mut tls).await?;
        if kind & 0xf0 != SUBSCRIBE {
            continue;
        }
        // Packet id, then (length, topic, QoS) per filter: grant QoS 1 to each.
        let mut granted = Vec::new();
        let mut at = 2;
        while at + 2 <= body.len() {
            at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]])) + 1;
            granted.push(0x01);
        }
        let mut suback = vec![0x90, u8::try_from(2 + granted.len()).unwrap(), body[0], body[1]];
        suback.extend(granted);
        tls.write_all(&suback).await?;
        tls.flush().await?;
        break;
    }
    // Ignore pings until told to hang up, or until the car goes.
    let mut told = told.lock().await;
    loop {
        tokio::select! {
            goodbye = told.recv() => {
                if goodbye == Some(Goodbye::Disconnect) {
                    tls.write_all(&[0xe0, 0x00]).await?;
                }
                return tls.shutdown().await;
            }
            packet = read_packet(&mut tls) => {
                packet?;
            }
        }
    }
}

/// One MQTT packet: its first byte and its body.
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((kind, body))
}
