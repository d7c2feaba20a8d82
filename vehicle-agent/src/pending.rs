//! Requests waiting for their response, kept across link drops while the agent runs.
//!
//! Kept apart from the link so that a durable on-disk outbox can replace it later.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use proto::vehicle::v1::{Request, Response};

/// Requests sent (or still to send) to the gateway, by request id, each with its deadline.
#[derive(Debug, Default)]
pub struct PendingRequests {
    entries: HashMap<String, Entry>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    request: Request,
    deadline: Instant,
    /// Insertion order, so requests are republished in the order the apps made them.
    seq: u64,
    published: bool,
    reply: oneshot::Sender<Response>,
}

/// `timeout_ms` for a request published at `now`: the whole milliseconds left, or `None` once
/// less than one is left (0 would mean "the gateway's default", not "expired").
pub fn timeout_ms(deadline: Instant, now: Instant) -> Option<u32> {
    let left = deadline.saturating_duration_since(now);
    if left < Duration::from_millis(1) {
        return None;
    }
    Some(u32::try_from(left.as_millis()).unwrap_or(u32::MAX))
}

impl PendingRequests {
    /// An empty set.
    pub fn new() -> PendingRequests {
        PendingRequests::default()
    }

    /// Keeps `request` until it is answered, removed or past `deadline`; the receiver gets the response.
    pub fn insert(&mut self, request: Request, deadline: Instant) -> oneshot::Receiver<Response> {
        let (reply, rx) = oneshot::channel();
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = request.request_id.clone();
        self.entries.insert(
            id,
            Entry {
                request,
                deadline,
                seq,
                published: false,
                reply,
            },
        );
        rx
    }

    /// Hands `response` to its caller. False for an unknown id: never sent, already answered
    /// (a retried request may be answered twice) or given up on.
    pub fn complete(&mut self, response: Response) -> bool {
        match self.entries.remove(&response.request_id) {
            // The caller may have gone in the meantime; nobody else wants the response.
            Some(entry) => entry.reply.send(response).is_ok(),
            None => false,
        }
    }

    /// Forgets a request whose caller gave up.
    pub fn remove(&mut self, request_id: &str) -> bool {
        self.entries.remove(request_id).is_some()
    }

    /// The request ready to publish at `now`, with `timeout_ms` recomputed, and marks it
    /// published. `None` when unknown or too close to its deadline.
    pub fn prepare(&mut self, request_id: &str, now: Instant) -> Option<Request> {
        let entry = self.entries.get_mut(request_id)?;
        let timeout_ms = timeout_ms(entry.deadline, now)?;
        entry.published = true;
        Some(Request {
            timeout_ms,
            ..entry.request.clone()
        })
    }

    /// Every request still within its deadline, oldest first, prepared as by [`PendingRequests::prepare`].
    /// Expired ones are skipped; their callers remove them when they give up.
    pub fn due(&mut self, now: Instant) -> Vec<Request> {
        let mut ids: Vec<(u64, String)> = self.entries.iter().map(|(id, e)| (e.seq, id.clone())).collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|(_, id)| self.prepare(&id, now)).collect()
    }

    /// Whether the request was ever handed to the link for publishing.
    pub fn was_published(&self, request_id: &str) -> bool {
        self.entries.get(request_id).is_some_and(|e| e.published)
    }

    /// Whether the request is still waiting.
    pub fn contains(&self, request_id: &str) -> bool {
        self.entries.contains_key(request_id)
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every request; their callers see the reply channel close.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::vehicle::v1::Code;

    fn req(id: &str) -> Request {
        Request {
            request_id: id.into(),
            idempotency_key: format!("key-{id}"),
            method: "/parking.v1.ParkingPayment/StartSession".into(),
            timeout_ms: 0,
            payload: vec![1, 2, 3],
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn timeout_is_time_left_at_publish() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let _rx = p.insert(req("a"), t0 + 5000 * MS);
        assert!(!p.was_published("a"));
        assert_eq!(p.prepare("a", t0).unwrap().timeout_ms, 5000);
        assert!(p.was_published("a"));
        // Republished later: only what is left.
        let again = p.prepare("a", t0 + 3200 * MS).unwrap();
        assert_eq!(again.timeout_ms, 1800);
        assert_eq!(again.idempotency_key, "key-a");
        assert_eq!(again.payload, vec![1, 2, 3]);
        assert_eq!(p.prepare("a", t0 + 4999 * MS + Duration::from_micros(500)), None);
        assert_eq!(p.prepare("a", t0 + 6000 * MS), None);
        assert_eq!(p.prepare("nope", t0), None);
    }

    #[test]
    fn due_skips_expired_and_keeps_order() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let _a = p.insert(req("a"), t0 + 1000 * MS);
        let _b = p.insert(req("b"), t0 + 100 * MS);
        let _c = p.insert(req("c"), t0 + 3000 * MS);
        let due = p.due(t0 + 500 * MS);
        let got: Vec<(&str, u32)> = due.iter().map(|r| (r.request_id.as_str(), r.timeout_ms)).collect();
        assert_eq!(got, vec![("a", 500), ("c", 2500)]);
        assert!(!p.was_published("b"));
        assert_eq!(p.len(), 3, "expired requests stay until their caller removes them");
        assert!(p.due(t0 + 3000 * MS).is_empty());
    }

    #[test]
    fn complete_answers_once() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let mut rx = p.insert(req("a"), t0 + 1000 * MS);
        assert!(!p.complete(Response::ok("other", vec![])));
        assert!(p.complete(Response::error("a", Code::NotFound, "no lot")));
        let got = rx.try_recv().unwrap();
        assert_eq!(got.into_result().unwrap_err().code(), tonic::Code::NotFound);
        // The duplicate answer to a retried request is ignored.
        assert!(!p.complete(Response::ok("a", vec![])));
        assert!(p.is_empty());
    }

    #[test]
    fn remove_and_clear_close_the_caller() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let mut a = p.insert(req("a"), t0 + 1000 * MS);
        let mut b = p.insert(req("b"), t0 + 1000 * MS);
        assert!(p.remove("a"));
        assert!(!p.remove("a"));
        assert!(a.try_recv().is_err());
        assert!(p.contains("b"));
        p.clear();
        assert!(matches!(b.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert!(p.is_empty());
    }

    #[test]
    fn huge_deadlines_saturate() {
        let t0 = Instant::now();
        assert_eq!(timeout_ms(t0 + Duration::from_secs(100 * 86_400), t0), Some(u32::MAX));
    }
}
