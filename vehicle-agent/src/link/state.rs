//! What the link's shared state does with an answer: queue a request for publishing, make the
//! first answer a request gets its outcome (stored, then its callers woken), expire a request
//! whose deadline passed, and word why a request got no response.

use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tonic::Status;
use tracing::{debug, error};

use proto::vehicle::v1::{Code, Request, Response};

use super::{Callers, LinkState, blocking, into_result};
use crate::outbox::{Lookup, Sent};
use crate::owner::Owner;
use crate::store::unix_ms_now;

impl LinkState {
    pub(super) fn callers(&self) -> MutexGuard<'_, Callers> {
        // A panic elsewhere must not take every later call down with it.
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request` for publishing; the event loop sends it.
    pub(crate) async fn publish(&self, request: Request) {
        use prost::Message as _;
        let request_id = request.request_id.clone();
        let bytes = request.encode_to_vec();
        if let Err(e) = self
            .client
            .publish(self.request_topic.as_str(), rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
        {
            // Only when the event loop is gone; the request stays in the outbox.
            debug!(request_id, error = %e, "could not queue a request");
        }
    }

    /// Makes `response` its request's outcome unless it has one (the first answer stands),
    /// hands it to the outbox to store, then wakes the callers waiting for it.
    pub(crate) async fn finish(&self, response: Response) {
        let outbox = self.outbox.clone();
        let stored = response.clone();
        match blocking(move || outbox.complete(&stored, unix_ms_now())).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                debug!(
                    request_id = response.request_id,
                    "ignoring a response nobody waits for (duplicate, late, unknown, or the request has its outcome)"
                );
                return;
            }
            // It is the outcome all the same: the outbox holds it (GetResult shows it) and the
            // housekeeping writes it again until the disk takes it.
            Ok(Err(e)) => {
                error!(
                    request_id = response.request_id,
                    error = %e,
                    "cannot store a response yet; it is kept in memory and written again until it is stored"
                );
                self.wake_housekeeping.notify_one();
            }
            Err(_) => return,
        }
        self.callers().waiters.wake(&response);
    }

    /// Gives up on an unanswered request whose deadline passed: DEADLINE_EXCEEDED saying why
    /// becomes its outcome (nothing changes if it has one).
    pub(crate) async fn expire(&self, request_id: &str) {
        let message = self.deadline_message(request_id);
        self.finish(Response::error(request_id, Code::DeadlineExceeded, message))
            .await;
    }

    pub(super) async fn lookup(&self, request_id: &str, owner: &Owner) -> Result<Lookup, Status> {
        let outbox = self.outbox.clone();
        let (id, owner) = (request_id.to_owned(), owner.clone());
        blocking(move || outbox.lookup(&id, &owner))
            .await?
            .map_err(|e| Status::data_loss(format!("the result of {request_id} cannot be read: {e}")))
    }

    /// A caller's own deadline passed. Its request expires with it unless other callers
    /// joined it with a later deadline than the request's (`first`: this call made it).
    pub(super) async fn give_up(
        &self,
        request_id: &str,
        app: &Owner,
        first: bool,
        timeout: Duration,
    ) -> Result<Bytes, Status> {
        let request_due = self.outbox.deadline_of(request_id).is_none_or(|d| d <= unix_ms_now());
        if !first && !request_due {
            let after = humantime_serde::re::humantime::format_duration(timeout);
            return Err(Status::deadline_exceeded(format!(
                "no response within {after}; request {request_id} is still pending (ask GetResult later)"
            )));
        }
        // Worded before the expiry, while the outbox still knows the request's story.
        let message = self.deadline_message(request_id);
        self.expire(request_id).await;
        // Whatever the outcome is now: ours, or an answer that beat us to it.
        match self.lookup(request_id, app).await? {
            Lookup::Done(result) => into_result(result),
            _ => Err(Status::deadline_exceeded(message)),
        }
    }

    /// Why `request_id` got no response, from what the outbox knows of it and the link now.
    fn deadline_message(&self, request_id: &str) -> String {
        let (timeout, sent) = self.outbox.expiry_facts(request_id).unwrap_or_default();
        deadline_message(timeout, sent, *self.connected.borrow())
    }
}

/// Why a request given `timeout` got no response: whether it was `sent`, and whether the link
/// is `up` now (a request never sent while the link is down most likely found it down).
fn deadline_message(timeout: Duration, sent: Sent, up: bool) -> String {
    let after = humantime_serde::re::humantime::format_duration(timeout);
    let why = match (sent, up) {
        (Sent::Never, false) => "the link to the gateway was down, the request was never sent",
        (Sent::Never, true) => "the deadline passed before the request could be sent (the link to the gateway is up)",
        (Sent::BeforeRestart, false) => {
            "the vehicle agent restarted and the link to the gateway did not come back in time"
        }
        (Sent::BeforeRestart, true) => {
            "the vehicle agent restarted and the deadline passed before the request could be sent again (the link to the gateway is up)"
        }
        (Sent::Yes, false) => "the link to the gateway went down after the request was sent",
        (Sent::Yes, true) => "the request was sent and the gateway did not answer (the link to the gateway is up)",
    };
    format!("no response within {after}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_messages_say_what_happened() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            deadline_message(ms, Sent::Never, true),
            "no response within 1ms: the deadline passed before the request could be sent (the link to the gateway is up)"
        );
        assert_eq!(
            deadline_message(ms, Sent::Never, false),
            "no response within 1ms: the link to the gateway was down, the request was never sent"
        );
        for sent in [Sent::Never, Sent::BeforeRestart, Sent::Yes] {
            let up = deadline_message(ms, sent, true);
            let down = deadline_message(ms, sent, false);
            assert!(up.contains("is up") && !up.contains("down"), "{up}");
            assert!(!down.contains("is up"), "{down}");
        }
    }
}
