//! The durable outbox: requests accepted from in-car apps, kept on disk until answered.
//!
//! A request is written to `state_dir/outbox/<request_id>.pb` before it is published or
//! acknowledged, so neither a link drop nor a crash nor a reboot loses it. Its outcome goes to
//! `state_dir/results/<request_id>.pb` *before* the outbox file is removed: after a crash
//! between the two, loading finds the result and drops the stale outbox file. Deadlines are
//! absolute wall-clock times (an `Instant` means nothing after a reboot).
//!
//! Every method does blocking file IO under one lock; async callers use `spawn_blocking`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message as _;
use tonic::Status;
use tracing::{info, warn};

use proto::vehicle::v1::{Code, Request, Response};

use crate::store::{self, is_valid_request_id};

/// Suffix of outbox and result files.
const SUFFIX: &str = ".pb";

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
    /// When the outcome was stored, in wall-clock milliseconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub completed_unix_ms: u64,
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

/// What the outbox knows of a request id.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Never seen, or its result expired.
    Unknown,
    /// Waiting for its response.
    Pending,
    /// Finished.
    Done(StoredResult),
}

/// Accepted requests and the outcomes of finished ones, on disk under a state directory.
#[derive(Debug)]
pub struct Outbox {
    outbox_dir: PathBuf,
    results_dir: PathBuf,
    capacity: usize,
    retention: Duration,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    pending: HashMap<String, Pending>,
    /// Request id → when its result was stored; the results themselves stay on disk.
    results: HashMap<String, u64>,
    next_seq: u64,
    /// Set by [`Outbox::close`]: another agent may own the directory from now on.
    closed: bool,
}

#[derive(Debug)]
struct Pending {
    entry: OutboxEntry,
    /// Acceptance order, so requests are republished in the order the apps made them.
    seq: u64,
    /// The link epoch (one per subscribed MQTT session) it was last published in; 0 = never.
    published_epoch: u64,
    /// Loaded from disk at startup: it may have been sent before the restart.
    restored: bool,
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

impl Pending {
    fn request(&self) -> &Request {
        // Loading refuses entries without a request, so this is always set.
        self.entry.request.as_ref().expect("outbox entries hold a request")
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

impl Outbox {
    /// Opens (creating if needed) `state_dir/outbox` and `state_dir/results` and loads them:
    /// corrupt files are removed with a warning, requests whose deadline passed while the
    /// agent was stopped become DEADLINE_EXCEEDED results, results older than `retention` go.
    pub fn open(state_dir: &Path, capacity: usize, retention: Duration, now_ms: u64) -> io::Result<Outbox> {
        let outbox = Outbox {
            outbox_dir: state_dir.join("outbox"),
            results_dir: state_dir.join("results"),
            capacity,
            retention,
            index: Mutex::default(),
        };
        store::create_dir(&outbox.outbox_dir)?;
        store::create_dir(&outbox.results_dir)?;
        let mut index = Index::default();
        for (name, path) in store::list_files(&outbox.results_dir)? {
            match read_result(&path, &name) {
                Ok((id, result)) => {
                    index.results.insert(id, result.completed_unix_ms);
                }
                Err(why) => discard(&outbox.results_dir, &name, &why),
            }
        }
        let mut loaded: Vec<(String, OutboxEntry)> = Vec::new();
        for (name, path) in store::list_files(&outbox.outbox_dir)? {
            match read_entry(&path, &name) {
                // Crashed after storing the result but before removing the request.
                Ok((id, _)) if index.results.contains_key(&id) => {
                    store::remove_durable(&outbox.outbox_dir, &name)?;
                }
                Ok(found) => loaded.push(found),
                Err(why) => discard(&outbox.outbox_dir, &name, &why),
            }
        }
        loaded.sort_by(|a, b| (a.1.accepted_unix_ms, &a.0).cmp(&(b.1.accepted_unix_ms, &b.0)));
        for (id, entry) in loaded {
            let seq = index.next_seq;
            index.next_seq += 1;
            let pending = Pending {
                entry,
                seq,
                published_epoch: 0,
                restored: true,
            };
            index.pending.insert(id, pending);
        }
        *outbox.index.lock().unwrap_or_else(PoisonError::into_inner) = index;
        let expired = outbox.expired(now_ms);
        for id in &expired {
            let message = "no response before the deadline: it passed while the vehicle agent was not running";
            outbox.complete(&Response::error(id.clone(), Code::DeadlineExceeded, message), now_ms)?;
        }
        let purged = outbox.purge(now_ms)?;
        info!(pending = outbox.len(), expired = expired.len(), purged, "outbox loaded");
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic elsewhere must not take the outbox down with it; the index stays consistent
        // because every change is made after the disk operation it mirrors.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts `request` (its `request_id` names it) until `deadline_unix_ms`: written to disk
    /// before this returns. A known request id is not accepted twice: see [`Submitted`].
    ///
    /// Errors: INVALID_ARGUMENT for a malformed id or an id used for another method,
    /// RESOURCE_EXHAUSTED when the outbox is full, UNAVAILABLE when the disk write failed.
    pub fn submit(&self, request: Request, deadline_unix_ms: u64, now_ms: u64) -> Result<Submitted, Status> {
        let id = request.request_id.clone();
        if !is_valid_request_id(&id) {
            return Err(Status::invalid_argument(format!(
                "request id {id:?} must be 1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
                store::MAX_REQUEST_ID_CHARS
            )));
        }
        let mut index = self.lock();
        if index.closed {
            return Err(Status::unavailable("the vehicle agent is shutting down"));
        }
        let reused = |method: &str| {
            Status::invalid_argument(format!(
                "request id {id} was already used for {method}, not {}",
                request.method
            ))
        };
        if let Some(pending) = index.pending.get(&id) {
            let method = &pending.request().method;
            return if *method == request.method {
                Ok(Submitted::Pending)
            } else {
                Err(reused(method))
            };
        }
        if index.results.contains_key(&id) {
            match read_result(&self.results_dir.join(file_name(&id)), &file_name(&id)) {
                Ok((_, result)) if result.method == request.method => return Ok(Submitted::Done(result)),
                Ok((_, result)) => return Err(reused(&result.method)),
                // Lost: better to ask the partner again (same idempotency key) than to fail.
                Err(why) => {
                    index.results.remove(&id);
                    discard(&self.results_dir, &file_name(&id), &why);
                }
            }
        }
        if index.pending.len() >= self.capacity {
            return Err(Status::resource_exhausted(format!(
                "outbox full: {} requests waiting for the gateway",
                index.pending.len()
            )));
        }
        let entry = OutboxEntry {
            request: Some(Request {
                timeout_ms: 0,
                ..request
            }),
            deadline_unix_ms,
            accepted_unix_ms: now_ms,
        };
        store::write_atomic(&self.outbox_dir, &file_name(&id), &entry.encode_to_vec()).map_err(|e| {
            Status::unavailable(format!(
                "cannot store the request in {}: {e}; it was not accepted",
                self.outbox_dir.display()
            ))
        })?;
        let seq = index.next_seq;
        index.next_seq += 1;
        let pending = Pending {
            entry,
            seq,
            published_epoch: 0,
            restored: false,
        };
        index.pending.insert(id, pending);
        Ok(Submitted::Accepted)
    }

    /// Stores `response` as the outcome of its request, then removes the request from the
    /// outbox. False (and nothing written) if the request is not pending: a duplicate or
    /// late answer. On an error the request stays pending.
    pub fn complete(&self, response: &Response, now_ms: u64) -> io::Result<bool> {
        let mut index = self.lock();
        let id = response.request_id.as_str();
        let Some(pending) = index.pending.get(id).filter(|_| !index.closed) else {
            return Ok(false);
        };
        let result = StoredResult {
            response: Some(response.clone()),
            method: pending.request().method.clone(),
            completed_unix_ms: now_ms,
        };
        let name = file_name(id);
        store::write_atomic(&self.results_dir, &name, &result.encode_to_vec())?;
        index.results.insert(id.to_owned(), now_ms);
        index.pending.remove(id);
        // The result is durable: if this removal is lost, loading removes the file instead.
        store::remove_durable(&self.outbox_dir, &name)?;
        Ok(true)
    }

    /// What is known of `request_id`; reads the result from disk.
    /// A result file that cannot be read is removed and reported as `InvalidData` once.
    pub fn lookup(&self, request_id: &str) -> io::Result<Lookup> {
        let mut index = self.lock();
        if index.pending.contains_key(request_id) {
            return Ok(Lookup::Pending);
        }
        if !index.results.contains_key(request_id) {
            return Ok(Lookup::Unknown);
        }
        let name = file_name(request_id);
        match read_result(&self.results_dir.join(&name), &name) {
            Ok((_, result)) => Ok(Lookup::Done(result)),
            Err(why) => {
                index.results.remove(request_id);
                discard(&self.results_dir, &name, &why);
                Err(io::Error::new(io::ErrorKind::InvalidData, why))
            }
        }
    }

    /// The request to publish now in MQTT session `epoch`, with `timeout_ms` recomputed, unless
    /// it was already published in that MQTT session, is unknown, or has no time left.
    pub fn prepare(&self, request_id: &str, epoch: u64, now_ms: u64) -> Option<Request> {
        let mut index = self.lock();
        let pending = index.pending.get_mut(request_id)?;
        prepare(pending, epoch, now_ms)
    }

    /// Every request to (re)publish in the new MQTT session `epoch`, oldest first. Those with
    /// no time left are skipped: [`Outbox::expired`] lists them.
    pub fn due(&self, epoch: u64, now_ms: u64) -> Vec<Request> {
        let mut index = self.lock();
        let mut all: Vec<&mut Pending> = index.pending.values_mut().collect();
        all.sort_unstable_by_key(|p| p.seq);
        all.into_iter().filter_map(|p| prepare(p, epoch, now_ms)).collect()
    }

    /// The pending requests whose deadline has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<String> {
        let index = self.lock();
        let mut ids: Vec<(u64, String)> = index
            .pending
            .iter()
            .filter(|(_, p)| timeout_ms(p.entry.deadline_unix_ms, now_ms).is_none())
            .map(|(id, p)| (p.seq, id.clone()))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The earliest deadline of a pending request, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.lock().pending.values().map(|p| p.entry.deadline_unix_ms).min()
    }

    /// The deadline of a pending request.
    pub fn deadline_of(&self, request_id: &str) -> Option<u64> {
        self.lock().pending.get(request_id).map(|p| p.entry.deadline_unix_ms)
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

    /// Removes results stored more than the retention period before `now_ms`; how many went.
    pub fn purge(&self, now_ms: u64) -> io::Result<usize> {
        let mut index = self.lock();
        let retention = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        let old: Vec<String> = index
            .results
            .iter()
            .filter(|&(_, &at)| now_ms.saturating_sub(at) >= retention)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            store::remove_durable(&self.results_dir, &file_name(id))?;
            index.results.remove(id);
        }
        Ok(old.len())
    }

    /// Stops writing: later submissions are refused and answers ignored. Waits for a write
    /// in progress, so the state directory can be handed to another agent afterwards.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// How many requests wait for a response.
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
}

fn prepare(pending: &mut Pending, epoch: u64, now_ms: u64) -> Option<Request> {
    if pending.published_epoch >= epoch {
        return None;
    }
    let timeout_ms = timeout_ms(pending.entry.deadline_unix_ms, now_ms)?;
    pending.published_epoch = epoch;
    Some(Request {
        timeout_ms,
        ..pending.request().clone()
    })
}

/// The request id a file is named for, if it is one of ours.
fn id_of(name: &str) -> Result<&str, String> {
    name.strip_suffix(SUFFIX)
        .filter(|id| is_valid_request_id(id))
        .ok_or_else(|| "not named <request id>.pb".to_owned())
}

fn read_entry(path: &Path, name: &str) -> Result<(String, OutboxEntry), String> {
    let id = id_of(name)?;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let entry = OutboxEntry::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    match &entry.request {
        Some(r) if r.request_id == id && !r.method.is_empty() => Ok((id.to_owned(), entry)),
        _ => Err("it does not hold the request its name says".to_owned()),
    }
}

fn read_result(path: &Path, name: &str) -> Result<(String, StoredResult), String> {
    let id = id_of(name)?;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let result = StoredResult::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    match &result.response {
        Some(r) if r.request_id == id => Ok((id.to_owned(), result)),
        _ => Err("it does not hold the response its name says".to_owned()),
    }
}

/// Removes a file that cannot be used, so it is reported once and not on every start.
fn discard(dir: &Path, name: &str, why: &str) {
    warn!(file = %dir.join(name).display(), reason = why, "removing an unreadable state file");
    if let Err(e) = store::remove_durable(dir, name) {
        warn!(file = %dir.join(name).display(), error = %e, "cannot remove an unreadable state file");
    }
}
