//! The agent's configuration: a TOML file, overridden by `AGENT_*` environment variables.
//!
//! [`AgentConfig`] is the one declaration of the settings: its fields are the keys of the file
//! and the names of the variables (`AGENT_` + the field in upper case), and
//! `AgentConfig::defaults` gives each its default. Adding a setting is adding a field and its
//! default; nothing else lists them. Relative paths in the file are taken relative to the
//! file's directory, so a config and its certificates can be moved together (the fields
//! marked `deserialize_with = "file_relative"`); paths from the environment are taken
//! relative to the working directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Deserializer, Serialize};

use proto::Vin;

/// The prefix of environment variables that override the file, e.g. `AGENT_GATEWAY`.
pub const ENV_PREFIX: &str = "AGENT_";

/// The default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vehicle-agent";

/// MQTT's largest remaining length (268,435,455 bytes) less the room kept for the envelope.
const MAX_PAYLOAD_LIMIT: usize = 268_435_455 - ENVELOPE_HEADROOM;

/// Room for the envelope fields and MQTT headers around a payload.
pub(crate) const ENVELOPE_HEADROOM: usize = 16 * 1024;

/// Most services an agent forwards: each is a route on the local endpoint.
pub const MAX_SERVICES: usize = 64;

/// Most events `max_kept_events` may keep: each is a file of up to the gateway's event size
/// (64 KiB by default), so this is some 6 GiB of a telematics unit's disk at most.
const MAX_KEPT_EVENTS_LIMIT: usize = 100_000;

/// Longest Unix socket path in bytes: `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or does not fit the schema.
    #[error("{}", describe_load_error(.0))]
    Load(Box<figment::Error>),
    /// A value is out of range, or a file it names is missing or unusable.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, as spelled in the file.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field,
            message: message.into(),
        }
    }
}

fn describe_load_error(e: &figment::Error) -> String {
    match &e.kind {
        figment::error::Kind::MissingField(field) => format!(
            "{field}: missing: set it in the config file or as {ENV_PREFIX}{}",
            field.to_ascii_uppercase()
        ),
        _ => e.to_string(),
    }
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// Everything the agent needs to reach the gateway and serve in-car apps.
///
/// The fields are the settings: each is a key of the TOML file and an `AGENT_*` variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The gateway's MQTT endpoint, `host:port`.
    pub gateway: String,
    /// The name the gateway's certificate must carry; `None` means the host of `gateway`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the CA that signed the gateway's certificate (required).
    #[serde(deserialize_with = "file_relative", skip_serializing_if = "unset")]
    pub ca_cert: PathBuf,
    /// PEM file of this car's certificate (subject `CN=<VIN>`, `OU=vehicle`; required).
    #[serde(deserialize_with = "file_relative", skip_serializing_if = "unset")]
    pub cert: PathBuf,
    /// PEM file of this car's private key (required).
    #[serde(deserialize_with = "file_relative", skip_serializing_if = "unset")]
    pub key: PathBuf,
    /// Where in-car apps reach the local gRPC server over TCP; port 0 picks a free port.
    pub local_listen: SocketAddr,
    /// Also serve in-car apps on this Unix socket (mode 0660), where an app is known by its
    /// uid; `None`: TCP only.
    #[serde(default, deserialize_with = "file_relative_option")]
    pub local_socket: Option<PathBuf>,
    /// MQTT keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Upper bound of the first reconnection delay.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of every reconnection delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Deadline of a call whose app set none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Largest request payload the agent sends.
    pub max_payload_bytes: usize,
    /// The partner services in-car apps may call through the agent, by full gRPC name
    /// (`package.Service`): every method of each is forwarded as bytes, so a service the
    /// gateway has a `[[partners]]` entry for needs only its name here, no agent build.
    pub services: Vec<String>,
    /// Where the agent keeps what must survive a reboot: `outbox/`, `results/`, `events/`
    /// (default `/var/lib/vehicle-agent`). One agent per directory; tests set their own.
    #[serde(deserialize_with = "file_relative")]
    pub state_dir: PathBuf,
    /// Most requests waiting for the gateway at once; more are refused (RESOURCE_EXHAUSTED).
    pub outbox_capacity: usize,
    /// How long the outcome of a request is kept for `GetResult` and retries.
    #[serde(with = "humantime_serde")]
    pub result_retention: Duration,
    /// Most partner events kept on disk until an in-car app acknowledges them (`AckEvents`);
    /// beyond it the agent takes no more and the gateway keeps them (see [`crate::events`]).
    pub max_kept_events: usize,
}

/// A required path nobody set yet: left out of the defaults, so that loading says it is missing.
fn unset(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// A path as written in the config file is relative to the file's directory.
fn file_relative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    RelativePathBuf::deserialize(deserializer).map(|path| path.relative())
}

fn file_relative_option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    Option::<RelativePathBuf>::deserialize(deserializer).map(|path| path.map(|p| p.relative()))
}

impl AgentConfig {
    /// Every setting's default; the required files are empty (unset).
    fn defaults() -> AgentConfig {
        AgentConfig {
            gateway: "localhost:8883".to_owned(),
            server_name: None,
            ca_cert: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            local_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 50051)),
            local_socket: None,
            keep_alive: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            default_timeout: Duration::from_secs(30),
            max_payload_bytes: 128 * 1024,
            services: vec![proto::parking::v1::parking_payment_server::SERVICE_NAME.to_owned()],
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            outbox_capacity: 1000,
            result_retention: Duration::from_secs(24 * 3600),
            // As many as the gateway keeps for a car (`events.max_pending_per_vin`).
            max_kept_events: 1000,
        }
    }

    /// A configuration with the given endpoint and files and defaults for everything else.
    pub fn new(gateway: impl Into<String>, ca_cert: PathBuf, cert: PathBuf, key: PathBuf) -> AgentConfig {
        AgentConfig {
            gateway: gateway.into(),
            ca_cert,
            cert,
            key,
            ..AgentConfig::defaults()
        }
    }

    /// The settings' names, as keys of the file (and, in upper case after `AGENT_`, as
    /// variables): the fields of [`AgentConfig`].
    pub fn setting_names() -> &'static [&'static str] {
        static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
        NAMES.get_or_init(field_names::<AgentConfig>)
    }

    /// Reads `path` (if any), then applies `AGENT_*` environment overrides. Does not validate.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only the settings: other AGENT_* variables (the command line's own AGENT_CONFIG and
        // AGENT_APP_TOKEN, or a CI system's) are none of the agent's business.
        let env = Env::prefixed(ENV_PREFIX).only(AgentConfig::setting_names());
        AgentConfig::extract(figment.merge(env))
    }

    /// Parses TOML text as [`AgentConfig::load`] parses a file, without the environment (paths
    /// relative to the working directory), and runs the checks that need no file.
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        let config = AgentConfig::extract(Figment::from(Toml::string(text)))?;
        config.validate_values()?;
        Ok(config)
    }

    /// Extracts a configuration from any figment (e.g. one built by a test), with the defaults
    /// under it.
    pub fn extract(figment: Figment) -> Result<AgentConfig, ConfigError> {
        Ok(figment.join(Serialized::defaults(AgentConfig::defaults())).extract()?)
    }

    /// Checks every value and the certificate files; returns the VIN the certificate names.
    pub fn validate(&self) -> Result<Vin, ConfigError> {
        Ok(crate::tls::Identity::load(self)?.vin)
    }

    /// The checks that need no file; [`AgentConfig::validate`] runs them first.
    pub(crate) fn validate_values(&self) -> Result<(), ConfigError> {
        if self.gateway_addr()?.0.contains(':') {
            // rumqttc dials "host:port" unbracketed, which cannot work for an IPv6 literal.
            return Err(ConfigError::invalid(
                "gateway",
                "IPv6 literals are not supported: use a host name",
            ));
        }
        self.server_name()?;
        let ka = self.keep_alive;
        if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&ka) {
            return Err(ConfigError::invalid(
                "keep_alive",
                format!("{} is out of range: it must be between 5s and 1h", show(ka)),
            ));
        }
        if self.backoff_initial.is_zero() {
            return Err(ConfigError::invalid("backoff_initial", "must be greater than zero"));
        }
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::invalid(
                "backoff_initial",
                format!(
                    "{} is greater than backoff_max ({})",
                    show(self.backoff_initial),
                    show(self.backoff_max)
                ),
            ));
        }
        if self.default_timeout.is_zero() || self.default_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "default_timeout",
                format!(
                    "{} is out of range: it must be above zero and below 49 days",
                    show(self.default_timeout)
                ),
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(ConfigError::invalid(
                "max_payload_bytes",
                format!(
                    "{} is out of range: it must be between 1 and {MAX_PAYLOAD_LIMIT}",
                    self.max_payload_bytes
                ),
            ));
        }
        self.validate_services()?;
        if let Some(socket) = &self.local_socket {
            let bytes = socket.as_os_str().len();
            if bytes == 0 {
                return Err(ConfigError::invalid("local_socket", "must not be empty"));
            }
            if bytes > MAX_SOCKET_PATH_BYTES {
                return Err(ConfigError::invalid(
                    "local_socket",
                    format!(
                        "{} is {bytes} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH_BYTES}",
                        socket.display()
                    ),
                ));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("state_dir", "must not be empty"));
        }
        if self.outbox_capacity == 0 {
            return Err(ConfigError::invalid("outbox_capacity", "must be at least 1"));
        }
        if !(1..=MAX_KEPT_EVENTS_LIMIT).contains(&self.max_kept_events) {
            return Err(ConfigError::invalid(
                "max_kept_events",
                format!(
                    "{} is out of range: it must be between 1 and {MAX_KEPT_EVENTS_LIMIT}",
                    self.max_kept_events
                ),
            ));
        }
        if self.result_retention < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "result_retention",
                format!("{} is too short: it must be at least 1s", show(self.result_retention)),
            ));
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), ConfigError> {
        if self.services.len() > MAX_SERVICES {
            return Err(ConfigError::invalid(
                "services",
                format!("{} services: at most {MAX_SERVICES}", self.services.len()),
            ));
        }
        let own = proto::agent::v1::vehicle_agent_server::SERVICE_NAME;
        for (i, service) in self.services.iter().enumerate() {
            if !proto::method::is_service_name(service) {
                return Err(ConfigError::invalid(
                    "services",
                    format!(
                        "{:?} is not a fully qualified gRPC service such as parking.v1.ParkingPayment",
                        service.chars().take(200).collect::<String>()
                    ),
                ));
            }
            if service == own {
                return Err(ConfigError::invalid(
                    "services",
                    format!("{own} is the agent's own API, not a partner service"),
                ));
            }
            if self.services[..i].contains(service) {
                return Err(ConfigError::invalid("services", format!("{service} is listed twice")));
            }
        }
        Ok(())
    }

    /// The host and port of `gateway`.
    pub fn gateway_addr(&self) -> Result<(String, u16), ConfigError> {
        let bad = || ConfigError::invalid("gateway", format!("{:?} is not of the form host:port", self.gateway));
        let (host, port) = self.gateway.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        // IPv6 literals are written in brackets, "[::1]:8883"; the brackets are not the host.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?.to_string(),
            None if host.is_empty() || host.contains([':', '[', ']', '/']) => return Err(bad()),
            None => host.to_owned(),
        };
        Ok((host, port))
    }

    /// The name the gateway's certificate is checked against: `server_name`, else the gateway's host.
    pub fn server_name(&self) -> Result<String, ConfigError> {
        let (field, name) = match &self.server_name {
            Some(name) => ("server_name", name.clone()),
            None => ("gateway", self.gateway_addr()?.0),
        };
        rustls_pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| ConfigError::invalid(field, format!("{name:?} is not a valid TLS server name")))?;
        Ok(name)
    }
}

fn show(d: Duration) -> humantime_serde::re::humantime::FormattedDuration {
    humantime_serde::re::humantime::format_duration(d)
}

/// The names of `T`'s fields as serde sees them (renames included), found by asking `T` to
/// deserialize itself from something that only notes the names it is offered.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};

    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Names<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("only the names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

#[cfg(test)]
mod tests;
