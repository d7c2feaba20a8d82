//! The local PostgreSQL (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! reached with the `psql` client. A test that needs it fails, saying how to get it, when it is
//! not there: it never passes by skipping.

use std::process::Command;
use std::sync::Once;

/// What to do when PostgreSQL or `psql` is missing.
const HOW_TO_GET_IT: &str = "start PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test` \
(`pg_ctlcluster <version> main start`; scripts/test.sh does it) or point TEST_POSTGRES_URL at one";

/// The server the tests use.
pub fn base_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `sql` with `psql` on [`base_url`], failing the test with what went wrong and how to
/// fix it.
pub fn psql(sql: &str) {
    if let Err(e) = try_psql(sql) {
        panic!("{e}");
    }
}

fn try_psql(sql: &str) -> Result<(), String> {
    let base = base_url();
    let out = Command::new("psql")
        .args([base.as_str(), "-v", "ON_ERROR_STOP=1", "-qtAc", sql])
        .output()
        .map_err(|e| {
            format!(
                "cannot run `psql` ({e}): this test reaches PostgreSQL with the psql client; install it \
                 (`apt-get install -y postgresql-client`) and {HOW_TO_GET_IT}"
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "psql {sql:?} failed on {}: {}\nThis test needs PostgreSQL: {HOW_TO_GET_IT}.",
        gateway::store::redact_url(&base),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A URL for a new, empty schema in the test PostgreSQL.
pub fn schema_url() -> String {
    // Schemas of earlier runs (older than an hour) are dropped, once per test process, each in
    // a transaction of its own: all in one ran out of the server's lock table ("out of shared
    // memory") once a few hundred had piled up.
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        psql(
            "DO $$ DECLARE s text; BEGIN \
             PERFORM set_config('client_min_messages', 'warning', false); \
             FOR s IN SELECT nspname FROM pg_namespace \
             WHERE nspname ~ '^it_[0-9]+_[0-9]+_[0-9]+$' \
             AND split_part(nspname, '_', 3)::numeric < (extract(epoch from now()) - 3600) * 1e9 \
             LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); COMMIT; END LOOP; END $$",
        )
    });
    let schema = format!("it_{}", crate::unique_name());
    psql(&format!("CREATE SCHEMA {schema}"));
    let base = base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// A database of its own, dropped when this is, however the test ends.
pub struct Database {
    /// Its name.
    pub name: String,
}

impl Database {
    /// Creates `gw_{what}_{unique}`.
    pub fn create(what: &str) -> Database {
        let name = format!("gw_{what}_{}", crate::unique_name());
        psql(&format!("CREATE DATABASE {name}"));
        Database { name }
    }

    /// Its URL, on the server of [`base_url`].
    pub fn url(&self) -> String {
        let base = url_without_query(&base_url());
        let server = base.rsplit_once('/').map_or(base.as_str(), |(server, _)| server);
        format!("{server}/{}", self.name)
    }

    /// Stops taking connections and drops the ones it has, as a database going away does.
    pub fn go_away(&self) {
        psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name));
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ));
    }

    /// Takes connections again.
    pub fn come_back(&self) {
        psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name));
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let dropped = try_psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name))
            .and_then(|()| try_psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)));
        // A test that already failed keeps its own message.
        if let Err(e) = dropped
            && !std::thread::panicking()
        {
            panic!("{e}");
        }
    }
}

fn url_without_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
