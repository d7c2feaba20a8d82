//! The gateway: terminates MQTT over mTLS for vehicles and brokers each of their requests
//! to the partner adapter that serves it.
//!
//! Layout: [`broker`] is the vehicle-facing connection layer (TLS, identity, MQTT sessions);
//! [`routing`] maps requests to partner adapters; both meet on the [`bus`], rumqttd's router
//! running in-process. [`Gateway`] wires them together.

pub mod broker;
pub mod bus;
pub mod config;
pub mod routing;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

pub use broker::{DisconnectReason, SessionEvent};
pub use config::{ConfigError, GatewayConfig};

/// Headroom over the largest request payload for the envelope and MQTT headers.
const ENVELOPE_OVERHEAD_BYTES: usize = 16 * 1024;
/// Pending connections the kernel queues for us; bursts of reconnecting cars must not overflow it.
const LISTEN_BACKLOG: u32 = 8192;

/// A running gateway.
pub struct Gateway {
    mqtt_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    sessions: broadcast::Sender<SessionEvent>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] broker::tls::TlsSetupError),
    /// A partner entry could not be set up.
    #[error(transparent)]
    Partner(#[from] routing::partners::PartnerSetupError),
    /// The in-process router refused the dispatcher.
    #[error(transparent)]
    Router(#[from] bus::BusError),
}

/// Binds `addr` with a large accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Gateway {
    /// Binds `config.mqtt.listen` and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, StartError> {
        let addr = config.mqtt.listen;
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        Gateway::start_on(config, listener).await
    }

    /// Starts serving vehicles on an already-bound listener (tests bind port 0).
    pub async fn start_on(config: GatewayConfig, listener: TcpListener) -> Result<Gateway, StartError> {
        let mqtt_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.mqtt.listen, source })?;
        let tls = broker::tls::server_config(&config.tls)?;
        let partners = routing::PartnerDirectory::from_config(&config.partners)?;
        let max_packet_bytes = config.requests.max_payload_bytes + ENVELOPE_OVERHEAD_BYTES;
        let bus = bus::Bus::spawn(config.mqtt.max_connections, max_packet_bytes);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (sessions, _) = broadcast::channel(1024);

        let router = Arc::new(routing::RequestRouter::new(partners.clone(), config.requests.clone()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        {
            let (bus, shutdown, requests) = (bus.clone(), shutdown.clone(), TaskTracker::new());
            tracker.spawn(async move {
                let served = routing::dispatcher::run(bus, router, shutdown, requests.clone(), ready_tx).await;
                requests.close();
                requests.wait().await;
                if let Err(e) = served {
                    error!(error = %e, "request dispatcher stopped");
                }
            });
        }
        ready_rx.await.map_err(|_| bus::BusError("dispatcher did not start".into()))??;

        let settings = broker::ListenerSettings {
            handshake_timeout: config.mqtt.handshake_timeout,
            max_connections: config.mqtt.max_connections,
            session: broker::SessionLimits {
                connect_timeout: config.mqtt.connect_timeout,
                max_keep_alive: config.mqtt.max_keep_alive,
                max_packet_bytes,
            },
        };
        tracker.spawn(broker::listener::serve(
            listener,
            tls,
            bus,
            settings,
            sessions.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        let services: Vec<_> = partners.services().collect();
        info!(%mqtt_addr, partners = ?services, "gateway listening for vehicles (MQTT 3.1.1 over mTLS)");
        Ok(Gateway { mqtt_addr, shutdown, tracker, sessions })
    }

    /// Where vehicles connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Session connect/disconnect events from now on.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.sessions.subscribe()
    }

    /// Stops accepting, disconnects every car, finishes requests in flight, then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        info!("gateway stopped");
    }
}
