//! The durable outbox: requests accepted from in-car apps, kept on disk until answered.
//!
//! A request is written to `state_dir/outbox/<request_id>.pb` before it is published or
//! acknowledged, so neither a link drop nor a crash nor a reboot loses it. Its outcome goes to
//! `state_dir/results/<request_id>.pb` *before* the outbox file is removed: after a crash
//! between the two, loading finds the result and drops the stale outbox file. Deadlines are
//! absolute wall-clock times (an `Instant` means nothing after a reboot).
//!
//! **The first answer is the outcome.** From the moment a request gets one (the gateway's
//! response, or DEADLINE_EXCEEDED) the outbox holds it in memory, so what the app is told is
//! what `lookup` shows and what ends up on disk. If the result file cannot be written (a full
//! disk), the answer stays in memory, the request is neither resent nor expired, and
//! [`Outbox::store_answers`] writes it again with backoff until it is stored. Should the agent
//! stop first, the request is still in the outbox: it is resent after the restart with the
//! same idempotency key and the gateway's ledger replays the same answer.
//!
//! **Owners.** Every request and result belongs to an [`Owner`], the app that made it; to any
//! other app its id looks unused (reading gives `Unknown`, reusing it NOT_FOUND).
//!
//! **Locking.** The index is behind a `Mutex` held for in-memory work only, never across a
//! disk write, sync or read. A write is reserved under the lock (its id marked busy, the
//! capacity counted), made without it, then published under it; a request with an id that is
//! busy waits for that write to settle (a `Condvar`), and [`Outbox::close`] waits for every
//! write in progress. Methods doing file IO block: async callers use `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message as _;
use tonic::Status;
use tracing::{info, warn};

use proto::vehicle::v1::{Code, Request, Response};

use crate::owner::Owner;
use crate::store::{self, Disk, StateFiles, is_valid_request_id};

/// Suffix of outbox and result files.
const SUFFIX: &str = ".pb";

/// The first retry of an answer that could not be written comes this soon ...
const ANSWER_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// ... and, doubling, never later than this.
const ANSWER_RETRY_MAX: Duration = Duration::from_secs(5);

/// One accepted request as stored in `outbox/<request_id>.pb`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxEntry {
    /// The request as published, but with `timeout_ms` 0: it is recomputed at every publish.
    #[prost(message, optional, tag = "1")]
    pub request: Option<Request>,
    /// When the car gives up, in wall-clock milliseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub deadline_unix_ms: u64,
    /// When the app's call was accepted, in wall-clock milliseconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub accepted_unix_ms: u64,
    /// The app that made it ([`Owner::as_str`]); empty: anonymous.
    #[prost(string, tag = "4")]
    pub owner: String,
}

/// The outcome of a request as stored in `results/<request_id>.pb`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredResult {
    /// The gateway's response, or DEADLINE_EXCEEDED written by the agent.
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
    /// The request's gRPC method, so the payload can be decoded later.
    #[prost(string, tag = "2")]
    pub method: String,
    /// When the answer came, in wall-clock milliseconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub completed_unix_ms: u64,
    /// The app that made the request ([`Owner::as_str`]); empty: anonymous.
    #[prost(string, tag = "4")]
    pub owner: String,
}

/// What became of a request handed to [`Outbox::submit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// New: on disk now, to be published.
    Accepted,
    /// The same request id is already waiting for its response.
    Pending,
    /// The same request id already has an outcome; nothing is sent.
    Done(StoredResult),
}

/// What the outbox knows of a request id, as its owner sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Never seen, its result expired, or another app's.
    Unknown,
    /// Waiting for its response.
    Pending,
    /// Finished (its outcome may still be on its way to the disk).
    Done(StoredResult),
}

/// Whether a pending request went out to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sent {
    /// Not since it was accepted.
    #[default]
    Never,
    /// Not since the agent restarted; perhaps before.
    BeforeRestart,
    /// Yes, since the agent started.
    Yes,
}

/// Accepted requests and the outcomes of finished ones, on disk under a state directory.
pub struct Outbox {
    outbox_dir: PathBuf,
    results_dir: PathBuf,
    capacity: usize,
    retention: Duration,
    files: Arc<dyn StateFiles>,
    index: Mutex<Index>,
    /// Signalled whenever a disk operation ends, for those waiting on a busy id and `close`.
    settled: Condvar,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("outbox_dir", &self.outbox_dir)
            .field("capacity", &self.capacity)
            .field("pending", &self.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Index {
    pending: HashMap<String, Pending>,
    /// Request id → who owns its result and when it came; the results stay on disk.
    results: HashMap<String, Kept>,
    /// Ids whose files are being written or removed: a new request with one waits.
    busy: HashSet<String>,
    /// Request files being written, counted against the capacity.
    reserved: usize,
    /// Disk operations under way; `close` waits until there are none.
    in_flight: usize,
    next_seq: u64,
    /// Set by [`Outbox::close`]: another agent may own the directory from now on.
    closed: bool,
}

struct Kept {
    completed_unix_ms: u64,
    owner: Owner,
}

struct Pending {
    entry: OutboxEntry,
    owner: Owner,
    /// Acceptance order, so requests are republished in the order the apps made them.
    seq: u64,
    /// The link epoch (one per subscribed MQTT session) it was last published in; 0 = never.
    published_epoch: u64,
    /// Loaded from disk at startup: it may have been sent before the restart.
    restored: bool,
    /// Its outcome, once it has one; it leaves `pending` when that is on disk.
    answer: Option<Answer>,
}

/// An outcome held in memory until its result file is written.
struct Answer {
    result: StoredResult,
    /// A write of it is under way.
    storing: bool,
    /// Writes that failed so far.
    failures: u32,
    /// When [`Outbox::store_answers`] tries again, in wall-clock milliseconds.
    retry_at_ms: u64,
}

impl Pending {
    fn request(&self) -> &Request {
        // Loading refuses entries without a request, so this is always set.
        self.entry.request.as_ref().expect("outbox entries hold a request")
    }

    /// Still waiting for an answer: publishable, and due to expire at its deadline.
    fn unanswered(&self) -> bool {
        self.answer.is_none()
    }
}

/// `timeout_ms` for a request published at `now_ms`: the milliseconds left, or `None` when
/// none is left (0 would mean "the gateway's default", not "expired").
pub fn timeout_ms(deadline_unix_ms: u64, now_ms: u64) -> Option<u32> {
    match deadline_unix_ms.saturating_sub(now_ms) {
        0 => None,
        left => Some(u32::try_from(left).unwrap_or(u32::MAX)),
    }
}

fn file_name(request_id: &str) -> String {
    format!("{request_id}{SUFFIX}")
}

/// How long to wait before writing an answer again after `failures` failed writes.
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    ANSWER_RETRY_INITIAL.saturating_mul(factor).min(ANSWER_RETRY_MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Outbox {
    /// Opens (creating if needed) `state_dir/outbox` and `state_dir/results` and loads them:
    /// corrupt files are removed with a warning, requests whose deadline passed while the
    /// agent was stopped become DEADLINE_EXCEEDED results, results older than `retention` go.
    pub fn open(state_dir: &Path, capacity: usize, retention: Duration, now_ms: u64) -> io::Result<Outbox> {
        Outbox::open_with(state_dir, capacity, retention, now_ms, Arc::new(Disk))
    }

    /// Like [`Outbox::open`], making its writes and removals through `files`.
    pub fn open_with(
        state_dir: &Path,
        capacity: usize,
        retention: Duration,
        now_ms: u64,
        files: Arc<dyn StateFiles>,
    ) -> io::Result<Outbox> {
        let outbox = Outbox {
            outbox_dir: state_dir.join("outbox"),
            results_dir: state_dir.join("results"),
            capacity,
            retention,
            files,
            index: Mutex::default(),
            settled: Condvar::new(),
        };
        store::create_dir(&outbox.outbox_dir)?;
        store::create_dir(&outbox.results_dir)?;
        let mut index = Index::default();
        for (name, path) in store::list_files(&outbox.results_dir)? {
            match read_result_file(&path, &name) {
                Ok((id, result)) => {
                    let kept = Kept {
                        completed_unix_ms: result.completed_unix_ms,
                        owner: Owner::from_stored(result.owner),
                    };
                    index.results.insert(id, kept);
                }
                Err(why) => outbox.discard(&outbox.results_dir, &name, &why),
            }
        }
        let mut loaded: Vec<(String, OutboxEntry)> = Vec::new();
        for (name, path) in store::list_files(&outbox.outbox_dir)? {
            match read_entry(&path, &name) {
                // Crashed after storing the result but before removing the request.
                Ok((id, _)) if index.results.contains_key(&id) => {
                    outbox.files.remove(&outbox.outbox_dir, &name)?;
                }
                Ok(found) => loaded.push(found),
                Err(why) => outbox.discard(&outbox.outbox_dir, &name, &why),
            }
        }
        loaded.sort_by(|a, b| (a.1.accepted_unix_ms, &a.0).cmp(&(b.1.accepted_unix_ms, &b.0)));
        for (id, entry) in loaded {
            let seq = index.next_seq;
            index.next_seq += 1;
            let pending = Pending {
                owner: Owner::from_stored(entry.owner.clone()),
                entry,
                seq,
                published_epoch: 0,
                restored: true,
                answer: None,
            };
            index.pending.insert(id, pending);
        }
        *outbox.lock() = index;
        let expired = outbox.expired(now_ms);
        for id in &expired {
            let message = "no response before the deadline: it passed while the vehicle agent was not running";
            if let Err(e) = outbox.complete(&Response::error(id.clone(), Code::DeadlineExceeded, message), now_ms) {
                warn!(request_id = id, error = %e, "cannot store an expiry yet; it is kept and written again");
            }
        }
        let purged = outbox.purge(now_ms)?;
        info!(pending = outbox.len(), expired = expired.len(), purged, "outbox loaded");
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic elsewhere must not take the outbox down with it; the index stays consistent
        // because each change is made whole under one hold of the lock.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts `request` (its `request_id` names it) for `owner` until `deadline_unix_ms`:
    /// written to disk before this returns. A known request id is not accepted twice: see
    /// [`Submitted`]. Waits while a write for the same id is under way.
    ///
    /// Errors: INVALID_ARGUMENT for a malformed id or an id used for another method,
    /// NOT_FOUND for an id of another owner's request, RESOURCE_EXHAUSTED when the outbox is
    /// full, UNAVAILABLE when the disk write failed or the outbox is closed.
    pub fn submit(
        &self,
        request: Request,
        owner: &Owner,
        deadline_unix_ms: u64,
        now_ms: u64,
    ) -> Result<Submitted, Status> {
        let id = request.request_id.clone();
        if !is_valid_request_id(&id) {
            return Err(Status::invalid_argument(format!(
                "request id {id:?} must be 1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
                store::MAX_REQUEST_ID_CHARS
            )));
        }
        let reused = |method: &str| {
            Status::invalid_argument(format!(
                "request id {id} was already used for {method}, not {}",
                request.method
            ))
        };
        // Says no more than that the id is taken: not by whom, nor what it holds.
        let not_yours = || {
            Status::not_found(format!(
                "request id {id} is not one of this app's requests; use another id"
            ))
        };
        let mut index = self.lock();
        loop {
            index = self
                .settled
                .wait_while(index, |index| index.busy.contains(&id))
                .unwrap_or_else(PoisonError::into_inner);
            if index.closed {
                return Err(Status::unavailable("the vehicle agent is shutting down"));
            }
            if let Some(pending) = index.pending.get(&id) {
                if pending.owner != *owner {
                    return Err(not_yours());
                }
                let method = &pending.request().method;
                if *method != request.method {
                    return Err(reused(method));
                }
                return Ok(match &pending.answer {
                    Some(answer) => Submitted::Done(answer.result.clone()),
                    None => Submitted::Pending,
                });
            }
            if let Some(kept) = index.results.get(&id) {
                if kept.owner != *owner {
                    return Err(not_yours());
                }
                let completed = kept.completed_unix_ms;
                drop(index);
                match self.read_result(&id) {
                    Ok(result) if result.method == request.method => return Ok(Submitted::Done(result)),
                    Ok(result) => return Err(reused(&result.method)),
                    // Lost: better to ask the partner again (same idempotency key) than to fail.
                    Err(why) => self.discard_result(&id, completed, &why),
                }
                index = self.lock();
                continue;
            }
            if index.pending.len() + index.reserved >= self.capacity {
                return Err(Status::resource_exhausted(format!(
                    "outbox full: {} requests waiting for the gateway",
                    index.pending.len() + index.reserved
                )));
            }
            break;
        }
        index.reserved += 1;
        let op = InFlight::begin(self, &mut index, Some(&id));
        drop(index);

        let entry = OutboxEntry {
            request: Some(Request {
                timeout_ms: 0,
                ..request
            }),
            deadline_unix_ms,
            accepted_unix_ms: now_ms,
            owner: owner.as_str().to_owned(),
        };
        let written = self
            .files
            .write(&self.outbox_dir, &file_name(&id), &entry.encode_to_vec());
        let mut index = self.lock();
        index.reserved -= 1;
        if let Err(e) = written {
            op.end(index);
            return Err(Status::unavailable(format!(
                "cannot store the request in {}: {e}; it was not accepted",
                self.outbox_dir.display()
            )));
        }
        let seq = index.next_seq;
        index.next_seq += 1;
        let pending = Pending {
            entry,
            owner: owner.clone(),
            seq,
            published_epoch: 0,
            restored: false,
            answer: None,
        };
        index.pending.insert(id, pending);
        op.end(index);
        Ok(Submitted::Accepted)
    }

    /// Removes results stored more than the retention period before `now_ms`; how many went.
    pub fn purge(&self, now_ms: u64) -> io::Result<usize> {
        let retention = millis(self.retention);
        let mut index = self.lock();
        if index.closed {
            return Ok(0);
        }
        let old: Vec<String> = index
            .results
            .iter()
            .filter(|&(_, kept)| now_ms.saturating_sub(kept.completed_unix_ms) >= retention)
            .map(|(id, _)| id.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut op = InFlight::begin(self, &mut index, None);
        for id in &old {
            index.results.remove(id);
            op = op.also_busy(&mut index, id);
        }
        drop(index);
        let mut failed = None;
        for id in &old {
            if let Err(e) = self.files.remove(&self.results_dir, &file_name(id)) {
                failed.get_or_insert(e);
            }
        }
        op.end(self.lock());
        failed.map_or(Ok(old.len()), Err)
    }

    /// Stops writing: later submissions are refused and answers ignored. Waits for the writes
    /// in progress, so the state directory can be handed to another agent afterwards.
    /// Answers not stored by then are lost from memory; their requests are resent next time.
    pub fn close(&self) {
        let mut index = self.lock();
        index.closed = true;
        let _idle = self
            .settled
            .wait_while(index, |index| index.in_flight > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// How many requests wait for a response, or for their answer to be stored.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many results are kept.
    pub fn results(&self) -> usize {
        self.lock().results.len()
    }

    /// At most this many requests wait at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn read_result(&self, request_id: &str) -> Result<StoredResult, String> {
        let name = file_name(request_id);
        read_result_file(&self.results_dir.join(&name), &name).map(|(_, result)| result)
    }

    /// Forgets and removes the unreadable result of `request_id`, unless it was purged or
    /// replaced since it was found (`completed` tells), or the outbox is closed.
    fn discard_result(&self, request_id: &str, completed: u64, why: &str) {
        let mut index = self.lock();
        let same = index.results.get(request_id).map(|k| k.completed_unix_ms) == Some(completed);
        if !same || index.closed {
            return;
        }
        index.results.remove(request_id);
        let op = InFlight::begin(self, &mut index, Some(request_id));
        drop(index);
        self.discard(&self.results_dir, &file_name(request_id), why);
        op.end(self.lock());
    }

    /// Removes a file that cannot be used, so it is reported once and not on every start.
    fn discard(&self, dir: &Path, name: &str, why: &str) {
        warn!(file = %dir.join(name).display(), reason = why, "removing an unreadable state file");
        if let Err(e) = self.files.remove(dir, name) {
            warn!(file = %dir.join(name).display(), error = %e, "cannot remove an unreadable state file");
        }
    }
}

mod answers;
mod files;
mod in_flight;
mod schedule;

use files::{read_entry, read_result_file};
use in_flight::InFlight;

#[cfg(test)]
mod tests;
