//! Reference partner adapter for `navigation.v1.Navigation`: places near a point or by name,
//! and routes with turn-by-turn steps on a road graph generated over central Shanghai.
//!
//! Like the parking adapter, this crate stands where a partner stands: it depends on the
//! published contract (`proto`) and nothing else of the platform. Cars never reach it
//! directly. The gateway calls it over mutual TLS and attaches `x-vehicle-vin` (the car, from
//! its certificate), `x-request-id` and `idempotency-key` to every call. Both methods only
//! read, so the key needs no bookkeeping here; the VIN is logged, never taken from a payload.
//!
//! Reading order: [`service`] (the handlers), [`places`] (the catalogue and its search),
//! [`routing`] (A* and turn-by-turn steps), [`city`] (how the streets are generated), [`geo`]
//! (distances and headings), then [`serve`], [`mtls_config`] and [`require_gateway_client`].

pub mod city;
pub mod geo;
pub mod places;
pub mod routing;
pub mod service;

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use proto::identity::{Role, require_peer_role};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use service::NavigationService;

/// Longest a client may take to complete the TLS handshake before its connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes. `tls` = None means plaintext (dev only).
///
/// Over TLS every call must come from the gateway's client certificate
/// ([`require_gateway_client`]); in plaintext there is no certificate to check.
///
/// Takes an already bound listener so that callers (and tests) know the address before the
/// server starts, and can bind port 0 without racing for a free port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    service: NavigationService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // tonic ignores its own tcp_nodelay setting for a listener we hand it; without it every
    // small reply waits out Nagle's algorithm and the peer's delayed ACK (~40 ms).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|tcp| {
            tcp.set_nodelay(true)?;
            Ok(tcp)
        })
    });
    let mut builder = Server::builder();
    let mtls = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("invalid TLS configuration")?;
    }
    let gateway_only = InterceptedService::new(service.into_server(), move |request| {
        if mtls {
            require_gateway_client(request)
        } else {
            Ok(request)
        }
    });
    builder
        .add_service(gateway_only)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("navigation adapter server failed")
}

/// Builds an mTLS server config from PEM strings: server cert+key, and the CA that client
/// certificates must chain to.
///
/// Give it the CA that signs only the gateway's client certificate (`gateway-clients-ca.pem`
/// in the development PKI), never one that also signs cars; [`serve`] also checks the
/// certificate's role on every call. PEM errors are reported by [`serve`].
pub fn mtls_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem))
        // Handshakes run concurrently, but a client that stalls one still holds a socket.
        .timeout(TLS_HANDSHAKE_TIMEOUT)
}

/// Lets a call through only if its client certificate has the role `gateway-client`, else
/// PERMISSION_DENIED: a tonic interceptor for adapters served over mutual TLS.
pub fn require_gateway_client(request: Request<()>) -> Result<Request<()>, Status> {
    require_peer_role(&request, Role::GatewayClient).map_err(|status| match status.code() {
        tonic::Code::PermissionDenied => {
            Status::permission_denied(format!("only the gateway may call this adapter: {}", status.message()))
        }
        _ => status,
    })?;
    Ok(request)
}
