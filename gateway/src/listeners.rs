//! The sockets the gateway listens on: `bind` for every listener, and its own gRPC endpoints
//! (the partner API, the ops listener): TLS from PEM files read off the runtime, the listener a
//! supervisor passed or one bound here, the server spawned on the gateway's task tracker until
//! shutdown. One place, so that every endpoint starts and stops alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, warn};

/// Pending connections the kernel queues for us; bursts of reconnecting cars must not overflow it.
const LISTEN_BACKLOG: u32 = 8192;
/// Longest a client of a gRPC endpoint may take over its TLS handshake: one that sends nothing
/// would otherwise hold a socket and a task for ever.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a call may take to be answered (its request read, its handler run); a stream's
/// messages after its answer are not bounded by it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle HTTP/2 connection is pinged, and how long the answer may take: a peer
/// that vanished (its host died, a NAT forgot it) is noticed and its calls end.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the gateway's stop waits for an endpoint's open calls once it stopped accepting;
/// a call still open then (a client that sent half a request and vanished) is not waited for.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr` with a large accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Why one of the gateway's gRPC endpoints could not start; each message starts with the
/// endpoint's name ("partner API", "ops").
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A certificate file could not be read.
    #[error("{endpoint}: {path}: {source}")]
    File {
        /// The endpoint.
        endpoint: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// tonic refused the TLS setup.
    #[error("{endpoint}: {source}")]
    Tls {
        /// The endpoint.
        endpoint: &'static str,
        /// tonic's error.
        source: tonic::transport::Error,
    },
    /// The address could not be bound.
    #[error("{endpoint}: cannot listen on {addr}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The PEM files of an endpoint's TLS: the CA its callers' certificates chain to, and the
/// gateway's own certificate and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA of the callers' client certificates.
    pub client_ca: PathBuf,
    /// The gateway's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Runs blocking `work` (reading files at startup) on tokio's blocking threads and returns its
/// result; a panic in it goes on in the caller.
pub(crate) async fn on_blocking_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Reads `files` on a blocking thread into tonic's server TLS settings.
pub async fn server_tls(endpoint: &'static str, files: TlsFiles) -> Result<ServerTlsConfig, EndpointError> {
    let read =
        move |path: PathBuf| std::fs::read(&path).map_err(|source| EndpointError::File { endpoint, path, source });
    let read_all =
        move || -> Result<_, EndpointError> { Ok((read(files.client_ca)?, read(files.cert)?, read(files.key)?)) };
    let (ca, cert, key) = on_blocking_thread(read_all).await?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .timeout(TLS_HANDSHAKE_TIMEOUT))
}

/// A gRPC server with the bounds every endpoint of the gateway has: calls answered within
/// [`CALL_TIMEOUT`], idle connections pinged.
pub fn server() -> Server {
    Server::builder()
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The listener a supervisor passed, or `listen` bound now; and its address.
pub fn listener(
    endpoint: &'static str,
    passed: Option<TcpListener>,
    listen: SocketAddr,
) -> Result<(TcpListener, SocketAddr), EndpointError> {
    let bind_error = |source| EndpointError::Bind {
        endpoint,
        addr: listen,
        source,
    };
    let listener = match passed {
        Some(listener) => listener,
        None => bind(listen).map_err(bind_error)?,
    };
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// The tonic error of `endpoint`'s TLS setup, as an `EndpointError`.
pub fn tls_refused(endpoint: &'static str) -> impl FnOnce(tonic::transport::Error) -> EndpointError {
    move |source| EndpointError::Tls { endpoint, source }
}

/// Serves `router` on `listener` until `shutdown`, on `tracker` so that the gateway's stop waits
/// for it: for its open calls to end, at most [`STOP_GRACE`].
pub fn spawn(
    endpoint: &'static str,
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let serve = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            served = serve => {
                if let Err(e) = served {
                    error!(error = %e, "{endpoint} stopped");
                }
            }
            () = grace_over => warn!("{endpoint}: calls still open {STOP_GRACE:?} into the stop; not waiting for them"),
        }
    });
}
