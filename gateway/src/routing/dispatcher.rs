//! Takes vehicle requests off the bus, routes each by its gRPC method to the partner that
//! serves it, and publishes the answer to the calling car only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use proto::vehicle::v1::{Code, EventAck, Request, Response};
use proto::{MethodPath, Vin, topics};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::idempotency::{Admission, Ledger};
use super::partners::{CallContext, PartnerDirectory};
use crate::bus::{Bus, BusError, LinkSpec};
use crate::config::RequestLimits;
use crate::events::EventDelivery;

/// Longest request id or idempotency key accepted (Stripe's limit for keys).
const MAX_ID_LEN: usize = 255;

/// Attempts at a partner that answers UNAVAILABLE: enough to ride out a restart or a dropped
/// connection, few enough that a partner that is down is reported to the car promptly.
const PARTNER_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubles for each further one.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Decides what happens to one vehicle request.
pub struct RequestRouter {
    partners: PartnerDirectory,
    limits: RequestLimits,
    ledger: Arc<Ledger>,
}

impl RequestRouter {
    /// A router over the given partners and limits, deduplicating through `ledger`.
    pub fn new(partners: PartnerDirectory, limits: RequestLimits, ledger: Arc<Ledger>) -> RequestRouter {
        RequestRouter {
            partners,
            limits,
            ledger,
        }
    }

    /// Handles one encoded `vehicle.v1.Request` from `vin` and returns the response to send back.
    pub async fn handle(&self, vin: &Vin, envelope: &[u8]) -> Response {
        let request = match Request::decode(envelope) {
            Ok(r) => r,
            Err(e) => {
                warn!(%vin, error = %e, "malformed request envelope");
                return Response::error("", Code::InvalidArgument, format!("malformed vehicle.v1.Request: {e}"));
            }
        };
        let span = info_span!("request", %vin, request_id = %printable(&request.request_id), method = %printable(&request.method));
        async {
            let started = Instant::now();
            let response = self.route(vin, request).await;
            let status = response.status.clone().unwrap_or_default();
            info!(code = ?status.code(), latency_us = started.elapsed().as_micros() as u64, message = %status.message, "request done");
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, vin: &Vin, request: Request) -> Response {
        let Request {
            request_id,
            idempotency_key,
            method,
            timeout_ms,
            payload,
        } = request;
        // An invalid id is echoed back cut to size, so a car cannot make us amplify junk.
        let echoed_id: String = request_id.chars().take(MAX_ID_LEN).collect();
        let fail = |code: Code, message: String| Response::error(echoed_id.clone(), code, message);
        if !valid_id(&request_id) {
            return fail(
                Code::InvalidArgument,
                format!("request_id must be 1 to {MAX_ID_LEN} printable ASCII characters"),
            );
        }
        let idempotency_key = if idempotency_key.is_empty() {
            request_id.clone()
        } else {
            idempotency_key
        };
        if !valid_id(&idempotency_key) {
            return fail(
                Code::InvalidArgument,
                format!("idempotency_key must be at most {MAX_ID_LEN} printable ASCII characters"),
            );
        }
        let method = match MethodPath::parse(&method) {
            Ok(m) => m,
            Err(e) => return fail(Code::InvalidArgument, e.to_string()),
        };
        if payload.len() > self.limits.max_payload_bytes {
            return fail(
                Code::ResourceExhausted,
                format!(
                    "request payload of {} bytes exceeds the {}-byte limit",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            );
        }
        let Some(partner) = self.partners.get(method.service()) else {
            return fail(Code::Unimplemented, format!("no partner serves {}", method.service()));
        };
        let timeout = match timeout_ms {
            0 => partner.default_timeout().unwrap_or(self.limits.default_timeout),
            ms => Duration::from_millis(ms.into()),
        }
        .min(self.limits.max_timeout);
        let deadline = Instant::now() + timeout;
        // Methods without side effects skip the ledger: asking twice is harmless and cheaper
        // than recording.
        let key = if partner.is_read_only(method.method()) {
            None
        } else {
            match self
                .ledger
                .admit(vin, &idempotency_key, method.as_str(), &payload, &request_id, deadline)
                .await
            {
                Admission::Proceed(key) => Some(key),
                Admission::Answer(response) => return response,
            }
        };
        let ctx = CallContext {
            vin: vin.clone(),
            request_id: request_id.clone(),
            idempotency_key,
        };
        let payload = Bytes::from(payload);
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 1;
        let response = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match partner.call(&ctx, &method, payload.clone(), left).await {
                Ok(reply) => break Response::ok(request_id.clone(), reply.to_vec()),
                // Retrying is safe: the partner sees the same idempotency key.
                Err(status)
                    if status.code() == tonic::Code::Unavailable && attempt < PARTNER_ATTEMPTS && left > pause * 2 =>
                {
                    debug!(message = status.message(), attempt, "partner unavailable, retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(status) => break fail(status.code().into(), status.message().to_owned()),
            }
        };
        if let Some(key) = key {
            self.ledger.finish(&key, &response).await;
        }
        response
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// For log fields: never let a car's bytes forge log lines.
fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_ID_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The gateway's outgoing messages to cars (responses, events): (topic, payload) pairs that the
/// dispatcher's link publishes on the bus.
pub struct Publications {
    /// Where responses and events are queued.
    pub tx: mpsc::Sender<(String, Vec<u8>)>,
    /// Drained by the dispatcher's publisher thread.
    pub rx: mpsc::Receiver<(String, Vec<u8>)>,
}

/// Subscribes to every car's request and event-ack topics (reporting on `ready`), publishes
/// `publications`, and serves requests until `shutdown`; requests in flight at shutdown are
/// finished (they are tracked by `tracker`).
pub async fn run(
    bus: Bus,
    router: Arc<RequestRouter>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    delivery: EventDelivery,
    publications: Publications,
    ready: tokio::sync::oneshot::Sender<Result<(), BusError>>,
) -> Result<(), BusError> {
    let Publications {
        tx: out_tx,
        rx: mut out_rx,
    } = publications;
    let spec = LinkSpec {
        client_id: "gateway-dispatcher".into(),
        tenant: None,
        clean_session: true,
    };
    let (mut link_tx, mut link_rx, _) = bus.link(spec).await?;
    // The link's publish blocks when the router is busy, so it gets a thread of its own.
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gateway-publisher".into())
        .spawn(move || {
            let subscribed = [topics::ALL_REQUESTS, topics::ALL_EVENT_ACKS]
                .into_iter()
                .try_for_each(|filter| link_tx.subscribe(filter).map(|_| ()).map_err(BusError::from));
            let _ = subscribed_tx.send(subscribed);
            while let Some((topic, payload)) = out_rx.blocking_recv() {
                if let Err(e) = link_tx.publish(topic, payload) {
                    error!(error = %e, "router refused a response");
                    break;
                }
            }
        })
        .expect("spawn publisher thread");
    let subscribed = subscribed_rx
        .await
        .unwrap_or_else(|_| Err(BusError("publisher thread died".into())));
    let failed = subscribed.is_err();
    let _ = ready.send(subscribed);
    if failed {
        return Ok(());
    }
    info!(filter = topics::ALL_REQUESTS, "dispatcher subscribed");
    loop {
        let notification = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = link_rx.next() => n.map_err(BusError::from)?,
        };
        match notification {
            Some(Notification::Forward(forward)) => {
                let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                if let Some(vin) = topics::vin_of_event_ack_topic(&topic) {
                    match EventAck::decode(forward.publish.payload) {
                        Ok(ack) => delivery.ack(vin, ack.sequence),
                        Err(e) => warn!(%vin, error = %e, "malformed event acknowledgement"),
                    }
                    continue;
                }
                let Some(vin) = topics::vin_of_request_topic(&topic) else {
                    debug!(%topic, "ignoring publish on a non-request topic");
                    continue;
                };
                let router = router.clone();
                let out = out_tx.clone();
                let payload = forward.publish.payload;
                tracker.spawn(async move {
                    let response = router.handle(&vin, &payload).await;
                    if out
                        .send((topics::responses(&vin), response.encode_to_vec()))
                        .await
                        .is_err()
                    {
                        warn!(%vin, "response dropped: publisher stopped");
                    }
                });
            }
            Some(Notification::Unschedule) => link_rx.wake().await.map_err(BusError::from)?,
            _ => {}
        }
    }
    Ok(())
}
