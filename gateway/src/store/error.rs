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
    /// No customer has this id (gRPC NOT_FOUND).
    #[error("no customer {0}")]
    UnknownCustomer(String),
    /// The link to unlink does not exist, or is no longer current (gRPC NOT_FOUND).
    #[error("customer {customer} has no current link to {what}")]
    UnknownLink {
        /// The customer.
        customer: String,
        /// The vehicle (`vehicle <VIN>`) or identity (`<provider> identity <subject>`).
        what: String,
    },
    /// The social identity is linked to another customer already (gRPC ALREADY_EXISTS).
    #[error("{provider} identity {subject:?} is already linked to customer {customer}; unlink it there first")]
    IdentityTaken {
        /// The identity's provider.
        provider: String,
        /// The provider's id of the person.
        subject: String,
        /// The customer it is linked to.
        customer: String,
    },
    /// The vehicle is linked to this customer already, in another role (gRPC ALREADY_EXISTS).
    #[error("vehicle {vin} is already linked to customer {customer} as {role}; unlink it first to change the role")]
    AlreadyLinked {
        /// The vehicle.
        vin: String,
        /// The customer.
        customer: String,
        /// The role it has now (`owner`, `driver`).
        role: &'static str,
    },
    /// The vehicle has a current owner already (gRPC FAILED_PRECONDITION).
    #[error("vehicle {vin} already has an owner, customer {owner}; unlink that owner first")]
    VehicleHasOwner {
        /// The vehicle.
        vin: String,
        /// Its current owner.
        owner: String,
    },
    /// An argument is out of its bounds or malformed (gRPC INVALID_ARGUMENT).
    #[error("invalid {what}: {problem}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl StoreError {
    /// The gRPC status code a caller answers with for this error: NOT_FOUND, ALREADY_EXISTS,
    /// FAILED_PRECONDITION and INVALID_ARGUMENT for the customer and journal errors above,
    /// UNAVAILABLE for a database that cannot be reached or failed, INTERNAL for corrupt data.
    pub fn code(&self) -> tonic::Code {
        match self {
            StoreError::UnknownCustomer(_) | StoreError::UnknownLink { .. } | StoreError::UnknownConnection(_) => {
                tonic::Code::NotFound
            }
            StoreError::IdentityTaken { .. } | StoreError::AlreadyLinked { .. } => tonic::Code::AlreadyExists,
            StoreError::VehicleHasOwner { .. } | StoreError::NotLedgerOwner { .. } => tonic::Code::FailedPrecondition,
            StoreError::Invalid { .. } => tonic::Code::InvalidArgument,
            StoreError::Contention { .. } => tonic::Code::Aborted,
            StoreError::Corrupt(_) | StoreError::UnsupportedUrl { .. } | StoreError::BadUrl { .. } => {
                tonic::Code::Internal
            }
            StoreError::Connect { .. }
            | StoreError::ConnectTimeout { .. }
            | StoreError::Migrate { .. }
            | StoreError::Query { .. }
            | StoreError::Commit(_)
            | StoreError::Closed { .. } => tonic::Code::Unavailable,
        }
    }

    /// Maps a driver error raised while doing `op`.
    pub(super) fn query(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { op, source }
    }
}
