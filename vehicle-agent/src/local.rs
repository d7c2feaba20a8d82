//! The in-car gRPC server: the partner services the gateway offers, forwarded without decoding.
//!
//! In-car apps use ordinary generated clients against this endpoint: TCP on loopback, and a
//! Unix socket if configured. Every service named in the configuration's `services` is
//! forwarded: each call's bytes, path, deadline, `x-request-id`, `idempotency-key` and caller
//! ([`Owner`]: its uid on the socket, its `x-app-token` on TCP) are handed to a [`Caller`] (the
//! gateway link) without decoding, so a new partner service needs a line of configuration and
//! no agent build. The agent's own API ([`crate::api`]) is served next to the forwarded services.

use std::fs::{self, DirBuilder, Permissions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::server::Router;
use tracing::warn;

use proto::MethodPath;
use proto::metadata::{IDEMPOTENCY_KEY, REQUEST_ID};
use proto::raw::{RawHandler, RawReply, RawService};

use crate::api::AgentApi;
use crate::link::{CallIds, GatewayLink};
use crate::owner::Owner;

/// Mode of the agent's Unix socket: the agent's user and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// One call an app made on the local endpoint, to forward.
#[derive(Debug, Clone)]
pub struct AppCall {
    /// The partner method.
    pub method: MethodPath,
    /// The encoded request message.
    pub payload: Bytes,
    /// How long the app waits for the answer.
    pub timeout: Duration,
    /// The app's ids for it, and who the app is.
    pub ids: CallIds,
}

/// Where forwarded calls go: the gateway link, or a stub in tests.
pub trait Caller: Send + Sync + 'static {
    /// Forwards `call`, giving up after its timeout.
    fn call(&self, call: AppCall) -> BoxFuture<'static, Result<Bytes, Status>>;
}

impl Caller for GatewayLink {
    fn call(&self, call: AppCall) -> BoxFuture<'static, Result<Bytes, Status>> {
        let link = self.clone();
        Box::pin(async move {
            link.call_with_ids(&call.method, call.payload, call.timeout, call.ids)
                .await
        })
    }
}

/// Answers every method of the services it is routed for (as a [`RawService`]) by forwarding it to a [`Caller`]:
/// the bytes, untouched, whatever the service (its contract is between the app and the partner).
#[derive(Clone)]
pub struct Forwarder {
    caller: Arc<dyn Caller>,
    default_timeout: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("default_timeout", &self.default_timeout)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Forwards to `caller`; calls without a `grpc-timeout` get `default_timeout`.
    pub fn new(caller: Arc<dyn Caller>, default_timeout: Duration) -> Forwarder {
        Forwarder {
            caller,
            default_timeout,
        }
    }
}

impl RawHandler for Forwarder {
    fn call(&self, path: &str, request: tonic::Request<Bytes>) -> RawReply {
        let method = MethodPath::parse(path);
        let timeout = match request.metadata().get("grpc-timeout") {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(parse_grpc_timeout)
                .map(leave_room_for_tonic),
            None => Some(self.default_timeout),
        };
        let ascii = |name: &'static str| {
            request.metadata().get(name).map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| Status::invalid_argument(format!("{name} metadata must be printable ASCII")))
            })
        };
        let key = ascii(IDEMPOTENCY_KEY).transpose();
        let request_id = ascii(REQUEST_ID).transpose();
        let owner = Owner::of_request(&request);
        let caller = self.caller.clone();
        Box::pin(async move {
            let method = method.map_err(|e| Status::unimplemented(e.to_string()))?;
            let timeout = timeout.ok_or_else(|| Status::invalid_argument("malformed grpc-timeout header"))?;
            let ids = CallIds {
                request_id: request_id?,
                idempotency_key: key?,
                owner: owner?,
            };
            let call = AppCall {
                method,
                payload: request.into_inner(),
                timeout,
                ids,
            };
            caller.call(call).await.map(tonic::Response::new)
        })
    }
}

/// tonic's server enforces `grpc-timeout` itself and then answers CANCELLED ("Timeout
/// expired"); ending our wait slightly earlier lets the app see DEADLINE_EXCEEDED with the
/// reason (link down or gateway silent) instead.
fn leave_room_for_tonic(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 20).min(Duration::from_millis(50)))
}

/// Parses a `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What the local endpoint serves: the forwarded partner `services`, answered by `caller`, and
/// `agent.v1.VehicleAgent` if an API is given; one value for the TCP and the Unix listener.
#[derive(Clone)]
pub struct LocalServer {
    /// Where forwarded calls go.
    pub caller: Arc<dyn Caller>,
    /// The partner services forwarded, by full gRPC name (`parking.v1.ParkingPayment`).
    pub services: Vec<String>,
    /// The agent's own API, if served.
    pub api: Option<AgentApi>,
    /// Deadline of a call whose app set none.
    pub default_timeout: Duration,
}

impl LocalServer {
    /// Serves on the TCP `listener` until `shutdown`; a caller is known by its `x-app-token`,
    /// or is anonymous.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        // tonic ignores its own tcp_nodelay for a listener handed to it; small replies would
        // otherwise wait for the app's delayed ACK.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.and_then(|tcp| {
                tcp.set_nodelay(true)?;
                Ok(tcp)
            })
        });
        self.router().serve_with_incoming_shutdown(incoming, shutdown).await
    }

    /// Serves on the Unix socket `listener` until `shutdown`; a caller is known by its uid.
    pub async fn serve_unix(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        self.router()
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await
    }

    fn router(self) -> Router {
        let mut routes = Routes::default();
        if let Some(api) = self.api {
            routes = routes.add_service(api.into_service());
        }
        // One route per service, as tonic makes for a compiled one; a service not listed
        // gets UNIMPLEMENTED saying how to add it.
        let forwarder = Forwarder::new(self.caller, self.default_timeout);
        let mut router = routes.into_axum_router();
        for service in &self.services {
            router = router.route_service(&format!("/{service}/{{*method}}"), RawService(forwarder.clone()));
        }
        let router = router.fallback(not_forwarded);
        tonic::transport::Server::builder().add_routes(Routes::from(router))
    }
}

/// The answer to a call of a service the agent does not forward.
async fn not_forwarded(uri: http::Uri) -> http::Response<tonic::body::Body> {
    // A URI path holds only URI characters; its length is the app's, so it is cut.
    let service: String = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let status = Status::unimplemented(format!(
        "the vehicle agent does not forward {}: add it to `services` in the agent's configuration \
         (and the gateway needs a [[partners]] entry for it)",
        service
    ));
    status.into_http()
}

/// The file of the agent's Unix socket, which it removes at shutdown.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode, so that only this socket's file is removed, not a successor's.
    id: (u64, u64),
}

impl SocketFile {
    /// Listens on a Unix socket at `path` with mode 0660 (blocking file IO). A socket file
    /// left by an agent that died is replaced; a live one (something answers on it) or any
    /// other kind of file is refused.
    pub fn bind(path: &Path) -> io::Result<(SocketFile, StdUnixListener)> {
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Ok(_) => match StdUnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{} is in use: a running process (another agent?) answers on it",
                            path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)?,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
        // bind() creates the file with the umask's mode; binding in a directory only we can
        // enter and moving the socket into place once its mode is set means no other process
        // can ever connect through a looser mode.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staging = parent.join(format!(".vehicle-agent-{}.sock.d", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", staging.display())))?;
        let bound = (|| {
            let staged = staging.join("s");
            let listener = StdUnixListener::bind(&staged)?;
            fs::set_permissions(&staged, Permissions::from_mode(SOCKET_MODE))?;
            fs::rename(&staged, path)?;
            Ok::<_, io::Error>(listener)
        })();
        let _ = fs::remove_dir_all(&staging);
        let listener = bound.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = fs::symlink_metadata(path)?;
        let file = SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        };
        Ok((file, listener))
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket's file, if it is still this socket's (blocking file IO).
    pub fn remove(&self) {
        let ours = fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours && let Err(e) = fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove the local socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "+1S", "1.5S", "１S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn room_for_tonic_is_small() {
        assert_eq!(
            leave_room_for_tonic(Duration::from_secs(10)),
            Duration::from_millis(9950)
        );
        assert_eq!(
            leave_room_for_tonic(Duration::from_millis(100)),
            Duration::from_millis(95)
        );
        assert_eq!(leave_room_for_tonic(Duration::ZERO), Duration::ZERO);
    }
}
