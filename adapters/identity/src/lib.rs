//! Reference partner adapter for `identity.v1.SocialLogin` (Rust module
//! `proto::social_login::v1`): social login from the car by the OAuth 2.0 device
//! authorization grant (RFC 8628), and the reference identity provider's verification page.
//!
//! This crate stands where a social login partner stands: it depends on the published contract
//! (`proto`) and nothing else of the platform. The car starts a login through the gateway
//! ([`SocialLoginService`], gRPC over mTLS, served by [`serve`]), shows the driver the user code
//! and a QR code of `verification_uri_complete` ([`terminal_qr`]), and polls; the driver opens
//! the page ([`web`], plain HTTP on its own listener, served by [`web::serve_page`]), enters or
//! confirms the code and approves; the next poll returns the linked identity. Both sides share
//! one [`DeviceLogins`].
//!
//! The gateway attaches to every call `x-vehicle-vin` (the calling car, from its certificate:
//! the only identity to trust, and only because the caller proved it is the gateway, see
//! [`mtls_config`] and [`require_gateway_client`]), `x-request-id` and `idempotency-key` (a
//! retried StartDeviceLogin returns the same login).
//!
//! Reading order: [`logins`] (the state machine and its bounds), [`codes`] (the two codes),
//! [`service`] (the gRPC handlers), [`web`] (the page, its forgery and guessing defences),
//! [`qr`], then [`serve`] below.

pub mod clock;
pub mod codes;
pub mod logins;
pub mod qr;
pub mod service;
pub mod web;

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use proto::identity::{Role, require_peer_role};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use clock::{Clock, ManualClock, SystemClock};
pub use logins::{DeviceLogins, LoginSettings};
pub use qr::terminal_qr;
pub use service::SocialLoginService;
pub use web::GuessLimits;

/// Longest a client may take to complete the TLS handshake before its connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gRPC service until `shutdown` completes. `tls` = None means plaintext (dev only).
///
/// Over TLS every call must come from the gateway's client certificate
/// ([`require_gateway_client`]); in plaintext there is no certificate to check.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    service: SocialLoginService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // tonic ignores its own tcp_nodelay setting for a listener we hand it.
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
        .context("identity adapter server failed")
}

/// An mTLS server config from PEM strings: server cert+key, and the CA that client
/// certificates must chain to: the one that signs only the gateway's client certificate
/// (`gateway-clients-ca.pem`), never one that also signs cars.
pub fn mtls_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem))
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
