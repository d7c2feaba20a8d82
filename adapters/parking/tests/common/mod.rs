//! The adapter as the gateway and the lot see it, shared by the test files: a real server on
//! loopback ports (the service, and the lot port) over a database file in a temporary
//! directory, called with the generated clients and the metadata the gateway attaches.

#![allow(dead_code)] // Each test file uses its own part of the harness.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use parking_adapter::{ManualClock, ParkingService, serve, serve_lot};
use proto::adapter::activation::start_on_passed_sockets;
use proto::adapter::testing::{OnLoopback, from_car_with_key, on_loopback};
use proto::parking::v1::parking_lot_client::ParkingLotClient;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, Receipt, StartSessionRequest, VehicleExitedRequest,
};
use tokio::process::Child;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub const CAR_A: &str = "LSVAU2180N2183294";
pub const CAR_B: &str = "LFV2A21K6A4000001";
/// The plate every test car has.
pub const PLATE: &str = "沪A12345";

pub struct Harness {
    pub client: ParkingPaymentClient<Channel>,
    /// The lot's systems: the exit gate.
    pub lot: ParkingLotClient<Channel>,
    pub service: ParkingService,
    pub clock: ManualClock,
    /// Holds the database file.
    pub dir: tempfile::TempDir,
    /// Dropping them stops the servers.
    _servers: [OnLoopback; 2],
}

/// The adapter on a fresh database, on a manual clock.
pub async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let service = ParkingService::open_with_clock(&dir.path().join("parking.db"), Arc::new(clock.clone()))
        .await
        .unwrap();
    let payment = on_loopback(|listener, stopped| serve(listener, None, service.clone(), stopped)).await;
    let gate = on_loopback(|listener, stopped| serve_lot(listener, None, service.clone(), stopped)).await;
    let client = ParkingPaymentClient::connect(payment.url()).await.unwrap();
    let lot = ParkingLotClient::connect(gate.url()).await.unwrap();
    Harness {
        client,
        lot,
        service,
        clock,
        dir,
        _servers: [payment, gate],
    }
}

/// A request as the gateway sends it: VIN, request id and idempotency key in the metadata.
pub fn call<T>(message: T, vin: &str, key: &str) -> Request<T> {
    from_car_with_key(vin, key, message)
}

pub fn start_at(lot_id: &str) -> StartSessionRequest {
    StartSessionRequest {
        lot_id: lot_id.into(),
        plate: PLATE.into(),
    }
}

pub fn end(session_id: &str) -> EndSessionRequest {
    EndSessionRequest {
        session_id: session_id.into(),
    }
}

/// The exit gate of `lot_id` reading the test plate.
pub fn exit_of(lot_id: &str) -> VehicleExitedRequest {
    VehicleExitedRequest {
        lot_id: lot_id.into(),
        plate: PLATE.into(),
    }
}

/// The receipt `receipt_id`, read as `vin` with idempotency key `key`.
pub async fn read_receipt(h: &mut Harness, receipt_id: &str, vin: &str, key: &str) -> Receipt {
    let read = GetReceiptRequest {
        receipt_id: receipt_id.into(),
    };
    h.client.get_receipt(call(read, vin, key)).await.unwrap().into_inner()
}

/// Ends (pays for) `session_id` as `vin`, with idempotency key `key`.
pub async fn pay(
    h: &mut Harness,
    session_id: &str,
    vin: &str,
    key: &str,
) -> Result<Response<EndSessionResponse>, Status> {
    h.client.end_session(call(end(session_id), vin, key)).await
}

/// Starts a session for `vin` at Xintiandi and returns its id.
pub async fn park(h: &mut Harness, vin: &str, key: &str) -> String {
    park_at(h, "lot-xintiandi-01", vin, key).await
}

/// Starts a session for `vin` at `lot_id` and returns its id.
pub async fn park_at(h: &mut Harness, lot_id: &str, vin: &str, key: &str) -> String {
    let response = h.client.start_session(call(start_at(lot_id), vin, key)).await;
    response.unwrap().into_inner().session.unwrap().session_id
}

/// The adapter binary run with `args`, serving on `socket` (fd 3, `LISTEN_FDS=1`, as a service
/// manager passes it), and the line it prints once it listens.
pub async fn adapter_on_passed_socket<S: AsRef<OsStr>>(socket: &std::net::TcpListener, args: &[S]) -> (Child, String) {
    start_on_passed_sockets(Path::new(env!("CARGO_BIN_EXE_parking-adapter")), args, &[socket]).await
}
