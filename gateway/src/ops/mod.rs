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
use tracing::{error, info};

pub use revocations::{Revocations, reload_revocations};
pub use service::FleetOpsApi;

use crate::broker::ConnectionEvent;
use crate::bus::Mailboxes;
use crate::config::{GatewayConfig, OpsConfig};
use crate::health::Health;
use crate::journal::Journal;
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

/// Why the ops listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsStartError {
    /// A certificate file could not be read.
    #[error("ops: {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// tonic refused the TLS setup.
    #[error("ops: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The address could not be bound.
    #[error("ops: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Starts the ops listener on `listener` and returns its address.
pub async fn serve(
    config: &GatewayConfig,
    ops: &OpsConfig,
    listener: TcpListener,
    context: OpsContext,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, OpsStartError> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let files = [ops.client_ca.clone(), config.tls.cert.clone(), config.tls.key.clone()];
    let [ca, cert, key] = tokio::task::spawn_blocking(move || {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| OpsStartError::File {
                path: path.to_owned(),
                source,
            })
        };
        let [ca, cert, key] = files.each_ref().map(|path| read(path));
        Ok::<_, OpsStartError>([ca?, cert?, key?])
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(true);
    let addr = listener.local_addr().map_err(|source| OpsStartError::Bind {
        addr: ops.listen,
        source,
    })?;
    let public_url = ops.public_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let sign_ins = Arc::new(auth::SignIns::new(
        ops.max_dashboard_sessions,
        ops.dashboard_session_ttl,
    ));
    let api = FleetOpsApi::new(context.clone(), sign_ins.clone(), public_url, ops.max_watchers);
    let routes = dashboard::routes(api.clone(), sign_ins);
    let server = Server::builder()
        .tls_config(tls)
        .map_err(OpsStartError::Tls)?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes))
        .add_service(api.into_server());
    tracker.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = server
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            error!(error = %e, "ops listener stopped");
        }
    });
    info!(%addr, "ops listener up (fleet ops gRPC, dashboard, metrics; operators by certificate)");
    Ok(addr)
}
