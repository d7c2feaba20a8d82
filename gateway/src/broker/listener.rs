//! The accept loop: admission before TLS, each handshake in its own task with a timeout, so
//! a socket that never finishes its handshake delays no one else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::handshakes::HandshakePool;
use super::identity::vehicle_identity;
use super::lifecycle::{Peer, SessionSink};
use super::session::{SessionLimits, Wiring, serve_vehicle};
use super::subscriptions::SavedSessions;
use crate::bus::{Inbox, Mailboxes, PubSub};

/// Settings of the vehicle-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Connections (handshaking or connected) held at once.
    pub max_connections: usize,
    /// Handshakes in progress at once; beyond it new connections are shed before TLS.
    pub max_handshakes_in_flight: usize,
    /// Limits applied once a session is up.
    pub session: SessionLimits,
}

/// What the listener has done, for operators and benchmarks.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Closed before TLS because the connection limit was reached.
    pub shed_connections: AtomicU64,
    /// Closed before TLS because too many handshakes were in progress.
    pub shed_handshakes: AtomicU64,
    /// Handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
    /// Handshakes that completed.
    pub completed_handshakes: AtomicU64,
}

/// Everything a connection task needs, shared.
struct Shared {
    acceptor: TlsAcceptor,
    handshakes: Arc<HandshakePool>,
    wiring: Wiring,
    settings: ListenerSettings,
    shutdown: CancellationToken,
    next_conn: AtomicU64,
    stats: Arc<ListenerStats>,
}

/// What accepted vehicles are attached to and reported to.
pub struct Attachments {
    /// Where the gateway's messages for each car wait.
    pub mailboxes: Mailboxes,
    /// The router for the cars' other topics.
    pub pubsub: PubSub,
    /// Receives what cars send on the gateway's own topics.
    pub inbox: Arc<dyn Inbox>,
    /// Where sessions report connects and disconnects.
    pub events: SessionSink,
    /// The listener's counters.
    pub stats: Arc<ListenerStats>,
    /// Where TLS handshakes run.
    pub handshakes: Arc<HandshakePool>,
}

/// Accepts vehicles until `shutdown` is cancelled; connection tasks are tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    settings: ListenerSettings,
    attachments: Attachments,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let Attachments {
        mailboxes,
        pubsub,
        inbox,
        events,
        stats,
        handshakes: pool,
    } = attachments;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes_in_flight));
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        handshakes: pool,
        wiring: Wiring {
            mailboxes,
            pubsub,
            inbox,
            events,
            saved: SavedSessions::default(),
        },
        settings,
        shutdown: shutdown.clone(),
        next_conn: AtomicU64::new(1),
        stats,
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
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Admission happens before any TLS work, so overload costs one accept and one close.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.stats.shed_connections.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection limit reached, closing before handshake");
            drop(tcp);
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            shared.stats.shed_handshakes.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "handshake capacity reached, closing before handshake");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("vehicle", %peer, vin = tracing::field::Empty, cert = tracing::field::Empty);
        tracker.spawn(
            async move {
                handle(tcp, peer, &shared, handshake).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    info!("vehicle listener stopped accepting");
}

async fn handle(tcp: TcpStream, peer: SocketAddr, shared: &Shared, handshake: OwnedSemaphorePermit) {
    let permit = handshake;
    let outcome = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        // On the handshake pool (see `handshakes`); the stream comes back boxed, so the
        // connection's future, held for the car's whole session, carries a pointer to it.
        r = AbortOnDropHandle::new(shared.handshakes.spawn({
            let (acceptor, limit) = (shared.acceptor.clone(), shared.settings.handshake_timeout);
            async move { timeout(limit, acceptor.accept(tcp)).await.map(|accepted| accepted.map(Box::new)) }
        })) => match r {
            Ok(outcome) => outcome,
            // The pool is gone: the gateway is shutting down.
            Err(_) => return,
        },
    };
    drop(permit);
    let tls = match outcome {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            info!(error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            shared.stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            info!(timeout = ?shared.settings.handshake_timeout, "TLS handshake timed out");
            return;
        }
    };
    shared.stats.completed_handshakes.fetch_add(1, Ordering::Relaxed);
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
    let reason = serve_vehicle(tls, &peer, &shared.wiring, &shared.settings.session, &shared.shutdown).await;
    let peer = peer.remote;
    info!(%reason, %peer, "vehicle disconnected");
}
