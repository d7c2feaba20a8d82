//! `partner-kit`: checks a partner adapter, in any language, against the contract in
//! `docs/partners.md`, from the outside, as the gateway sees it.
//!
//! Point it at an adapter's endpoint with the gateway's client certificate and it runs one
//! check per promise of the contract: mutual TLS (the gateway's certificate accepted, none and a
//! car's refused), the metadata used (`x-vehicle-vin` keeps cars apart, a call without it is
//! refused), deadlines honoured (`grpc-timeout`), idempotency (the same key twice: one effect,
//! the same answer byte for byte), error codes, and, given the gateway's partner API and the
//! partner's certificate, publishing events. Each result is PASS, FAIL (what was seen and what
//! the contract says, with its section) or SKIP (what to give the kit so that it checks).
//!
//! What a check sends depends on the service: a [`profile::Profile`] says which call is
//! harmless, which one acts for a car, and adds the service's own checks. `parking.v1` has one;
//! any other service gets the generic checks, on a method named with `--method`.
//!
//! Reading order: [`check`] (the entry point), [`checks`] (the generic checks),
//! [`profile`] (per service), [`events`], then [`connection`] (how the kit calls) and
//! [`report`].

pub mod checks;
pub mod cli;
pub mod connection;
pub mod events;
pub mod profile;
pub mod report;
pub mod tls;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use connection::{Answer, CallMetadata, Connection, Endpoint, OpenError, TimedAnswer};
pub use profile::{Probe, Profile};
pub use report::{CheckResult, Contract, Outcome, Report};
pub use tls::{ClientCertificate, SigningCa, TrustAnchors};

/// How long after a short deadline the kit still waits for the adapter's answer, by default:
/// room for the network and a busy machine, far less than a car waits.
pub const DEFAULT_DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// The most slack the kit accepts: beyond it a check of deadlines checks nothing.
pub const MAX_DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// The gateway's partner API, where a partner publishes events, and the partner's certificate.
#[derive(Debug, Clone)]
pub struct PartnerApi {
    /// `https://gateway:port` of `partner_api.listen`.
    pub endpoint: Endpoint,
    /// The partner's own certificate (`certs partner <name>`).
    pub certificate: ClientCertificate,
}

/// What to check and with what.
#[derive(Debug, Clone)]
pub struct KitConfig {
    /// The adapter.
    pub endpoint: Endpoint,
    /// Its service, `package.Service`.
    pub service: String,
    /// What its server certificate must chain to (`ca.pem`); also verifies the partner API.
    pub anchors: TrustAnchors,
    /// The gateway's client certificate (`gateway-client.pem`).
    pub gateway_client: ClientCertificate,
    /// A car's certificate, which the adapter must refuse.
    pub vehicle: Option<ClientCertificate>,
    /// The gateway-clients CA, to mint certificates the adapter's TLS accepts but its role
    /// check must refuse.
    pub gateway_clients_ca: Option<SigningCa>,
    /// For a service without a profile: the method the generic checks call.
    pub method: Option<String>,
    /// The partner API, for the events checks.
    pub partner_api: Option<PartnerApi>,
    /// See [`DEFAULT_DEADLINE_SLACK`]; at most [`MAX_DEADLINE_SLACK`].
    pub deadline_slack: Duration,
}

impl KitConfig {
    /// A configuration for the required parts; the optional ones are off.
    pub fn new(
        endpoint: Endpoint,
        service: &str,
        anchors: TrustAnchors,
        gateway_client: ClientCertificate,
    ) -> KitConfig {
        KitConfig {
            endpoint,
            service: service.to_owned(),
            anchors,
            gateway_client,
            vehicle: None,
            gateway_clients_ca: None,
            method: None,
            partner_api: None,
            deadline_slack: DEFAULT_DEADLINE_SLACK,
        }
    }
}

/// One check: a name, what the contract says, and how to check it.
pub struct Check {
    /// `area.what`, e.g. `mtls.vehicle-certificate`.
    pub name: &'static str,
    /// What the contract says and where.
    pub contract: Contract,
    /// Runs the check.
    pub run: for<'a> fn(&'a Kit) -> BoxFuture<'a, Outcome>,
}

/// A run of the kit: the configuration and the service's profile, which checks use.
pub struct Kit {
    /// What to check and with what.
    pub config: KitConfig,
    /// The service's profile, if the kit knows one.
    pub profile: Option<&'static dyn Profile>,
}

impl Kit {
    /// A connection presenting `certificate` (None: no client certificate).
    pub async fn connect(&self, certificate: Option<&ClientCertificate>) -> Result<Connection, OpenError> {
        let tls = self.config.anchors.client_config(certificate).map_err(|e| OpenError {
            refused_by_adapter: false,
            message: format!("{e:#}"),
        })?;
        Connection::open(&self.config.endpoint, tls).await
    }

    /// A connection as the gateway makes it.
    pub async fn connect_as_gateway(&self) -> Result<Connection, OpenError> {
        self.connect(Some(&self.config.gateway_client)).await
    }

    /// The harmless call of the profile, or the `--method` of a service without one.
    pub fn harmless_call(&self) -> Option<Probe> {
        match self.profile {
            Some(profile) => Some(profile.harmless_call()),
            None => self.generic_probe(),
        }
    }

    /// The call that acts for a car, so must know which one.
    pub fn call_needing_a_car(&self) -> Option<Probe> {
        match self.profile {
            Some(profile) => Some(profile.call_needing_a_car()),
            None => self.generic_probe(),
        }
    }

    /// The full path of `method` of the service under test.
    pub fn method_path(&self, method: &str) -> String {
        format!("/{}/{method}", self.config.service)
    }

    fn generic_probe(&self) -> Option<Probe> {
        let method = self.config.method.as_deref()?;
        Some(Probe {
            method: self.method_path(method),
            // An empty message: every field at its default. The adapter may refuse it; the
            // generic checks look at how and when it answers, not at what.
            message: Bytes::new(),
            expects_ok: false,
        })
    }
}

/// A VIN no real car has, fresh for each use, so that runs never meet each other's state.
pub fn probe_vin() -> String {
    // ISO 3779 characters: digits and capitals but I, O and Q.
    const ALLOWED: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
    let random = uuid::Uuid::new_v4();
    let tail: String = random
        .as_bytes()
        .iter()
        .take(14)
        .map(|b| ALLOWED[usize::from(*b) % ALLOWED.len()] as char)
        .collect();
    format!("PKT{tail}")
}

/// A fresh idempotency key.
pub fn probe_key() -> String {
    format!("partner-kit-{}", uuid::Uuid::new_v4())
}

/// Runs every check that applies to `config` and reports each.
pub async fn check(config: KitConfig) -> Report {
    let profile = profile::for_service(&config.service);
    let mut notes = Vec::new();
    match profile {
        Some(_) => notes.push(format!(
            "profile: {} (the service's own checks included)",
            config.service
        )),
        None => notes.push(format!(
            "no profile for {}: generic checks only (mTLS, metadata, deadlines, malformed bytes){}",
            config.service,
            match &config.method {
                Some(m) => format!(", calling {m} with an empty message"),
                None => ", and those that call a method are skipped: give --method <a method of the service>".into(),
            }
        )),
    }
    let kit = Kit { config, profile };
    let mut results = Vec::new();
    let service_checks = profile.map_or(&[][..], |p| p.checks());
    for check in checks::GENERIC.iter().chain(service_checks).chain(events::CHECKS) {
        let outcome = (check.run)(&kit).await;
        results.push(CheckResult {
            name: check.name,
            contract: check.contract,
            outcome,
        });
    }
    Report {
        service: kit.config.service.clone(),
        endpoint: kit.config.endpoint.uri.to_string(),
        notes,
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_vins_are_vins_and_differ() {
        let (a, b) = (probe_vin(), probe_vin());
        assert!(proto::Vin::parse(&a).is_ok(), "{a}");
        assert_ne!(a, b);
    }
}
