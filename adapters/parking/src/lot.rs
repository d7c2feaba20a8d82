//! `parking.v1.ParkingLot`: the lot's own systems ending a session, and the car told about it.
//!
//! A driver may leave without ending the session on the dashboard. The exit gate's camera reads
//! the plate and calls `VehicleExited`; the adapter ends and charges the session, and pushes a
//! `SessionEndedByLot` event to the car through the gateway (`outbox.rs`), so the dashboard
//! shows what was charged.
//!
//! Why a separate gRPC service on its own port rather than a method of `ParkingPayment`: the
//! gateway routes every `ParkingPayment` method to cars, and a car must never be able to end
//! another car's session by plate. The lot port trusts its own CA (`--lot-client-ca`, e.g. the
//! operators CA) and, over mTLS, only certificates with role `operator`.

use prost::Message as _;
use proto::parking::v1::parking_lot_server::{ParkingLot, ParkingLotServer};
use proto::parking::v1::{LotEndReason, SessionEndedByLot, VehicleExitedRequest, VehicleExitedResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::catalogue;
use crate::outbox;
use crate::service::{MAX_PLATE_CHARS, ParkingService};
use crate::sessions::{self, EndedBy};
use crate::store;

/// The event kind (`events.v1.PublishRequest.kind`) of [`SessionEndedByLot`].
pub const SESSION_ENDED_BY_LOT: &str = "parking.session_ended_by_lot";

impl ParkingService {
    /// Wraps the service in the generated tonic server of `ParkingLot`, for the lot port.
    pub fn into_lot_server(self) -> ParkingLotServer<ParkingService> {
        ParkingLotServer::new(self)
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

        // Ending, charging and the event for the car commit together: the event cannot be lost
        // (kill -9 before it is published leaves it in the outbox) nor exist without the charge.
        let mut tx = self.db.write().await?;
        let record = sessions::active_at(&mut tx, &request.lot_id, plate)
            .await?
            .ok_or_else(|| Status::not_found(format!("no active session of that plate at {}", request.lot_id)))?;
        let vin = record.vin.clone();
        let (session, receipt) = sessions::end_and_charge(&mut tx, record, now, EndedBy::ExitGate).await?;
        let event = SessionEndedByLot {
            session: Some(session.clone()),
            receipt: Some(receipt.clone()),
            reason: LotEndReason::ExitGate.into(),
        };
        // One event per session: a deterministic id, so that every publication of it is the same
        // event to the gateway.
        let event_id = format!("{}-ended-by-lot", session.session_id);
        outbox::enqueue(
            &mut tx,
            &event_id,
            &vin,
            SESSION_ENDED_BY_LOT,
            event.encode_to_vec(),
            now,
        )
        .await?;
        store::commit(tx).await?;
        self.charged();

        self.events_waiting.notify_one();
        if !self.publishing.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                event_id,
                "no partner API configured (--partner-api): the event for the car waits in the outbox"
            );
        }
        Ok(VehicleExitedResponse {
            session: Some(session),
            receipt: Some(receipt),
        })
    }
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
