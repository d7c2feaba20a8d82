//! Test fixtures: a development PKI from the `certs` crate, a stand-in gateway (in this
//! process, on 127.0.0.1 port 0, over real mutual TLS), an unreachable gateway, and cars wired
//! to them.
//!
//! Why a stand-in and not the real gateway: the agent may not depend on the gateway (not even
//! for its tests: ARCHITECTURE.md), and the tests here check what the gateway consumes without
//! showing (the request envelopes the agent sends and sends again, with their ids, keys and
//! shrinking deadlines; its event acknowledgements) and feed the agent what a real gateway
//! never sends on command (garbage, answers to unknown requests, duplicate answers, events
//! redelivered after they were acknowledged, a hang-up with or without DISCONNECT). What the
//! real gateway can produce is tested against it, end to end, in `tests/` (integration-tests).
//!
//! A test reads as what it sets up: `let mut rig = Rig::with_stand_in().await;` then
//! `let link = rig.connected_link().await;`, or `let offline = Offline::new();` for a car
//! whose gateway never answers.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use certs::{CertificateAuthority, DevPki, IssuingCa};
use prost::Message;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};

use proto::vehicle::v1::{EventAck, Request, Response};
use vehicle_agent::{Agent, AgentConfig, GatewayLink};

pub const VIN: &str = "WBA3B5C50DF123456";

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

/// A certificate file and its key file.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The development PKI (`certs init`: a root, one issuing CA per role, the gateway's server
/// certificate for localhost) in a temporary directory, and what it issues.
pub struct Pki {
    pub dir: TempDir,
    pub layout: DevPki,
    authority: CertificateAuthority,
    /// The root: what the car verifies the gateway with.
    pub ca: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let layout = DevPki::init(dir.path(), &[], false).unwrap();
        let authority = layout.authority().unwrap();
        Pki {
            ca: layout.ca_cert(),
            dir,
            layout,
            authority,
        }
    }

    fn write(&self, stem: &str, issued: certs::IssuedCert) -> CertFiles {
        let (cert, key) = issued.write(self.dir.path(), stem).unwrap();
        CertFiles { cert, key }
    }

    /// A vehicle certificate for `vin`.
    pub fn vehicle(&self, vin: &str) -> CertFiles {
        let vin = proto::Vin::parse(vin).unwrap();
        self.write(vin.as_str(), self.authority.issue_vehicle(&vin).unwrap())
    }

    /// A partner certificate named `name`: not a car's.
    pub fn partner(&self, name: &str) -> CertFiles {
        self.write(name, self.authority.issue_partner(name).unwrap())
    }

    /// Where [`Pki::agent_config`] keeps the agent's state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
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

    /// The server side of the gateway's TLS: its certificate, and only the vehicles CA trusted.
    fn gateway_tls(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(self.layout.gateway_cert())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(self.layout.gateway_key()).unwrap();
        let mut vehicles = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(self.layout.issuing_ca_cert(IssuingCa::Vehicles)).unwrap() {
            vehicles.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(vehicles), provider.clone())
                .build()
                .unwrap();
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap()
    }
}

/// How [`StandIn::hang_up`] ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// Sends MQTT DISCONNECT, then closes the TLS connection.
    Disconnect,
    /// Closes the TLS connection without a word, as a 3.1.1 server shutting down may.
    Close,
}

/// What the test tells the car's connection.
enum Say {
    Publish(String, Vec<u8>),
    HangUp(Goodbye),
}

/// Stands in for the gateway: speaks MQTT 3.1.1 over mutual TLS (vehicles CA only) on
/// 127.0.0.1 port 0, shows the test every request and event acknowledgement a car sends,
/// and the filters of every SUBSCRIBE, and publishes to the car, or hangs up, when told. One car at a time: what the test says
/// goes to the car's current connection, or waits for its next.
pub struct StandIn {
    pub port: u16,
    say: mpsc::UnboundedSender<Say>,
    pub requests: mpsc::UnboundedReceiver<(String, Request)>,
    pub acks: mpsc::UnboundedReceiver<(String, EventAck)>,
    pub subscribes: mpsc::UnboundedReceiver<Vec<String>>,
}

impl StandIn {
    pub async fn start(pki: &Pki) -> StandIn {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.gateway_tls()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (say, told) = mpsc::unbounded_channel();
        let told = Arc::new(Mutex::new(told));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (subscribes_tx, subscribes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else { continue };
                let car = Connection {
                    tls,
                    read: BytesMut::new(),
                    next_pkid: 0,
                };
                tokio::spawn(car.serve(
                    told.clone(),
                    requests_tx.clone(),
                    acks_tx.clone(),
                    subscribes_tx.clone(),
                ));
            }
        });
        StandIn {
            port,
            say,
            requests,
            acks,
            subscribes,
        }
    }

    /// `localhost:<port>`, for a car's `gateway` setting.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
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

    /// The filters of the next SUBSCRIBE any car sent.
    pub async fn next_subscribe(&mut self) -> Vec<String> {
        soon("a SUBSCRIBE reaches the gateway", self.subscribes.recv())
            .await
            .unwrap()
    }

    pub async fn respond(&self, vin: &str, response: Response) {
        self.publish(&format!("/tenants/{vin}/v1/resp"), response.encode_to_vec())
            .await;
    }

    /// Publishes `payload` on `topic` to the car at QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.say.send(Say::Publish(topic.to_owned(), payload)).unwrap();
    }

    /// Ends the car's connection (the one subscribed now, or the next) with `goodbye`.
    pub fn hang_up(&self, goodbye: Goodbye) {
        self.say.send(Say::HangUp(goodbye)).unwrap();
    }
}

/// One car's connection to the stand-in.
struct Connection {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    read: BytesMut,
    next_pkid: u16,
}

impl Connection {
    async fn serve(
        mut self,
        shared: Arc<Mutex<mpsc::UnboundedReceiver<Say>>>,
        requests: mpsc::UnboundedSender<(String, Request)>,
        acks: mpsc::UnboundedSender<(String, EventAck)>,
        subscribes: mpsc::UnboundedSender<Vec<String>>,
    ) -> std::io::Result<()> {
        let Some(Packet::Connect(_)) = self.read().await? else {
            return Ok(());
        };
        self.send(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)))
            .await?;
        // Told things once subscribed, until this connection ends.
        let mut told: Option<tokio::sync::OwnedMutexGuard<mpsc::UnboundedReceiver<Say>>> = None;
        loop {
            let packet = match &mut told {
                None => self.read().await?,
                Some(told) => tokio::select! {
                    said = told.recv() => {
                        match said {
                            Some(Say::Publish(topic, payload)) => {
                                self.next_pkid = self.next_pkid % u16::MAX + 1;
                                let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
                                publish.pkid = self.next_pkid;
                                self.send(Packet::Publish(publish)).await?;
                            }
                            Some(Say::HangUp(goodbye)) => {
                                if goodbye == Goodbye::Disconnect {
                                    self.send(Packet::Disconnect).await?;
                                }
                                return self.tls.shutdown().await;
                            }
                            None => return Ok(()),
                        }
                        continue;
                    }
                    packet = self.read() => packet?,
                },
            };
            match packet {
                None | Some(Packet::Disconnect) => return Ok(()),
                Some(Packet::Subscribe(subscribe)) => {
                    let _ = subscribes.send(subscribe.filters.iter().map(|f| f.path.clone()).collect());
                    let granted = subscribe
                        .filters
                        .iter()
                        .map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce))
                        .collect();
                    self.send(Packet::SubAck(SubAck::new(subscribe.pkid, granted))).await?;
                    if told.is_none() {
                        told = Some(shared.clone().lock_owned().await);
                    }
                }
                Some(Packet::PingReq) => self.send(Packet::PingResp).await?,
                Some(Packet::Publish(publish)) => {
                    if publish.qos == QoS::AtLeastOnce {
                        self.send(Packet::PubAck(PubAck::new(publish.pkid))).await?;
                    }
                    if let Some(vin) = proto::topics::vin_of_event_ack_topic(&publish.topic) {
                        let _ = acks.send((vin.to_string(), EventAck::decode(publish.payload).unwrap()));
                    } else if let Some(vin) = proto::topics::vin_of_request_topic(&publish.topic) {
                        let _ = requests.send((vin.to_string(), Request::decode(publish.payload).unwrap()));
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// The next packet from the car; `None` once it closed the connection.
    async fn read(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            match Packet::read(&mut self.read, 1 << 20) {
                Ok(packet) => return Ok(Some(packet)),
                Err(MqttError::InsufficientBytes(_)) => {}
                Err(e) => panic!("the car sent a malformed packet: {e}"),
            }
            if self.tls.read_buf(&mut self.read).await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut bytes = BytesMut::new();
        packet.write(&mut bytes, 1 << 20).expect("an encodable packet");
        self.tls.write_all(&bytes).await?;
        self.tls.flush().await
    }
}

/// One car (VIN [`VIN`]) and its world: a fresh PKI and a stand-in gateway.
pub struct Rig {
    pub pki: Pki,
    pub gateway: StandIn,
}

impl Rig {
    pub async fn with_stand_in() -> Rig {
        let pki = Pki::new();
        let gateway = StandIn::start(&pki).await;
        Rig { pki, gateway }
    }

    /// The car's configuration, dialling the stand-in.
    pub fn car_config(&self) -> AgentConfig {
        self.pki.agent_config(VIN, &self.gateway.address())
    }

    /// The car's link, started and connected.
    pub async fn connected_link(&self) -> GatewayLink {
        connected_link(&self.car_config()).await
    }

    /// The car's agent, started and connected.
    pub async fn connected_agent(&self) -> Agent {
        connected_agent(&self.car_config()).await
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
