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
use std::time::Duration;

use anyhow::Context as _;
use proto::identity::{Role, require_peer_role};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use clock::{Clock, ManualClock, SystemClock};
pub use outbox::PartnerApi;
pub use service::ParkingService;

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
    service: ParkingService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mtls = tls.is_some();
    let gateway_only = InterceptedService::new(service.into_server(), move |request| {
        if mtls {
            require_gateway_client(request)
        } else {
            Ok(request)
        }
    });
    server(tls)?
        .add_service(gateway_only)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
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
    let mtls = tls.is_some();
    let operators_only = InterceptedService::new(service.into_lot_server(), move |request: Request<()>| {
        if mtls {
            require_peer_role(&request, Role::Operator)?;
        }
        Ok(request)
    });
    server(tls)?
        .add_service(operators_only)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .context("parking lot server failed")
}

/// A tonic server builder, over `tls` if given.
fn server(tls: Option<ServerTlsConfig>) -> anyhow::Result<Server> {
    let builder = Server::builder();
    match tls {
        Some(tls) => builder.tls_config(tls).context("invalid TLS configuration"),
        None => Ok(builder),
    }
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

/// Builds an mTLS server config from PEM strings: server cert+key, and the CA that client certificates must chain to.
///
/// Client certificates are required, not optional: the adapter trusts the `x-vehicle-vin`
/// metadata only because the caller proved it is the gateway. Give it the CA that signs only
/// the gateway's client certificate (`gateway-clients-ca.pem` in the development PKI), never
/// one that also signs cars: a car holding a valid certificate of its own could otherwise call
/// the adapter directly and claim another VIN. [`serve`] also checks the certificate's role on
/// every call. PEM errors are reported by [`serve`] when it applies the config.
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
