//! Runs a storage case on SQLite (a file in a temporary directory) and on PostgreSQL
//! (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, each case in its own
//! fresh schema, dropped afterwards), for the storage suites (`store.rs`, `journal.rs`, `customers.rs`). PostgreSQL being
//! unreachable fails the PostgreSQL half; it is never skipped.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use gateway::store::{Backend, ScratchSchema, Store};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One case's database: a store on it, and its URL to open more stores (more "nodes") on it.
pub struct Db {
    /// The store the case uses.
    pub store: Store,
    /// Its database, with the case's schema selected.
    pub url: String,
}

impl Db {
    /// Another pool on the same database, as a second gateway node would have.
    pub async fn another_node(&self) -> Store {
        Store::connect(&self.url)
            .await
            .expect("second store on the same database")
    }
}

/// For cases that need only the store.
impl From<Db> for Store {
    fn from(db: Db) -> Store {
        db.store
    }
}

/// A store over a fresh SQLite file in `dir` that can grow to 64 pages (`PRAGMA
/// max_page_count`) and then fails writes as a full disk does, until old rows are deleted.
#[allow(dead_code)] // the suites without a full-disk case include this file too
pub async fn sqlite_on_a_small_disk(dir: &std::path::Path) -> Store {
    let url = format!("sqlite://{}", dir.join("full.db").display());
    let options = gateway::store::StoreOptions {
        sqlite_max_pages: Some(64),
        ..gateway::store::StoreOptions::default()
    };
    Store::connect_with(&url, options).await.expect("SQLite store")
}

/// Runs `case` (taking a [`Db`] or just its [`Store`]) on a store over a fresh SQLite file, then
/// closes it.
pub async fn on_sqlite<C, F, Fut>(case: F)
where
    Db: Into<C>,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}/state/gateway.db", dir.path().display());
    run_case(url, Backend::Sqlite, case).await;
}

/// Runs `case` on a store over a fresh PostgreSQL schema, then drops the schema.
pub async fn on_postgres<C, F, Fut>(case: F)
where
    Db: Into<C>,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let schema = ScratchSchema::create(&base, &unique_schema())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is not reachable ({e}); the PostgreSQL half of this suite needs it \
             (set TEST_POSTGRES_URL, or start it: pg_ctlcluster <version> main start)",
                gateway::store::redact_url(&base)
            )
        });
    let outcome = AssertUnwindSafe(run_case(schema.url().to_owned(), Backend::Postgres, case))
        .catch_unwind()
        .await;
    schema.drop().await.expect("drop schema");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn unique_schema() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "store_test_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

async fn run_case<C, F, Fut>(url: String, backend: Backend, case: F)
where
    Db: Into<C>,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = Store::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(store.backend(), backend);
    case(
        Db {
            store: store.clone(),
            url,
        }
        .into(),
    )
    .await;
    store.close().await;
}

/// Runs each named `async fn(Db)` or `async fn(Store)` as two tests: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::two_backends::on_sqlite(super::$case).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::two_backends::on_postgres(super::$case).await
                }
            )+
        }
    };
}
