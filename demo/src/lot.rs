//! The lot ends a session itself and the car hears about it: the car parks again and leaves
//! through the exit gate without ending the session from the dashboard; the parking partner
//! ends and charges it and pushes `SessionEndedByLot` through the gateway's partner API, and
//! the in-car app reads it from the agent (`SubscribeEvents`) and acknowledges it (`AckEvents`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use parking_adapter::ParkingService;
use prost::Message as _;
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{AckEventsRequest, SubscribeEventsRequest};
use proto::parking::v1::parking_lot_server::ParkingLot as _;
use proto::parking::v1::{SessionEndedByLot, StartSessionRequest, VehicleExitedRequest};
use tonic::transport::Channel;

use crate::journey::{InCarApp, step, timed, yuan};

/// Longest the car waits for the lot's event once the gate has opened.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Steps `first` and `first + 1`: parks at `lot_id` with `plate` again, then the exit gate of
/// the lot (the partner's own system, here in-process) lets the car out.
pub async fn leave_through_the_exit_gate(
    app: &mut InCarApp,
    lot: &ParkingService,
    lot_id: &str,
    plate: &str,
    first: u32,
) -> Result<()> {
    let parking = StartSessionRequest {
        lot_id: lot_id.to_owned(),
        plate: plate.to_owned(),
    };
    let (started, took) = timed(app.parking.start_session(parking)).await?;
    let session = started.session.context("no session")?;
    step(
        first,
        "StartSession",
        format!("{} (parked again)", session.session_id),
        took,
    );

    let t = Instant::now();
    let gate = VehicleExitedRequest {
        lot_id: lot_id.to_owned(),
        plate: plate.to_owned(),
    };
    let exited = lot
        .vehicle_exited(tonic::Request::new(gate))
        .await
        .context("the exit gate")?
        .into_inner();
    let charged = exited.receipt.as_ref().and_then(|r| r.fee.as_ref());
    println!(
        "     the exit gate reads {plate} and ends the session: {}",
        yuan(charged)
    );
    let ended = heard_by_the_car(&mut app.agent, &session.session_id).await?;
    let receipt = ended.receipt.unwrap_or_default();
    let outcome = format!(
        "SessionEndedByLot: {} charged, receipt {}, acknowledged",
        yuan(receipt.fee.as_ref()),
        receipt.receipt_id
    );
    step(first + 1, "SubscribeEvents", outcome, t.elapsed());
    Ok(())
}

/// Reads the car's events until the lot's account of `session_id` arrives, then acknowledges
/// everything up to it (events the agent still kept from earlier runs included).
async fn heard_by_the_car(agent: &mut VehicleAgentClient<Channel>, session_id: &str) -> Result<SessionEndedByLot> {
    let mut events = agent
        .subscribe_events(SubscribeEventsRequest { after_sequence: 0 })
        .await?
        .into_inner();
    let wait = async {
        while let Some(event) = events.message().await? {
            if event.kind != parking_adapter::lot::SESSION_ENDED_BY_LOT {
                continue;
            }
            let ended = SessionEndedByLot::decode(event.payload.as_slice()).context("a SessionEndedByLot")?;
            if ended.session.as_ref().is_some_and(|s| s.session_id == session_id) {
                return Ok((event.sequence, ended));
            }
        }
        bail!("the agent ended the event stream")
    };
    let (sequence, ended) = tokio::time::timeout(EVENT_WAIT, wait).await.with_context(|| {
        format!(
            "the lot's event did not reach the car within {} s",
            EVENT_WAIT.as_secs()
        )
    })??;
    agent
        .ack_events(AckEventsRequest {
            up_to_sequence: sequence,
        })
        .await?;
    Ok(ended)
}
