//! The operators' side: `fleet.v1.FleetOps` (gRPC), the dashboard, `/metrics`, `/healthz` and
//! `/readyz`, on one TLS listener (`[ops]`).
//!
//! Operators are known by their client certificate (OU=operator, from the operators CA, the
//! listener's only trust anchor). The certificate is optional at the TLS level so that health
//! probes, metrics scrapers and a browser signing in with a one-time link can connect; every
//! gRPC call and every dashboard request checks for an operator itself ([`auth`]).
//! Glue, like `lib.rs`: it may use every other module of the gateway.

pub mod auth;
mod convert;
mod dashboard;
mod revocations;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use revocations::{Revocations, reload_revocations};
pub use service::FleetOpsApi;

use crate::broker::ConnectionEvent;
use crate::bus::Mailboxes;
use crate::config::{GatewayConfig, OpsConfig};
use crate::health::Health;
use crate::journal::Journal;
use crate::listeners::{self, EndpointError, TlsFiles};
use crate::store::Store;

/// What the operators' endpoint reads and acts on. Cheap to clone.
#[derive(Clone)]
pub struct OpsContext {
    /// This node's name.
    pub node: String,
    /// Connection log, revocations, journal, customers.
    pub store: Store,
    /// Live sessions' mailboxes: kicking a car closes its mailbox.
    pub mailboxes: Mailboxes,
    /// Revocations in force on this node.
    pub revocations: Revocations,
    /// Connects and disconnects as they are recorded.
    pub connection_events: broadcast::Sender<ConnectionEvent>,
    /// Metrics, readiness and each partner's figures.
    pub health: Health,
    /// Where operators' kicks and revocations are recorded in the car's timeline.
    pub journal: Journal,
}

/// Starts the ops listener (the one passed, or `ops.listen` bound now) and returns its address.
pub async fn serve(
    config: &GatewayConfig,
    ops: &OpsConfig,
    listener: Option<TcpListener>,
    context: OpsContext,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, EndpointError> {
    const ENDPOINT: &str = "ops";
    let files = TlsFiles {
        client_ca: ops.client_ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let tls = listeners::server_tls(ENDPOINT, files).await?.client_auth_optional(true);
    let (listener, addr) = listeners::listener(ENDPOINT, listener, ops.listen)?;
    let public_url = ops.public_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let sign_ins = Arc::new(auth::SignIns::new(
        ops.max_dashboard_sessions,
        ops.dashboard_session_ttl,
    ));
    let api = FleetOpsApi::new(
        context.clone(),
        sign_ins.clone(),
        public_url,
        ops.max_watchers,
        shutdown.clone(),
    );
    let routes = dashboard::routes(api.clone(), sign_ins);
    let router = listeners::server()
        .tls_config(tls)
        .map_err(listeners::tls_refused(ENDPOINT))?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes))
        .add_service(api.into_server());
    listeners::spawn(ENDPOINT, router, listener, shutdown, tracker);
    info!(%addr, "ops listener up (fleet ops gRPC, dashboard, metrics; operators by certificate)");
    Ok(addr)
}
