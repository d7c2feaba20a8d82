//! The lot ends a session itself, and the car is told about it: `parking.v1.ParkingLot`
//! (the exit gate) and the maximum stay.
//!
//! A driver may leave without ending the session on the dashboard. The exit gate's camera reads
//! the plate and calls `VehicleExited`; or the session reaches the lot's maximum stay
//! (`--max-stay-hours`). Either way the adapter ends and charges the session and pushes a
//! `SessionEndedByLot` event to the car through the gateway (`outbox.rs`), so the dashboard
//! shows what was charged.
//!
//! Why a separate gRPC service on its own port rather than a method of `ParkingPayment`: the
//! gateway routes every `ParkingPayment` method to cars, and a car must never be able to end
//! another car's session by plate. The lot port trusts its own CA (`--lot-client-ca`, e.g. the
//! operators CA) and, over mTLS, only certificates with role `operator`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use proto::parking::v1::parking_lot_server::{ParkingLot, ParkingLotServer};
use proto::parking::v1::{
    LotEndReason, ParkingSession, Receipt, SessionEndedByLot, VehicleExitedRequest, VehicleExitedResponse,
};
use sqlx::SqliteConnection;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::catalogue;
use crate::outbox;
use crate::service::{MAX_PLATE_CHARS, ParkingService};
use crate::sessions::{self, EndedBy, SessionRecord};
use crate::store;

/// The event kind (`events.v1.PublishRequest.kind`) of [`SessionEndedByLot`].
pub const SESSION_ENDED_BY_LOT: &str = "parking.session_ended_by_lot";

/// Sessions ended per round of the maximum-stay sweep, so one round's transaction stays short.
pub const MAX_STAY_BATCH: i64 = 100;

/// How often the maximum-stay sweep runs: a session is ended at most this long after its limit.
pub const MAX_STAY_SWEEP_EVERY: Duration = Duration::from_secs(60);

impl ParkingService {
    /// Wraps the service in the generated tonic server of `ParkingLot`, for the lot port.
    pub fn into_lot_server(self) -> ParkingLotServer<ParkingService> {
        ParkingLotServer::new(self)
    }

    /// Ends and charges every session older than `max_stay` (at most [`MAX_STAY_BATCH`] per
    /// call), each with a `SessionEndedByLot` event for its car; returns the sessions ended.
    pub async fn end_overstays(&self, max_stay: Duration) -> Result<Vec<ParkingSession>, Status> {
        let now = self.clock.now_unix_ms();
        let max_stay_ms = i64::try_from(max_stay.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.db.write().await?;
        let overstayed = sessions::active_since(&mut tx, now.saturating_sub(max_stay_ms), MAX_STAY_BATCH).await?;
        let mut ended = Vec::with_capacity(overstayed.len());
        for record in overstayed {
            let (session, _) = end_by_lot(&mut tx, record, now, LotEndReason::MaxStay).await?;
            ended.push(session);
        }
        store::commit(tx).await?;
        for _ in &ended {
            self.ended_by_lot();
        }
        Ok(ended)
    }

    /// Runs [`ParkingService::end_overstays`] every [`MAX_STAY_SWEEP_EVERY`] until the task is
    /// aborted.
    pub fn end_overstays_periodically(&self, max_stay: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MAX_STAY_SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match service.end_overstays(max_stay).await {
                    Ok(ended) if !ended.is_empty() => tracing::info!(ended = ended.len(), "ended overstayed sessions"),
                    Ok(_) => {}
                    Err(status) => tracing::warn!(message = status.message(), "cannot end overstayed sessions"),
                }
            }
        })
    }

    async fn end_at_exit_gate(&self, request: VehicleExitedRequest) -> Result<VehicleExitedResponse, Status> {
        let plate = request.plate.trim();
        if plate.is_empty() || plate.chars().count() > MAX_PLATE_CHARS {
            return Err(Status::invalid_argument(format!(
                "plate is required, at most {MAX_PLATE_CHARS} characters"
            )));
        }
        if catalogue::find(&request.lot_id).is_none() {
            return Err(Status::not_found(format!("no lot {:?}", request.lot_id)));
        }
        let now = self.clock.now_unix_ms();

        let mut tx = self.db.write().await?;
        let record = sessions::active_at(&mut tx, &request.lot_id, plate)
            .await?
            .ok_or_else(|| Status::not_found(format!("no active session of that plate at {}", request.lot_id)))?;
        let (session, receipt) = end_by_lot(&mut tx, record, now, LotEndReason::ExitGate).await?;
        store::commit(tx).await?;
        self.ended_by_lot();
        Ok(VehicleExitedResponse {
            session: Some(session),
            receipt: Some(receipt),
        })
    }

    /// After a commit of [`end_by_lot`]: counts the charge and wakes the event publisher.
    fn ended_by_lot(&self) {
        self.charged();
        self.events_waiting.notify_one();
        if !self.publishing.load(Ordering::SeqCst) {
            tracing::warn!("no partner API configured (--partner-api): the event for the car waits in the outbox");
        }
    }
}

/// Ends and charges the active session `record` for the lot, and writes its event for the car
/// to the outbox, in the caller's transaction: the event can be neither lost (a kill -9 before
/// it is published leaves it in the outbox) nor exist without the charge.
async fn end_by_lot(
    conn: &mut SqliteConnection,
    record: SessionRecord,
    now: i64,
    reason: LotEndReason,
) -> Result<(ParkingSession, Receipt), Status> {
    let vin = record.vin.clone();
    let ended_by = match reason {
        LotEndReason::MaxStay => EndedBy::MaxStay,
        _ => EndedBy::ExitGate,
    };
    let (session, receipt) = sessions::end_and_charge(conn, record, now, ended_by).await?;
    let event = SessionEndedByLot {
        session: Some(session.clone()),
        receipt: Some(receipt.clone()),
        reason: reason.into(),
    };
    // One event per session: a deterministic id, so that every publication of it is the same
    // event to the gateway.
    let event_id = format!("{}-ended-by-lot", session.session_id);
    outbox::enqueue(conn, &event_id, &vin, SESSION_ENDED_BY_LOT, event.encode_to_vec(), now).await?;
    Ok((session, receipt))
}

#[tonic::async_trait]
impl ParkingLot for ParkingService {
    async fn vehicle_exited(
        &self,
        request: Request<VehicleExitedRequest>,
    ) -> Result<Response<VehicleExitedResponse>, Status> {
        let span = tracing::info_span!("parking_lot", method = "VehicleExited", lot = request.get_ref().lot_id);
        let result = self
            .end_at_exit_gate(request.into_inner())
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match &result {
            Ok(_) => tracing::info!("ok"),
            Err(status) => tracing::info!(code = ?status.code(), message = status.message(), "rejected"),
        }
        result.map(Response::new)
    }
}
