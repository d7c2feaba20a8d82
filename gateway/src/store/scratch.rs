//! Throwaway PostgreSQL schemas for benchmarks and tests: each run gets its own schema on a
//! shared database, so runs never see each other's rows, and drops it afterwards.

use sqlx::Connection as _;

/// A schema created for one run; [`ScratchSchema::url`] selects it (`search_path`).
pub struct ScratchSchema {
    admin: sqlx::PgConnection,
    name: String,
    url: String,
}

impl ScratchSchema {
    /// Creates the schema `name` (letters, digits and `_` only: it is written into SQL) on the
    /// database at `base`.
    pub async fn create(base: &str, name: &str) -> Result<ScratchSchema, sqlx::Error> {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "schema name {name:?}: letters, digits and _ only"
        );
        let mut admin = sqlx::PgConnection::connect(base).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin)
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(ScratchSchema {
            admin,
            url: format!("{base}{sep}options=-c%20search_path%3D{name}"),
            name: name.to_owned(),
        })
    }

    /// The database URL with this schema selected.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the schema and everything in it.
    pub async fn drop(mut self) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&mut self.admin)
            .await?;
        self.admin.close().await
    }
}
