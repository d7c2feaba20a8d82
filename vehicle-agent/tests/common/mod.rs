//! Test helpers: a throwaway PKI, a Mosquitto broker over mTLS and a fake gateway.
#![allow(dead_code)]

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
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use proto::vehicle::v1::{EventAck, Request, Response};
use vehicle_agent::AgentConfig;

pub const VIN: &str = "WBA3B5C50DF123456";
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Generous bound for anything that should happen "soon": a failure, not a synchronisation.
pub const SOON: Duration = Duration::from_secs(20);

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    /// A config for the vehicle `vin` dialling `gateway`, with quick reconnects and its state
    /// in `state/` of this PKI's directory (the same for every config of this PKI).
    pub fn agent_config(&self, vin: &str, gateway: &str) -> AgentConfig {
        let car = self.vehicle(vin);
        let mut config = AgentConfig::new(gateway, self.ca.clone(), car.cert, car.key);
        config.state_dir = self.state_dir();
        config.local_listen = "127.0.0.1:0".parse().unwrap();
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(300);
        config
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mosquitto_available() -> bool {
    let ok = Path::new(MOSQUITTO).exists();
    if !ok {
        eprintln!("skipping: {MOSQUITTO} is not installed");
    }
    ok
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
    pub async fn start(pki: &Pki, port: u16) -> Broker {
        Broker::start_with(pki, port, "use_identity_as_username true\n").await
    }

    /// With `auth` as the authentication lines of the configuration.
    pub async fn start_with(pki: &Pki, port: u16, auth: &str) -> Broker {
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
        let ready = tokio::time::timeout(SOON, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // Logged once every listener is open; "Opening ... listen socket" comes before listen().
                if line.contains(" running") {
                    return true;
                }
                if line.contains("Error") {
                    panic!("mosquitto: {line}");
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "mosquitto did not start listening");
        // Keep draining so the broker never blocks on a full pipe.
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Broker {
            child,
            port,
            _dir: dir,
            log,
        }
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
        tokio::time::timeout(SOON, subscribed)
            .await
            .expect("fake gateway subscribed")
            .unwrap();
        FakeGateway { client, requests, acks }
    }

    /// The next request any car sent.
    pub async fn next_request(&mut self) -> (String, Request) {
        tokio::time::timeout(SOON, self.requests.recv())
            .await
            .expect("a request reaches the gateway")
            .unwrap()
    }

    /// The next event acknowledgement any car sent.
    pub async fn next_ack(&mut self) -> (String, EventAck) {
        tokio::time::timeout(SOON, self.acks.recv())
            .await
            .expect("an event ack reaches the gateway")
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
