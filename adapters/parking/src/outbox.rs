//! Events for cars, published reliably through the gateway's partner API
//! (`events.v1.PartnerEvents`): the transactional outbox pattern.
//!
//! Whatever makes an event happen (the exit gate ending a session) writes it to the
//! `event_outbox` table in the SAME transaction as the change itself (`enqueue`). A
//! `Publisher` task sends what the table holds, oldest first, and deletes each event once the
//! gateway accepted it. So:
//!
//! - kill -9 after the commit but before publishing: the event is still in the table, and the
//!   restarted adapter publishes it;
//! - kill -9 after publishing but before the delete: it is published again with the same
//!   `event_id`, which the gateway deduplicates (the car sees it once);
//! - the gateway unreachable: the publisher retries with capped exponential backoff;
//! - no partner API configured: events wait in the table (the adapter says so in its log) for
//!   an adapter that has one.
//!
//! An event is useless to the car after [`EVENT_TTL`]: the publisher drops older ones, which
//! also bounds the table.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use proto::events::v1::PublishRequest;
use proto::events::v1::partner_events_client::PartnerEventsClient;
use proto::parking::v1::parking_payment_server::SERVICE_NAME;
use sqlx::{Row as _, SqliteConnection};
use tokio::sync::Notify;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::clock::Clock;
use crate::store::{Database, unavailable};

/// How long an event is worth delivering: the publisher drops older ones, and asks the gateway
/// to keep trying for what remains of it.
pub const EVENT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Events read from the table per round.
const BATCH: i64 = 32;
/// How long one Publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait after the gateway failed.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Writes an event for `vin` to the outbox, in the caller's transaction.
pub(crate) async fn enqueue(
    conn: &mut SqliteConnection,
    event_id: &str,
    vin: &str,
    kind: &str,
    payload: Vec<u8>,
    now: i64,
) -> Result<(), Status> {
    sqlx::query(
        "INSERT INTO event_outbox (event_id, vin, kind, payload, created_at_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(vin)
    .bind(kind)
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// The gateway's partner API as this adapter reaches it: mTLS with the partner's certificate.
#[derive(Debug, Clone)]
pub struct PartnerApi {
    channel: Channel,
}

impl PartnerApi {
    /// The partner API at `url` (`https://host:port`), verified against `ca_pem`, presenting
    /// the partner certificate `cert_pem`/`key_pem` (a partner certificate is issued for client
    /// and server use, so the adapter's own serves). Connects on first use.
    pub fn new(url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<PartnerApi> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem));
        let channel = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url:?} is not a partner API address such as https://gateway:8443"))?
            .tls_config(tls)
            .context("partner API TLS settings")?
            .connect_timeout(PUBLISH_TIMEOUT)
            .connect_lazy();
        Ok(PartnerApi { channel })
    }

    /// The connection to the partner API.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// Sends the outbox's events to the gateway, oldest first, until the process ends.
pub(crate) struct Publisher {
    pub(crate) db: Database,
    pub(crate) client: PartnerEventsClient<Channel>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Notified when an event was committed to the outbox.
    pub(crate) wake: Arc<Notify>,
}

/// How a round of publishing ended.
enum Round {
    /// The outbox is empty: wait for a new event.
    Drained,
    /// A full batch went out: read the next one at once.
    MoreWaiting,
}

impl Publisher {
    /// Publishes until the task is dropped.
    pub(crate) async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            // Registered before reading the table, so an event committed meanwhile wakes us.
            let woken = self.wake.clone();
            let woken = woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.round().await {
                Ok(Round::Drained) => {
                    backoff = MIN_BACKOFF;
                    woken.await;
                }
                Ok(Round::MoreWaiting) => backoff = MIN_BACKOFF,
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?backoff, "cannot publish events to the gateway");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Publishes one batch; stops at the first failure worth retrying.
    async fn round(&mut self) -> Result<Round, Status> {
        let rows = sqlx::query(
            "SELECT event_id, vin, kind, payload, created_at_unix_ms FROM event_outbox \
             ORDER BY created_at_unix_ms, event_id LIMIT ?1",
        )
        .bind(BATCH)
        .fetch_all(self.db.pool())
        .await
        .map_err(unavailable)?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= BATCH;
        let ttl_ms = i64::try_from(EVENT_TTL.as_millis()).unwrap_or(i64::MAX);
        for row in rows {
            let event_id: String = row.get("event_id");
            let age_ms = self.clock.now_unix_ms() - row.get::<i64, _>("created_at_unix_ms");
            if age_ms >= ttl_ms {
                tracing::warn!(
                    event_id,
                    "dropping an event older than {EVENT_TTL:?} that was never published"
                );
                self.delete(&event_id).await?;
                continue;
            }
            let remaining_s = u32::try_from((ttl_ms - age_ms) / 1_000).unwrap_or(u32::MAX).max(1);
            let mut publish = tonic::Request::new(PublishRequest {
                vin: row.get("vin"),
                service: SERVICE_NAME.to_owned(),
                kind: row.get("kind"),
                payload: row.get("payload"),
                event_id: event_id.clone(),
                ttl_seconds: remaining_s,
            });
            publish.set_timeout(PUBLISH_TIMEOUT);
            match self.client.publish(publish).await {
                Ok(accepted) => {
                    tracing::info!(event_id, sequence = accepted.get_ref().sequence, "event published");
                }
                // The event itself is malformed: retrying cannot help, and it would hold up
                // every event behind it.
                Err(status) if status.code() == Code::InvalidArgument => {
                    tracing::error!(
                        event_id,
                        message = status.message(),
                        "the gateway refused an event; dropped"
                    );
                }
                Err(status) => return Err(status),
            }
            self.delete(&event_id).await?;
        }
        Ok(if full { Round::MoreWaiting } else { Round::Drained })
    }

    async fn delete(&self, event_id: &str) -> Result<(), Status> {
        sqlx::query("DELETE FROM event_outbox WHERE event_id = ?1")
            .bind(event_id)
            .execute(self.db.pool())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Events waiting in the outbox.
pub(crate) async fn waiting(db: &Database) -> Result<u64, Status> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_outbox")
        .fetch_one(db.pool())
        .await
        .map_err(unavailable)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
