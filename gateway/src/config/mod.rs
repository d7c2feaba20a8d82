//! Gateway configuration: a TOML file with `GATEWAY_*` environment overrides, parsed and
//! validated once at startup so that a bad deployment fails before it accepts a car.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything the gateway needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The vehicle-facing MQTT over mTLS listener.
    pub mqtt: MqttConfig,
    /// The gateway's certificate and the CA vehicles' certificates must chain to.
    pub tls: TlsConfig,
    /// Limits applied to every vehicle request.
    pub requests: RequestLimits,
    /// One entry per partner service the gateway brokers to.
    #[serde(default)]
    pub partners: Vec<PartnerConfig>,
    /// Where sessions, the idempotency ledger and events are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Idempotency ledger retention.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// Partner -> car events.
    #[serde(default)]
    pub events: EventsConfig,
    /// The gRPC endpoint partners call to push events (off when absent).
    pub partner_api: Option<PartnerApiConfig>,
    /// The operators' endpoint: fleet ops API, dashboard, metrics, health (off when absent).
    pub ops: Option<OpsConfig>,
    /// How revocations made elsewhere (CRL files, other nodes) reach this node.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// The interaction journal (requests, partner events, session changes per vehicle).
    #[serde(default)]
    pub journal: JournalConfig,
}

/// The interaction journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Whether interactions are recorded at all.
    pub enabled: bool,
    /// Whether request and response bodies are stored with each request (off: they may carry
    /// personal data, and they are most of a row's size).
    pub record_payloads: bool,
    /// How long a row is kept; older ones are purged by the periodic purge
    /// (`idempotency.purge_interval`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Rows waiting to be written; beyond it new rows are dropped and counted (the request path
    /// never waits for the journal), also while the database is down.
    pub max_queued_rows: usize,
    /// Most rows written in one transaction.
    pub max_batch_rows: usize,
    /// How long the writer waits for more rows after the first of a batch, so that one
    /// transaction (one fsync) carries many requests' rows instead of one each.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            record_payloads: false,
            retention: Duration::from_secs(90 * 24 * 3600),
            max_queued_rows: 65_536,
            max_batch_rows: 1_000,
            batch_delay: Duration::from_millis(20),
        }
    }
}

/// The database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://path/gateway.db` (embedded, the default) or `postgres://user@host/db` (multi-node).
    pub url: String,
    /// This node's name in the connection log; nodes sharing a database need distinct names.
    pub node: String,
    /// How long an operation waits for a database connection before failing: a database that
    /// is down answers cars UNAVAILABLE within this, well inside their deadlines.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long the connection log keeps a connection after it ended.
    #[serde(with = "humantime_serde")]
    pub connection_log_retention: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://gateway.db".into(),
            node: "gateway-1".into(),
            acquire_timeout: Duration::from_secs(2),
            connection_log_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Idempotency ledger settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a completed response is replayed for retries with the same key.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often expired entries are purged.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            retention: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(300),
        }
    }
}

/// Partner -> car event settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long an event is kept for delivery when the partner sets no TTL.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Upper bound on any event's TTL.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Largest event payload a partner may push.
    pub max_payload_bytes: usize,
    /// Events waiting for one car (neither acknowledged nor expired); beyond it a partner's
    /// publish gets RESOURCE_EXHAUSTED.
    pub max_pending_per_vin: u64,
    /// Events per second one partner may publish, sustained.
    pub max_per_second_per_partner: NonZeroU32,
    /// Events one partner may publish at once above that rate.
    pub burst_per_partner: NonZeroU32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_payload_bytes: 64 * 1024,
            max_pending_per_vin: 1000,
            max_per_second_per_partner: NonZeroU32::new(200).expect("non-zero"),
            burst_per_partner: NonZeroU32::new(1000).expect("non-zero"),
        }
    }
}

/// The partner-facing gRPC endpoint (mTLS; partners are identified by their certificate's CN).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// CA partner client certificates must chain to: the one that signs partners only
    /// (`partners-ca.pem` in the development PKI), never `tls.client_ca`, which admits cars.
    pub client_ca: PathBuf,
}

/// The vehicle-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How long a new socket has to deliver its whole TLS ClientHello; until then it holds no
    /// handshake permit, and after it is dropped.
    #[serde(with = "humantime_serde")]
    pub first_flight_timeout: Duration,
    /// How long the rest of the TLS handshake may take after the ClientHello.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Sockets from one IP address that have not finished their TLS handshake. Real cars send
    /// their ClientHello at once, so this only bites sockets that wait; raise it for fleets
    /// behind a carrier-grade NAT that reconnect all at once.
    pub max_pending_per_source: usize,
    /// How long after the handshake the car has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upper bound on the keep-alive a car may ask for (also used when it asks for none).
    #[serde(with = "humantime_serde")]
    pub max_keep_alive: Duration,
    /// How long a write to a car may wait for it to take any bytes; a car that reads nothing
    /// for this long is disconnected as a slow consumer (a car that keeps reading, however
    /// slowly, is not). Until then its session can neither be kicked nor stopped by its mailbox.
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    /// Vehicles connected at once; further connection attempts are closed before TLS.
    pub max_connections: usize,
    /// TLS handshakes in progress at once. Beyond it, new connections are closed before any
    /// TLS work, so a reconnect storm costs cheap refusals (the cars back off with jitter)
    /// instead of starving the cars already connected.
    pub max_handshakes_in_flight: usize,
    /// Threads that run TLS handshakes, apart from the ones serving connected cars (0: half
    /// the cores, at least one). Fewer threads protect connected cars better during a storm;
    /// more reconnect a fleet faster.
    pub handshake_threads: usize,
    /// Requests of one car handled at once. Beyond it the gateway stops reading from that car
    /// until one is answered (TCP backpressure), so one car cannot take every partner slot.
    pub max_requests_in_flight: usize,
    /// Topic filters one car may hold; a SUBSCRIBE beyond it gets 0x80 for each new filter.
    pub max_subscriptions: usize,
    /// Longest topic name or filter a car may use, in bytes.
    pub max_topic_bytes: usize,
    /// QoS 2 messages from one car awaiting its PUBREL; one more disconnects the car.
    pub max_qos2_awaiting_release: usize,
    /// Retained messages one car may keep (distinct topics); one more disconnects the car.
    pub max_retained_messages: usize,
    /// Bytes of retained messages (topics and payloads) one car may keep.
    pub max_retained_bytes: usize,
    /// Messages waiting to be written to one car; beyond it the car is disconnected as a slow
    /// consumer (what it missed comes back by republishing and redelivery).
    pub max_queued_messages: usize,
    /// Bytes waiting to be written to one car, live or kept for its persistent session.
    pub max_queued_bytes: usize,
    /// How long what a car keeps between sessions (persistent subscriptions, messages for it,
    /// retained messages) outlives its last session, like MQTT 5's Session Expiry Interval.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Packets that make the gateway work (PUBLISH: requests, acknowledgements, the car's own
    /// topics; SUBSCRIBE; UNSUBSCRIBE) one car may send per second, sustained. Over it the
    /// gateway stops reading from the car until it is back within it.
    pub max_packets_per_second: NonZeroU32,
    /// Such packets one car may send at once above that rate (an agent resending its outbox
    /// after an outage must fit).
    pub packet_burst: NonZeroU32,
    /// How long a car may stay over its packet rate before it is disconnected for flooding.
    #[serde(with = "humantime_serde")]
    pub flood_disconnect_after: Duration,
    /// CONNECTs one car may make per minute, sustained; beyond it (and the burst) the car gets
    /// CONNACK 3 (server unavailable) and backs off, and nothing is recorded for it.
    pub max_connects_per_minute: NonZeroU32,
    /// CONNECTs one car may make at once above that rate.
    pub connect_burst: NonZeroU32,
}

/// Certificates of the vehicle-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The gateway's server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificate(s) vehicle certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) checked for every vehicle certificate.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// Limits on vehicle requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Largest request payload (the encoded partner message) a car may send.
    pub max_payload_bytes: usize,
    /// Deadline applied when a car sends none and its partner entry sets none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// No call waits longer than this, whatever the car asks for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Largest answer a partner may give (the encoded message); a larger one is refused by the
    /// gRPC decoder before it is read (OUT_OF_RANGE), so that what waits for a car stays bounded.
    pub max_response_bytes: usize,
    /// Requests per second one car may make, sustained; over it the car gets
    /// RESOURCE_EXHAUSTED and the partner is not called.
    pub max_per_second_per_car: NonZeroU32,
    /// Requests one car may make at once above that rate.
    pub burst_per_car: NonZeroU32,
}

/// One partner adapter: which gRPC service it serves and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// Fully qualified gRPC service, e.g. `parking.v1.ParkingPayment`.
    pub service: String,
    /// The partner's name: the CN of the certificate allowed to push events for `service`.
    pub name: Option<String>,
    /// `https://host:port` (mTLS) or, for local development only, `http://host:port`.
    pub endpoint: String,
    /// Deadline for calls whose car sent none.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Methods without side effects (e.g. `ListNearbyLots`): they skip the idempotency ledger,
    /// so a retry simply asks the partner again. Every other method is deduplicated.
    #[serde(default)]
    pub read_only_methods: Vec<String>,
    /// How long establishing a connection to the adapter may take.
    #[serde(default = "default_partner_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// CA the adapter's server certificate must chain to (required for https).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate the gateway presents to the adapter (mTLS).
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name to verify the adapter's certificate against, if not the endpoint's host.
    pub tls_server_name: Option<String>,
    /// Calls to this partner in flight at once, from all cars. One more is refused at once
    /// with RESOURCE_EXHAUSTED (load shedding: nothing queues), so a partner that hangs holds
    /// at most this many requests. Capacity is about this many divided by its latency.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Consecutive failed calls (unreachable, too slow, UNAVAILABLE, INTERNAL, ...) that open
    /// this partner's circuit breaker: while open, cars get UNAVAILABLE at once.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before it lets one probe call through (whose
    /// success closes it and whose failure opens it again for as long).
    #[serde(default = "default_breaker_open_for", with = "humantime_serde")]
    pub breaker_open_for: Duration,
}

impl PartnerConfig {
    /// The entry for `service` at `endpoint` with every other setting at its default, as a
    /// `[[partners]]` table naming only these two would read.
    pub fn new(service: impl Into<String>, endpoint: impl Into<String>) -> PartnerConfig {
        PartnerConfig {
            service: service.into(),
            name: None,
            endpoint: endpoint.into(),
            timeout: None,
            read_only_methods: Vec::new(),
            connect_timeout: default_partner_connect_timeout(),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
        }
    }

    /// This entry calling its adapter over mTLS: verifying it against `ca_cert` and presenting
    /// the gateway's client certificate `client_cert` with its key `client_key`.
    pub fn over_mtls(self, ca_cert: PathBuf, client_cert: PathBuf, client_key: PathBuf) -> PartnerConfig {
        PartnerConfig {
            ca_cert: Some(ca_cert),
            client_cert: Some(client_cert),
            client_key: Some(client_key),
            ..self
        }
    }
}

fn default_partner_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

/// Default of [`PartnerConfig::max_concurrent_calls`]: a hanging partner holds at most 256
/// waiting requests (cheap), while a healthy one at 50 ms serves 5,000 calls a second, above
/// the bench's maximum-throughput load (200 in flight). Envoy's default is 1,024.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 256;
/// Default of [`PartnerConfig::breaker_failures`] (Envoy's outlier detection ejects after 5).
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default of [`PartnerConfig::breaker_open_for`]: one probe every 10 s costs a dead partner
/// nothing, and cars wait at most that long once it is back.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);

fn default_max_concurrent_calls() -> usize {
    DEFAULT_MAX_CONCURRENT_CALLS
}

fn default_breaker_failures() -> u32 {
    DEFAULT_BREAKER_FAILURES
}

fn default_breaker_open_for() -> Duration {
    DEFAULT_BREAKER_OPEN_FOR
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "0.0.0.0:8883".parse().expect("valid address"),
            first_flight_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            max_pending_per_source: 64,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(20 * 60),
            write_stall_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_handshakes_in_flight: 256,
            handshake_threads: 0,
            max_requests_in_flight: 64,
            max_subscriptions: 32,
            max_topic_bytes: 256,
            max_qos2_awaiting_release: 32,
            max_retained_messages: 16,
            max_retained_bytes: 64 * 1024,
            max_queued_messages: 1024,
            max_queued_bytes: 1024 * 1024,
            session_expiry: Duration::from_secs(2 * 3600),
            max_packets_per_second: NonZeroU32::new(100).expect("non-zero"),
            packet_burst: NonZeroU32::new(1000).expect("non-zero"),
            flood_disconnect_after: Duration::from_secs(10),
            max_connects_per_minute: NonZeroU32::new(60).expect("non-zero"),
            connect_burst: NonZeroU32::new(10).expect("non-zero"),
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_payload_bytes: 128 * 1024,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_response_bytes: 128 * 1024,
            max_per_second_per_car: NonZeroU32::new(20).expect("non-zero"),
            burst_per_car: NonZeroU32::new(100).expect("non-zero"),
        }
    }
}

/// A configuration that cannot run, with a message naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed.
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value is out of range or refers to something missing.
    #[error("{field}: {problem}")]
    Invalid {
        /// Dotted path of the setting.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

impl GatewayConfig {
    /// A configuration with default limits for the given certificate files and no partners.
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> GatewayConfig {
        GatewayConfig {
            mqtt: MqttConfig::default(),
            tls: TlsConfig {
                cert,
                key,
                client_ca,
                crls: Vec::new(),
            },
            requests: RequestLimits::default(),
            partners: Vec::new(),
            storage: StorageConfig::default(),
            idempotency: IdempotencyConfig::default(),
            events: EventsConfig::default(),
            partner_api: None,
            ops: None,
            revocation: RevocationConfig::default(),
            journal: JournalConfig::default(),
        }
    }

    /// Reads `path` (if given) then `GATEWAY_*` environment variables (`__` separates
    /// levels, e.g. `GATEWAY_MQTT__LISTEN=0.0.0.0:8883`), and validates the result.
    pub fn load(path: Option<&Path>) -> Result<GatewayConfig, ConfigError> {
        let mut figment = GatewayConfig::defaults();
        if let Some(path) = path {
            if !path.exists() {
                return Err(invalid("config file", format!("{} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        GatewayConfig::extract(figment.merge(Env::prefixed("GATEWAY_").split("__")))
    }

    /// Parses TOML text as [`GatewayConfig::load`] parses a file, without the environment, and
    /// validates the result.
    pub fn from_toml(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::extract(GatewayConfig::defaults().merge(Toml::string(text)))
    }

    /// The sections whose every setting has a default.
    fn defaults() -> Figment {
        Figment::new()
            .merge(Serialized::default("mqtt", MqttConfig::default()))
            .merge(Serialized::default("requests", RequestLimits::default()))
    }

    fn extract(figment: Figment) -> Result<GatewayConfig, ConfigError> {
        let config: GatewayConfig = figment.extract().map_err(explain_missing)?;
        config.validate()?;
        Ok(config)
    }
}

/// Figment names a missing field but cannot say why it is needed; a field that used to have a
/// default, and whose old default would now be unsafe, says so here.
fn explain_missing(e: figment::Error) -> ConfigError {
    let is_partner_api_ca = matches!(&e.kind, figment::error::Kind::MissingField(field) if field == "client_ca")
        && e.path.last().is_some_and(|key| key == "partner_api");
    if is_partner_api_ca {
        return invalid(
            "partner_api.client_ca",
            "required when [partner_api] is present: the CA that signs partner certificates only \
             (partners-ca.pem in the development PKI). It no longer defaults to tls.client_ca, \
             which signs vehicles and would let cars into the partner API",
        );
    }
    ConfigError::Parse(Box::new(e))
}

mod ops;
mod validate;

pub use ops::{OpsConfig, RevocationConfig};

#[cfg(test)]
mod tests;
