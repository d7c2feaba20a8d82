//! The `parking.v1.ParkingPayment` implementation.
//!
//! Every handler follows the same shape: read the caller from the metadata, check the request,
//! then do the work under one lock. Holding the lock from the idempotency lookup until the
//! response is remembered is what makes retries safe: two copies of the same EndSession arriving
//! at once cannot both see "not yet charged".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proto::parking::v1::parking_payment_server::{ParkingPayment, ParkingPaymentServer};
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, ListNearbyLotsRequest, ListNearbyLotsResponse, Money,
    ParkingSession, Receipt, SessionState, StartSessionRequest, StartSessionResponse,
};
use tonic::{Request, Response, Status};

use crate::caller::Caller;
use crate::catalogue::{self, LotInfo};
use crate::clock::{Clock, SystemClock};
use crate::idempotency::{IdempotencyStore, Outcome, key_reused};

/// Longest plate accepted; Chinese plates have 7 or 8 characters.
const MAX_PLATE_CHARS: usize = 16;

const MS_PER_HOUR: i64 = 60 * 60 * 1_000;

/// The reference `ParkingPayment` service; clones share the same sessions and receipts.
#[derive(Clone)]
pub struct ParkingService {
    clock: Arc<dyn Clock>,
    // In memory for the reference adapter; a real partner keeps this in its database, and must
    // then make "check the key, charge, remember the response" one transaction.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, SessionRecord>,
    /// VIN -> id of its active session. A car parks in one place at a time.
    active_by_vin: HashMap<String, String>,
    /// Receipt id -> session id.
    receipts: HashMap<String, String>,
    idempotency: IdempotencyStore,
    sessions_started: u64,
    charges: u64,
}

struct SessionRecord {
    /// Owner of the session: the VIN that started it, from the gateway's metadata.
    vin: String,
    lot: &'static LotInfo,
    session: ParkingSession,
    receipt: Option<Receipt>,
}

impl ParkingService {
    /// A service on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A service on `clock`; tests pass a [`ManualClock`](crate::ManualClock) to control fees.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        ParkingService {
            clock,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Number of fees actually charged so far; retries that were deduplicated do not count.
    pub fn charges(&self) -> u64 {
        self.state().charges
    }

    /// Wraps the service in the generated tonic server, ready for `Server::add_service`.
    pub fn into_server(self) -> ParkingPaymentServer<ParkingService> {
        ParkingPaymentServer::new(self)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-made charge: every handler checks
        // first and mutates last. So keep serving rather than fail every later call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one call inside a span carrying the VIN and request id, and logs its outcome.
    fn handle<Req, Resp>(
        &self,
        method: &'static str,
        request: Request<Req>,
        work: impl FnOnce(&Self, &Caller, Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status> {
        let caller = Caller::from_metadata(request.metadata());
        // Only the VIN and request id are logged: plates are personal data, and payloads may
        // carry more in future versions of the contract.
        let span = tracing::info_span!(
            "parking",
            method,
            vin = caller.vin_for_log(),
            request_id = caller.request_id_for_log()
        );
        let _entered = span.enter();
        let result = work(self, &caller, request.into_inner());
        match &result {
            Ok(_) => tracing::info!("ok"),
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "rejected")
            }
        }
        result.map(Response::new)
    }

    fn list_nearby(&self, _caller: &Caller, request: ListNearbyLotsRequest) -> Result<ListNearbyLotsResponse, Status> {
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

    fn start(&self, caller: &Caller, request: StartSessionRequest) -> Result<StartSessionResponse, Status> {
        self.once_per_key(caller, request, Outcome::Start, Outcome::as_start, State::start_session)
    }

    fn end(&self, caller: &Caller, request: EndSessionRequest) -> Result<EndSessionResponse, Status> {
        self.once_per_key(caller, request, Outcome::End, Outcome::as_end, State::end_session)
    }

    /// Runs `act` for `request` once per idempotency key: a retry with the same request
    /// replays the first answer; the same key with another request is refused.
    fn once_per_key<Req: PartialEq, Resp: Clone>(
        &self,
        caller: &Caller,
        request: Req,
        remembered: fn(Req, Resp) -> Outcome,
        recalled: fn(&Outcome) -> Option<(&Req, &Resp)>,
        act: fn(&mut State, &str, &Req, i64) -> Result<Resp, Status>,
    ) -> Result<Resp, Status> {
        let vin = caller.vin()?;
        let key = caller.idempotency_key()?;
        let now = self.clock.now_unix_ms();
        let mut state = self.state();
        if let Some(key) = key
            && let Some(outcome) = state.idempotency.recall(vin, key, now)
        {
            return match recalled(outcome) {
                Some((previous, response)) if *previous == request => {
                    tracing::info!("replaying the response remembered for this idempotency key");
                    Ok(response.clone())
                }
                _ => Err(key_reused()),
            };
        }
        let response = act(&mut state, vin, &request, now)?;
        if let Some(key) = key {
            state
                .idempotency
                .remember(vin, key, now, remembered(request, response.clone()));
        }
        Ok(response)
    }

    fn receipt(&self, caller: &Caller, request: GetReceiptRequest) -> Result<Receipt, Status> {
        let vin = caller.vin()?;
        if request.receipt_id.is_empty() {
            return Err(Status::invalid_argument("receipt_id is required"));
        }
        let state = self.state();
        state
            .receipts
            .get(&request.receipt_id)
            .and_then(|session_id| state.owned_session(vin, session_id))
            .and_then(|record| record.receipt.clone())
            .ok_or_else(|| Status::not_found(format!("no receipt {:?}", request.receipt_id)))
    }
}

impl Default for ParkingService {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// The session `session_id` if `vin` owns it. Someone else's session is reported exactly like
    /// a missing one, so a car cannot probe which session ids exist.
    fn owned_session(&self, vin: &str, session_id: &str) -> Option<&SessionRecord> {
        self.sessions.get(session_id).filter(|record| record.vin == vin)
    }

    fn start_session(
        &mut self,
        vin: &str,
        request: &StartSessionRequest,
        now: i64,
    ) -> Result<StartSessionResponse, Status> {
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
        if let Some(active) = self.active_by_vin.get(vin) {
            return Err(Status::failed_precondition(format!(
                "vehicle already has an active parking session {active}; end it first"
            )));
        }

        self.sessions_started += 1;
        let session = ParkingSession {
            session_id: format!("ps-{}", self.sessions_started),
            lot_id: lot.id.to_owned(),
            plate: plate.to_owned(),
            state: SessionState::Active.into(),
            started_at_unix_ms: now,
            ended_at_unix_ms: 0,
            fee: None,
        };
        self.active_by_vin.insert(vin.to_owned(), session.session_id.clone());
        let record = SessionRecord {
            vin: vin.to_owned(),
            lot,
            session: session.clone(),
            receipt: None,
        };
        self.sessions.insert(session.session_id.clone(), record);
        Ok(StartSessionResponse { session: Some(session) })
    }

    fn end_session(&mut self, vin: &str, request: &EndSessionRequest, now: i64) -> Result<EndSessionResponse, Status> {
        if request.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let record = self
            .sessions
            .get_mut(&request.session_id)
            .filter(|record| record.vin == vin)
            .ok_or_else(|| Status::not_found(format!("no session {:?}", request.session_id)))?;

        // Ending is idempotent by nature: an ended session answers with what it answered the
        // first time, whatever the idempotency key, and is never charged twice.
        if let Some(receipt) = &record.receipt {
            return Ok(EndSessionResponse {
                session: Some(record.session.clone()),
                receipt: Some(receipt.clone()),
            });
        }

        let started = record.session.started_at_unix_ms;
        // A clock that stepped backwards must not produce a negative duration.
        let ended = now.max(started);
        let fee = Money {
            currency: catalogue::CURRENCY.to_owned(),
            amount_minor: record
                .lot
                .price_per_hour_fen
                .saturating_mul(billable_hours(ended - started)),
        };

        // This is where a real adapter calls its payment provider, passing the idempotency key
        // on so that the provider deduplicates too. The reference adapter counts the charge.
        self.charges += 1;
        let payment_reference = format!("wxpay-{}", self.charges);
        let receipt_id = format!("rcpt-{}", self.charges);

        record.session.state = SessionState::Ended.into();
        record.session.ended_at_unix_ms = ended;
        record.session.fee = Some(fee.clone());
        let receipt = Receipt {
            receipt_id: receipt_id.clone(),
            session_id: record.session.session_id.clone(),
            lot_name: record.lot.name.to_owned(),
            started_at_unix_ms: started,
            ended_at_unix_ms: ended,
            duration_s: u64::try_from((ended - started) / 1_000).unwrap_or(0),
            fee: Some(fee),
            payment_reference,
        };
        record.receipt = Some(receipt.clone());
        let response = EndSessionResponse {
            session: Some(record.session.clone()),
            receipt: Some(receipt),
        };

        self.active_by_vin.remove(vin);
        self.receipts.insert(receipt_id, request.session_id.clone());
        Ok(response)
    }
}

/// Hours billed for `duration_ms`: every started hour counts, and at least one is charged.
fn billable_hours(duration_ms: i64) -> i64 {
    let started_hours = duration_ms.max(0).saturating_add(MS_PER_HOUR - 1) / MS_PER_HOUR;
    started_hours.max(1)
}

#[tonic::async_trait]
impl ParkingPayment for ParkingService {
    async fn list_nearby_lots(
        &self,
        request: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        self.handle("ListNearbyLots", request, Self::list_nearby)
    }

    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        self.handle("StartSession", request, Self::start)
    }

    async fn end_session(&self, request: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        self.handle("EndSession", request, Self::end)
    }

    async fn get_receipt(&self, request: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        self.handle("GetReceipt", request, Self::receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_started_hour_is_billed() {
        let minute = 60 * 1_000;
        assert_eq!(billable_hours(0), 1);
        assert_eq!(billable_hours(-5), 1);
        assert_eq!(billable_hours(59 * minute), 1);
        assert_eq!(billable_hours(60 * minute), 1);
        assert_eq!(billable_hours(60 * minute + 1), 2);
        assert_eq!(billable_hours(90 * minute), 2);
        assert_eq!(billable_hours(25 * 60 * minute), 25);
    }
}
