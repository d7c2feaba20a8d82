//! Callers waiting for the response to a request, in memory only.
//!
//! The requests themselves live in the durable [`crate::outbox`]; this map only knows which
//! app calls to wake. Several calls may wait for one request id (an app retrying with the
//! same `x-request-id`), and a request may have no caller at all (loaded after a restart).

use std::collections::HashMap;

use tokio::sync::oneshot;

use proto::vehicle::v1::Response;

/// Callers waiting for responses, by request id.
#[derive(Debug, Default)]
pub struct Waiters {
    by_id: HashMap<String, Vec<(u64, oneshot::Sender<Response>)>>,
    next_token: u64,
}

/// Identifies one waiting caller, to forget it when it stops waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

impl Waiters {
    /// An empty map.
    pub fn new() -> Waiters {
        Waiters::default()
    }

    /// Registers a caller of `request_id`; the receiver gets the response.
    pub fn register(&mut self, request_id: &str) -> (Token, oneshot::Receiver<Response>) {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token;
        self.next_token += 1;
        self.by_id.entry(request_id.to_owned()).or_default().push((token, tx));
        (Token(token), rx)
    }

    /// Hands `response` to every caller of its request id; how many were still there.
    pub fn wake(&mut self, response: &Response) -> usize {
        let Some(callers) = self.by_id.remove(&response.request_id) else {
            return 0;
        };
        // A caller may have gone in the meantime; the response is stored for it anyway.
        callers
            .into_iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(_, tx)| tx.send(response.clone()).is_ok())
            .filter(|sent| *sent)
            .count()
    }

    /// Forgets one caller that stopped waiting.
    pub fn forget(&mut self, request_id: &str, token: Token) {
        if let Some(callers) = self.by_id.get_mut(request_id) {
            callers.retain(|(t, _)| *t != token.0);
            if callers.is_empty() {
                self.by_id.remove(request_id);
            }
        }
    }

    /// How many callers wait, over all requests.
    pub fn len(&self) -> usize {
        self.by_id.values().map(Vec::len).sum()
    }

    /// Whether no caller waits.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Drops every caller; they see their channel close.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::vehicle::v1::Code;

    #[test]
    fn every_caller_of_an_id_is_woken_once() {
        let mut w = Waiters::new();
        let (_, mut a1) = w.register("a");
        let (_, mut a2) = w.register("a");
        let (tb, mut b) = w.register("b");
        assert_eq!(w.len(), 3);
        assert_eq!(w.wake(&Response::error("a", Code::NotFound, "no lot")), 2);
        assert_eq!(a1.try_recv().unwrap().request_id, "a");
        assert_eq!(a2.try_recv().unwrap().request_id, "a");
        assert_eq!(w.wake(&Response::ok("a", vec![])), 0, "duplicates wake nobody");
        w.forget("b", tb);
        assert!(w.is_empty());
        assert!(matches!(b.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }

    #[test]
    fn clear_closes_callers() {
        let mut w = Waiters::new();
        let (_, mut a) = w.register("a");
        w.clear();
        assert!(matches!(a.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }
}
