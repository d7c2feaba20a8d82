//! One HTTP/2 connection to the adapter under test, over TLS with the client certificate the
//! check chooses, and raw unary calls on it.
//!
//! The kit drives HTTP/2 itself (hyper) rather than through tonic's `Channel`: a `Channel`
//! enforces the `grpc-timeout` it sends on the client side, which would hide whether the
//! adapter honours it. Message bytes pass through untouched ([`proto::raw::RawCodec`]), so a
//! check can send malformed protobuf and compare answers byte for byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::Uri;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::raw::RawCodec;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};

/// Longest the kit waits for TCP, TLS and HTTP/2 to be set up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks a failure that happened on the connection rather than in a status the adapter sent.
const TRANSPORT_MARK: &str = "x-partner-kit-transport";

/// Where the adapter is: `host:port` to dial and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port`, as the gateway's `[[partners]] endpoint` says it.
    pub uri: Uri,
    /// The name the adapter's certificate is verified against (the endpoint's host by default).
    pub server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses `https://host:port`; `server_name` overrides the host for certificate checks.
    pub fn parse(endpoint: &str, server_name: Option<&str>) -> anyhow::Result<Endpoint> {
        let uri: Uri = endpoint
            .parse()
            .with_context(|| format!("--endpoint {endpoint:?} is not a URI"))?;
        if uri.scheme_str() != Some("https") {
            anyhow::bail!("--endpoint {endpoint:?} must be https://host:port: adapters are reached over mutual TLS");
        }
        let host = uri
            .host()
            .with_context(|| format!("--endpoint {endpoint:?} has no host"))?;
        if uri.port_u16().is_none() {
            anyhow::bail!("--endpoint {endpoint:?} has no port");
        }
        let name = server_name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| anyhow::anyhow!("{name:?} is not a valid server name: {e}"))?;
        Ok(Endpoint { uri, server_name })
    }

    fn host_port(&self) -> (String, u16) {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        (host, self.uri.port_u16().unwrap_or(443))
    }
}

/// What the kit sends alongside a message: the gateway's metadata, each part optional so that
/// checks can leave one out.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata {
    /// `x-vehicle-vin`.
    pub vin: Option<String>,
    /// `idempotency-key`.
    pub idempotency_key: Option<String>,
    /// `grpc-timeout`: the caller's deadline.
    pub deadline: Option<Duration>,
}

impl CallMetadata {
    /// The metadata of a call from `vin` with `key`, and the gateway's usual 5 s deadline.
    pub fn from_car(vin: &str, key: &str) -> CallMetadata {
        CallMetadata {
            vin: Some(vin.to_owned()),
            idempotency_key: Some(key.to_owned()),
            deadline: Some(Duration::from_secs(5)),
        }
    }

    /// What the gateway sends for a car no real car is ([`crate::probe_vin`]), with a fresh
    /// idempotency key.
    pub fn from_probe_car() -> CallMetadata {
        CallMetadata::from_car(&crate::probe_vin(), &crate::probe_key())
    }
}

/// How one call ended.
#[derive(Debug, Clone)]
pub enum Answer {
    /// OK, with the response message's bytes.
    Ok(Bytes),
    /// A status the adapter sent.
    Status(Code, String),
    /// The connection failed (refused, reset, TLS alert): no status was sent.
    Transport(String),
}

impl Answer {
    /// A short description for a report line.
    pub fn describe(&self) -> String {
        match self {
            Answer::Ok(bytes) => format!("OK ({} bytes)", bytes.len()),
            Answer::Status(code, message) => format!("{} {message:?}", code_name(*code)),
            Answer::Transport(error) => format!("no answer, the connection failed: {error}"),
        }
    }

    /// The status code, if the adapter sent one (OK included).
    pub fn code(&self) -> Option<Code> {
        match self {
            Answer::Ok(_) => Some(Code::Ok),
            Answer::Status(code, _) => Some(*code),
            Answer::Transport(_) => None,
        }
    }

    fn from_status(status: Status) -> Answer {
        if status.metadata().contains_key(TRANSPORT_MARK) {
            Answer::Transport(status.message().to_owned())
        } else {
            Answer::Status(status.code(), status.message().to_owned())
        }
    }
}

/// The canonical name of a gRPC status code, as the contract spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone)]
pub struct OpenError {
    /// True if the adapter refused it (a TLS alert, the connection closed in the handshake);
    /// false if the kit did not get that far (nothing listening, a timeout, an adapter
    /// certificate the kit does not trust).
    pub refused_by_adapter: bool,
    /// What happened.
    pub message: String,
}

impl OpenError {
    fn not_reached(message: String) -> OpenError {
        OpenError {
            refused_by_adapter: false,
            message,
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An answer and how long it took to arrive.
#[derive(Debug, Clone)]
pub struct TimedAnswer {
    /// How the call ended.
    pub answer: Answer,
    /// From sending the request to its end.
    pub elapsed: Duration,
}

/// An open connection to the adapter.
pub struct Connection {
    grpc: tonic::client::Grpc<Http2>,
}

impl Connection {
    /// Dials `endpoint` and sets up TLS (with `tls`: the trust anchors and the client
    /// certificate, if any) and HTTP/2. Bounded by [`CONNECT_TIMEOUT`].
    pub async fn open(endpoint: &Endpoint, tls: Arc<ClientConfig>) -> Result<Connection, OpenError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Connection::open_unbounded(endpoint, tls))
            .await
            .unwrap_or_else(|_| {
                Err(OpenError::not_reached(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                )))
            })
    }

    async fn open_unbounded(endpoint: &Endpoint, tls: Arc<ClientConfig>) -> Result<Connection, OpenError> {
        let (host, port) = endpoint.host_port();
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| OpenError::not_reached(format!("cannot connect to {host}:{port}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| OpenError::not_reached(format!("TCP_NODELAY: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(endpoint.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                // The kit's own verdict on the adapter's certificate is not the adapter refusing.
                let untrusted = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)));
                match untrusted {
                    true => OpenError::not_reached(format!(
                        "the adapter's certificate is not trusted: {e} (check --ca and --server-name)"
                    )),
                    false => OpenError {
                        refused_by_adapter: true,
                        message: format!("TLS handshake failed: {e}"),
                    },
                }
            })?;
        let (send, driver) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| OpenError {
                refused_by_adapter: true,
                message: format!("HTTP/2 handshake failed: {}", error_chain(&e)),
            })?;
        // The driver ends with the connection; its error also reaches the call that was cut off.
        tokio::spawn(driver);
        Ok(Connection {
            grpc: tonic::client::Grpc::with_origin(Http2(send), endpoint.uri.clone()),
        })
    }

    /// Calls `method` (`/package.Service/Method`) with `message` bytes and `metadata`.
    ///
    /// Waits for the adapter's answer however late it comes, up to `give_up_after` (then
    /// [`Answer::Transport`] saying so): the deadline is the adapter's to enforce.
    pub async fn call(
        &mut self,
        method: &str,
        message: Bytes,
        metadata: &CallMetadata,
        give_up_after: Duration,
    ) -> TimedAnswer {
        let started = Instant::now();
        let answer = match tokio::time::timeout(give_up_after, self.call_unbounded(method, message, metadata)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Transport(format!("no answer within {give_up_after:?}")),
        };
        TimedAnswer {
            answer,
            elapsed: started.elapsed(),
        }
    }

    async fn call_unbounded(&mut self, method: &str, message: Bytes, metadata: &CallMetadata) -> Answer {
        let path = match method.parse::<http::uri::PathAndQuery>() {
            Ok(path) => path,
            Err(e) => return Answer::Transport(format!("{method:?} is not a method path: {e}")),
        };
        if let Err(status) = self.grpc.ready().await {
            return Answer::from_status(transport(status.message()));
        }
        let mut request = tonic::Request::new(message);
        set_metadata(request.metadata_mut(), metadata);
        if let Some(deadline) = metadata.deadline {
            request.set_timeout(deadline);
        }
        match self.grpc.unary(request, path, RawCodec).await {
            Ok(response) => Answer::Ok(response.into_inner()),
            Err(status) => Answer::from_status(status),
        }
    }
}

fn set_metadata(map: &mut MetadataMap, metadata: &CallMetadata) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = value.parse::<AsciiMetadataValue>() {
            map.insert(name, value);
        }
    };
    if let Some(vin) = &metadata.vin {
        put(proto::metadata::VIN, vin);
    }
    if let Some(key) = &metadata.idempotency_key {
        put(proto::metadata::IDEMPOTENCY_KEY, key);
    }
    put(
        proto::metadata::REQUEST_ID,
        &format!("partner-kit-{}", uuid::Uuid::new_v4()),
    );
}

/// A status standing for a connection failure, marked so that [`Answer`] tells it apart.
fn transport(message: &str) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(TRANSPORT_MARK, AsciiMetadataValue::from_static("1"));
    Status::with_metadata(Code::Unavailable, message, metadata)
}

/// `error: its cause: its cause`, which is where TLS alerts are named.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// hyper's HTTP/2 client as the tower service tonic's client runs on.
#[derive(Clone)]
struct Http2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for Http2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.0
            .poll_ready(cx)
            .map_err(|e| transport(&format!("the connection is closed: {}", error_chain(&e))))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let sent = self.0.send_request(request);
        Box::pin(async move {
            sent.await
                .map_err(|e| transport(&format!("the request failed: {}", error_chain(&e))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_https_with_a_host_and_a_port() {
        let endpoint = Endpoint::parse("https://localhost:50061", None).unwrap();
        assert_eq!(endpoint.host_port(), ("localhost".to_owned(), 50061));
        let renamed = Endpoint::parse("https://127.0.0.1:50061", Some("parking.internal")).unwrap();
        assert_eq!(renamed.server_name.to_str(), "parking.internal");
        for (bad, says) in [
            ("http://localhost:50061", "must be https://host:port"),
            ("https://localhost", "has no port"),
            ("not a uri", "is not a URI"),
        ] {
            let error = Endpoint::parse(bad, None).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
