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

use std::any::Any;
use std::collections::VecDeque;

use futures::future::BoxFuture;
use sqlx::{SqliteConnection, SqlitePool};
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
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing ran: tell every waiting write (the database is gone or locked).
            let message = e.to_string();
            for job in pending.drain(..) {
                let _ = job.reply.send(Err(StoreError::Commit(message.clone())));
            }
            return;
        }
    };
    let mut done: Vec<(oneshot::Sender<Outcome>, Outcome)> = Vec::with_capacity(pending.len().min(MAX_BATCH));
    while done.len() < MAX_BATCH {
        let Some(job) = pending.pop_front() else { break };
        let outcome = (job.work)(&mut tx).await;
        let database_error = matches!(outcome, Err(StoreError::Query { .. }));
        done.push((job.reply, outcome));
        if database_error {
            break;
        }
    }
    match tx.commit().await {
        Ok(()) => {
            for (reply, outcome) in done {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (reply, outcome) in done {
                // A write that failed keeps its own error; the others were rolled back.
                let outcome = match outcome {
                    Err(own) => Err(own),
                    Ok(_) => Err(StoreError::Commit(message.clone())),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}
