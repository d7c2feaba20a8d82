//! Group commit for SQLite: every write of this process goes through one task that runs
//! whatever writes are queued in one transaction (`BEGIN IMMEDIATE … COMMIT`), so a burst of
//! N writes costs one fsync instead of N, and no write waits for another process-local one to
//! take SQLite's single write lock.
//!
//! A write is an async closure over the transaction's connection. Its result is handed back
//! only after the transaction committed, so a caller never acts on a write that could still
//! be rolled back. If a write fails with a database error the batch stops there: what ran
//! before it is committed (or, if the error took the transaction down, fails with it), and
//! the writes after it go into the next transaction.
//!
//! A transaction that could not be committed (a full disk: SQLite may have rolled it back by
//! itself, or left it open) takes its connection with it: the connection is closed rather
//! than returned to the pool with a transaction state sqlx no longer knows, so the next batch
//! starts on a fresh connection and the store recovers by itself once there is room again.

use std::any::Any;
use std::collections::VecDeque;

use futures::future::BoxFuture;
use sqlx::{Connection as _, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Most writes in one transaction: bounds the latency of the last one.
const MAX_BATCH: usize = 512;
/// Writes queued before callers wait for room.
const QUEUE: usize = 4096;

type Outcome = Result<Box<dyn Any + Send>, StoreError>;
type Work = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Outcome> + Send>;

struct Job {
    work: Work,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer over `pool`.
    pub(crate) fn spawn(pool: SqlitePool) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Writer { tx }
    }

    /// Runs `write` in the next transaction and returns its result once that committed.
    pub(crate) async fn write<T, F>(&self, op: &'static str, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            Box::pin(async move { write(conn).await.map(|v| Box::new(v) as Box<dyn Any + Send>) })
        });
        self.tx
            .send(Job { work, reply })
            .await
            .map_err(|_| StoreError::Closed { op })?;
        let value = answer.await.map_err(|_| StoreError::Closed { op })??;
        Ok(*value
            .downcast::<T>()
            .expect("a write's result has the type it was given"))
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Job>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(job) => pending.push_back(job),
                None => return,
            }
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        commit_batch(&pool, &mut pending).await;
    }
}

/// Runs jobs from the front of `pending` in one transaction and answers them; jobs after one
/// that failed with a database error stay in `pending` for the next transaction.
async fn commit_batch(pool: &SqlitePool, pending: &mut VecDeque<Job>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            // Nothing ran: tell every waiting write (the database is gone or locked).
            let message = e.to_string();
            for job in pending.drain(..) {
                let _ = job.reply.send(Err(StoreError::Commit(message.clone())));
            }
            return;
        }
    };
    let (done, committed) = run_transaction(&mut conn, pending).await;
    if let Err(message) = &committed {
        // Its transaction state is unknown now: a fresh connection serves the next batch.
        conn.close_on_drop();
        if done.is_empty() {
            for job in pending.drain(..) {
                let _ = job.reply.send(Err(StoreError::Commit(message.clone())));
            }
        }
    }
    for (reply, outcome) in done {
        let outcome = match (&committed, outcome) {
            (Ok(()), outcome) => outcome,
            // A write that failed keeps its own error; the others were rolled back.
            (Err(_), Err(own)) => Err(own),
            (Err(message), Ok(_)) => Err(StoreError::Commit(message.clone())),
        };
        let _ = reply.send(outcome);
    }
}

/// Runs jobs from the front of `pending` in one transaction on `conn`; returns them with
/// their outcomes, and whether the transaction began and committed.
async fn run_transaction(
    conn: &mut SqliteConnection,
    pending: &mut VecDeque<Job>,
) -> (Vec<(oneshot::Sender<Outcome>, Outcome)>, Result<(), String>) {
    let mut done: Vec<(oneshot::Sender<Outcome>, Outcome)> = Vec::with_capacity(pending.len().min(MAX_BATCH));
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return (done, Err(e.to_string())),
    };
    while done.len() < MAX_BATCH {
        let Some(job) = pending.pop_front() else { break };
        let outcome = (job.work)(&mut tx).await;
        let database_error = matches!(outcome, Err(StoreError::Query { .. }));
        done.push((job.reply, outcome));
        if database_error {
            break;
        }
    }
    let committed = tx.commit().await.map_err(|e| e.to_string());
    (done, committed)
}
