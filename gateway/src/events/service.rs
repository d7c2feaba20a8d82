//! `events.v1.PartnerEvents`: partners push events for cars. A partner is identified by its
//! mTLS client certificate (OU=partner, CN=name) and may publish only for its own services.
//!
//! What a partner controls is bounded: the size of an event, its TTL, how many events wait for
//! one car (`events.max_pending_per_vin`) and how fast the partner publishes
//! (`events.max_per_second_per_partner`); beyond the last two it gets RESOURCE_EXHAUSTED.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use proto::Vin;
use proto::events::v1::partner_events_server::{PartnerEvents, PartnerEventsServer};
use proto::events::v1::{PublishRequest, PublishResponse};
use proto::identity::{Role, require_peer_role};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::EventDelivery;
use crate::clock::now_ms;
use crate::config::{EventsConfig, PartnerConfig};
use crate::journal::Journal;
use crate::logsafe::printable;
use crate::store::{Appended, EventRecord, Interaction, JournalEntry, NewEvent, Store};

/// The PartnerEvents service.
#[derive(Clone)]
pub struct PartnerEventsApi {
    store: Store,
    delivery: EventDelivery,
    services_of: HashMap<String, HashSet<String>>,
    limits: EventsConfig,
    /// Publishes per second, per partner name.
    rate: Arc<DefaultKeyedRateLimiter<String>>,
    /// Where accepted events are recorded (disabled unless [`PartnerEventsApi::with_journal`]).
    journal: Journal,
}

impl PartnerEventsApi {
    /// Serves partners named in `partners` (entries without a `name` cannot push events).
    pub fn new(store: Store, delivery: EventDelivery, partners: &[PartnerConfig], limits: EventsConfig) -> Self {
        let mut services_of: HashMap<String, HashSet<String>> = HashMap::new();
        for p in partners {
            if let Some(name) = &p.name {
                services_of.entry(name.clone()).or_default().insert(p.service.clone());
            }
        }
        let quota = Quota::per_second(limits.max_per_second_per_partner).allow_burst(limits.burst_per_partner);
        PartnerEventsApi {
            store,
            delivery,
            services_of,
            limits,
            rate: Arc::new(RateLimiter::keyed(quota)),
            journal: Journal::disabled(),
        }
    }

    /// Records every accepted event in `journal`.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> PartnerEventsServer<PartnerEventsApi> {
        PartnerEventsServer::new(self)
    }
}

/// The partner's name from its verified client certificate (role partner, else PERMISSION_DENIED).
fn partner_of<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(require_peer_role(request, Role::Partner)?.name)
}

/// Whether `s` is an identifier a partner may give: 1 to `max` printable ASCII characters.
fn is_partner_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The first checks of a publish, made before the partner's rate is counted: the event is for a
/// valid VIN and for one of the services the partner is configured for (`services`).
pub(crate) fn permitted(partner: &str, services: Option<&HashSet<String>>, r: &PublishRequest) -> Result<Vin, Status> {
    let vin = Vin::parse(&r.vin).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !services.is_some_and(|services| services.contains(&r.service)) {
        warn!(partner = %printable(partner), service = %printable(&r.service), "event refused: not this partner's service");
        return Err(Status::permission_denied(format!(
            "partner {} may not publish events for {:?}",
            printable(partner),
            printable(&r.service)
        )));
    }
    Ok(vin)
}

/// The event a permitted publish stores, raised at `now` (unix ms), or why it is refused: its
/// kind, id and size are checked and its TTL bounded by `limits`.
pub(crate) fn new_event(r: PublishRequest, vin: Vin, limits: &EventsConfig, now: i64) -> Result<NewEvent, Status> {
    if !is_partner_id(&r.kind, 64) {
        return Err(Status::invalid_argument(
            "kind must be 1 to 64 printable ASCII characters",
        ));
    }
    if !is_partner_id(&r.event_id, 255) {
        return Err(Status::invalid_argument(
            "event_id must be 1 to 255 printable ASCII characters",
        ));
    }
    if r.payload.len() > limits.max_payload_bytes {
        return Err(Status::resource_exhausted(format!(
            "event payload of {} bytes exceeds the {}-byte limit",
            r.payload.len(),
            limits.max_payload_bytes
        )));
    }
    let ttl = match r.ttl_seconds {
        0 => limits.default_ttl,
        s => Duration::from_secs(s.into()).min(limits.max_ttl),
    };
    Ok(NewEvent {
        vin,
        service: r.service,
        kind: r.kind,
        payload: r.payload,
        event_id: r.event_id,
        created_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as i64,
    })
}

#[tonic::async_trait]
impl PartnerEvents for PartnerEventsApi {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let partner = partner_of(&request)?;
        let r = request.into_inner();
        let vin = permitted(&partner, self.services_of.get(&partner), &r)?;
        if self.rate.check_key(&partner).is_err() {
            return Err(Status::resource_exhausted(format!(
                "more than {} events per second from partner {}; retry later with the same event_id",
                self.limits.max_per_second_per_partner,
                printable(&partner)
            )));
        }
        let event = new_event(r, vin, &self.limits, now_ms())?;
        let vin = &event.vin;
        let appended = self
            .store
            .append_event(&event, self.limits.max_pending_per_vin)
            .await
            .map_err(|e| {
                warn!(%vin, error = %e, "event not stored");
                Status::unavailable("event storage is unavailable; retry with the same event_id")
            })?;
        let sequence = match appended {
            Appended::Stored(sequence) => sequence,
            Appended::Full { pending } => {
                return Err(Status::resource_exhausted(format!(
                    "{pending} events already wait for vehicle {vin} (at most {}); retry later with the same event_id",
                    self.limits.max_pending_per_vin
                )));
            }
        };
        info!(partner = %printable(&partner), %vin, sequence, kind = %event.kind, "event accepted");
        self.journal.record(JournalEntry {
            id: 0,
            at_ms: event.created_at_ms,
            vin: vin.clone(),
            what: Interaction::Event(EventRecord {
                service: event.service.clone(),
                kind: event.kind.clone(),
                sequence,
            }),
        });
        self.delivery.flush(vin);
        Ok(Response::new(PublishResponse { sequence }))
    }
}
