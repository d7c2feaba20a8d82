//! Takes vehicle requests off the bus, routes each by its gRPC method to the partner that
//! serves it, and sends the answer to the calling car only. Each car is held to a request
//! rate (`requests.max_per_second_per_car`): beyond it the car gets RESOURCE_EXHAUSTED and the
//! partner is not called.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prost::Message;
use proto::vehicle::v1::{Code, Request, Response};
use proto::{MethodPath, Vin};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::idempotency::{Admission, Ledger};
use super::partners::{CallContext, PartnerDirectory, PartnerError};
use super::recorded::Seen;
use super::sign_ins::SignInLinker;
use super::stats::RequestStats;
use crate::bus::{DeliveryOutcome, Mailboxes, Outbound, RequestInbox};
use crate::config::RequestLimits;
use crate::journal::Journal;
use crate::logsafe::{printable, printable_within};

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
    /// Each car's request rate.
    rate: DefaultKeyedRateLimiter<Vin>,
    /// Where each answered request is counted (metrics, partner status).
    stats: Arc<RequestStats>,
    /// Where every outcome is recorded (disabled unless [`RequestRouter::with_journal`]).
    journal: Journal,
    /// Where the sign-ins identity partners report go to be linked to the car's customer.
    sign_ins: SignInLinker,
}

impl RequestRouter {
    /// A router over the given partners and limits, deduplicating through `ledger`.
    pub fn new(partners: PartnerDirectory, limits: RequestLimits, ledger: Arc<Ledger>) -> RequestRouter {
        let quota = Quota::per_second(limits.max_per_second_per_car).allow_burst(limits.burst_per_car);
        let stats = Arc::new(RequestStats::new(&partners, &crate::metrics::Metrics::new(None)));
        RequestRouter {
            partners,
            limits,
            ledger,
            rate: RateLimiter::keyed(quota),
            stats,
            journal: Journal::disabled(),
            sign_ins: SignInLinker::disabled(),
        }
    }

    /// Counts answered requests in `stats` (shared with whoever reads them) instead of
    /// counters of its own.
    pub fn with_stats(mut self, stats: Arc<RequestStats>) -> RequestRouter {
        self.stats = stats;
        self
    }

    /// Records every request's outcome in `journal`.
    pub fn with_journal(mut self, journal: Journal) -> RequestRouter {
        self.journal = journal;
        self
    }

    /// Links the sign-ins identity partners report through `sign_ins` (none are linked
    /// otherwise).
    pub fn with_sign_ins(mut self, sign_ins: SignInLinker) -> RequestRouter {
        self.sign_ins = sign_ins;
        self
    }

    /// Forgets the rate of cars that stayed within it lately (bounds the memory it takes).
    pub fn prune_rates(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }

    /// Handles one encoded `vehicle.v1.Request` from `vin` and returns the response to send
    /// back; its outcome goes to the journal.
    pub async fn handle(&self, vin: &Vin, envelope: &[u8]) -> Response {
        let mut seen = Seen::new(&self.journal);
        let response = self.handle_recorded(vin, envelope, &mut seen).await;
        if let Some((provider, subject)) = seen.take_sign_in() {
            // Off the request path: the car's answer does not wait for the customer's records.
            self.sign_ins.report(vin, provider, subject);
        }
        seen.record(&self.journal, vin, &response);
        response
    }

    async fn handle_recorded(&self, vin: &Vin, envelope: &[u8], seen: &mut Seen) -> Response {
        let request = match Request::decode(envelope) {
            Ok(r) => r,
            Err(e) => {
                warn!(%vin, error = %e, "malformed request envelope");
                self.stats
                    .for_method("")
                    .record(Code::InvalidArgument as i32, Duration::ZERO);
                return Response::error("", Code::InvalidArgument, format!("malformed vehicle.v1.Request: {e}"));
            }
        };
        let span = info_span!(
            "request",
            %vin,
            request_id = %printable_within(&request.request_id, MAX_ID_LEN),
            method = %printable(&request.method)
        );
        seen.request(&request);
        async {
            let started = Instant::now();
            let stats = self.stats.for_method(&request.method);
            let response = self.route(vin, request, seen).await;
            let status = response.status.clone().unwrap_or_default();
            stats.record(status.code, started.elapsed());
            info!(code = ?status.code(), latency_us = started.elapsed().as_micros() as u64, message = %status.message, "request done");
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, vin: &Vin, request: Request, seen: &mut Seen) -> Response {
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
        if self.rate.check_key(vin).is_err() {
            return fail(
                Code::ResourceExhausted,
                format!(
                    "more than {} requests per second from this vehicle; retry later with the same idempotency key",
                    self.limits.max_per_second_per_car
                ),
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
                Ok(reply) => {
                    seen.amount(&reply.metadata);
                    seen.signed_in(&reply.metadata);
                    break Response::ok(request_id.clone(), reply.body.to_vec());
                }
                // Retrying is safe: the partner sees the same idempotency key. A call its
                // limit or open breaker refused is answered at once instead (and, being
                // RESOURCE_EXHAUSTED or UNAVAILABLE, not stored: a later retry calls it).
                Err(PartnerError::Failed(status))
                    if status.code() == tonic::Code::Unavailable && attempt < PARTNER_ATTEMPTS && left > pause * 2 =>
                {
                    debug!(message = status.message(), attempt, "partner unavailable, retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => break fail(e.status().code().into(), e.status().message().to_owned()),
            }
        };
        if let Some(key) = key {
            // Recorded behind the answer: a retry that arrives meanwhile waits for the record
            // (the key stays in flight until it is written), and if the gateway dies first the
            // next attempt calls the partner again with the same key, which it deduplicates.
            self.ledger.finish_later(key, response.clone());
        }
        response
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Takes the requests cars publish: each is routed in a task of its own (tracked, so
/// shutdown waits for it) and answered through the car's mailbox.
pub struct Dispatcher {
    router: Arc<RequestRouter>,
    mailboxes: Mailboxes,
    tracker: TaskTracker,
}

impl Dispatcher {
    /// A dispatcher answering through `mailboxes`, its request tasks tracked by `tracker`.
    pub fn new(router: Arc<RequestRouter>, mailboxes: Mailboxes, tracker: TaskTracker) -> Dispatcher {
        Dispatcher {
            router,
            mailboxes,
            tracker,
        }
    }
}

impl RequestInbox for Dispatcher {
    fn request(&self, vin: Vin, envelope: Bytes, slot: OwnedSemaphorePermit) {
        let router = self.router.clone();
        let mailboxes = self.mailboxes.clone();
        self.tracker.spawn(async move {
            let response = router.handle(&vin, &envelope).await;
            let delivery = mailboxes.deliver(&vin, Outbound::Responses, Bytes::from(response.encode_to_vec()));
            if delivery != DeliveryOutcome::Queued {
                // The car republishes what it has no answer for; the ledger replays it.
                debug!(%vin, ?delivery, "response not delivered");
            }
            drop(slot);
        });
    }
}
