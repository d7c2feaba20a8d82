//! The bench gateway's configuration file: the fleet's certificates, the listener, the
//! database, the partner adapter and the settings a scenario overrides (`--set key=value`).

use super::*;

/// One setting of the gateway's configuration file beyond the bench's own, e.g.
/// `mqtt.max_subscriptions=64` (`section.key=value`; the value as TOML, bare words quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOverride {
    /// The table, e.g. `mqtt`, `requests`, `events`.
    pub section: String,
    /// The key in it.
    pub key: String,
    /// The value, as TOML.
    pub value: String,
}

impl std::str::FromStr for ConfigOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected section.key=value"))?;
        let (section, key) = path
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("{s:?}: expected section.key=value"))?;
        let well_formed = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed(section) || !well_formed(key) {
            return Err(format!("{s:?}: section and key are words (letters, digits, _)"));
        }
        let value = value.trim();
        // Numbers, booleans, strings and arrays as they are; a bare word such as `10s` is a
        // string to the gateway (durations are humantime strings).
        let literal =
            value.parse::<f64>().is_ok() || matches!(value, "true" | "false") || value.starts_with(['"', '[', '{']);
        Ok(ConfigOverride {
            section: section.into(),
            key: key.into(),
            value: if literal { value.into() } else { format!("{value:?}") },
        })
    }
}

impl std::fmt::Display for ConfigOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} = {}", self.section, self.key, self.value)
    }
}

/// What the bench writes in the gateway's configuration file.
#[derive(Debug, Clone)]
pub struct GatewayOptions<'a> {
    /// `mqtt.max_connections`.
    pub max_connections: usize,
    /// The parking adapter, called over mTLS.
    pub adapter: SocketAddr,
    /// Parking methods that skip the idempotency ledger.
    pub read_only_methods: &'a [String],
    /// Serve the partner API (`events.v1.PartnerEvents`) on a port of its own, trusting the
    /// partners CA; the adapter's certificate is the partner `parking`'s.
    pub partner_api: bool,
    /// Settings beyond these, e.g. non-default per-car bounds.
    pub overrides: &'a [ConfigOverride],
    /// More services the same adapter serves, each a `[[partners]]` entry of its own (known to
    /// the gateway by configuration only), with the same read-only methods.
    pub extra_services: &'a [String],
}

/// The gateway's configuration file: MQTT on `listen` (the partner API, if enabled, on the
/// same address and a port of its own), the fleet's certificates, SQLite at `db`, then
/// `options`.
pub fn gateway_toml(fleet: &Fleet, listen: SocketAddr, db: &Path, options: &GatewayOptions<'_>) -> String {
    use std::fmt::Write as _;
    let overrides = |section: &str| {
        options
            .overrides
            .iter()
            .filter(|o| o.section == section)
            .map(|o| format!("{} = {}\n", o.key, o.value))
            .collect::<String>()
    };
    let mut toml = format!(
        "# written by fleet-bench\n\
         [mqtt]\nlisten = \"{listen}\"\nmax_connections = {max_connections}\n{mqtt}\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n\n\
         [storage]\nurl = {url:?}\n\n",
        max_connections = options.max_connections,
        mqtt = overrides("mqtt"),
        cert = fleet.server.cert,
        key = fleet.server.key,
        ca = fleet.ca_file,
        url = format!("sqlite://{}", db.display()),
    );
    let mut others: Vec<&str> = options
        .overrides
        .iter()
        .map(|o| o.section.as_str())
        .filter(|s| *s != "mqtt")
        .collect();
    others.sort_unstable();
    others.dedup();
    // Plain tables before the [[partners]] array, or their keys would land in a partner.
    for section in others {
        let _ = write!(toml, "[{section}]\n{}\n", overrides(section));
    }
    if options.partner_api {
        let _ = write!(
            toml,
            "[partner_api]\nlisten = \"{}\"\nclient_ca = {:?}\n\n",
            SocketAddr::new(listen.ip(), 0),
            fleet.partners_ca_file
        );
    }
    // Every entry is served by the same adapter, with the same read-only methods.
    let partner = |service: &str, name: Option<&str>| {
        format!(
            "[[partners]]\nservice = {service:?}\n{name}read_only_methods = {read_only:?}\n\
             endpoint = \"https://localhost:{adapter_port}\"\ntimeout = \"30s\"\n\
             ca_cert = {ca:?}\nclient_cert = {client_cert:?}\nclient_key = {client_key:?}\n",
            name = name.map(|n| format!("name = {n:?}\n")).unwrap_or_default(),
            ca = fleet.ca_file,
            adapter_port = options.adapter.port(),
            client_cert = fleet.gateway_client.cert,
            client_key = fleet.gateway_client.key,
            read_only = options.read_only_methods,
        )
    };
    // Named, so that the partner API knows the adapter's certificate as partner `parking`'s.
    toml.push_str(&partner("parking.v1.ParkingPayment", Some("parking")));
    for service in options.extra_services {
        toml.push('\n');
        toml.push_str(&partner(service, None));
    }
    toml
}
