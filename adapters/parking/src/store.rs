//! The adapter's database: one SQLite file, opened through sqlx, with the schema in
//! `adapters/parking/migrations/` applied at startup.
//!
//! Why these settings, for a partner adapting them:
//!
//! - **WAL** lets readers (GetReceipt, the outbox publisher) run while a write commits.
//! - **`synchronous = FULL`**: a commit is on disk before the call is answered, so an
//!   acknowledged charge survives kill -9 and power loss alike.
//! - **`BEGIN IMMEDIATE`** for every transaction that writes ([`Database::write`]): it takes
//!   SQLite's write lock at the start, so two transactions deciding on the same session run
//!   one after the other instead of both reading "not charged yet" and one failing at commit.
//!   (On PostgreSQL, the same role is played by the idempotency key's primary key and row
//!   locks; see `idempotency.rs`.)
//! - sqlx runs SQLite on its own worker threads: nothing here blocks the async runtime, and
//!   no lock of ours is held while the disk is written.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};
use tonic::Status;

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a pooled connection before answering UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool: readers run in parallel under WAL; writers queue for the lock.
const MAX_CONNECTIONS: u32 = 4;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A write transaction; dropping it without `commit` rolls everything back.
pub(crate) type WriteTx = Transaction<'static, Sqlite>;

/// The adapter's SQLite database. Cheap to clone; clones share one pool.
#[derive(Debug, Clone)]
pub(crate) struct Database {
    pool: SqlitePool,
}

impl Database {
    /// Opens (creating if missing) the database file at `path` and applies the migrations.
    pub(crate) async fn open(path: &Path) -> anyhow::Result<Database> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        MIGRATIONS
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the database {}", path.display()))?;
        Ok(Database { pool })
    }

    /// Starts a transaction that will write, holding SQLite's write lock from its start.
    pub(crate) async fn write(&self) -> Result<WriteTx, Status> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(unavailable)
    }

    /// The pool, for reads that need no transaction.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for the connections in use to be returned, then closes them.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Commits `tx`; a failed commit changed nothing, so the caller may retry.
pub(crate) async fn commit(tx: WriteTx) -> Result<(), Status> {
    tx.commit().await.map_err(unavailable)
}

/// A database failure as the caller sees it: UNAVAILABLE (nothing was changed, retrying with
/// the same idempotency key is safe). The details go to the log, not to the car.
pub(crate) fn unavailable(error: sqlx::Error) -> Status {
    tracing::error!(%error, "database error");
    Status::unavailable("the parking database is unavailable; retry with the same idempotency key")
}
