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

use anyhow::Context as _;
use proto::identity::Role;
use tonic::transport::ServerTlsConfig;

pub use clock::{Clock, ManualClock, SystemClock};
pub use logins::{DeviceLogins, LoginSettings};
pub use proto::adapter::{mtls_config, require_gateway_client};
pub use qr::terminal_qr;
pub use service::SocialLoginService;
pub use web::GuessLimits;

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
    proto::adapter::serve_for_role(listener, tls, Role::GatewayClient, service.into_server(), shutdown)
        .await
        .context("identity adapter server failed")
}
