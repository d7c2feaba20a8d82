//! Partner adapters: one gRPC channel per configured service, called without decoding the
//! messages (the gateway brokers bytes; the contract is between car and partner), each call
//! let through or refused at once by the partner's [`PartnerGuard`] (limit and breaker).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use proto::raw::RawCodec;
use proto::{MethodPath, Vin, metadata};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::resilience::{CallOutcome, PartnerGuard, PartnerHealth, ResilienceSettings};
use crate::config::PartnerConfig;

/// Who is asking, passed to the partner as metadata.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The calling car.
    pub vin: Vin,
    /// The car's request id.
    pub request_id: String,
    /// The driver intent's idempotency key.
    pub idempotency_key: String,
}

/// A partner's answer: the encoded response and the response metadata it sent.
#[derive(Debug)]
pub struct PartnerReply {
    /// The encoded response message, untouched.
    pub body: Bytes,
    /// The response headers (e.g. [`metadata::AMOUNT`]).
    pub metadata: tonic::metadata::MetadataMap,
}

/// One partner's adapter endpoint.
#[derive(Debug, Clone)]
pub struct PartnerAdapter {
    service: String,
    channel: Channel,
    default_timeout: Option<Duration>,
    read_only_methods: Vec<String>,
    /// Largest answer accepted from this partner.
    max_response_bytes: usize,
    /// Its limit on calls in flight and its circuit breaker, shared by every clone.
    guard: Arc<PartnerGuard>,
}

/// Why a partner call gave no answer.
#[derive(Debug)]
pub enum PartnerError {
    /// The partner was not called: its calls in flight are at their limit
    /// (RESOURCE_EXHAUSTED) or its circuit breaker is open (UNAVAILABLE). Retrying at once is
    /// pointless.
    Refused(tonic::Status),
    /// The partner was called and the call failed (its status, or ours for a transport
    /// failure or a deadline).
    Failed(tonic::Status),
}

impl PartnerError {
    /// The status the car gets.
    pub fn status(&self) -> &tonic::Status {
        match self {
            PartnerError::Refused(status) | PartnerError::Failed(status) => status,
        }
    }
}

impl PartnerAdapter {
    /// The gRPC service this adapter serves.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether `method` is declared free of side effects (it bypasses the idempotency ledger).
    pub fn is_read_only(&self, method: &str) -> bool {
        self.read_only_methods.iter().any(|m| m == method)
    }

    /// Deadline for cars that give none, if this partner sets one.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.default_timeout
    }

    /// The state of this partner's limit and breaker.
    pub fn health(&self) -> PartnerHealth {
        self.guard.health(tokio::time::Instant::now())
    }

    /// Calls `method` with the encoded `payload`, giving up after `timeout`, unless the
    /// partner's limit or breaker refuses the call at once.
    pub async fn call(
        &self,
        ctx: &CallContext,
        method: &MethodPath,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<PartnerReply, PartnerError> {
        let started = tokio::time::Instant::now();
        let permit = self
            .guard
            .admit(started)
            .map_err(|refusal| PartnerError::Refused(refusal.to_status(&self.service)))?;
        let call = async {
            let mut grpc =
                tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(self.max_response_bytes);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("partner {} unreachable: {e}", self.service)))?;
            let mut request = tonic::Request::new(payload);
            request.set_timeout(timeout);
            let md = request.metadata_mut();
            md.insert(metadata::VIN, ascii(ctx.vin.as_str())?);
            md.insert(metadata::REQUEST_ID, ascii(&ctx.request_id)?);
            md.insert(metadata::IDEMPOTENCY_KEY, ascii(&ctx.idempotency_key)?);
            let path = PathAndQuery::try_from(method.as_str())
                .map_err(|_| tonic::Status::invalid_argument("method is not a valid path"))?;
            grpc.unary(request, path, RawCodec).await.map(|response| {
                let (metadata, body, _) = response.into_parts();
                PartnerReply { body, metadata }
            })
        };
        // tonic does not enforce the deadline on the client side by itself; this does, and
        // it covers connection setup too.
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(explain(status, &self.service, started.elapsed(), timeout)),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "partner {} did not answer within {timeout:?}",
                self.service
            ))),
        };
        let outcome = CallOutcome::of(result.as_ref().map(|_| ()), timeout);
        permit.finish(outcome, tokio::time::Instant::now());
        result.map_err(PartnerError::Failed)
    }
}

fn ascii(s: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    s.parse()
        .map_err(|_| tonic::Status::invalid_argument("metadata value is not printable ASCII"))
}

/// Classifies a failed call by its status code and where the status came from, never by its
/// message text (a partner chooses that): says which partner failed and what the car can do.
fn explain(status: tonic::Status, service: &str, elapsed: Duration, deadline: Duration) -> tonic::Status {
    use std::error::Error as _;
    // The partner's server enforces the deadline it was given (tonic answers CANCELLED) and may
    // fire just before ours: near the deadline, to the car it is one outcome.
    let at_deadline = elapsed + (deadline / 10).min(Duration::from_millis(50)) >= deadline;
    match status.code() {
        tonic::Code::Cancelled if at_deadline => {
            tonic::Status::deadline_exceeded(format!("partner {service} did not answer within the deadline"))
        }
        // A status the partner sent has no source; one with a source was made here from a
        // transport failure (connection refused or reset, TLS, HTTP/2): the partner is unreachable.
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal if status.source().is_some() => {
            tonic::Status::unavailable(format!("partner {service} unreachable: {}", status.message()))
        }
        _ => status,
    }
}

/// Every configured partner, by service name.
#[derive(Debug, Clone, Default)]
pub struct PartnerDirectory {
    by_service: HashMap<String, PartnerAdapter>,
}

/// A partner entry whose TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("partner {service}: {problem}")]
pub struct PartnerSetupError {
    service: String,
    problem: String,
}

impl PartnerDirectory {
    /// Builds lazily-connecting channels for every entry (a partner that is down at startup
    /// does not stop the gateway; its calls fail with UNAVAILABLE until it is back). Answers
    /// larger than `max_response_bytes` are refused (OUT_OF_RANGE, from tonic's decoder).
    pub fn from_config(
        partners: &[PartnerConfig],
        max_response_bytes: usize,
    ) -> Result<PartnerDirectory, PartnerSetupError> {
        let mut by_service = HashMap::new();
        for p in partners {
            let err = |problem: String| PartnerSetupError {
                service: p.service.clone(),
                problem,
            };
            let mut endpoint = Endpoint::from_shared(p.endpoint.clone())
                .map_err(|e| err(e.to_string()))?
                .connect_timeout(p.connect_timeout)
                .tcp_nodelay(true);
            if p.endpoint.starts_with("https://") {
                let mut tls = ClientTlsConfig::new();
                if let Some(ca) = &p.ca_cert {
                    let pem = std::fs::read(ca).map_err(|e| err(format!("{}: {e}", ca.display())))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                if let (Some(cert), Some(key)) = (&p.client_cert, &p.client_key) {
                    let cert = std::fs::read(cert).map_err(|e| err(format!("{}: {e}", cert.display())))?;
                    let key = std::fs::read(key).map_err(|e| err(format!("{}: {e}", key.display())))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                if let Some(name) = &p.tls_server_name {
                    tls = tls.domain_name(name.clone());
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| err(e.to_string()))?;
            }
            let adapter = PartnerAdapter {
                service: p.service.clone(),
                channel: endpoint.connect_lazy(),
                default_timeout: p.timeout,
                read_only_methods: p.read_only_methods.clone(),
                max_response_bytes,
                guard: PartnerGuard::new(&p.service, ResilienceSettings::from(p)),
            };
            by_service.insert(p.service.clone(), adapter);
        }
        Ok(PartnerDirectory { by_service })
    }

    /// The adapter serving `service`, if any.
    pub fn get(&self, service: &str) -> Option<&PartnerAdapter> {
        self.by_service.get(service)
    }

    /// Names of every configured service.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// The state of every partner's limit and breaker, by service name.
    pub fn health(&self) -> Vec<PartnerHealth> {
        let mut all: Vec<PartnerHealth> = self.by_service.values().map(PartnerAdapter::health).collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_transport_failure_is_unavailable_whatever_its_text() {
        let local = tonic::Status::from_error(Box::new(std::io::Error::other("any words at all")));
        let explained = explain(local, "parking.v1.ParkingPayment", Duration::ZERO, SECOND);
        assert_eq!(explained.code(), tonic::Code::Unavailable);
        assert!(explained.message().contains("parking.v1.ParkingPayment unreachable"));
    }

    #[test]
    fn a_partners_own_status_is_passed_on_even_if_its_text_looks_like_a_transport_error() {
        for code in [tonic::Code::Unavailable, tonic::Code::Unknown] {
            let sent = tonic::Status::new(code, "transport error: connect refused");
            assert_eq!(explain(sent, "s.v1.S", Duration::ZERO, SECOND).code(), code);
        }
    }

    #[test]
    fn cancelled_at_the_deadline_is_the_deadline_and_earlier_it_is_cancelled() {
        let cancelled = || tonic::Status::cancelled("whatever the server says");
        assert_eq!(
            explain(cancelled(), "s.v1.S", SECOND, SECOND).code(),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            explain(cancelled(), "s.v1.S", Duration::from_millis(10), SECOND).code(),
            tonic::Code::Cancelled
        );
    }
}
