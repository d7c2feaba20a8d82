//! The interaction journal's writer: every layer records what a car did through a
//! [`Journal`] handle, which never blocks and never waits for the database; one task writes
//! the queued rows in batches.
//!
//! The queue is bounded (`journal.max_queued_rows`, counting the batch being written too): a
//! row beyond it is dropped and counted ([`JournalStats::dropped`]), with a warning at most once
//! a second, so a slow or dead database costs the request path nothing. A batch the database
//! refused is kept and written again with backoff (100 ms doubling to 5 s), so a short outage
//! loses nothing; new rows keep queueing behind it up to the bound. On shutdown
//! ([`Journal::close`]) the writer drains what is queued before the store closes, trying a
//! failing database for at most [`DRAIN_GIVE_UP`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::JournalConfig;
use crate::store::{JournalEntry, Store};

/// First pause before writing a refused batch again; doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between attempts at a refused batch.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// How long shutdown keeps trying a database that refuses the last rows before giving up.
pub const DRAIN_GIVE_UP: Duration = Duration::from_secs(5);
/// Least time between two warnings about dropped rows or a failing database (unix ms).
const WARN_EVERY_MS: i64 = 1000;

/// Counters of a [`Journal`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Rows handed to [`Journal::record`] (while enabled), dropped ones included.
    pub recorded: u64,
    /// Rows stored in the database.
    pub written: u64,
    /// Rows dropped because the queue was full (or the journal closed).
    pub dropped: u64,
    /// Rows waiting to be written, the batch being written included.
    pub queued: u64,
    /// Attempts at writing a batch that the database refused (each is tried again).
    pub failed_writes: u64,
}

/// A handle to the journal; cheap to clone. [`Journal::record`] never blocks.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    /// Bounded by `journal.max_queued_rows`, like `shared.queued`, which also counts the batch
    /// being written and is checked first, so a send never finds the channel full. Not in
    /// `shared`, which the writer holds: the writer ends once every handle is gone.
    tx: mpsc::Sender<JournalEntry>,
}

struct Shared {
    enabled: bool,
    record_payloads: bool,
    max_queued: u64,
    recorded: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
    /// Rows written so far; tests and shutdown wait on it.
    written: watch::Sender<u64>,
    /// Batch writes the database refused so far.
    failed_writes: watch::Sender<u64>,
    closed: AtomicBool,
    close_now: Notify,
    /// When rows were last reported dropped (unix ms).
    last_drop_warning: AtomicI64,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("enabled", &self.shared.enabled)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Journal {
    /// Starts the journal's writer on `store` with `config`'s bounds. A disabled journal starts
    /// no task and records nothing.
    pub fn spawn(store: Store, config: &JournalConfig) -> Journal {
        let (journal, rx) = Journal::new(config.enabled, config.record_payloads, config.max_queued_rows);
        if config.enabled {
            let writer = tokio::spawn(write_batches(
                journal.shared.clone(),
                rx,
                store,
                config.max_batch_rows.max(1),
                config.batch_delay,
            ));
            *journal.shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        }
        journal
    }

    /// A journal that records nothing (for routers and services built without one).
    pub fn disabled() -> Journal {
        Journal::new(false, false, 1).0
    }

    fn new(enabled: bool, record_payloads: bool, max_queued: usize) -> (Journal, mpsc::Receiver<JournalEntry>) {
        let max_queued = max_queued.max(1);
        let (tx, rx) = mpsc::channel(max_queued);
        let journal = Journal {
            shared: Arc::new(Shared {
                enabled,
                record_payloads,
                max_queued: max_queued as u64,
                recorded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                queued: AtomicU64::new(0),
                written: watch::Sender::new(0),
                failed_writes: watch::Sender::new(0),
                closed: AtomicBool::new(!enabled),
                close_now: Notify::new(),
                last_drop_warning: AtomicI64::new(i64::MIN),
                writer: std::sync::Mutex::new(None),
            }),
            tx,
        };
        (journal, rx)
    }

    /// Whether rows are recorded at all.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Whether request and response bodies go into request rows (`journal.record_payloads`).
    pub fn records_payloads(&self) -> bool {
        self.shared.record_payloads
    }

    /// Queues `entry` for writing, or drops and counts it if the queue is full. Never blocks,
    /// never waits for the database.
    pub fn record(&self, entry: JournalEntry) {
        let s = &self.shared;
        if !s.enabled {
            return;
        }
        s.recorded.fetch_add(1, Ordering::Relaxed);
        let room = !s.closed.load(Ordering::Acquire)
            && s.queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < s.max_queued).then_some(q + 1)
                })
                .is_ok();
        if !room || self.tx.try_send(entry).is_err() {
            if room {
                s.queued.fetch_sub(1, Ordering::AcqRel);
            }
            let dropped = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = crate::clock::now_ms();
            let last = s.last_drop_warning.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= WARN_EVERY_MS
                && s.last_drop_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn!(
                    dropped,
                    max_queued_rows = s.max_queued,
                    "journal queue full (the database is slow or down): rows dropped"
                );
            }
        }
    }

    /// The journal's counters.
    pub fn stats(&self) -> JournalStats {
        let s = &self.shared;
        JournalStats {
            recorded: s.recorded.load(Ordering::Relaxed),
            written: *s.written.borrow(),
            dropped: s.dropped.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Acquire),
            failed_writes: *s.failed_writes.borrow(),
        }
    }

    /// Waits until at least `rows` rows have been written in all.
    pub async fn written(&self, rows: u64) {
        let mut written = self.shared.written.subscribe();
        // The sender lives in `shared`, which `self` holds: the wait cannot fail.
        let _ = written.wait_for(|w| *w >= rows).await;
    }

    /// Waits until the database refused at least `attempts` batch writes in all.
    pub async fn failed_writes(&self, attempts: u64) {
        let mut failed = self.shared.failed_writes.subscribe();
        let _ = failed.wait_for(|f| *f >= attempts).await;
    }

    /// Waits until every row recorded before this call (and not dropped) is written.
    pub async fn flushed(&self) {
        let s = &self.shared;
        let target = s.recorded.load(Ordering::Relaxed) - s.dropped.load(Ordering::Relaxed);
        self.written(target).await;
    }

    /// Stops taking rows (later ones are dropped and counted), writes what is queued, and
    /// returns once the writer is done. Call before the store closes.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close_now.notify_one();
        let writer = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

/// The writer task: takes up to `max_batch` queued rows, writes them in one transaction,
/// keeps a refused batch and tries it again with backoff; on close, drains and ends.
async fn write_batches(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<JournalEntry>,
    store: Store,
    max_batch: usize,
    batch_delay: Duration,
) {
    let mut batch: Vec<JournalEntry> = Vec::with_capacity(max_batch);
    let mut pause = FIRST_RETRY_PAUSE;
    let mut closing_since: Option<tokio::time::Instant> = None;
    let mut last_failure_warning: Option<tokio::time::Instant> = None;
    loop {
        if batch.is_empty() {
            if closing_since.is_some() {
                // Closing: take what is left without waiting for more.
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return;
                }
            } else {
                tokio::select! {
                    got = rx.recv_many(&mut batch, max_batch) => if got == 0 { return },
                    _ = shared.close_now.notified() => {
                        closing_since = Some(tokio::time::Instant::now());
                        continue;
                    }
                }
                // A moment for more rows: at a few hundred requests a second, one transaction
                // (one fsync) for a batch of them instead of one each.
                let until = tokio::time::Instant::now() + batch_delay;
                while batch.len() < max_batch {
                    let room = max_batch - batch.len();
                    match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                        Ok(got) if got > 0 => {}
                        _ => break,
                    }
                }
            }
        }
        match store.journal_append(&batch).await {
            Ok(_) => {
                let n = batch.len() as u64;
                batch.clear();
                pause = FIRST_RETRY_PAUSE;
                shared.queued.fetch_sub(n, Ordering::AcqRel);
                shared.written.send_modify(|w| *w += n);
            }
            Err(e) => {
                shared.failed_writes.send_modify(|f| *f += 1);
                if let Some(since) = closing_since
                    && since.elapsed() >= DRAIN_GIVE_UP
                {
                    let lost = shared.queued.load(Ordering::Acquire);
                    warn!(error = %e, lost, "journal rows not written at shutdown: the database refuses them");
                    return;
                }
                let now = tokio::time::Instant::now();
                if last_failure_warning.is_none_or(|at| now - at >= Duration::from_millis(WARN_EVERY_MS as u64)) {
                    last_failure_warning = Some(now);
                    warn!(error = %e, rows = batch.len(), retry_in = ?pause, "journal batch not written; will retry");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.close_now.notified(), if closing_since.is_none() => {
                        closing_since = Some(tokio::time::Instant::now());
                    }
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }
}

/// Logs the journal's counters once it closed (for the shutdown log).
pub fn log_final_stats(journal: &Journal) {
    let s = journal.stats();
    if journal.is_enabled() {
        info!(
            recorded = s.recorded,
            written = s.written,
            dropped = s.dropped,
            lost = s.queued,
            "journal closed"
        );
    }
}
