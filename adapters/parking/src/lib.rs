//! Reference partner adapter for `parking.v1.ParkingPayment`.
//!
//! This crate stands where a parking partner stands: it depends on the published contract
//! (`proto`) and nothing else of the platform, and it is meant to be read as the example of how
//! to write an adapter. Cars never reach it directly. The gateway calls it over mutual TLS and
//! attaches to every call:
//!
//! - `x-vehicle-vin`: the calling car, from its certificate. The only identity to trust, and
//!   only because the caller proved it is the gateway (see [`mtls_config`] and
//!   [`require_gateway_client`]); every session and receipt belongs to the VIN that created it,
//!   and other cars get NOT_FOUND.
//! - `x-request-id`: logged with every call so one driver action can be followed end to end.
//! - `idempotency-key`: identical on every retry of one driver intent. Mobile links drop replies,
//!   so the same StartSession or EndSession can arrive twice; the adapter stores its answer
//!   per (VIN, key) in the same transaction as the effect and replays it instead of charging
//!   again, across restarts and kill -9.
//!
//! Everything the adapter must not forget (sessions, charges, refunds, idempotency answers,
//! events for cars) is in one SQLite database (`--database`), through sqlx.
//!
//! Reading order: [`service`] (the handlers), `caller.rs` (reading the metadata),
//! `idempotency.rs` (the pattern: claim the key, act, store the answer, commit),
//! `sessions.rs` and `refunds.rs` (the rows), `store.rs` (the database), [`pricing`] and
//! [`catalogue`] (lots and their price rules), [`lot`] (the exit gate ending a session) and
//! [`outbox`] (pushing its event to the car reliably), [`clock`] (injectable time, so tests
//! can advance it), then [`serve`], [`serve_lot`], [`mtls_config`] and
//! [`require_gateway_client`] below; [`cli`] is the command line.

pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod lot;
pub mod outbox;
pub mod pricing;
pub mod refunds;
pub mod service;

mod caller;
mod idempotency;
mod sessions;
mod store;

use std::future::Future;

use anyhow::Context as _;
use proto::identity::Role;
use tonic::transport::ServerTlsConfig;

pub use clock::{Clock, ManualClock, SystemClock};
pub use outbox::PartnerApi;
pub use proto::adapter::{mtls_config, require_gateway_client};
pub use service::ParkingService;

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
    service: ParkingService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    proto::adapter::serve_for_role(listener, tls, Role::GatewayClient, service.into_server(), shutdown)
        .await
        .context("parking adapter server failed")
}

/// Serves `parking.v1.ParkingLot` (the exit gate, `lot.rs`) until `shutdown` completes, on a
/// listener of its own. `tls` = None means plaintext (dev only).
///
/// Over TLS every call must come from a certificate with role `operator`, chaining to the CA
/// in `tls` (build it with [`mtls_config`] and the CA of the lot's systems, never the one of
/// the gateway: the gateway forwards cars' calls, and no car may end a session by plate).
pub async fn serve_lot(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    service: ParkingService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    proto::adapter::serve_for_role(listener, tls, Role::Operator, service.into_lot_server(), shutdown)
        .await
        .context("parking lot server failed")
}
