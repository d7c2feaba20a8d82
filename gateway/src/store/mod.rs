//! Persistence: the connection log, the idempotency ledger, the partner event outbox,
//! customers and the interaction journal.
//!
//! One [`Store`] serves two backends chosen by the URL given to [`Store::connect`]:
//!
//! - **SQLite** (`sqlite://path/to/gateway.db`, `sqlite::memory:`): the embedded default. The
//!   file (and its directory) is created if missing, in WAL mode with a busy timeout. SQLite has
//!   one writer at a time, so every write of this process goes through one group-commit task
//!   ([`writer`]): the writes queued at any moment share one transaction and one fsync. The
//!   busy timeout still covers other processes.
//! - **PostgreSQL** (`postgres://…`, `postgresql://…`): for several gateway nodes sharing state.
//!   Every operation that must be atomic across nodes is one statement or relies on a row lock,
//!   never on this process's mutex.
//!
//! Each operation has ONE query text, run on both backends (`$1` placeholders work on SQLite
//! too); the schemas live in `gateway/migrations/{sqlite,postgres}/`, are embedded in the binary
//! and applied by [`Store::connect`]. Times are `i64` unix milliseconds everywhere.

mod connections;
mod customers;
mod error;
mod events;
mod journal;
mod ledger;
mod revocations;
mod scratch;
mod url;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

pub use connections::{ConnectionChange, ConnectionId, ConnectionRecord, NewConnection};
pub use customers::{
    Customer, CustomerId, MAX_DISPLAY_NAME_CHARS, MAX_PROVIDER_CHARS, MAX_SUBJECT_CHARS, SocialIdentity, VehicleLink,
    VehicleRole,
};
pub use error::StoreError;
pub use events::{Appended, NewEvent, StoredEvent};
pub use journal::{
    Amount, EventRecord, Interaction, JournalCursor, JournalEntry, MAX_PAGE, RequestRecord, SessionChange,
    SessionRecord, TimelinePage, TimelineQuery,
};
pub use ledger::{Claim, LedgerKey, RequestFingerprint};
pub use revocations::RevocationRecord;
pub use scratch::ScratchSchema;
pub use url::redact_url;

/// How long [`Store::connect`] waits for the database before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a pooled connection unless told otherwise
/// (`storage.acquire_timeout`): a database that is down fails requests within this.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long SQLite waits for another process's write lock before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per pool. SQLite readers run in parallel under WAL; writes are queued anyway.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Embedded SQLite (one file, or memory).
    Sqlite,
    /// PostgreSQL, possibly shared by several gateway nodes.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// The gateway's persistent state. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// The URL with any password removed, for messages.
    database: String,
    /// Group commit of this process's SQLite writes. `None` for PostgreSQL.
    writer: Option<writer::Writer>,
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("database", &self.inner.database)
            .finish()
    }
}

/// Runs `$body` with `$pool` bound to the concrete pool of `$store`; the body is compiled once
/// per backend, so one query text serves both.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.inner.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Runs the write `$body` with `$conn` bound to a connection of `$store`'s backend, and
/// evaluates to its `Result`. On SQLite the body joins the group-commit writer's next
/// transaction (so it must own what it uses: it runs on the writer's task); on PostgreSQL it
/// runs on a pooled connection, each statement its own transaction, and PostgreSQL groups
/// concurrent commits itself. `$conn.begin()` inside the body opens a savepoint on SQLite and
/// a transaction on PostgreSQL.
macro_rules! on_writer {
    ($store:expr, $op:expr, |$conn:ident| $body:expr) => {
        match &$store.inner.db {
            $crate::store::Db::Sqlite(_) => {
                $store
                    .sqlite_writer()
                    .write($op, move |$conn: &mut sqlx::SqliteConnection| {
                        Box::pin(async move { $body })
                    })
                    .await
            }
            $crate::store::Db::Postgres(pool) => match pool.acquire().await {
                Ok(mut pooled) => {
                    let $conn: &mut sqlx::PgConnection = &mut pooled;
                    async move { $body }.await
                }
                Err(e) => Err($crate::store::StoreError::query($op)(e)),
            },
        }
    };
}
pub(crate) use on_writer;

/// Runs the one write statement `$sql` with the arguments `$arg`s (owned: on SQLite they move
/// into the group-commit writer) and evaluates to the rows it changed.
macro_rules! rows_changed {
    ($store:expr, $op:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::on_writer!($store, $op, |conn| {
            $crate::store::rows_changed_on!(&mut *conn, $op, $sql $(, $arg)*)
        })
    };
}
pub(crate) use rows_changed;

/// Runs the write statement `$sql` with the arguments `$arg`s on `$conn` (a connection or a
/// transaction already open, inside `on_writer!`) and evaluates to the rows it changed.
macro_rules! rows_changed_on {
    ($conn:expr, $op:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        sqlx::query($sql)
            $(.bind($arg))*
            .execute($conn)
            .await
            .map(|done| done.rows_affected())
            .map_err($crate::store::StoreError::query($op))
    };
}
pub(crate) use rows_changed_on;

/// How a [`Store`] uses its database, beyond the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long an operation waits for a pooled connection before failing.
    pub acquire_timeout: Duration,
    /// SQLite only: the most pages the database file may grow to (`PRAGMA max_page_count`);
    /// past it writes fail as on a full disk. `None`: as large as the disk allows.
    pub sqlite_max_pages: Option<u32>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            sqlite_max_pages: None,
        }
    }
}

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`) with the default
    /// [`StoreOptions`] and applies the migrations; see [`Store::connect_with`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    /// Connects to `url` and applies the migrations. Fails within about [`CONNECT_TIMEOUT`] if
    /// the database cannot be reached, with a message naming it (password redacted).
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        let database = redact_url(url);
        let (db, writer) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Db::Postgres(connect_postgres(url, &database, options).await?), None)
        } else if url.starts_with("sqlite:") {
            let pool = connect_sqlite(url, &database, options).await?;
            let writer = writer::Writer::spawn(pool.clone());
            (Db::Sqlite(pool), Some(writer))
        } else {
            return Err(StoreError::UnsupportedUrl { url: database });
        };
        let store = Store {
            inner: Arc::new(Inner { db, database, writer }),
        };
        tracing::info!(backend = %store.backend(), database = %store.inner.database, "store connected and migrated");
        Ok(store)
    }

    /// The backend this store runs on.
    pub fn backend(&self) -> Backend {
        match self.inner.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database URL with its password redacted, for logs.
    pub fn database(&self) -> &str {
        &self.inner.database
    }

    /// Runs `sql`, a `SELECT COUNT(*)` without arguments, for the figure `what` (metrics).
    async fn count(&self, sql: &'static str, what: &'static str) -> Result<u64, StoreError> {
        let (n,): (i64,) =
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_one(pool).await).map_err(StoreError::query(what))?;
        to_u64(what, n)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map(|_| ())
        .map_err(StoreError::query("pinging the database"))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }

    /// The group-commit writer (SQLite only).
    fn sqlite_writer(&self) -> &writer::Writer {
        self.inner.writer.as_ref().expect("a SQLite store has a writer")
    }
}

async fn connect_postgres(url: &str, database: &str, store: StoreOptions) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::BadUrl {
        database: database.to_owned(),
        source,
    })?;
    // One direct connection first, under a timeout: the pool would retry a refused connection
    // until its deadline and then report only "timed out"; this keeps the real cause.
    let connect_error = |source| StoreError::Connect {
        database: database.to_owned(),
        source,
    };
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| StoreError::ConnectTimeout {
            database: database.to_owned(),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(connect_error)?;
    let migrated = tokio::time::timeout(CONNECT_TIMEOUT * 6, POSTGRES_MIGRATIONS.run(&mut conn)).await;
    let _ = conn.close().await;
    match migrated {
        Ok(result) => result.map_err(|source| StoreError::Migrate {
            database: database.to_owned(),
            source,
        })?,
        Err(_) => {
            return Err(StoreError::ConnectTimeout {
                database: database.to_owned(),
                after: CONNECT_TIMEOUT * 6,
            });
        }
    }
    PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(store.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(connect_error)
}

async fn connect_sqlite(url: &str, database: &str, store: StoreOptions) -> Result<SqlitePool, StoreError> {
    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|source| StoreError::BadUrl {
            database: database.to_owned(),
            source,
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a completed idempotency record must survive a power cut, or a retry pays twice.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    if let Some(pages) = store.sqlite_max_pages {
        options = options.pragma("max_page_count", pages.to_string());
    }
    let in_memory = is_in_memory(url);
    if !in_memory {
        create_parent_dir(options.get_filename()).map_err(|source| StoreError::Connect {
            database: database.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
    }
    // An in-memory database lives as long as its one connection: keep exactly one, forever.
    let pool_options = if in_memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        SqlitePoolOptions::new().max_connections(SQLITE_MAX_CONNECTIONS)
    };
    let pool = tokio::time::timeout(
        CONNECT_TIMEOUT,
        pool_options
            .acquire_timeout(store.acquire_timeout)
            .connect_with(options),
    )
    .await
    .map_err(|_| StoreError::ConnectTimeout {
        database: database.to_owned(),
        after: CONNECT_TIMEOUT,
    })?
    .map_err(|source| StoreError::Connect {
        database: database.to_owned(),
        source,
    })?;
    SQLITE_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            database: database.to_owned(),
            source,
        })?;
    Ok(pool)
}

fn is_in_memory(url: &str) -> bool {
    url == "sqlite::memory:" || url.starts_with("sqlite::memory:?") || url.contains("mode=memory")
}

fn create_parent_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// `u32` row limits as SQL `LIMIT` values.
fn limit(n: u32) -> i64 {
    i64::from(n)
}

/// A non-negative `i64` column as `u64`.
fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

/// A `u64` argument as an SQL `BIGINT`, saturating (no stored value exceeds `i64::MAX`).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_vin(s: &str) -> Result<proto::Vin, StoreError> {
    proto::Vin::parse(s).map_err(|e| StoreError::Corrupt(format!("stored VIN: {e}")))
}
