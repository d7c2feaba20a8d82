//! What the ops listener serves about the gateway itself: the metrics text (`/metrics`),
//! readiness (`/readyz`) and each partner's status (`fleet.v1.FleetOps/PartnerHealth`).
//! Glue, like `lib.rs`: it reads every layer's figures at scrape time.

use std::path::Path;
use std::time::Duration;

use tracing::warn;

use std::sync::Arc;

use crate::broker::{ListenerStats, SavedSessions};
use crate::bus::Mailboxes;
use crate::metrics::{Metrics, PartnerGauges, Scrape, StoreGauges, UNKNOWN_SERVICE};
use crate::routing::{BreakerState, PartnerDirectory, PartnerStatus, RequestStats};
use crate::{Gateway, clock, store};

/// How long a scrape waits for the store's counts; past it the store's gauges are left out
/// and `carlink_store_up` is 0, so a slow database never makes the scrape itself time out
/// (Prometheus's default scrape timeout is 10 s).
pub const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the gateway is not ready for traffic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The vehicle listener is not accepting connections.
    #[error("not ready: the vehicle listener is not accepting connections")]
    Listener,
    /// The database did not answer a ping within `storage.acquire_timeout`.
    #[error("not ready: the database {database} did not answer: {problem}")]
    Store {
        /// The database (password redacted).
        database: String,
        /// What went wrong (the store's error, or the timeout).
        problem: String,
    },
}

/// What the health figures are read from: clones of the gateway's parts. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    pub(crate) store: store::Store,
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) saved: SavedSessions,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) partners: PartnerDirectory,
    /// The partners' service names, in configuration order (metrics labels).
    pub(crate) configured_services: Vec<String>,
    /// The metric families the layers count into.
    pub(crate) metrics: Arc<Metrics>,
    /// Each partner's last minute of requests.
    pub(crate) request_stats: Arc<RequestStats>,
    /// `storage.acquire_timeout`: how long readiness waits for the database.
    pub(crate) store_timeout: Duration,
}

impl Gateway {
    /// See [`Health::metrics_text`].
    pub async fn metrics_text(&self) -> String {
        self.health.metrics_text().await
    }

    /// See [`Health::readiness`].
    pub async fn readiness(&self) -> Result<(), NotReady> {
        self.health.readiness().await
    }

    /// See [`Health::partner_status`].
    pub fn partner_status(&self) -> Vec<PartnerStatus> {
        self.health.partner_status()
    }

    /// What the health figures are read from, for the ops listener.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

impl Health {
    /// The Prometheus text exposition of every metric (serve it with
    /// [`crate::metrics::CONTENT_TYPE`]). The store's sizes are counted now, within
    /// [`SCRAPE_STORE_TIMEOUT`] (or `storage.acquire_timeout` if shorter); if the database does
    /// not answer, those gauges are left out and `carlink_store_up` is 0.
    pub async fn metrics_text(&self) -> String {
        let limit = SCRAPE_STORE_TIMEOUT.min(self.store_timeout);
        let store = match tokio::time::timeout(limit, store_gauges(&self.store, &self.configured_services)).await {
            Ok(Ok(gauges)) => Some(gauges),
            Ok(Err(e)) => {
                warn!(error = %e, "metrics: the store's counts are left out of this scrape");
                None
            }
            Err(_) => {
                warn!(timeout = ?limit, "metrics: the store did not answer in time; its counts are left out of this scrape");
                None
            }
        };
        let (parked, parked_bytes) = self.mailboxes.parked();
        let saved = self.saved.stats();
        let scrape = Scrape {
            vehicles_connected: self.mailboxes.live(),
            handshake_failures: self.stats.failures(),
            partners: self
                .partners
                .health()
                .into_iter()
                .map(|h| PartnerGauges {
                    breaker_open: h.breaker != BreakerState::Closed,
                    calls_in_flight: h.calls_in_flight,
                    service: h.service,
                })
                .collect(),
            mailboxes_parked: parked,
            mailboxes_parked_bytes: parked_bytes,
            saved_sessions: saved.away,
            retained_messages: saved.retained,
            store,
        };
        self.metrics.render(&scrape)
    }

    /// Ready for traffic: the vehicle listener is accepting and the database answers a ping
    /// within `storage.acquire_timeout`.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if !self.stats.accepting.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NotReady::Listener);
        }
        let problem = match tokio::time::timeout(self.store_timeout, self.store.ping()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.store_timeout),
        };
        Err(NotReady::Store {
            database: self.store.database().to_owned(),
            problem,
        })
    }

    /// Each configured partner's request rate, latency and error rate over the last
    /// [`crate::routing::stats::WINDOW`], with its breaker and load-shedding figures.
    pub fn partner_status(&self) -> Vec<PartnerStatus> {
        self.request_stats
            .partner_status(&self.partners, tokio::time::Instant::now())
    }
}

/// The store's sizes; events of services no partner is configured for any more are summed
/// under `unknown`, so the label stays bounded by the configuration.
async fn store_gauges(store: &store::Store, configured: &[String]) -> Result<StoreGauges, store::StoreError> {
    let (ledger_entries, events_stored, pending) = tokio::try_join!(
        store.ledger_entries(),
        store.events_stored(),
        store.events_pending_by_service(clock::now_ms()),
    )?;
    let mut events_pending: Vec<(String, u64)> = configured.iter().map(|s| (s.clone(), 0)).collect();
    let mut unknown = 0;
    for (service, n) in pending {
        match events_pending.iter_mut().find(|(s, _)| *s == service) {
            Some((_, total)) => *total += n,
            None => unknown += n,
        }
    }
    if unknown > 0 {
        events_pending.push((UNKNOWN_SERVICE.to_owned(), unknown));
    }
    Ok(StoreGauges {
        ledger_entries,
        events_stored,
        events_pending,
    })
}

/// The notAfter (unix seconds) of the first certificate in the PEM file `path` (the
/// gateway's own server certificate); `None`, with a warning, if it cannot be read. Blocking:
/// call it off the async workers.
pub(crate) fn certificate_expiry(path: &Path) -> Option<i64> {
    let read = || -> Result<i64, String> {
        let pem = std::fs::read(path).map_err(|e| e.to_string())?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
        let cert = pem.parse_x509().map_err(|e| e.to_string())?;
        Ok(cert.validity().not_after.timestamp())
    };
    read()
        .inspect_err(|e| warn!(path = %path.display(), error = %e, "cannot read the server certificate's expiry; its metric is left out"))
        .ok()
}
