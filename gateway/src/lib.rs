//! The gateway: terminates MQTT over mTLS for vehicles and brokers each of their requests
//! to the partner adapter that serves it.
//!
//! Layout: [`broker`] is the vehicle-facing connection layer (TLS, identity, MQTT sessions);
//! [`routing`] maps requests to partner adapters and [`events`] delivers partner events; they
//! meet the broker on the [`bus`] (per-VIN mailboxes, a request inbox, an acknowledgement
//! inbox). [`clock`], [`logsafe`] and [`metrics`] are leaves every layer may use. [`Gateway`] wires them
//! together. ARCHITECTURE.md says which layer may use which; a test holds them to it. [`fuzz`]
//! holds the fuzzers' entry points, not an API.

pub mod broker;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connection_log;
pub mod events;
pub mod fleet_cli;
pub mod fuzz;
pub mod health;
pub mod journal;
pub mod listeners;
pub mod logsafe;
pub mod metrics;
pub mod ops;
pub mod routing;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use broker::{ConnectionEvent, DisconnectReason};
pub use config::{ConfigError, GatewayConfig};
pub use health::NotReady;
pub use listeners::bind;

/// Headroom over the largest request payload for the envelope and MQTT headers.
const ENVELOPE_OVERHEAD_BYTES: usize = 16 * 1024;

/// A running gateway.
pub struct Gateway {
    mqtt_addr: SocketAddr,
    partner_api_addr: Option<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    sessions: broadcast::Sender<ConnectionEvent>,
    recorder: JoinHandle<()>,
    store: store::Store,
    stats: Arc<broker::ListenerStats>,
    handshakes: Arc<broker::HandshakePool>,
    /// What cars keep between sessions (not the whole `SessionServices`: that holds a sender
    /// of connection events, and the recorder ends only when every sender is gone).
    saved: broker::SavedSessions,
    mailboxes: bus::Mailboxes,
    /// The partners, for their limits' and breakers' state.
    partners: routing::PartnerDirectory,
    /// Metrics, readiness and partner status.
    health: health::Health,
    /// The interaction journal's handle; its writer drains before the store closes.
    journal: journal::Journal,
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
    /// The database could not be reached or migrated.
    #[error("storage: {0}")]
    Storage(#[from] store::StoreError),
    /// The handshake threads could not be started.
    #[error("cannot start the TLS handshake threads: {0}")]
    Handshakes(#[source] std::io::Error),
    /// The partner API or the ops listener could not start.
    #[error(transparent)]
    Endpoint(#[from] listeners::EndpointError),
    /// A CRL file (`tls.crls`) could not be read.
    #[error("tls.crls: {0}")]
    Crl(#[from] broker::revocation::CrlError),
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
        Gateway::start_on_listeners(config, listener, None).await
    }

    /// [`Gateway::start_on`], with the partner API (if `[partner_api]` is configured) on
    /// `partner_api` instead of a socket bound to `partner_api.listen`: for sockets a service
    /// manager bound and handed over (socket activation).
    pub async fn start_on_listeners(
        config: GatewayConfig,
        listener: TcpListener,
        partner_api: Option<TcpListener>,
    ) -> Result<Gateway, StartError> {
        Gateway::start_on_all(config, listener, partner_api, None).await
    }

    /// [`Gateway::start_on_listeners`], with the ops listener (if `[ops]` is configured) on
    /// `ops` instead of a socket bound to `ops.listen`.
    pub async fn start_on_all(
        config: GatewayConfig,
        listener: TcpListener,
        partner_api: Option<TcpListener>,
        ops: Option<TcpListener>,
    ) -> Result<Gateway, StartError> {
        let mqtt_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.mqtt.listen,
            source,
        })?;
        let (tls, partners, crl_serials, certificate_expiry) = {
            // Certificates and keys are read from disk: off the async workers.
            let (tls, partners, max_response) = (
                config.tls.clone(),
                config.partners.clone(),
                config.requests.max_response_bytes,
            );
            listeners::on_blocking_thread(move || {
                Ok::<_, StartError>((
                    broker::tls::server_config(&tls)?,
                    routing::PartnerDirectory::from_config(&partners, max_response)?,
                    broker::revocation::read_crl_serials(&tls.crls)?,
                    health::certificate_expiry(&tls.cert),
                ))
            })
            .await?
        };
        let revocation_list = Arc::new(broker::RevocationList::default());
        revocation_list.set_crl_serials(crl_serials);
        let metrics = metrics::Metrics::new(certificate_expiry);
        let request_stats = Arc::new(routing::RequestStats::new(&partners, &metrics));
        let m = &config.mqtt;
        let max_packet_bytes = config.requests.max_payload_bytes + ENVELOPE_OVERHEAD_BYTES;
        let mailboxes = bus::Mailboxes::new(bus::MailboxLimits {
            max_messages: m.max_queued_messages,
            max_bytes: m.max_queued_bytes,
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (sessions, _) = broadcast::channel(1024);

        let store = store::Store::connect_with(
            &config.storage.url,
            store::StoreOptions {
                acquire_timeout: config.storage.acquire_timeout,
                sqlite_max_pages: None,
            },
        )
        .await?;
        let node = config.storage.node.clone();
        let closed = store
            .close_open_connections_of_node(&node, "gateway restarted", clock::now_ms())
            .await?;
        if closed > 0 {
            info!(closed, "closed connections left open by this node's previous run");
        }
        // One ledger owner per process; what this node's previous (killed) process still
        // claimed is freed, so cars retrying after the restart are not kept waiting.
        let owner = format!("{node}/{}-{}", std::process::id(), clock::now_ms());
        let freed = store.ledger_abandon_claims(&format!("{node}/")).await?;
        if freed > 0 {
            info!(freed, "freed idempotency claims left by this node's previous run");
        }
        let ledger = Arc::new(routing::Ledger::new(store.clone(), owner, config.idempotency.retention));
        let journal = journal::Journal::spawn(store.clone(), &config.journal);
        let delivery =
            events::EventDelivery::spawn(store.clone(), mailboxes.clone(), shutdown.clone(), tracker.clone());
        // Linked one at a time; drained once the requests that report them have finished.
        let sign_ins_drain = CancellationToken::new();
        let sign_ins = routing::SignInLinker::spawn(
            store.clone(),
            routing::sign_ins::MAX_PENDING_SIGN_INS,
            sign_ins_drain.clone(),
            &tracker,
        );
        let router = Arc::new(
            routing::RequestRouter::new(partners.clone(), config.requests.clone(), ledger.clone())
                .with_stats(request_stats.clone())
                .with_journal(journal.clone())
                .with_sign_ins(sign_ins),
        );
        let requests = TaskTracker::new();
        let dispatcher = routing::Dispatcher::new(router.clone(), mailboxes.clone(), requests.clone());
        {
            // On shutdown: requests in flight finish (bounded by their deadlines), then their
            // outcomes are recorded, before the store closes.
            let (shutdown, ledger) = (shutdown.clone(), ledger.clone());
            tracker.spawn(async move {
                shutdown.cancelled().await;
                requests.close();
                requests.wait().await;
                sign_ins_drain.cancel();
                ledger.drain().await;
            });
        }

        tracker.spawn(purge_expired(
            ledger,
            router,
            store.clone(),
            config.idempotency.purge_interval,
            Retention {
                connection_log: config.storage.connection_log_retention,
                journal: config.journal.enabled.then_some(config.journal.retention),
            },
            shutdown.clone(),
        ));
        let (session_tx, session_rx) = mpsc::channel(64 * 1024);
        let recorder = tokio::spawn(connection_log::record(
            session_rx,
            store.clone(),
            node,
            delivery.clone(),
            sessions.clone(),
            journal.clone(),
        ));

        let partner_api_addr = match &config.partner_api {
            Some(api) => Some(
                serve_partner_api(
                    &config,
                    api,
                    partner_api,
                    events::PartnerEventsApi::new(
                        store.clone(),
                        delivery.clone(),
                        &config.partners,
                        config.events.clone(),
                    )
                    .with_journal(journal.clone()),
                    shutdown.clone(),
                    &tracker,
                )
                .await?,
            ),
            None => None,
        };

        let settings = broker::ListenerSettings {
            first_flight_timeout: m.first_flight_timeout,
            handshake_timeout: m.handshake_timeout,
            max_connections: m.max_connections,
            max_handshakes_in_flight: m.max_handshakes_in_flight,
            max_pending_per_source: m.max_pending_per_source,
        };
        let services = broker::SessionServices {
            mailboxes,
            requests: Arc::new(dispatcher),
            acks: Arc::new(delivery),
            events: broker::ConnectionEventSink(session_tx),
            saved: broker::SavedSessions::default(),
            packet_limiter: Arc::new(broker::PacketLimiter::new(broker::PacketRate {
                per_second: m.max_packets_per_second,
                burst: m.packet_burst,
                flood_disconnect_after: m.flood_disconnect_after,
            })),
            connect_limiter: Arc::new(broker::ConnectLimiter::new(m.max_connects_per_minute, m.connect_burst)),
            limits: broker::SessionLimits {
                connect_timeout: m.connect_timeout,
                max_keep_alive: m.max_keep_alive,
                write_stall_timeout: m.write_stall_timeout,
                max_packet_bytes,
                max_requests_in_flight: m.max_requests_in_flight,
                max_subscriptions: m.max_subscriptions,
                max_topic_bytes: m.max_topic_bytes,
                max_qos2_awaiting_release: m.max_qos2_awaiting_release,
                retained: broker::RetainedLimits {
                    max_messages: m.max_retained_messages,
                    max_bytes: m.max_retained_bytes,
                },
            },
            revocations: revocation_list.clone(),
            metrics: metrics.clone(),
        };
        tracker.spawn(broker::expire_saved_sessions(
            services.clone(),
            m.session_expiry,
            (m.session_expiry / 4).min(Duration::from_secs(60)),
            shutdown.clone(),
        ));
        let stats = Arc::new(broker::ListenerStats::default());
        let handshakes = Arc::new(broker::HandshakePool::new(m.handshake_threads).map_err(StartError::Handshakes)?);
        let health = health::Health {
            store: store.clone(),
            stats: stats.clone(),
            saved: services.saved.clone(),
            mailboxes: services.mailboxes.clone(),
            partners: partners.clone(),
            configured_services: config.partners.iter().map(|p| p.service.clone()).collect(),
            metrics,
            request_stats,
            store_timeout: config.storage.acquire_timeout,
        };
        let revocations = ops::Revocations::load(revocation_list, store.clone(), services.mailboxes.clone()).await?;
        tracker.spawn(ops::reload_revocations(
            revocations.clone(),
            config.tls.crls.clone(),
            config.revocation.reload_interval,
            shutdown.clone(),
        ));
        let ops_addr = match &config.ops {
            Some(ops_config) => {
                let context = ops::OpsContext {
                    node: config.storage.node.clone(),
                    store: store.clone(),
                    mailboxes: services.mailboxes.clone(),
                    revocations,
                    connection_events: sessions.clone(),
                    health: health.clone(),
                    journal: journal.clone(),
                };
                Some(ops::serve(&config, ops_config, ops, context, shutdown.clone(), &tracker).await?)
            }
            None => None,
        };

        // The socket is listening: cars queue in its backlog until the loop takes them.
        stats.accepting.store(true, std::sync::atomic::Ordering::Release);
        tracker.spawn(broker::listener::serve(
            listener,
            tls,
            settings,
            services.clone(),
            stats.clone(),
            handshakes.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        let served: Vec<_> = partners.services().collect();
        info!(%mqtt_addr, partners = ?served, "gateway listening for vehicles (MQTT 3.1.1 over mTLS)");
        Ok(Gateway {
            mqtt_addr,
            partner_api_addr,
            ops_addr,
            shutdown,
            tracker,
            sessions,
            recorder,
            store,
            stats,
            handshakes,
            saved: services.saved.clone(),
            mailboxes: services.mailboxes.clone(),
            partners,
            health,
            journal,
        })
    }

    /// Where vehicles connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Where partners push events, if the partner API is enabled.
    pub fn partner_api_addr(&self) -> Option<SocketAddr> {
        self.partner_api_addr
    }

    /// Where operators connect (fleet ops API, dashboard, metrics), if `[ops]` is configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Connection events from now on, each passed on once it is recorded in the connection log.
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.sessions.subscribe()
    }

    /// Counters of the vehicle listener (accepted, shed, handshakes).
    pub fn listener_stats(&self) -> &broker::ListenerStats {
        &self.stats
    }

    /// What cars keep between their sessions (saved subscriptions, retained messages).
    pub fn saved_sessions(&self) -> broker::SavedStats {
        self.saved.stats()
    }

    /// Mailboxes of live sessions, mailboxes parked for persistent sessions that are away, and
    /// the bytes those parked ones hold: `(live, parked, parked_bytes)`.
    pub fn mailboxes(&self) -> (usize, usize, usize) {
        let (parked, parked_bytes) = self.mailboxes.parked();
        (self.mailboxes.live(), parked, parked_bytes)
    }

    /// Each partner's calls in flight and circuit breaker, by service name (for operators,
    /// metrics and tests).
    pub fn partner_health(&self) -> Vec<routing::PartnerHealth> {
        self.partners.health()
    }

    /// The interaction journal (requests, partner events, session changes by vehicle): its
    /// counters, and waiting for rows to be written.
    pub fn journal(&self) -> &journal::Journal {
        &self.journal
    }

    /// The gateway's store (connection log, ledger, events), for operators and tests.
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Stops accepting, disconnects every car, finishes requests in flight, records the
    /// disconnects, writes the journal's queued rows, then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let _ = self.recorder.await;
        // After the requests and the connection log: what they recorded is queued by now.
        self.journal.close().await;
        journal::log_final_stats(&self.journal);
        drop(self.handshakes);
        self.store.close().await;
        info!("gateway stopped");
    }
}

/// How long the purge keeps history.
struct Retention {
    /// Connections, after they ended (`storage.connection_log_retention`).
    connection_log: Duration,
    /// Journal rows (`journal.retention`); `None` when the journal is off.
    journal: Option<Duration>,
}

/// The unix-ms time `retention` before now.
fn ago(retention: Duration) -> i64 {
    clock::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes expired ledger entries, events, connections and journal rows every `interval`
/// until shutdown, and forgets the request rates of cars that stayed within theirs.
async fn purge_expired(
    ledger: Arc<routing::Ledger>,
    router: Arc<routing::RequestRouter>,
    store: store::Store,
    interval: std::time::Duration,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match ledger.purge().await {
            Ok(n) if n > 0 => info!(purged = n, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed; will retry"),
        }
        if let Err(e) = store.purge_events(clock::now_ms()).await {
            tracing::warn!(error = %e, "event purge failed; will retry");
        }
        router.prune_rates();
        match store.purge_connections(ago(retention.connection_log)).await {
            Ok(n) if n > 0 => info!(
                purged = n,
                "connections older than the connection log's retention purged"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "connection log purge failed; will retry"),
        }
        if let Some(journal) = retention.journal {
            match store.purge_journal(ago(journal)).await {
                Ok(n) if n > 0 => info!(purged = n, "journal rows older than its retention purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "journal purge failed; will retry"),
            }
        }
    }
}

/// Starts the partner-facing gRPC endpoint serving `service` (mTLS, partners' client
/// certificates required).
async fn serve_partner_api(
    config: &GatewayConfig,
    api: &config::PartnerApiConfig,
    listener: Option<TcpListener>,
    service: events::PartnerEventsApi,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, listeners::EndpointError> {
    const ENDPOINT: &str = "partner API";
    let files = listeners::TlsFiles {
        client_ca: api.client_ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let tls = listeners::server_tls(ENDPOINT, files).await?;
    let (listener, addr) = listeners::listener(ENDPOINT, listener, api.listen)?;
    let router = listeners::server()
        .tls_config(tls)
        .map_err(listeners::tls_refused(ENDPOINT))?
        .add_service(service.into_server());
    listeners::spawn(ENDPOINT, router, listener, shutdown, tracker);
    info!(%addr, "partner API listening (gRPC over mTLS)");
    Ok(addr)
}
