//! Answers: storing a request's outcome (and keeping it in memory, written again, while the
//! disk refuses it), and looking an outcome up for its owner.

use std::io;

use proto::vehicle::v1::Response;

use super::*;

impl Outbox {
    /// Makes `response` the outcome of its request, if the request is pending and has none
    /// yet, and stores it: result file first, then the request's file removed.
    ///
    /// `Ok(true)`: it is the outcome and on disk. `Ok(false)`: ignored, the request is
    /// unknown, already answered (the first answer stands) or the outbox closed. `Err`: it is
    /// the outcome but could not be written; it is kept in memory (lookups show it) and
    /// [`Outbox::store_answers`] writes it later.
    pub fn complete(&self, response: &Response, now_ms: u64) -> io::Result<bool> {
        let id = response.request_id.as_str();
        let mut index = self.lock();
        if index.closed {
            return Ok(false);
        }
        let Some(pending) = index.pending.get_mut(id).filter(|p| p.unanswered()) else {
            return Ok(false);
        };
        let result = StoredResult {
            response: Some(response.clone()),
            method: pending.request().method.clone(),
            completed_unix_ms: now_ms,
            owner: pending.entry.owner.clone(),
        };
        pending.answer = Some(Answer {
            result: result.clone(),
            storing: true,
            failures: 0,
            retry_at_ms: now_ms,
        });
        let op = InFlight::begin(self, &mut index, None);
        drop(index);
        self.store(op, id, &result, now_ms).map(|()| true)
    }

    /// Writes every answer held in memory whose retry time has come (see
    /// [`Outbox::complete`]); the outcome of each attempt, by request id.
    pub fn store_answers(&self, now_ms: u64) -> Vec<(String, io::Result<()>)> {
        let mut index = self.lock();
        if index.closed {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (id, pending) in &mut index.pending {
            if let Some(answer) = pending
                .answer
                .as_mut()
                .filter(|a| !a.storing && a.retry_at_ms <= now_ms)
            {
                answer.storing = true;
                due.push((id.clone(), answer.result.clone()));
            }
        }
        let ops: Vec<InFlight<'_>> = due.iter().map(|_| InFlight::begin(self, &mut index, None)).collect();
        drop(index);
        due.into_iter()
            .zip(ops)
            .map(|((id, result), op)| {
                let stored = self.store(op, &id, &result, now_ms);
                (id, stored)
            })
            .collect()
    }

    /// Writes `result`, the answer held for pending request `id`; on success moves it from
    /// `pending` to `results` and removes the request's file, else schedules a retry.
    fn store(&self, op: InFlight<'_>, id: &str, result: &StoredResult, now_ms: u64) -> io::Result<()> {
        let name = file_name(id);
        let written = self.files.write(&self.results_dir, &name, &result.encode_to_vec());
        let mut index = self.lock();
        if let Err(e) = written {
            if let Some(answer) = index.pending.get_mut(id).and_then(|p| p.answer.as_mut()) {
                answer.storing = false;
                answer.failures = answer.failures.saturating_add(1);
                answer.retry_at_ms = now_ms.saturating_add(millis(retry_delay(answer.failures)));
            }
            op.end(index);
            return Err(e);
        }
        index.pending.remove(id);
        let kept = Kept {
            completed_unix_ms: result.completed_unix_ms,
            owner: Owner::from_stored(result.owner.clone()),
        };
        index.results.insert(id.to_owned(), kept);
        // Until the request's file is gone, a new request with this id must not write one.
        let op = op.also_busy(&mut index, id);
        drop(index);
        // The result is durable: if this removal is lost, loading removes the file instead.
        if let Err(e) = self.files.remove(&self.outbox_dir, &name) {
            warn!(request_id = id, error = %e, "cannot remove an answered request's file; the next start will");
        }
        op.end(self.lock());
        Ok(())
    }

    /// What `owner` may know of `request_id`: another owner's request is `Unknown`. Reads
    /// the result from disk, or from memory while it waits to be written. A result file that
    /// cannot be read is removed and reported as `InvalidData` once.
    pub fn lookup(&self, request_id: &str, owner: &Owner) -> io::Result<Lookup> {
        let index = self.lock();
        if let Some(pending) = index.pending.get(request_id) {
            if pending.owner != *owner {
                return Ok(Lookup::Unknown);
            }
            return Ok(match &pending.answer {
                Some(answer) => Lookup::Done(answer.result.clone()),
                None => Lookup::Pending,
            });
        }
        let Some(kept) = index.results.get(request_id).filter(|k| k.owner == *owner) else {
            return Ok(Lookup::Unknown);
        };
        let completed = kept.completed_unix_ms;
        drop(index);
        match self.read_result(request_id) {
            Ok(result) => Ok(Lookup::Done(result)),
            Err(why) => {
                let purged = self.lock().results.get(request_id).map(|k| k.completed_unix_ms) != Some(completed);
                if purged {
                    return Ok(Lookup::Unknown);
                }
                self.discard_result(request_id, completed, &why);
                Err(io::Error::new(io::ErrorKind::InvalidData, why))
            }
        }
    }
}
