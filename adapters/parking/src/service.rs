//! The `parking.v1.ParkingPayment` implementation.
//!
//! Every handler has the same shape: read the caller from the metadata, check the request,
//! then, for the calls that change something (StartSession, EndSession, RefundSession), run
//! the idempotency pattern of `idempotency.rs` in one database transaction: claim the key,
//! act, store the answer, commit. State lives in SQLite (`store.rs`), so a restarted adapter
//! (kill -9 included) knows every session, charge and answer it ever committed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use proto::events::v1::partner_events_client::PartnerEventsClient;
use proto::parking::v1::parking_payment_server::{ParkingPayment, ParkingPaymentServer};
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, ListNearbyLotsRequest, ListNearbyLotsResponse, Money,
    Receipt, RefundSessionRequest, RefundSessionResponse, StartSessionRequest, StartSessionResponse,
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::caller::Caller;
use crate::catalogue;
use crate::clock::{Clock, SystemClock};
use crate::idempotency::{self, Key};
use crate::outbox::{self, PartnerApi, Publisher};
use crate::refunds;
use crate::sessions::{self, EndedBy};
use crate::store::{self, Database, unavailable};

/// Longest plate accepted; Chinese plates have 7 or 8 characters.
pub const MAX_PLATE_CHARS: usize = 16;

/// The reference `ParkingPayment` service (and the lot's `ParkingLot`, in `lot.rs`) on its
/// database; clones share the database and the event publisher.
#[derive(Clone)]
pub struct ParkingService {
    pub(crate) db: Database,
    pub(crate) clock: Arc<dyn Clock>,
    /// Wakes the event publisher when an event was committed to the outbox.
    pub(crate) events_waiting: Arc<Notify>,
    /// Whether a publisher runs, to say in the log when events cannot be pushed.
    pub(crate) publishing: Arc<AtomicBool>,
    /// Charges made through this value since it was opened.
    charges: Arc<AtomicU64>,
}

impl ParkingService {
    /// The service on the database file at `path` (created and migrated if needed), on the
    /// system clock.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with_clock(path, Arc::new(SystemClock)).await
    }

    /// [`ParkingService::open`] on `clock`; tests pass a [`ManualClock`](crate::ManualClock)
    /// to control fees.
    pub async fn open_with_clock(path: &Path, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        Ok(ParkingService {
            db: Database::open(path).await?,
            clock,
            events_waiting: Arc::default(),
            publishing: Arc::default(),
            charges: Arc::default(),
        })
    }

    /// Starts publishing the outbox's events to the gateway's partner API (see `outbox.rs`),
    /// in a task that runs until it is aborted; events committed before (by this run or an
    /// earlier one) go first.
    pub fn publish_events(&self, api: PartnerApi) -> tokio::task::JoinHandle<()> {
        self.publishing.store(true, Ordering::SeqCst);
        let publisher = Publisher {
            db: self.db.clone(),
            client: PartnerEventsClient::new(api.channel()),
            clock: self.clock.clone(),
            wake: self.events_waiting.clone(),
        };
        tokio::spawn(publisher.run())
    }

    /// Events committed but not yet accepted by the gateway.
    pub async fn events_waiting(&self) -> Result<u64, Status> {
        outbox::waiting(&self.db).await
    }

    /// Charges made through this service (or its clones) since it was opened; retries that
    /// were replayed do not count. A restarted adapter starts again from 0:
    /// [`ParkingService::charges_recorded`] counts every charge in the database.
    pub fn charges(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
    }

    /// Every charge in the database, made by any run of the adapter.
    pub async fn charges_recorded(&self) -> Result<u64, Status> {
        let mut conn = self.db.pool().acquire().await.map_err(unavailable)?;
        sessions::count_charges(&mut conn).await
    }

    /// Waits for calls in flight to release their connections, then closes the database.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Wraps the service in the generated tonic server, ready for `Server::add_service`.
    pub fn into_server(self) -> ParkingPaymentServer<ParkingService> {
        ParkingPaymentServer::new(self)
    }

    /// Counts a charge this value made (see [`ParkingService::charges`]).
    pub(crate) fn charged(&self) {
        self.charges.fetch_add(1, Ordering::SeqCst);
    }

    async fn list_nearby(
        &self,
        _caller: &Caller,
        request: ListNearbyLotsRequest,
    ) -> Result<ListNearbyLotsResponse, Status> {
        // Lots are public information, so no VIN is required here.
        let near = request
            .near
            .ok_or_else(|| Status::invalid_argument("near is required"))?;
        if !catalogue::is_valid(&near) {
            return Err(Status::invalid_argument(
                "near must have latitude within ±90 and longitude within ±180",
            ));
        }
        Ok(ListNearbyLotsResponse {
            lots: catalogue::nearby(&near, request.radius_m, request.max_results),
        })
    }

    async fn start(&self, caller: &Caller, request: StartSessionRequest) -> Result<StartSessionResponse, Status> {
        let vin = caller.vin()?;
        let key = caller.idempotency_key()?.map(|key| Key { vin, key });
        let plate = request.plate.trim();
        if plate.is_empty() {
            return Err(Status::invalid_argument("plate is required"));
        }
        if plate.chars().count() > MAX_PLATE_CHARS {
            return Err(Status::invalid_argument(format!(
                "plate is longer than {MAX_PLATE_CHARS} characters"
            )));
        }
        if request.lot_id.is_empty() {
            return Err(Status::invalid_argument("lot_id is required"));
        }
        let lot = catalogue::find(&request.lot_id)
            .ok_or_else(|| Status::not_found(format!("no lot {:?}", request.lot_id)))?;
        let now = self.clock.now_unix_ms();

        let mut tx = self.db.write().await?;
        if let Some(replayed) = idempotency::claim(&mut tx, key, "StartSession", &request, now).await? {
            return Ok(replayed);
        }
        if let Some(active) = sessions::active_session_of(&mut tx, vin).await? {
            return Err(Status::failed_precondition(format!(
                "vehicle already has an active parking session {active}; end it first"
            )));
        }
        let session = sessions::start(&mut tx, vin, lot, plate, now).await?;
        let response = StartSessionResponse { session: Some(session) };
        idempotency::answer(&mut tx, key, &response).await?;
        store::commit(tx).await?;
        Ok(response)
    }

    /// Ends the session; the answer, and whether it reports a charge (this call ended and
    /// charged it, or it replays the answer of the call that did).
    async fn end(&self, caller: &Caller, request: EndSessionRequest) -> Result<(EndSessionResponse, bool), Status> {
        let vin = caller.vin()?;
        let key = caller.idempotency_key()?.map(|key| Key { vin, key });
        if request.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let now = self.clock.now_unix_ms();

        let mut tx = self.db.write().await?;
        if let Some(replayed) = idempotency::claim(&mut tx, key, "EndSession", &request, now).await? {
            return Ok((replayed, true));
        }
        let record = sessions::owned(&mut tx, vin, &request.session_id).await?;
        let was_active = record.ended_at_unix_ms.is_none();
        let (session, receipt) = sessions::end_and_charge(&mut tx, record, now, EndedBy::Car).await?;
        let response = EndSessionResponse {
            session: Some(session),
            receipt: Some(receipt),
        };
        idempotency::answer(&mut tx, key, &response).await?;
        store::commit(tx).await?;
        if was_active {
            self.charged();
        }
        Ok((response, was_active))
    }

    async fn refund(&self, caller: &Caller, request: RefundSessionRequest) -> Result<RefundSessionResponse, Status> {
        let vin = caller.vin()?;
        // Two refunds of the same amount are two refunds: without a key, a retry would pay twice.
        let key = caller
            .idempotency_key()?
            .map(|key| Key { vin, key })
            .ok_or_else(|| Status::invalid_argument("RefundSession requires idempotency-key metadata"))?;
        refunds::validate(&request)?;
        let now = self.clock.now_unix_ms();

        let mut tx = self.db.write().await?;
        if let Some(replayed) = idempotency::claim(&mut tx, Some(key), "RefundSession", &request, now).await? {
            return Ok(replayed);
        }
        let session = sessions::owned(&mut tx, vin, &request.session_id).await?;
        let response = refunds::refund(&mut tx, &session, &request, now).await?;
        idempotency::answer(&mut tx, Some(key), &response).await?;
        store::commit(tx).await?;
        Ok(response)
    }

    async fn receipt(&self, caller: &Caller, request: GetReceiptRequest) -> Result<Receipt, Status> {
        let vin = caller.vin()?;
        if request.receipt_id.is_empty() {
            return Err(Status::invalid_argument("receipt_id is required"));
        }
        let mut conn = self.db.pool().acquire().await.map_err(unavailable)?;
        sessions::receipt_owned(&mut conn, vin, &request.receipt_id).await
    }
}

/// Runs `call` of `caller` inside a span carrying the VIN and request id, and logs its outcome.
pub(crate) async fn logged<Resp>(
    method: &'static str,
    caller: &Caller,
    call: impl Future<Output = Result<Resp, Status>>,
) -> Result<Response<Resp>, Status> {
    // Only the VIN and request id are logged: plates are personal data, and payloads may carry
    // more in future versions of the contract.
    let span = tracing::info_span!(
        "parking",
        method,
        vin = caller.vin_for_log(),
        request_id = caller.request_id_for_log()
    );
    let result = call.instrument(span.clone()).await;
    let _entered = span.enter();
    match &result {
        Ok(_) => tracing::info!("ok"),
        Err(status) => tracing::info!(code = ?status.code(), message = status.message(), "rejected"),
    }
    result.map(Response::new)
}

/// Reports the money an answer moved to the gateway in the `carlink-amount` response header
/// (`sign` 1 for a charge, -1 for a refund), so it appears in the car's journal.
fn with_amount<T>(mut response: Response<T>, money: Option<&Money>, sign: i64) -> Response<T> {
    if let Some(money) = money {
        let value = proto::metadata::format_amount(sign * money.amount_minor, &money.currency);
        match value.parse() {
            Ok(value) => {
                response.metadata_mut().insert(proto::metadata::AMOUNT, value);
            }
            Err(_) => tracing::warn!(currency = %money.currency, "amount not reported: the currency is not ASCII"),
        }
    }
    response
}

#[tonic::async_trait]
impl ParkingPayment for ParkingService {
    async fn list_nearby_lots(
        &self,
        request: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        logged(
            "ListNearbyLots",
            &caller,
            self.list_nearby(&caller, request.into_inner()),
        )
        .await
    }

    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        logged("StartSession", &caller, self.start(&caller, request.into_inner())).await
    }

    async fn end_session(&self, request: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        let (response, charged) = logged("EndSession", &caller, self.end(&caller, request.into_inner()))
            .await?
            .into_inner();
        let fee = charged
            .then(|| response.receipt.as_ref().and_then(|r| r.fee.clone()))
            .flatten();
        Ok(with_amount(Response::new(response), fee.as_ref(), 1))
    }

    async fn get_receipt(&self, request: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        logged("GetReceipt", &caller, self.receipt(&caller, request.into_inner())).await
    }

    async fn refund_session(
        &self,
        request: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        let response = logged("RefundSession", &caller, self.refund(&caller, request.into_inner())).await?;
        let given_back = response.get_ref().refund.as_ref().and_then(|r| r.amount.clone());
        Ok(with_amount(response, given_back.as_ref(), -1))
    }
}
