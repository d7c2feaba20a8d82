//! When a pending request goes out and when it expires: what to publish in a new MQTT
//! session, what a call may publish now, deadlines, and what to say of a request that got no
//! answer.

use std::time::Duration;

use proto::vehicle::v1::Request;

use super::{Outbox, Pending, Sent, timeout_ms};

impl Outbox {
    /// The request to publish now in MQTT session `epoch`, with `timeout_ms` recomputed,
    /// unless it was already published in that MQTT session, is unknown, is answered, or has
    /// no time left.
    pub fn prepare(&self, request_id: &str, epoch: u64, now_ms: u64) -> Option<Request> {
        let mut index = self.lock();
        let pending = index.pending.get_mut(request_id)?;
        prepare(pending, epoch, now_ms)
    }

    /// Every request to (re)publish in the new MQTT session `epoch`, oldest first. Those with
    /// no time left are skipped ([`Outbox::expired`] lists them), and so are those answered.
    pub fn due(&self, epoch: u64, now_ms: u64) -> Vec<Request> {
        let mut index = self.lock();
        let mut all: Vec<&mut Pending> = index.pending.values_mut().collect();
        all.sort_unstable_by_key(|p| p.seq);
        all.into_iter().filter_map(|p| prepare(p, epoch, now_ms)).collect()
    }

    /// The unanswered requests whose deadline has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<String> {
        let index = self.lock();
        let mut ids: Vec<(u64, String)> = index
            .pending
            .iter()
            .filter(|(_, p)| p.unanswered() && timeout_ms(p.entry.deadline_unix_ms, now_ms).is_none())
            .map(|(id, p)| (p.seq, id.clone()))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The earliest deadline of an unanswered request, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        let index = self.lock();
        let unanswered = index.pending.values().filter(|p| p.unanswered());
        unanswered.map(|p| p.entry.deadline_unix_ms).min()
    }

    /// The deadline of an unanswered request.
    pub fn deadline_of(&self, request_id: &str) -> Option<u64> {
        let index = self.lock();
        let pending = index.pending.get(request_id).filter(|p| p.unanswered())?;
        Some(pending.entry.deadline_unix_ms)
    }

    /// When [`Outbox::store_answers`] next has an answer to write, if any waits.
    pub fn next_retry(&self) -> Option<u64> {
        let index = self.lock();
        let waiting = index
            .pending
            .values()
            .filter_map(|p| p.answer.as_ref())
            .filter(|a| !a.storing);
        waiting.map(|a| a.retry_at_ms).min()
    }

    /// How many answers are held in memory because their result file is not written yet.
    pub fn unstored_answers(&self) -> usize {
        self.lock().pending.values().filter(|p| p.answer.is_some()).count()
    }

    /// For a pending request: the time it was given and whether it was sent, to tell an app
    /// why it got no response.
    pub fn expiry_facts(&self, request_id: &str) -> Option<(Duration, Sent)> {
        let index = self.lock();
        let p = index.pending.get(request_id)?;
        let given = p.entry.deadline_unix_ms.saturating_sub(p.entry.accepted_unix_ms);
        let sent = match (p.published_epoch, p.restored) {
            (0, false) => Sent::Never,
            (0, true) => Sent::BeforeRestart,
            _ => Sent::Yes,
        };
        Some((Duration::from_millis(given), sent))
    }
}

fn prepare(pending: &mut Pending, epoch: u64, now_ms: u64) -> Option<Request> {
    if pending.published_epoch >= epoch || !pending.unanswered() {
        return None;
    }
    let timeout_ms = timeout_ms(pending.entry.deadline_unix_ms, now_ms)?;
    pending.published_epoch = epoch;
    Some(Request {
        timeout_ms,
        ..pending.request().clone()
    })
}
