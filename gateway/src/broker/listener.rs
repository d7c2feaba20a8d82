//! The accept loop and admission: what a socket may hold before it has proven anything.
//!
//! A socket that has not sent its whole ClientHello has cost the attacker nothing, so it
//! holds nothing scarce: no handshake permit, only a connection slot and a place in its source
//! address's small quota ([`ListenerSettings::max_pending_per_source`]), and it is dropped after
//! the short first-flight timeout. Only a complete ClientHello takes one of the handshake
//! permits, held while the handshake does its work on the handshake pool and at most for the
//! handshake timeout. So idle or half-ClientHello sockets, however many from one address,
//! never stop a car from connecting; the connection limit is the only cap on waiting sockets
//! from many addresses.
//!
//! Refused and timed-out sockets are counted ([`ListenerStats`]) and reported in one log line
//! a second, never one line per socket: a flood must not become a log flood.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::handshakes::HandshakePool;
use super::identity::vehicle_identity;
use super::lifecycle::Peer;
use super::session::{SessionServices, serve_vehicle};

/// Settings of the vehicle-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// How long a new socket has to deliver its whole ClientHello.
    pub first_flight_timeout: Duration,
    /// How long the rest of the TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Connections (handshaking or connected) held at once.
    pub max_connections: usize,
    /// Handshakes past their ClientHello at once; beyond it new ones are closed before any
    /// crypto, so a reconnect storm costs cheap refusals (the cars back off with jitter).
    pub max_handshakes_in_flight: usize,
    /// Sockets from one IP address that have not finished their handshake yet.
    pub max_pending_per_source: usize,
}

/// What the listener has done, for operators and benchmarks.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Whether the listener takes connections (readiness): set by whoever starts [`serve`] on a
    /// listening socket (connections queue in its backlog until the loop takes them), cleared
    /// when the loop stops.
    pub accepting: AtomicBool,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Closed at once: the connection limit was reached.
    pub shed_connections: AtomicU64,
    /// Closed at once: their source address had its maximum of sockets still handshaking.
    pub shed_per_source: AtomicU64,
    /// Closed after their ClientHello: too many handshakes were in progress.
    pub shed_handshakes: AtomicU64,
    /// Dropped for not sending a whole ClientHello within the first-flight timeout.
    pub first_flight_timeouts: AtomicU64,
    /// Handshakes that failed (bad certificate, not TLS, ...) or timed out after the ClientHello:
    /// the sum of the next three.
    pub failed_handshakes: AtomicU64,
    /// Of those: the first bytes were not a TLS ClientHello.
    pub not_tls: AtomicU64,
    /// Of those: TLS refused the handshake (bad or missing certificate, no common protocol, ...).
    pub tls_errors: AtomicU64,
    /// Of those: the handshake did not finish within the handshake timeout.
    pub handshake_timeouts: AtomicU64,
    /// Handshakes that completed.
    pub completed_handshakes: AtomicU64,
    /// Completed handshakes whose certificate the CA accepted but which is not a vehicle's.
    pub not_vehicle: AtomicU64,
}

impl ListenerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every socket refused or dropped before its MQTT session, by a short fixed reason (the
    /// `reason` label of `carlink_handshake_failures_total`).
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        [
            ("connection_limit", &self.shed_connections),
            ("per_source_limit", &self.shed_per_source),
            ("handshake_capacity", &self.shed_handshakes),
            ("first_flight_timeout", &self.first_flight_timeouts),
            ("not_tls", &self.not_tls),
            ("tls_error", &self.tls_errors),
            ("handshake_timeout", &self.handshake_timeouts),
            ("not_vehicle", &self.not_vehicle),
        ]
        .into_iter()
        .map(|(reason, n)| (reason, n.load(Ordering::Relaxed)))
        .collect()
    }

    /// The refusal and failure counters, in a fixed order, for reporting.
    fn refusals(&self) -> [u64; 5] {
        [
            &self.shed_connections,
            &self.shed_per_source,
            &self.shed_handshakes,
            &self.first_flight_timeouts,
            &self.failed_handshakes,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Everything a connection task needs, shared.
struct Listener {
    tls: Arc<ServerConfig>,
    pool: Arc<HandshakePool>,
    services: SessionServices,
    settings: ListenerSettings,
    handshakes: Arc<Semaphore>,
    pending: PendingBySource,
    shutdown: CancellationToken,
    next_conn: AtomicU64,
    stats: Arc<ListenerStats>,
}

/// Accepts vehicles until `shutdown` is cancelled; connection tasks are tracked by `tracker`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    settings: ListenerSettings,
    services: SessionServices,
    stats: Arc<ListenerStats>,
    pool: Arc<HandshakePool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let shared = Arc::new(Listener {
        tls,
        pool,
        services,
        handshakes: Arc::new(Semaphore::new(settings.max_handshakes_in_flight)),
        pending: PendingBySource::new(settings.max_pending_per_source),
        settings,
        shutdown: shutdown.clone(),
        next_conn: AtomicU64::new(1),
        stats,
    });
    tracker.spawn(report_refusals(shared.stats.clone(), shutdown.clone()));
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
        ListenerStats::bump(&shared.stats.accepted);
        // Admission happens before any TLS work, so overload costs one accept and one close.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ListenerStats::bump(&shared.stats.shed_connections);
            debug!(%peer, "connection limit reached, closing before the handshake");
            continue;
        };
        let Some(pending) = shared.pending.enter(peer.ip()) else {
            ListenerStats::bump(&shared.stats.shed_per_source);
            debug!(%peer, "source address has its maximum of sockets handshaking, closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("vehicle", %peer, vin = tracing::field::Empty, cert = tracing::field::Empty);
        tracker.spawn(
            async move {
                handle(tcp, peer, &shared, pending).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    shared.stats.accepting.store(false, Ordering::Release);
    info!("vehicle listener stopped accepting");
}

async fn handle(tcp: TcpStream, remote: SocketAddr, shared: &Listener, pending: Pending) {
    let Some(tls) = Box::pin(handshake(tcp, shared)).await else {
        return;
    };
    drop(pending);
    ListenerStats::bump(&shared.stats.completed_handshakes);
    let identity = match vehicle_identity(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(e) => {
            ListenerStats::bump(&shared.stats.not_vehicle);
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
        certificate: identity.certificate,
        remote,
    };
    let reason = serve_vehicle(tls, &peer, &shared.services, &shared.shutdown).await;
    info!(%reason, peer = %remote, "vehicle disconnected");
}

type Tls = Box<tokio_rustls::server::TlsStream<TcpStream>>;

/// The TLS handshake in two steps: the ClientHello (cheap, no permit, first-flight timeout),
/// then the rest on the handshake pool under a permit. `None` if it did not complete.
async fn handshake(tcp: TcpStream, shared: &Listener) -> Option<Tls> {
    let settings = &shared.settings;
    let hello = tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        hello = timeout(settings.first_flight_timeout, LazyConfigAcceptor::new(Acceptor::default(), tcp)) => hello,
    };
    let start = match hello {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            ListenerStats::bump(&shared.stats.failed_handshakes);
            ListenerStats::bump(&shared.stats.not_tls);
            debug!(error = %e, "not a TLS ClientHello");
            return None;
        }
        Err(_) => {
            ListenerStats::bump(&shared.stats.first_flight_timeouts);
            debug!(timeout = ?settings.first_flight_timeout, "no complete ClientHello in time");
            return None;
        }
    };
    let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
        ListenerStats::bump(&shared.stats.shed_handshakes);
        debug!("handshake capacity reached, closing before any crypto");
        return None;
    };
    // On the handshake pool (see `handshakes`); the stream comes back boxed, so the
    // connection's future, held for the car's whole session, carries a pointer to it.
    let (tls, limit) = (shared.tls.clone(), settings.handshake_timeout);
    let work = shared.pool.spawn(async move {
        let done = timeout(limit, start.into_stream(tls)).await;
        drop(permit);
        done.map(|accepted| accepted.map(Box::new))
    });
    let outcome = tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        outcome = AbortOnDropHandle::new(work) => outcome.ok()?,
    };
    match outcome {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            ListenerStats::bump(&shared.stats.failed_handshakes);
            ListenerStats::bump(&shared.stats.tls_errors);
            debug!(error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            ListenerStats::bump(&shared.stats.failed_handshakes);
            ListenerStats::bump(&shared.stats.handshake_timeouts);
            debug!(timeout = ?limit, "TLS handshake timed out after the ClientHello");
            None
        }
    }
}

/// Logs, once a second and only when something happened, how many sockets were refused or
/// dropped and why.
async fn report_refusals(stats: Arc<ListenerStats>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut before = stats.refusals();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = stats.refusals();
        let [
            connection_limit,
            per_source,
            handshake_capacity,
            first_flight_timeout,
            failed,
        ] = std::array::from_fn(|i| now[i] - before[i]);
        if now != before {
            info!(
                connection_limit,
                per_source,
                handshake_capacity,
                first_flight_timeout,
                failed,
                "vehicle sockets refused or dropped in the last second"
            );
        }
        before = now;
    }
}

/// Sockets still handshaking, by source address, each address capped.
#[derive(Debug)]
struct PendingBySource {
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One socket's place in its source's quota; given back on drop.
#[derive(Debug)]
struct Pending {
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PendingBySource {
    fn new(max: usize) -> PendingBySource {
        PendingBySource {
            by_ip: Arc::default(),
            max,
        }
    }

    fn enter(&self, ip: IpAddr) -> Option<Pending> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Pending {
            by_ip: self.by_ip.clone(),
            ip,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_address_has_its_own_quota_of_pending_sockets() {
        let pending = PendingBySource::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = pending.enter(a).unwrap();
        let _second = pending.enter(a).unwrap();
        assert!(pending.enter(a).is_none(), "a third from the same address is refused");
        assert!(pending.enter(b).is_some(), "another address is not affected");
        drop(first);
        assert!(
            pending.enter(a).is_some(),
            "a place is given back when a socket moves on"
        );
    }

    #[test]
    fn an_address_with_nothing_pending_takes_no_memory() {
        let pending = PendingBySource::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(pending.enter(a));
        assert!(pending.by_ip.lock().unwrap().is_empty());
    }
}
