//! What a store operation can fail with, the database named and its password redacted.

use std::time::Duration;

/// Why a store operation failed. Database URLs in messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend we support.
    #[error(
        "unsupported database URL {url:?}: expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB"
    )]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// The URL could not be parsed by the driver.
    #[error("invalid database URL {database}: {source}")]
    BadUrl {
        /// The URL, password redacted.
        database: String,
        /// The driver's complaint.
        source: sqlx::Error,
    },
    /// The database refused or failed the connection.
    #[error("cannot connect to database {database}: {source}")]
    Connect {
        /// The URL, password redacted.
        database: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The database did not answer in time.
    #[error("cannot connect to database {database}: no answer within {after:?}")]
    ConnectTimeout {
        /// The URL, password redacted.
        database: String,
        /// How long we waited.
        after: Duration,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate database {database}: {source}")]
    Migrate {
        /// The URL, password redacted.
        database: String,
        /// The migration error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database error while {op}: {source}")]
    Query {
        /// What the store was doing.
        op: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// [`Store::ledger_complete`](super::Store::ledger_complete) by a caller that no longer holds
    /// the claim: another attempt took it over after the lease ran out, it was released, or it
    /// was already completed or purged. Nothing was stored.
    #[error("idempotency key {idempotency_key:?} of {vin} is not held by {owner:?}; the response was not stored")]
    NotLedgerOwner {
        /// The car.
        vin: String,
        /// Its idempotency key.
        idempotency_key: String,
        /// The caller that tried to complete.
        owner: String,
    },
    /// [`Store::close_connection`](super::Store::close_connection) for an id that was never opened.
    #[error("no session with id {0}")]
    UnknownConnection(i64),
    /// Competing writers changed the same idempotency record too many times in a row.
    #[error("idempotency key {idempotency_key:?} of {vin} kept changing under concurrent claims; try again")]
    Contention {
        /// The car.
        vin: String,
        /// Its idempotency key.
        idempotency_key: String,
    },
    /// The transaction a write was part of did not commit, so the write did not happen.
    #[error("database error while committing: {0}")]
    Commit(String),
    /// The store is shutting down and takes no more writes.
    #[error("the store is closed (while {op})")]
    Closed {
        /// What the store was asked to do.
        op: &'static str,
    },
    /// A stored value is not what the schema promises.
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps a driver error raised while doing `op`.
    pub(super) fn query(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { op, source }
    }
}
