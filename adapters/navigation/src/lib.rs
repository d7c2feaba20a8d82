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

use anyhow::Context as _;
use proto::identity::Role;
use tonic::transport::ServerTlsConfig;

pub use proto::adapter::{mtls_config, require_gateway_client};
pub use service::NavigationService;

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
    proto::adapter::serve_for_role(listener, tls, Role::GatewayClient, service.into_server(), shutdown)
        .await
        .context("navigation adapter server failed")
}
