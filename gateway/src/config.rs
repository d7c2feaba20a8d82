//! Gateway configuration: a TOML file with `GATEWAY_*` environment overrides, parsed and
//! validated once at startup so that a bad deployment fails before it accepts a car.

use std::collections::HashSet;
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
    #[serde(default)]
    pub partner_api: Option<PartnerApiConfig>,
}

/// The database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://path/gateway.db` (embedded, the default) or `postgres://user@host/db` (multi-node).
    pub url: String,
    /// This node's name in the session registry; nodes sharing a database need distinct names.
    pub node: String,
    /// How long an operation waits for a database connection before failing: a database that
    /// is down answers cars UNAVAILABLE within this, well inside their deadlines.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://gateway.db".into(),
            node: "gateway-1".into(),
            acquire_timeout: Duration::from_secs(2),
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
    /// Publishes per second one car may make, sustained (requests, acknowledgements, its own
    /// topics). Over it the gateway stops reading from the car until it is back within it.
    pub max_publishes_per_second: NonZeroU32,
    /// Publishes one car may make at once above that rate (an agent resending its outbox
    /// after an outage must fit).
    pub publish_burst: NonZeroU32,
    /// How long a car may stay over its publish rate before it is disconnected for flooding.
    #[serde(with = "humantime_serde")]
    pub flood_disconnect_after: Duration,
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
    /// Largest answer a partner may give (the encoded message); larger is RESOURCE_EXHAUSTED,
    /// so that what waits for a car stays bounded.
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
    #[serde(default)]
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
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate the gateway presents to the adapter (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Name to verify the adapter's certificate against, if not the endpoint's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

fn default_partner_connect_timeout() -> Duration {
    Duration::from_secs(3)
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
            max_publishes_per_second: NonZeroU32::new(100).expect("non-zero"),
            publish_burst: NonZeroU32::new(1000).expect("non-zero"),
            flood_disconnect_after: Duration::from_secs(10),
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

/// Upper bound of the durations added to clocks: a century, far from where they overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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

    /// Checks ranges, files and partner entries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.first_flight_timeout.is_zero() || m.first_flight_timeout > Duration::from_secs(30) {
            return Err(invalid("mqtt.first_flight_timeout", "must be between 1ms and 30s"));
        }
        if m.handshake_timeout.is_zero() || m.handshake_timeout > Duration::from_secs(60) {
            return Err(invalid("mqtt.handshake_timeout", "must be between 1ms and 60s"));
        }
        if m.max_pending_per_source == 0 {
            return Err(invalid("mqtt.max_pending_per_source", "must be at least 1"));
        }
        if m.connect_timeout.is_zero() || m.connect_timeout > Duration::from_secs(60) {
            return Err(invalid("mqtt.connect_timeout", "must be between 1ms and 60s"));
        }
        if m.max_keep_alive < Duration::from_secs(5) || m.max_keep_alive > Duration::from_secs(65_535) {
            return Err(invalid("mqtt.max_keep_alive", "must be between 5s and 65535s"));
        }
        if m.max_handshakes_in_flight == 0 {
            return Err(invalid("mqtt.max_handshakes_in_flight", "must be at least 1"));
        }
        if m.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be at least 1"));
        }
        if m.handshake_threads > 256 {
            return Err(invalid(
                "mqtt.handshake_threads",
                "must be at most 256 (0 = half the cores)",
            ));
        }
        if m.max_requests_in_flight == 0 || m.max_requests_in_flight > 10_000 {
            return Err(invalid("mqtt.max_requests_in_flight", "must be between 1 and 10000"));
        }
        for (field, value, min, max) in [
            ("mqtt.max_subscriptions", m.max_subscriptions, 1, 10_000),
            ("mqtt.max_topic_bytes", m.max_topic_bytes, 64, 65_535),
            ("mqtt.max_qos2_awaiting_release", m.max_qos2_awaiting_release, 1, 65_535),
            ("mqtt.max_retained_messages", m.max_retained_messages, 0, 100_000),
            ("mqtt.max_retained_bytes", m.max_retained_bytes, 0, 64 << 20),
            ("mqtt.max_queued_messages", m.max_queued_messages, 1, 1_000_000),
            ("mqtt.max_queued_bytes", m.max_queued_bytes, 64 << 10, 1 << 30),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(field, format!("must be between {min} and {max}")));
            }
        }
        if m.session_expiry.is_zero() {
            return Err(invalid("mqtt.session_expiry", "must be positive"));
        }
        if m.publish_burst < m.max_publishes_per_second {
            return Err(invalid(
                "mqtt.publish_burst",
                "must be at least mqtt.max_publishes_per_second",
            ));
        }
        if m.flood_disconnect_after.is_zero() {
            return Err(invalid("mqtt.flood_disconnect_after", "must be positive"));
        }
        for (field, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            must_exist(field, path)?;
        }
        for (i, crl) in self.tls.crls.iter().enumerate() {
            must_exist(&format!("tls.crls[{i}]"), crl)?;
        }
        let r = &self.requests;
        if r.max_payload_bytes == 0 || r.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(invalid("requests.max_payload_bytes", "must be between 1 and 16 MiB"));
        }
        if r.max_response_bytes == 0 || r.max_response_bytes > m.max_queued_bytes {
            return Err(invalid(
                "requests.max_response_bytes",
                "must be positive and at most mqtt.max_queued_bytes",
            ));
        }
        if r.burst_per_car < r.max_per_second_per_car {
            return Err(invalid(
                "requests.burst_per_car",
                "must be at least requests.max_per_second_per_car",
            ));
        }
        if r.default_timeout.is_zero() || r.default_timeout > r.max_timeout {
            return Err(invalid(
                "requests.default_timeout",
                "must be positive and at most requests.max_timeout",
            ));
        }
        let st = &self.storage;
        if !(st.url.starts_with("sqlite:") || st.url.starts_with("postgres://") || st.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "storage.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if st.node.is_empty()
            || st.node.len() > 64
            || !st
                .node
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "storage.node",
                "must be 1 to 64 of a-z, 0-9, - (unique per running gateway)",
            ));
        }
        if st.acquire_timeout.is_zero() || st.acquire_timeout > Duration::from_secs(30) {
            return Err(invalid("storage.acquire_timeout", "must be between 1ms and 30s"));
        }
        let id = &self.idempotency;
        if id.retention < Duration::from_secs(60) {
            return Err(invalid(
                "idempotency.retention",
                "must be at least 1 minute (24h recommended)",
            ));
        }
        if id.purge_interval.is_zero() {
            return Err(invalid("idempotency.purge_interval", "must be positive"));
        }
        let ev = &self.events;
        if ev.default_ttl.is_zero() || ev.default_ttl > ev.max_ttl {
            return Err(invalid(
                "events.default_ttl",
                "must be positive and at most events.max_ttl",
            ));
        }
        if ev.max_payload_bytes == 0 || ev.max_payload_bytes > 1024 * 1024 {
            return Err(invalid("events.max_payload_bytes", "must be between 1 byte and 1 MiB"));
        }
        if ev.max_pending_per_vin == 0 {
            return Err(invalid("events.max_pending_per_vin", "must be at least 1"));
        }
        if ev.burst_per_partner < ev.max_per_second_per_partner {
            return Err(invalid(
                "events.burst_per_partner",
                "must be at least events.max_per_second_per_partner",
            ));
        }
        // Deadlines and expiries are added to the clock and kept in unix milliseconds, which
        // overflow for absurd values (a request's deadline would panic, the ledger's expiry wrap).
        for (field, value) in [
            ("requests.max_timeout", r.max_timeout),
            ("idempotency.retention", id.retention),
            ("events.max_ttl", ev.max_ttl),
        ] {
            if value > MAX_DURATION {
                return Err(invalid(field, "must be at most 100 years"));
            }
        }
        if let Some(api) = &self.partner_api {
            must_exist("partner_api.client_ca", &api.client_ca)?;
        }
        let mut services = HashSet::new();
        for (i, p) in self.partners.iter().enumerate() {
            let field = |name: &str| format!("partners[{i}].{name}");
            if !is_service_name(&p.service) {
                return Err(invalid(
                    field("service"),
                    format!(
                        "{:?} is not a fully qualified gRPC service such as parking.v1.ParkingPayment",
                        p.service
                    ),
                ));
            }
            if let Some(name) = &p.name
                && (name.is_empty()
                    || name.len() > 64
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            {
                return Err(invalid(
                    field("name"),
                    format!("{name:?} must be the partner certificate's CN: 1 to 64 of a-z, 0-9, -"),
                ));
            }
            if let Some(bad) = p
                .read_only_methods
                .iter()
                .find(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(invalid(
                    field("read_only_methods"),
                    format!("{bad:?} is not a method name such as ListNearbyLots"),
                ));
            }
            if !services.insert(p.service.as_str()) {
                return Err(invalid(field("service"), format!("{} is configured twice", p.service)));
            }
            let uri: http::Uri = p
                .endpoint
                .parse()
                .map_err(|e| invalid(field("endpoint"), format!("{:?}: {e}", p.endpoint)))?;
            match uri.scheme_str() {
                Some("https") => {
                    let ca = p
                        .ca_cert
                        .as_ref()
                        .ok_or_else(|| invalid(field("ca_cert"), "required for an https endpoint"))?;
                    must_exist(&field("ca_cert"), ca)?;
                }
                Some("http") => {}
                _ => {
                    return Err(invalid(
                        field("endpoint"),
                        format!("{:?} must start with https:// or http://", p.endpoint),
                    ));
                }
            }
            if uri.host().is_none() || uri.port_u16().is_none() {
                return Err(invalid(
                    field("endpoint"),
                    format!("{:?} must name a host and a port", p.endpoint),
                ));
            }
            match (&p.client_cert, &p.client_key) {
                (Some(c), Some(k)) => {
                    must_exist(&field("client_cert"), c)?;
                    must_exist(&field("client_key"), k)?;
                }
                (None, None) => {}
                _ => return Err(invalid(field("client_cert"), "client_cert and client_key go together")),
            }
            if p.timeout.is_some_and(|t| t.is_zero() || t > r.max_timeout) {
                return Err(invalid(
                    field("timeout"),
                    "must be positive and at most requests.max_timeout",
                ));
            }
        }
        Ok(())
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

fn must_exist(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(invalid(field, format!("{} is not a readable file", path.display())))
    }
}

fn is_service_name(s: &str) -> bool {
    s.contains('.')
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, GatewayConfig) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let c = GatewayConfig::new(
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        (dir, c)
    }

    fn partner(endpoint: &str) -> PartnerConfig {
        PartnerConfig {
            service: "parking.v1.ParkingPayment".into(),
            name: None,
            read_only_methods: vec![],
            endpoint: endpoint.into(),
            timeout: None,
            connect_timeout: Duration::from_secs(1),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
        }
    }

    #[test]
    fn defaults_are_valid() {
        let (_d, c) = files();
        c.validate().unwrap();
        assert_eq!(c.storage.url, "sqlite://gateway.db");
        assert_eq!(c.idempotency.retention, Duration::from_secs(86_400));
        assert_eq!(c.requests.max_payload_bytes, 131_072);
        assert_eq!(c.mqtt.listen.port(), 8883);
    }

    #[test]
    fn missing_certificate_names_the_field() {
        let (_d, mut c) = files();
        c.tls.key = "/nonexistent/key.pem".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("tls.key:"), "{e}");
    }

    #[test]
    fn per_car_bounds_are_checked() {
        let (_d, mut c) = files();
        c.mqtt.max_subscriptions = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("mqtt.max_subscriptions:")
        );
        c.mqtt.max_subscriptions = 32;
        c.mqtt.publish_burst = NonZeroU32::new(1).unwrap();
        assert!(c.validate().unwrap_err().to_string().starts_with("mqtt.publish_burst:"));
        c.mqtt.publish_burst = NonZeroU32::new(1000).unwrap();
        c.requests.max_response_bytes = 2 << 20;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("requests.max_response_bytes:")
        );
        c.requests.max_response_bytes = 1024;
        c.mqtt.first_flight_timeout = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("mqtt.first_flight_timeout:")
        );
        c.mqtt.first_flight_timeout = Duration::from_secs(3);
        c.storage.acquire_timeout = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("storage.acquire_timeout:")
        );
    }

    #[test]
    fn durations_added_to_clocks_are_bounded() {
        let (_d, mut c) = files();
        c.idempotency.retention = Duration::from_secs(300_000_000 * 365 * 24 * 3600);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("idempotency.retention:"), "{e}");
        c.idempotency.retention = MAX_DURATION;
        c.requests.max_timeout = MAX_DURATION + Duration::from_secs(1);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("requests.max_timeout:"), "{e}");
        c.requests.max_timeout = Duration::from_secs(300);
        c.events.max_ttl = Duration::MAX;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("events.max_ttl:"), "{e}");
    }

    #[test]
    fn session_limits_are_checked() {
        let (_d, mut c) = files();
        c.mqtt.max_requests_in_flight = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("mqtt.max_requests_in_flight:"), "{e}");
        c.mqtt.max_requests_in_flight = 64;
        c.mqtt.handshake_threads = 1000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("mqtt.handshake_threads:"), "{e}");
    }

    #[test]
    fn partner_entries_are_checked() {
        let (_d, mut c) = files();
        c.partners = vec![partner("https://127.0.0.1:50061")];
        assert!(c.validate().unwrap_err().to_string().contains("partners[0].ca_cert"));
        c.partners = vec![partner("ftp://x:1")];
        assert!(c.validate().unwrap_err().to_string().contains("partners[0].endpoint"));
        c.partners = vec![partner("http://127.0.0.1:50061"), partner("http://127.0.0.1:50062")];
        assert!(c.validate().unwrap_err().to_string().contains("configured twice"));
        c.partners = vec![PartnerConfig {
            service: "Parking".into(),
            ..partner("http://127.0.0.1:1")
        }];
        assert!(c.validate().unwrap_err().to_string().contains("partners[0].service"));
    }

    #[test]
    fn toml_file_and_env_are_merged() {
        let (dir, c) = files();
        let toml = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[mqtt]\nlisten = \"127.0.0.1:9999\"\n[[partners]]\nservice = \"parking.v1.ParkingPayment\"\nendpoint = \"http://127.0.0.1:50061\"\ntimeout = \"2s\"\n",
            c.tls.cert, c.tls.key, c.tls.client_ca
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = GatewayConfig::load(Some(&path)).unwrap();
        assert_eq!(loaded.mqtt.listen.port(), 9999);
        assert_eq!(loaded.partners[0].timeout, Some(Duration::from_secs(2)));
        assert_eq!(loaded.mqtt.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn partner_api_without_client_ca_names_the_field() {
        let (dir, c) = files();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[partner_api]\nlisten = \"127.0.0.1:0\"\n",
                c.tls.cert, c.tls.key, c.tls.client_ca
            ),
        )
        .unwrap();
        let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(e.starts_with("partner_api.client_ca: required"), "{e}");
        assert!(e.contains("partners-ca.pem"), "{e}");

        std::fs::write(dir.path().join("partners-ca.pem"), "x").unwrap();
        let with_ca = format!(
            "{}client_ca = {:?}\n",
            std::fs::read_to_string(&path).unwrap(),
            dir.path().join("partners-ca.pem")
        );
        std::fs::write(&path, with_ca).unwrap();
        let loaded = GatewayConfig::load(Some(&path)).unwrap();
        assert_eq!(
            loaded.partner_api.unwrap().client_ca,
            dir.path().join("partners-ca.pem")
        );
    }

    #[test]
    fn partner_api_client_ca_must_exist() {
        let (_d, mut c) = files();
        c.partner_api = Some(PartnerApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            client_ca: "/nonexistent/partners-ca.pem".into(),
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("partner_api.client_ca:"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let (dir, c) = files();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\ncrl = []\n",
                c.tls.cert, c.tls.key, c.tls.client_ca
            ),
        )
        .unwrap();
        let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("crl"), "{e}");
    }
}
