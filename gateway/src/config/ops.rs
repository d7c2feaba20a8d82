//! Settings of the operators' side: the ops listener and revocation reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The operators' endpoint: `fleet.v1.FleetOps` (gRPC), the dashboard, `/metrics`, `/healthz`
/// and `/readyz`, on one TLS port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The CA that signs operator certificates only (operators-ca.pem in the development PKI).
    pub client_ca: PathBuf,
    /// The URL operators reach this listener at, for dashboard sign-in links
    /// (default `https://{listen}`).
    pub public_url: Option<String>,
    /// How long a browser stays signed in to the dashboard.
    #[serde(default = "default_dashboard_session_ttl", with = "humantime_serde")]
    pub dashboard_session_ttl: Duration,
    /// Dashboard sign-ins (and unused sign-in links) held at once; beyond it the oldest goes.
    #[serde(default = "default_max_dashboard_sessions")]
    pub max_dashboard_sessions: usize,
    /// Session streams (`WatchSessions`, the dashboard's live updates) open at once.
    #[serde(default = "default_max_watchers")]
    pub max_watchers: usize,
}

fn default_dashboard_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_max_dashboard_sessions() -> usize {
    1000
}

fn default_max_watchers() -> usize {
    64
}

impl OpsConfig {
    /// An ops listener on `listen` trusting `client_ca` for operators, other settings default.
    pub fn new(listen: SocketAddr, client_ca: PathBuf) -> OpsConfig {
        OpsConfig {
            listen,
            client_ca,
            public_url: None,
            dashboard_session_ttl: default_dashboard_session_ttl(),
            max_dashboard_sessions: default_max_dashboard_sessions(),
            max_watchers: default_max_watchers(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        super::validate::must_exist("ops.client_ca", &self.client_ca)?;
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url).map_err(|e| invalid("ops.public_url", e.to_string()))?;
            if parsed.scheme() != "https" {
                return Err(invalid("ops.public_url", "must be an https:// URL"));
            }
        }
        if self.dashboard_session_ttl < Duration::from_secs(60)
            || self.dashboard_session_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(invalid("ops.dashboard_session_ttl", "must be between 1m and 7d"));
        }
        if !(1..=100_000).contains(&self.max_dashboard_sessions) {
            return Err(invalid("ops.max_dashboard_sessions", "must be between 1 and 100000"));
        }
        if !(1..=10_000).contains(&self.max_watchers) {
            return Err(invalid("ops.max_watchers", "must be between 1 and 10000"));
        }
        Ok(())
    }
}

/// How revocations made elsewhere reach this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// How often the CRL files (`tls.crls`) are read again if they changed, and the revocations
    /// other nodes stored are read from the database.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl RevocationConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.reload_interval < Duration::from_millis(50) || self.reload_interval > Duration::from_secs(3600) {
            return Err(invalid("revocation.reload_interval", "must be between 50ms and 1h"));
        }
        Ok(())
    }
}
