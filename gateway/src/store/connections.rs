//! Connection log: every connect and disconnect of a vehicle.

use proto::Vin;
use sqlx::Connection as _;

use super::{Store, StoreError, on_pool, on_writer, parse_vin, rows_changed, rows_changed_on};

/// The database id of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub i64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection being recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    /// The car (from its certificate).
    pub vin: Vin,
    /// The gateway node that accepted it.
    pub node: String,
    /// The client certificate's fingerprint.
    pub cert_fingerprint: String,
    /// The agent's version, if it said.
    pub agent_version: Option<String>,
    /// The peer address.
    pub remote_addr: String,
    /// When it connected (unix ms).
    pub connected_at_ms: i64,
}

/// A recorded connection, open or closed: what was recorded when it opened, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Its id.
    pub id: ConnectionId,
    /// Who connected, from where, when.
    pub connection: NewConnection,
    /// When it ended (unix ms); `None` while open.
    pub disconnected_at_ms: Option<i64>,
    /// Why it ended; `None` while open.
    pub disconnect_reason: Option<String>,
}

/// A connection row as the table holds it (times in unix ms).
#[derive(sqlx::FromRow)]
struct ConnectionRow {
    id: i64,
    vin: String,
    node: String,
    cert_fingerprint: String,
    agent_version: Option<String>,
    remote_addr: String,
    connected_at: i64,
    disconnected_at: Option<i64>,
    disconnect_reason: Option<String>,
}

/// `SELECT <every column> FROM connections <rest>`, as one literal.
macro_rules! select_connections {
    ($rest:literal) => {
        concat!(
            "SELECT id, vin, node, cert_fingerprint, agent_version, remote_addr, connected_at, disconnected_at, \
             disconnect_reason FROM connections ",
            $rest
        )
    };
}

fn record(row: ConnectionRow) -> Result<ConnectionRecord, StoreError> {
    Ok(ConnectionRecord {
        id: ConnectionId(row.id),
        connection: NewConnection {
            vin: parse_vin(&row.vin)?,
            node: row.node,
            cert_fingerprint: row.cert_fingerprint,
            agent_version: row.agent_version,
            remote_addr: row.remote_addr,
            connected_at_ms: row.connected_at,
        },
        disconnected_at_ms: row.disconnected_at,
        disconnect_reason: row.disconnect_reason,
    })
}

/// One change to the connection log, for [`Store::record_connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionChange {
    /// Connection `conn` opened.
    Open {
        /// The connection (unique within the process).
        conn: u64,
        /// What to record.
        connection: NewConnection,
    },
    /// Connection `conn` ended.
    Close {
        /// The connection.
        conn: u64,
        /// Its connection id, if it was recorded in an earlier batch (otherwise it must be
        /// opened earlier in the same batch).
        id: Option<ConnectionId>,
        /// Why it ended.
        reason: String,
        /// When (unix ms).
        at_ms: i64,
    },
}

const OPEN_CONNECTION: &str = "INSERT INTO connections (vin, node, cert_fingerprint, agent_version, remote_addr, connected_at) \
                            VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const CLOSE_CONNECTION: &str = "UPDATE connections SET disconnected_at = $2, disconnect_reason = $3 \
                             WHERE id = $1 AND disconnected_at IS NULL";

impl Store {
    /// Records a new connection and returns its id.
    pub async fn open_connection(&self, s: &NewConnection) -> Result<ConnectionId, StoreError> {
        let opened = self
            .record_connections(vec![ConnectionChange::Open {
                conn: 0,
                connection: s.clone(),
            }])
            .await?;
        opened
            .first()
            .map(|(_, id)| *id)
            .ok_or_else(|| StoreError::Corrupt("a connection insert returned no id".into()))
    }

    /// Records the end of a connection. Closing a connection that is already closed keeps the first
    /// time and reason and succeeds; an id that was never opened is [`StoreError::UnknownConnection`].
    pub async fn close_connection(&self, id: ConnectionId, reason: &str, at_ms: i64) -> Result<(), StoreError> {
        const EXISTS: &str = "SELECT id FROM connections WHERE id = $1";
        const OP: &str = "closing a connection";
        let reason = reason.to_owned();
        on_writer!(self, OP, |conn| {
            let closed = rows_changed_on!(&mut *conn, OP, CLOSE_CONNECTION, id.0, at_ms, &reason)?;
            if closed == 0 {
                let found: Option<(i64,)> = sqlx::query_as(EXISTS)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::query(OP))?;
                if found.is_none() {
                    return Err(StoreError::UnknownConnection(id.0));
                }
            }
            Ok(())
        })
    }

    /// Records a batch of connects and disconnects, in order, in one transaction (a reconnect
    /// storm of thousands of cars costs a few fsyncs, not one per car; a batch the database
    /// refuses half-way leaves nothing, rather than connections opened whose ids the caller
    /// never learns, which no close could then find). Returns the new connection id of each
    /// `Open`, by connection. A `Close` whose connection is unknown is skipped.
    pub async fn record_connections(
        &self,
        changes: Vec<ConnectionChange>,
    ) -> Result<Vec<(u64, ConnectionId)>, StoreError> {
        const OP: &str = "recording connections";
        on_writer!(self, OP, |conn| {
            // A savepoint on SQLite (inside the writer's transaction), a transaction on PostgreSQL.
            let mut conn = conn.begin().await.map_err(StoreError::query(OP))?;
            let mut opened: Vec<(u64, ConnectionId)> = Vec::new();
            for change in &changes {
                match change {
                    ConnectionChange::Open { conn: c, connection: s } => {
                        let (id,): (i64,) = sqlx::query_as(OPEN_CONNECTION)
                            .bind(s.vin.as_str())
                            .bind(&s.node)
                            .bind(&s.cert_fingerprint)
                            .bind(s.agent_version.as_deref())
                            .bind(&s.remote_addr)
                            .bind(s.connected_at_ms)
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(StoreError::query(OP))?;
                        opened.push((*c, ConnectionId(id)));
                    }
                    ConnectionChange::Close {
                        conn: c,
                        id,
                        reason,
                        at_ms,
                    } => {
                        let id = id.or_else(|| opened.iter().rev().find(|(o, _)| o == c).map(|(_, id)| *id));
                        let Some(id) = id else { continue };
                        sqlx::query(CLOSE_CONNECTION)
                            .bind(id.0)
                            .bind(*at_ms)
                            .bind(reason)
                            .execute(&mut *conn)
                            .await
                            .map_err(StoreError::query(OP))?;
                    }
                }
            }
            conn.commit().await.map_err(StoreError::query(OP))?;
            Ok(opened)
        })
    }

    /// Closes the connections that an earlier run of `node` left open (it crashed or was
    /// killed); call it at startup. Other nodes' connections are untouched. Returns how many.
    pub async fn close_open_connections_of_node(
        &self,
        node: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE connections SET disconnected_at = $2, disconnect_reason = $3 \
                           WHERE node = $1 AND disconnected_at IS NULL";
        const OP: &str = "closing a node's open connections";
        let (node, reason) = (node.to_owned(), reason.to_owned());
        rows_changed!(self, OP, SQL, node, at_ms, reason)
    }

    /// The car's last `limit` connections, newest first.
    pub async fn connections_of(&self, vin: &Vin, limit: u32) -> Result<Vec<ConnectionRecord>, StoreError> {
        const SQL: &str = select_connections!("WHERE vin = $1 ORDER BY connected_at DESC, id DESC LIMIT $2");
        let rows: Vec<ConnectionRow> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(vin.as_str())
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query("listing a car's connections"))?;
        rows.into_iter().map(record).collect()
    }

    /// Every open connection on every node, oldest first.
    pub async fn open_connections(&self) -> Result<Vec<ConnectionRecord>, StoreError> {
        const SQL: &str = select_connections!("WHERE disconnected_at IS NULL ORDER BY connected_at, id");
        let rows: Vec<ConnectionRow> = on_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await)
            .map_err(StoreError::query("listing open connections"))?;
        rows.into_iter().map(record).collect()
    }

    /// Open connections on every node whose VIN starts with `vin_prefix` (ISO 3779 characters
    /// only, checked by the caller), oldest first, at most `limit`; and how many match in all.
    pub async fn open_connections_page(
        &self,
        vin_prefix: &str,
        limit: u32,
    ) -> Result<(Vec<ConnectionRecord>, u64), StoreError> {
        const SQL: &str =
            select_connections!("WHERE disconnected_at IS NULL AND vin LIKE $1 ORDER BY connected_at, id LIMIT $2");
        const COUNT: &str = "SELECT COUNT(*) FROM connections WHERE disconnected_at IS NULL AND vin LIKE $1";
        const OP: &str = "listing open connections";
        let pattern = format!("{vin_prefix}%");
        let rows: Vec<ConnectionRow> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(&pattern)
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query(OP))?;
        let (total,): (i64,) = on_pool!(self, |pool| sqlx::query_as(COUNT).bind(&pattern).fetch_one(pool).await)
            .map_err(StoreError::query(OP))?;
        let records = rows.into_iter().map(record).collect::<Result<_, _>>()?;
        Ok((records, super::to_u64("open connections", total)?))
    }

    /// The most recently closed connections whose VIN starts with `vin_prefix`, newest first.
    pub async fn recently_closed_connections(
        &self,
        vin_prefix: &str,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        const SQL: &str = select_connections!(
            "WHERE disconnected_at IS NOT NULL AND vin LIKE $1 ORDER BY disconnected_at DESC, id DESC LIMIT $2"
        );
        let rows: Vec<ConnectionRow> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(format!("{vin_prefix}%"))
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query("listing closed connections"))?;
        rows.into_iter().map(record).collect()
    }

    /// Deletes the connections that ended before `before_ms`; returns how many. Open ones stay.
    pub async fn purge_connections(&self, before_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM connections WHERE disconnected_at IS NOT NULL AND disconnected_at < $1";
        const OP: &str = "purging old connections";
        rows_changed!(self, OP, SQL, before_ms)
    }
}
