//! What a Rust partner adapter can reuse to serve its contract the way the gateway expects:
//! mutual TLS trusting only the gateway-clients CA ([`mtls_config`]), the role check on every
//! call ([`require_gateway_client`], [`RequireRole`]), serving an already bound listener until a
//! shutdown future completes ([`serve`]; [`serve_for_role`] for one service behind its role
//! check), and the command-line pieces of an adapter binary ([`cli`]: TLS files, socket
//! activation, signals). With the `adapter-testing` feature, `activation` starts an adapter
//! binary on sockets passed as a service manager passes them, and `testing` serves an adapter in
//! a test and calls it as the gateway does. [`clock`] and [`geo`] are the injectable time and the
//! distances the reference adapters share.
//!
//! The three reference adapters (`adapters/parking`, `adapters/navigation`,
//! `adapters/identity`) are built on this module and nothing else of the platform, so a partner
//! writing in Rust can start from them with `proto` as its only dependency of ours.

#[cfg(feature = "adapter-testing")]
pub mod activation;
pub mod cli;
pub mod clock;
pub mod geo;
#[cfg(feature = "adapter-testing")]
pub mod testing;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::identity::{Role, require_peer_role};

/// Longest a client may take to complete the TLS handshake before its connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds an mTLS server config from PEM strings: server cert+key, and the CA that client
/// certificates must chain to.
///
/// Client certificates are required, not optional: an adapter trusts the `x-vehicle-vin`
/// metadata only because the caller proved it is the gateway. Give it the CA that signs only
/// the gateway's client certificate (`gateway-clients-ca.pem` in the development PKI), never
/// one that also signs cars: a car holding a valid certificate of its own could otherwise call
/// the adapter directly and claim another VIN. [`require_gateway_client`] also checks the
/// certificate's role on every call. PEM errors are reported by [`serve`] when it applies the
/// config.
pub fn mtls_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem))
        // Handshakes run concurrently, but a client that stalls one still holds a socket.
        .timeout(TLS_HANDSHAKE_TIMEOUT)
}

/// Lets a call through only if its client certificate has the role `gateway-client`, else
/// PERMISSION_DENIED: a tonic interceptor for adapters served over mutual TLS.
///
/// The TLS trust anchor should already admit nothing else; this check keeps a car out even
/// when an adapter is given a CA that signs cars too, and refuses certificates whose subject
/// names more than one role.
pub fn require_gateway_client(request: Request<()>) -> Result<Request<()>, Status> {
    require_peer_role(&request, Role::GatewayClient).map_err(|status| match status.code() {
        tonic::Code::PermissionDenied => {
            Status::permission_denied(format!("only the gateway may call this adapter: {}", status.message()))
        }
        _ => status,
    })?;
    Ok(request)
}

/// The interceptor to put in front of a service given to [`serve`]: over mutual TLS a call
/// passes only if its client certificate has the role; in plaintext (dev only) there is no
/// certificate to check and every call passes.
#[derive(Debug, Clone, Copy)]
pub struct RequireRole {
    /// The role callers must have, or `None` when served in plaintext.
    role: Option<Role>,
}

impl RequireRole {
    /// Requires `role` if `mtls`, nothing otherwise.
    pub fn new(role: Role, mtls: bool) -> Self {
        RequireRole {
            role: mtls.then_some(role),
        }
    }

    /// Requires the gateway's client certificate if `mtls` ([`require_gateway_client`]).
    pub fn gateway_client(mtls: bool) -> Self {
        RequireRole::new(Role::GatewayClient, mtls)
    }
}

impl Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.role {
            None => Ok(request),
            Some(Role::GatewayClient) => require_gateway_client(request),
            Some(role) => {
                require_peer_role(&request, role)?;
                Ok(request)
            }
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` completes, over `tls` if given (`None` means
/// plaintext, for development only), letting in-flight calls finish.
///
/// Takes an already bound listener so that callers (and tests) know the address before the
/// server starts, and can bind port 0 without racing for a free port. Put a [`RequireRole`]
/// in front of each service in `routes`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Serves the one service `server` on `listener` until `shutdown` completes, as [`serve`] does,
/// behind a [`RequireRole`] for `role`: over `tls` only a caller whose certificate has `role`
/// gets a call through; in plaintext (`tls` None, dev only) there is no certificate to check.
///
/// An adapter with one service per listener needs no more: its server, the role its callers
/// have, and where to listen.
pub async fn serve_for_role<S>(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    role: Role,
    server: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let guarded = InterceptedService::new(server, RequireRole::new(role, tls.is_some()));
    serve(listener, tls, Routes::new(guarded), shutdown).await
}

/// The connections `listener` accepts, with Nagle's algorithm off.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    // tonic ignores its own tcp_nodelay setting for a listener we hand it; without it every
    // small reply waits out Nagle's algorithm and the peer's delayed ACK (~40 ms).
    TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|tcp| {
            tcp.set_nodelay(true)?;
            Ok(tcp)
        })
    })
}
