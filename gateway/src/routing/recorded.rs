//! What the journal keeps of one request: gathered while it is routed ([`Seen`]), recorded
//! once it is answered, off the request path (the journal only queues it).

use proto::vehicle::v1::{Request, Response};
use proto::{MethodPath, Vin, metadata};
use tokio::time::Instant;
use tracing::debug;

use crate::journal::Journal;
use crate::logsafe::printable;
use crate::store::{Amount, Interaction, JournalEntry, RequestRecord};

/// Longest method or request id kept in a row (a car's junk is cut to size).
const MAX_TEXT: usize = 255;

/// What is known of a request so far. Inert (nothing copied) when the journal is disabled.
pub(super) struct Seen {
    enabled: bool,
    payloads: bool,
    received_at_ms: i64,
    started: Instant,
    method: String,
    request_id: String,
    request_payload: Option<Vec<u8>>,
    amount: Option<Amount>,
    /// The social identity a partner reported the driver signed in with, kept whether or not
    /// the journal is on: linking it to the car's customer is not the journal's business.
    signed_in: Option<(String, String)>,
}

impl Seen {
    /// A request received now.
    pub(super) fn new(journal: &Journal) -> Seen {
        Seen {
            enabled: journal.is_enabled(),
            payloads: journal.records_payloads(),
            received_at_ms: crate::clock::now_ms(),
            started: Instant::now(),
            method: String::new(),
            request_id: String::new(),
            request_payload: None,
            amount: None,
            signed_in: None,
        }
    }

    /// The decoded envelope.
    pub(super) fn request(&mut self, request: &Request) {
        if !self.enabled {
            return;
        }
        self.method = request.method.chars().take(MAX_TEXT).collect();
        self.request_id = request.request_id.chars().take(MAX_TEXT).collect();
        if self.payloads {
            self.request_payload = Some(request.payload.clone());
        }
    }

    /// The partner's response metadata: the amount it reports charging, if any
    /// ([`metadata::AMOUNT`]). A value that does not parse is ignored: it never fails a request.
    pub(super) fn amount(&mut self, headers: &tonic::metadata::MetadataMap) {
        if !self.enabled {
            return;
        }
        let Some(value) = headers.get(metadata::AMOUNT) else {
            return;
        };
        match value.to_str().ok().and_then(metadata::parse_amount) {
            Some((minor_units, currency)) => self.amount = Some(Amount { minor_units, currency }),
            None => debug!(
                value = %printable(&String::from_utf8_lossy(value.as_bytes())),
                "partner's {} header ignored: expected \"<minor units> <ISO 4217>\"",
                metadata::AMOUNT
            ),
        }
    }

    /// The partner's response metadata: the social identity the driver signed in with, if it
    /// reports one ([`metadata::SIGNED_IN`]). A value that does not parse is ignored.
    pub(super) fn signed_in(&mut self, headers: &tonic::metadata::MetadataMap) {
        let Some(value) = headers.get(metadata::SIGNED_IN) else {
            return;
        };
        self.signed_in = value.to_str().ok().and_then(metadata::parse_signed_in);
        if self.signed_in.is_none() {
            debug!(
                value = %printable(&String::from_utf8_lossy(value.as_bytes())),
                "partner's {} header ignored: expected \"<provider> <subject>\"",
                metadata::SIGNED_IN
            );
        }
    }

    /// The sign-in a partner reported, taken out (at most once).
    pub(super) fn take_sign_in(&mut self) -> Option<(String, String)> {
        self.signed_in.take()
    }

    /// Queues the request's row with `response`'s outcome.
    pub(super) fn record(self, journal: &Journal, vin: &Vin, response: &Response) {
        if !self.enabled {
            return;
        }
        let (service, method) = match MethodPath::parse(&self.method) {
            Ok(path) => (path.service().to_owned(), path.method().to_owned()),
            Err(_) => (String::new(), self.method),
        };
        let code = response.status.as_ref().map_or(0, |status| status.code);
        journal.record(JournalEntry {
            id: 0,
            at_ms: self.received_at_ms,
            vin: vin.clone(),
            what: Interaction::Request(RequestRecord {
                service,
                method,
                code,
                latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                amount: self.amount,
                request_id: self.request_id,
                request_payload: self.request_payload,
                response_payload: self.payloads.then(|| response.payload.clone()),
            }),
        });
    }
}
