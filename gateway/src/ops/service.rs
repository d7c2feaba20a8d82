//! `fleet.v1.FleetOps`: what operators ask of the gateway and what they do to cars.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use proto::Vin;
use proto::fleet::v1 as fleet;
use proto::fleet::v1::fleet_ops_server::{FleetOps, FleetOpsServer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::{Request, Response, Status};
use tracing::info;

use super::auth::{NotOperator, Operator, SignIns, operator_of};
use super::{OpsContext, convert};
use crate::bus::Eviction;
use crate::clock::now_ms;
use crate::logsafe::printable_within;
use crate::store::{
    Customer, CustomerId, Interaction, JournalCursor, JournalEntry, SessionChange, SessionRecord, StoreError,
    TimelinePage, TimelineQuery,
};

/// Most sessions `ListSessions` returns at once.
const MAX_LIVE: u32 = 10_000;
/// Most closed sessions `ListSessions` returns at once.
const MAX_CLOSED: u32 = 1000;
/// Longest revocation reason kept.
const MAX_REASON_CHARS: usize = 500;

/// The FleetOps service. Cheap to clone.
#[derive(Clone)]
pub struct FleetOpsApi {
    context: OpsContext,
    sign_ins: Arc<SignIns>,
    public_url: String,
    watchers: Arc<Semaphore>,
    stopping: CancellationToken,
}

impl FleetOpsApi {
    /// Serves `context`; dashboard links point at `public_url`; at most `max_watchers` session
    /// streams at once, each ended when `stopping` is cancelled.
    pub fn new(
        context: OpsContext,
        sign_ins: Arc<SignIns>,
        public_url: String,
        max_watchers: usize,
        stopping: CancellationToken,
    ) -> Self {
        FleetOpsApi {
            context,
            sign_ins,
            public_url,
            watchers: Arc::new(Semaphore::new(max_watchers)),
            stopping,
        }
    }

    /// The tonic server for this service, behind the operator check: the only way it is served.
    pub fn into_server(self) -> InterceptedService<FleetOpsServer<FleetOpsApi>, RequireOperator> {
        InterceptedService::new(FleetOpsServer::new(self), RequireOperator)
    }

    /// The ops context this service acts on.
    pub fn context(&self) -> &OpsContext {
        &self.context
    }

    /// A stream of session changes for VINs starting with `prefix`, holding a watcher permit;
    /// RESOURCE_EXHAUSTED when `ops.max_watchers` streams are open.
    pub fn watch(&self, prefix: &str) -> Result<SessionChanges, Status> {
        let prefix = vin_prefix(prefix)?;
        let permit =
            self.watchers.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("too many session watchers open (ops.max_watchers); close one")
            })?;
        let node = self.context.node.clone();
        let changes = BroadcastStream::new(self.context.connection_events.subscribe()).filter_map(move |event| {
            let _held: &OwnedSemaphorePermit = &permit;
            match event {
                Ok(event) if convert::event_vin(&event).starts_with(&prefix) => {
                    convert::session_change(&node, &event).map(Ok)
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(Status::data_loss(format!(
                    "this watcher fell {missed} session changes behind; list the sessions and watch again"
                )))),
            }
        });
        // A watch never ends by itself, and the listener's graceful stop waits for every open
        // call: without this, one operator watching would hold the gateway's stop.
        let stopping = self.stopping.clone().cancelled_owned();
        let stopped = futures::stream::once(async move {
            stopping.await;
            Err(Status::unavailable(
                "the gateway is stopping; watch again once it is back, or watch another node",
            ))
        });
        Ok(Box::pin(changes.merge(stopped)))
    }
}

impl FleetOpsApi {
    /// Records an operator's action on a car in its timeline.
    fn record(&self, vin: &Vin, change: SessionChange, detail: String) {
        self.context.journal.record(JournalEntry {
            id: 0,
            at_ms: now_ms(),
            vin: vin.clone(),
            what: Interaction::Session(SessionRecord { change, detail }),
        });
    }
}

/// Session changes as `WatchSessions` streams them.
pub type SessionChanges = Pin<Box<dyn Stream<Item = Result<fleet::SessionChange, Status>> + Send>>;

/// Checks every gRPC call for an operator before any method runs: the caller's client
/// certificate must name one (the TLS layer accepts callers without a certificate, for probes
/// and browsers). The operator rides on in the request's extensions for `operator`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequireOperator;

impl Interceptor for RequireOperator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        let operator = operator_of(certs.as_deref().map(Vec::as_slice)).map_err(|e| match e {
            NotOperator::Anonymous => Status::unauthenticated(e.to_string()),
            NotOperator::Refused(why) => Status::permission_denied(why),
        })?;
        request.extensions_mut().insert(operator);
        Ok(request)
    }
}

/// The operator making `request`, as `RequireOperator` or the dashboard (in process, after its
/// own check) put it there; UNAUTHENTICATED for a request that passed neither.
pub fn operator<T>(request: &Request<T>) -> Result<Operator, Status> {
    request
        .extensions()
        .get::<Operator>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated(NotOperator::Anonymous.to_string()))
}

fn vin(text: &str) -> Result<Vin, Status> {
    Vin::parse(text).map_err(|e| Status::invalid_argument(format!("vin: {e}")))
}

/// A VIN prefix as typed: uppercased, ISO 3779 characters only (it goes into a LIKE pattern).
fn vin_prefix(text: &str) -> Result<String, Status> {
    let prefix = text.to_ascii_uppercase();
    if prefix.len() > 17 || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Status::invalid_argument(format!(
            "vin_prefix {:?}: at most 17 letters and digits",
            printable_within(text, 40)
        )));
    }
    Ok(prefix)
}

fn store_error(e: StoreError) -> Status {
    Status::new(e.code(), e.to_string())
}

/// Most entries a timeline page holds.
const MAX_PAGE: u32 = 1000;

fn timeline_query(from_ms: i64, to_ms: i64, page_size: u32, page_token: &str) -> Result<TimelineQuery, Status> {
    let after = match page_token {
        "" => None,
        token => Some(JournalCursor::from_token(token).map_err(store_error)?),
    };
    let to_ms = if to_ms == 0 { now_ms().saturating_add(1) } else { to_ms };
    if from_ms < 0 || to_ms < from_ms {
        return Err(Status::invalid_argument(format!(
            "time range [{from_ms}, {to_ms}) is empty or negative"
        )));
    }
    Ok(TimelineQuery {
        from_ms,
        to_ms,
        after,
        limit: match page_size {
            0 => 100,
            n => n.min(MAX_PAGE),
        },
    })
}

fn timeline_page(page: TimelinePage) -> fleet::TimelinePage {
    fleet::TimelinePage {
        entries: page.entries.into_iter().map(convert::timeline_entry).collect(),
        next_page_token: page.next.map(|c| c.to_token()).unwrap_or_default(),
    }
}

fn answer_customer(result: Result<Customer, StoreError>) -> Result<Response<fleet::Customer>, Status> {
    result.map(|c| Response::new(convert::customer(c))).map_err(store_error)
}

fn customer_id(text: &str) -> Result<CustomerId, Status> {
    if text.is_empty() || text.len() > 64 {
        return Err(Status::invalid_argument("customer_id: 1 to 64 characters"));
    }
    Ok(CustomerId(text.to_owned()))
}

fn identity(identity: Option<fleet::SocialIdentity>) -> Result<fleet::SocialIdentity, Status> {
    identity
        .filter(|i| !i.provider.is_empty() && !i.subject.is_empty())
        .ok_or_else(|| Status::invalid_argument("identity: provider and subject are required"))
}

/// What a FleetOps method answers.
type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl FleetOps for FleetOpsApi {
    async fn list_sessions(&self, request: Request<fleet::ListSessionsRequest>) -> Answer<fleet::ListSessionsResponse> {
        let r = request.into_inner();
        let prefix = vin_prefix(&r.vin_prefix)?;
        let live_limit = match r.live_limit {
            0 => 1000,
            n => n.min(MAX_LIVE),
        };
        let closed_limit = match r.closed_limit {
            0 => 50,
            n => n.min(MAX_CLOSED),
        };
        let store = &self.context.store;
        let (live, live_total) = store
            .open_connections_page(&prefix, live_limit)
            .await
            .map_err(store_error)?;
        let closed = store
            .recently_closed_connections(&prefix, closed_limit)
            .await
            .map_err(store_error)?;
        Ok(Response::new(fleet::ListSessionsResponse {
            live: live.into_iter().map(convert::session).collect(),
            recently_closed: closed.into_iter().map(convert::session).collect(),
            live_total,
        }))
    }

    type WatchSessionsStream = SessionChanges;

    async fn watch_sessions(&self, request: Request<fleet::WatchSessionsRequest>) -> Answer<SessionChanges> {
        Ok(Response::new(self.watch(&request.into_inner().vin_prefix)?))
    }

    async fn vehicle_timeline(&self, request: Request<fleet::VehicleTimelineRequest>) -> Answer<fleet::TimelinePage> {
        let r = request.into_inner();
        let vin = vin(&r.vin)?;
        let query = timeline_query(r.from_ms, r.to_ms, r.page_size, &r.page_token)?;
        let store = &self.context.store;
        let page = store.vehicle_timeline(&vin, query).await.map_err(store_error)?;
        if page.entries.is_empty() && query.after.is_none() {
            // An empty first page: a quiet period, or a VIN the gateway has never seen.
            let known = !store.connections_of(&vin, 1).await.map_err(store_error)?.is_empty()
                || store.customer_by_vin(&vin).await.map_err(store_error)?.is_some();
            if !known {
                return Err(Status::not_found(format!(
                    "vehicle {vin} has never connected to this fleet"
                )));
            }
        }
        Ok(Response::new(timeline_page(page)))
    }

    async fn customer_timeline(&self, request: Request<fleet::CustomerTimelineRequest>) -> Answer<fleet::TimelinePage> {
        let r = request.into_inner();
        let id = customer_id(&r.customer_id)?;
        let query = timeline_query(r.from_ms, r.to_ms, r.page_size, &r.page_token)?;
        let page = self.context.store.customer_timeline(&id, query).await;
        Ok(Response::new(timeline_page(page.map_err(store_error)?)))
    }

    async fn partner_health(&self, _: Request<fleet::PartnerHealthRequest>) -> Answer<fleet::PartnerHealthResponse> {
        let partners = self.context.health.partner_status();
        Ok(Response::new(fleet::PartnerHealthResponse {
            partners: partners.into_iter().map(convert::partner_status).collect(),
            window_seconds: u32::try_from(crate::routing::stats::WINDOW.as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn kick_vehicle(&self, request: Request<fleet::KickVehicleRequest>) -> Answer<fleet::KickVehicleResponse> {
        let by = operator(&request)?;
        let vin = vin(&request.into_inner().vin)?;
        let was_connected = self.context.mailboxes.evict(&vin, Eviction::Kick);
        info!(%vin, by = %by.name, was_connected, "vehicle kicked by an operator");
        self.record(&vin, SessionChange::Kicked, format!("by {}", by.name));
        Ok(Response::new(fleet::KickVehicleResponse { was_connected }))
    }

    async fn revoke_vehicle(
        &self,
        request: Request<fleet::RevokeVehicleRequest>,
    ) -> Answer<fleet::RevokeVehicleResponse> {
        let by = operator(&request)?;
        let r = request.into_inner();
        let vin = vin(&r.vin)?;
        let reason = printable_within(&r.reason, MAX_REASON_CHARS);
        let revoked = self.context.revocations.revoke(&vin, &reason, &by.name).await;
        let (record, was_connected) = revoked.map_err(store_error)?;
        self.record(&vin, SessionChange::Revoked, format!("by {}: {reason}", by.name));
        Ok(Response::new(fleet::RevokeVehicleResponse {
            revoked_at_ms: record.revoked_at_ms,
            was_connected,
        }))
    }

    async fn list_revocations(
        &self,
        _: Request<fleet::ListRevocationsRequest>,
    ) -> Answer<fleet::ListRevocationsResponse> {
        let all = self.context.revocations.all().await.map_err(store_error)?;
        Ok(Response::new(fleet::ListRevocationsResponse {
            revocations: all.into_iter().map(convert::revocation).collect(),
        }))
    }

    async fn create_customer(&self, request: Request<fleet::CreateCustomerRequest>) -> Answer<fleet::Customer> {
        let name = request.into_inner().display_name;
        answer_customer(self.context.store.create_customer(&name).await)
    }

    async fn get_customer(&self, request: Request<fleet::GetCustomerRequest>) -> Answer<fleet::Customer> {
        use fleet::get_customer_request::By;
        let store = &self.context.store;
        let (found, asked) = match request.into_inner().by {
            Some(By::CustomerId(id)) => (store.customer(&customer_id(&id)?).await, format!("customer {id}")),
            Some(By::Vin(text)) => {
                let vin = vin(&text)?;
                (store.customer_by_vin(&vin).await, format!("customer of vehicle {vin}"))
            }
            Some(By::SocialIdentity(i)) => {
                let i = identity(Some(i))?;
                (
                    store.customer_by_social(&i.provider, &i.subject).await,
                    format!("customer with {} identity {}", i.provider, i.subject),
                )
            }
            None => {
                return Err(Status::invalid_argument(
                    "by: a customer id, a VIN or a social identity",
                ));
            }
        };
        match found.map_err(store_error)? {
            Some(customer) => Ok(Response::new(convert::customer(customer))),
            None => Err(Status::not_found(format!("no {asked}"))),
        }
    }

    async fn link_vehicle(&self, request: Request<fleet::LinkVehicleRequest>) -> Answer<fleet::Customer> {
        let r = request.into_inner();
        let role = convert::role_of(r.role()).ok_or_else(|| Status::invalid_argument("role: OWNER or DRIVER"))?;
        let (id, vin) = (customer_id(&r.customer_id)?, vin(&r.vin)?);
        answer_customer(self.context.store.link_vehicle(&id, &vin, role, now_ms()).await)
    }

    async fn unlink_vehicle(&self, request: Request<fleet::UnlinkVehicleRequest>) -> Answer<fleet::Customer> {
        let r = request.into_inner();
        let (id, vin) = (customer_id(&r.customer_id)?, vin(&r.vin)?);
        answer_customer(self.context.store.unlink_vehicle(&id, &vin, now_ms()).await)
    }

    async fn link_social_identity(
        &self,
        request: Request<fleet::LinkSocialIdentityRequest>,
    ) -> Answer<fleet::Customer> {
        let r = request.into_inner();
        let (id, i) = (customer_id(&r.customer_id)?, identity(r.identity)?);
        answer_customer(
            self.context
                .store
                .link_social(&id, &i.provider, &i.subject, now_ms())
                .await,
        )
    }

    async fn unlink_social_identity(
        &self,
        request: Request<fleet::UnlinkSocialIdentityRequest>,
    ) -> Answer<fleet::Customer> {
        let r = request.into_inner();
        let (id, i) = (customer_id(&r.customer_id)?, identity(r.identity)?);
        answer_customer(self.context.store.unlink_social(&id, &i.provider, &i.subject).await)
    }

    async fn create_dashboard_link(
        &self,
        request: Request<fleet::CreateDashboardLinkRequest>,
    ) -> Answer<fleet::DashboardLink> {
        let by = operator(&request)?;
        let seconds = match request.into_inner().valid_seconds {
            0 => 300,
            n => u64::from(n).min(super::auth::MAX_LINK_TTL.as_secs()),
        };
        let token = self.sign_ins.issue_link(by.clone(), Duration::from_secs(seconds));
        info!(by = %by.name, valid_s = seconds, "dashboard sign-in link issued");
        let expires_at_ms = now_ms() + i64::try_from(seconds * 1000).unwrap_or(i64::MAX);
        Ok(Response::new(fleet::DashboardLink {
            url: format!("{}/signin?token={token}", self.public_url.trim_end_matches('/')),
            expires_at_ms,
        }))
    }
}
