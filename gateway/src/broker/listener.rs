//! The accept loop: admission before TLS, each handshake in its own task with a timeout, so
//! a socket that never finishes its handshake delays no one else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::connection::{Peer, SessionLimits, SessionSink, serve_vehicle};
use super::identity::vehicle_identity;
use crate::bus::Bus;

/// Settings of the vehicle-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Connections (handshaking or connected) held at once.
    pub max_connections: usize,
    /// Limits applied once a session is up.
    pub session: SessionLimits,
}

/// Everything a connection task needs, shared.
struct Shared {
    acceptor: TlsAcceptor,
    bus: Bus,
    settings: ListenerSettings,
    events: SessionSink,
    shutdown: CancellationToken,
    next_conn: AtomicU64,
}

/// Accepts vehicles until `shutdown` is cancelled; connection tasks are tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    bus: Bus,
    settings: ListenerSettings,
    events: SessionSink,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        bus,
        settings,
        events,
        shutdown: shutdown.clone(),
        next_conn: AtomicU64::new(1),
    });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or similar: pause accepting instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Admission happens before any TLS work, so overload costs one accept and one close.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached, closing before handshake");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("vehicle", %peer, vin = tracing::field::Empty, cert = tracing::field::Empty);
        tracker.spawn(
            async move {
                handle(tcp, peer, &shared).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    info!("vehicle listener stopped accepting");
}

async fn handle(tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    let handshake = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = timeout(shared.settings.handshake_timeout, shared.acceptor.accept(tcp)) => r,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            info!(timeout = ?shared.settings.handshake_timeout, "TLS handshake timed out");
            return;
        }
    };
    let identity = match vehicle_identity(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(e) => {
            warn!(error = %e, "certificate accepted by the CA but not a vehicle's; closing");
            return;
        }
    };
    let span = Span::current();
    span.record("vin", identity.vin.as_str());
    span.record("cert", &identity.fingerprint[..16]);
    let peer = Peer {
        conn: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        vin: identity.vin,
        fingerprint: identity.fingerprint,
        remote: peer,
    };
    let reason = serve_vehicle(
        tls,
        &peer,
        &shared.bus,
        &shared.settings.session,
        &shared.events,
        &shared.shutdown,
    )
    .await;
    let peer = peer.remote;
    info!(%reason, %peer, "vehicle disconnected");
}
