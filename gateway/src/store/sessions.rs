//! Session registry: every connect and disconnect of a vehicle.

use proto::Vin;

use super::{Store, StoreError, on_pool, on_writer, parse_vin};

/// The database id of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub i64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection being recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
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

/// A recorded session, open or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// The car.
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
    /// When it ended (unix ms); `None` while open.
    pub disconnected_at_ms: Option<i64>,
    /// Why it ended; `None` while open.
    pub disconnect_reason: Option<String>,
}

type SessionRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<String>,
);

/// `SELECT <every column> FROM sessions <rest>`, as one literal.
macro_rules! select_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, vin, node, cert_fingerprint, agent_version, remote_addr, connected_at, disconnected_at, \
             disconnect_reason FROM sessions ",
            $rest
        )
    };
}

fn record(row: SessionRow) -> Result<SessionRecord, StoreError> {
    let (id, vin, node, cert_fingerprint, agent_version, remote_addr, connected_at_ms, disconnected_at_ms, reason) =
        row;
    Ok(SessionRecord {
        id: SessionId(id),
        vin: parse_vin(&vin)?,
        node,
        cert_fingerprint,
        agent_version,
        remote_addr,
        connected_at_ms,
        disconnected_at_ms,
        disconnect_reason: reason,
    })
}

/// One change to the session registry, for [`Store::record_sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Connection `conn` opened `session`.
    Open {
        /// The connection (unique within the process).
        conn: u64,
        /// What to record.
        session: NewSession,
    },
    /// Connection `conn` ended.
    Close {
        /// The connection.
        conn: u64,
        /// Its session id, if it was recorded in an earlier batch (otherwise it must be
        /// opened earlier in the same batch).
        id: Option<SessionId>,
        /// Why it ended.
        reason: String,
        /// When (unix ms).
        at_ms: i64,
    },
}

const OPEN_SESSION: &str = "INSERT INTO sessions (vin, node, cert_fingerprint, agent_version, remote_addr, connected_at) \
                            VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const CLOSE_SESSION: &str = "UPDATE sessions SET disconnected_at = $2, disconnect_reason = $3 \
                             WHERE id = $1 AND disconnected_at IS NULL";

impl Store {
    /// Records a new connection and returns its id.
    pub async fn open_session(&self, s: &NewSession) -> Result<SessionId, StoreError> {
        let opened = self
            .record_sessions(vec![SessionChange::Open {
                conn: 0,
                session: s.clone(),
            }])
            .await?;
        opened
            .first()
            .map(|(_, id)| *id)
            .ok_or_else(|| StoreError::Corrupt("a session insert returned no id".into()))
    }

    /// Records the end of a session. Closing a session that is already closed keeps the first
    /// time and reason and succeeds; an id that was never opened is [`StoreError::UnknownSession`].
    pub async fn close_session(&self, id: SessionId, reason: &str, at_ms: i64) -> Result<(), StoreError> {
        const EXISTS: &str = "SELECT id FROM sessions WHERE id = $1";
        const OP: &str = "closing a session";
        let reason = reason.to_owned();
        on_writer!(self, OP, |conn| {
            let closed = sqlx::query(CLOSE_SESSION)
                .bind(id.0)
                .bind(at_ms)
                .bind(&reason)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::query(OP))?
                .rows_affected();
            if closed == 0 {
                let found: Option<(i64,)> = sqlx::query_as(EXISTS)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::query(OP))?;
                if found.is_none() {
                    return Err(StoreError::UnknownSession(id.0));
                }
            }
            Ok(())
        })
    }

    /// Records a batch of connects and disconnects, in order, in one transaction on SQLite (a
    /// reconnect storm of thousands of cars costs a few fsyncs, not one per car). Returns the
    /// new session id of each `Open`, by connection. A `Close` whose session is unknown is
    /// skipped.
    pub async fn record_sessions(&self, changes: Vec<SessionChange>) -> Result<Vec<(u64, SessionId)>, StoreError> {
        const OP: &str = "recording sessions";
        on_writer!(self, OP, |conn| {
            let mut opened: Vec<(u64, SessionId)> = Vec::new();
            for change in &changes {
                match change {
                    SessionChange::Open { conn: c, session: s } => {
                        let (id,): (i64,) = sqlx::query_as(OPEN_SESSION)
                            .bind(s.vin.as_str())
                            .bind(&s.node)
                            .bind(&s.cert_fingerprint)
                            .bind(s.agent_version.as_deref())
                            .bind(&s.remote_addr)
                            .bind(s.connected_at_ms)
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(StoreError::query(OP))?;
                        opened.push((*c, SessionId(id)));
                    }
                    SessionChange::Close {
                        conn: c,
                        id,
                        reason,
                        at_ms,
                    } => {
                        let id = id.or_else(|| opened.iter().rev().find(|(o, _)| o == c).map(|(_, id)| *id));
                        let Some(id) = id else { continue };
                        sqlx::query(CLOSE_SESSION)
                            .bind(id.0)
                            .bind(*at_ms)
                            .bind(reason)
                            .execute(&mut *conn)
                            .await
                            .map_err(StoreError::query(OP))?;
                    }
                }
            }
            Ok(opened)
        })
    }

    /// Closes the sessions that an earlier run of `node` left open (it crashed or was killed);
    /// call it at startup. Other nodes' sessions are untouched. Returns how many were closed.
    pub async fn close_open_sessions_of_node(&self, node: &str, reason: &str, at_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE sessions SET disconnected_at = $2, disconnect_reason = $3 \
                           WHERE node = $1 AND disconnected_at IS NULL";
        const OP: &str = "closing a node's open sessions";
        let (node, reason) = (node.to_owned(), reason.to_owned());
        on_writer!(self, OP, |conn| {
            sqlx::query(SQL)
                .bind(&node)
                .bind(at_ms)
                .bind(&reason)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected())
                .map_err(StoreError::query(OP))
        })
    }

    /// The car's last `limit` sessions, newest first.
    pub async fn sessions_of(&self, vin: &Vin, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
        const SQL: &str = select_sessions!("WHERE vin = $1 ORDER BY connected_at DESC, id DESC LIMIT $2");
        let rows: Vec<SessionRow> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(vin.as_str())
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query("listing a car's sessions"))?;
        rows.into_iter().map(record).collect()
    }

    /// Every open session on every node, oldest first.
    pub async fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        const SQL: &str = select_sessions!("WHERE disconnected_at IS NULL ORDER BY connected_at, id");
        let rows: Vec<SessionRow> = on_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await)
            .map_err(StoreError::query("listing open sessions"))?;
        rows.into_iter().map(record).collect()
    }
}
