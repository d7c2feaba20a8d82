//! Partner events for a car, kept in order until the car acknowledges them or they expire.
//!
//! Sequences come from a per-VIN counter row bumped in the same transaction as the insert, so
//! they start at 1 and have no gaps, even under concurrent appends from several nodes (the
//! counter's row lock orders them). The counter row is never deleted: sequences never restart.

use proto::Vin;
use sqlx::Connection as _;

use super::{Store, StoreError, on_pool, on_writer, parse_vin, rows_changed, to_i64, to_u64};

/// An event to store for a car.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The car it is for.
    pub vin: Vin,
    /// The partner service that raised it.
    pub service: String,
    /// What happened (service-defined).
    pub kind: String,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// The partner's id for it: a repeat with the same (vin, service, event_id) is stored once.
    pub event_id: String,
    /// When it was raised (unix ms).
    pub created_at_ms: i64,
    /// When it is no longer worth delivering (unix ms).
    pub expires_at_ms: i64,
}

/// What became of an appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (or already stored: a repeat of its `event_id`) with this sequence.
    Stored(u64),
    /// Not stored: the car has its maximum of events waiting for delivery.
    Full {
        /// Events waiting for the car.
        pending: u64,
    },
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The car it is for.
    pub vin: Vin,
    /// Its place in the car's stream, from 1.
    pub sequence: u64,
    /// The partner service that raised it.
    pub service: String,
    /// What happened.
    pub kind: String,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// When it was raised (unix ms).
    pub created_at_ms: i64,
    /// When it expires (unix ms).
    pub expires_at_ms: i64,
}

impl Store {
    /// Appends `e` to its car's stream and returns its sequence (1, 2, 3, … per VIN, no gaps),
    /// unless the car has `max_pending` events neither acknowledged nor expired already.
    /// Idempotent on (vin, service, event_id) while the first copy is stored: a repeat stores
    /// nothing and returns the original sequence.
    pub async fn append_event(&self, e: &NewEvent, max_pending: u64) -> Result<Appended, StoreError> {
        // First statement is the write: on PostgreSQL it takes the counter row's lock, which
        // serialises appends per VIN (so the duplicate check below sees every committed append);
        // on SQLite it takes the write lock before any read.
        const BUMP: &str = "INSERT INTO event_streams (vin, last_sequence) VALUES ($1, 1) \
            ON CONFLICT (vin) DO UPDATE SET last_sequence = event_streams.last_sequence + 1 \
            RETURNING last_sequence";
        const FIND: &str = "SELECT sequence FROM events WHERE vin = $1 AND service = $2 AND event_id = $3";
        const PENDING: &str = "SELECT COUNT(*) FROM events WHERE vin = $1 AND acked = FALSE AND expires_at > $2";
        const INSERT: &str = "INSERT INTO events (vin, sequence, service, event_id, kind, payload, created_at, expires_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        const OP: &str = "appending an event";

        let e = e.clone();
        let appended = on_writer!(self, OP, |conn| {
            let vin = e.vin.as_str();
            // A savepoint on SQLite (inside the writer's transaction), a transaction on PostgreSQL.
            let mut tx = conn.begin().await.map_err(StoreError::query(OP))?;
            let (next,): (i64,) = sqlx::query_as(BUMP)
                .bind(vin)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::query(OP))?;
            let existing: Option<(i64,)> = sqlx::query_as(FIND)
                .bind(vin)
                .bind(&e.service)
                .bind(&e.event_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::query(OP))?;
            if let Some((sequence,)) = existing {
                // A repeat: undo the counter bump so the stream stays gapless.
                tx.rollback().await.map_err(StoreError::query(OP))?;
                return Ok(Appended::Stored(to_u64("event sequence", sequence)?));
            }
            let (pending,): (i64,) = sqlx::query_as(PENDING)
                .bind(vin)
                .bind(e.created_at_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::query(OP))?;
            let pending = to_u64("pending events", pending)?;
            match pending >= max_pending {
                true => {
                    tx.rollback().await.map_err(StoreError::query(OP))?;
                    Ok(Appended::Full { pending })
                }
                false => {
                    sqlx::query(INSERT)
                        .bind(vin)
                        .bind(next)
                        .bind(&e.service)
                        .bind(&e.event_id)
                        .bind(&e.kind)
                        .bind(&e.payload)
                        .bind(e.created_at_ms)
                        .bind(e.expires_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query(OP))?;
                    tx.commit().await.map_err(StoreError::query(OP))?;
                    Ok(Appended::Stored(to_u64("event sequence", next)?))
                }
            }
        })?;
        Ok(appended)
    }

    /// Up to `limit` of the car's events that are neither acknowledged nor expired at `now_ms`,
    /// by sequence.
    pub async fn undelivered_events(&self, vin: &Vin, now_ms: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        const SQL: &str = "SELECT vin, sequence, service, kind, payload, created_at, expires_at FROM events \
            WHERE vin = $1 AND acked = FALSE AND expires_at > $2 ORDER BY sequence LIMIT $3";
        type Row = (String, i64, String, String, Vec<u8>, i64, i64);
        let rows: Vec<Row> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(vin.as_str())
            .bind(now_ms)
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query("listing undelivered events"))?;
        rows.into_iter()
            .map(
                |(vin, sequence, service, kind, payload, created_at_ms, expires_at_ms)| {
                    Ok(StoredEvent {
                        vin: parse_vin(&vin)?,
                        sequence: to_u64("event sequence", sequence)?,
                        service,
                        kind,
                        payload,
                        created_at_ms,
                        expires_at_ms,
                    })
                },
            )
            .collect()
    }

    /// Acknowledges every stored event of the car up to and including `up_to_sequence`
    /// (cumulative, like a TCP ack). Returns how many were newly acknowledged. An ack beyond the
    /// last stored sequence does not cover events appended after it.
    pub async fn ack_events(&self, vin: &Vin, up_to_sequence: u64) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE events SET acked = TRUE WHERE vin = $1 AND sequence <= $2 AND acked = FALSE";
        const OP: &str = "acknowledging events";
        let vin = vin.clone();
        rows_changed!(self, OP, SQL, vin.to_string(), to_i64(up_to_sequence))
    }

    /// Acknowledges, for each car of `acks`, its events up to its sequence: one write for all.
    pub async fn ack_events_many(&self, acks: &[(Vin, u64)]) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE events SET acked = TRUE WHERE vin = $1 AND sequence <= $2 AND acked = FALSE";
        const OP: &str = "acknowledging events";
        let acks = acks.to_vec();
        on_writer!(self, OP, |conn| {
            // A savepoint on SQLite (inside the writer's transaction), a transaction on PostgreSQL.
            let mut tx = conn.begin().await.map_err(StoreError::query(OP))?;
            for (vin, sequence) in &acks {
                sqlx::query(SQL)
                    .bind(vin.as_str())
                    .bind(to_i64(*sequence))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(OP))?;
            }
            tx.commit().await.map_err(StoreError::query(OP))
        })
    }

    /// Deletes events that expired (`expires_at <= now_ms`) or were acknowledged. Returns how many.
    /// Sequences are not reused afterwards.
    pub async fn purge_events(&self, now_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM events WHERE expires_at <= $1 OR acked = TRUE";
        const OP: &str = "purging events";
        rows_changed!(self, OP, SQL, now_ms)
    }

    /// The last sequence stored for each of `vins` that has ever had an event (the others are
    /// absent): how a node learns of events other nodes stored for the cars connected to it.
    pub async fn last_event_sequences(&self, vins: &[Vin]) -> Result<Vec<(Vin, u64)>, StoreError> {
        // Well within either database's limit on parameters in one statement.
        const CHUNK: usize = 500;
        const OP: &str = "reading the cars' last event sequences";
        let mut found = Vec::new();
        for chunk in vins.chunks(CHUNK) {
            let rows: Vec<(String, i64)> = on_pool!(self, |pool| {
                let mut query = sqlx::QueryBuilder::new("SELECT vin, last_sequence FROM event_streams WHERE vin IN (");
                let mut listed = query.separated(", ");
                for vin in chunk {
                    listed.push_bind(vin.as_str());
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await
            })
            .map_err(StoreError::query(OP))?;
            for (vin, last) in rows {
                found.push((parse_vin(&vin)?, to_u64("last event sequence", last)?));
            }
        }
        Ok(found)
    }

    /// Events stored (pending, acknowledged or expired, until purged), for metrics.
    pub async fn events_stored(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM events", "stored events").await
    }

    /// Events neither acknowledged nor expired at `now_ms`, by the service that raised them
    /// (services with none are absent), for metrics.
    pub async fn events_pending_by_service(&self, now_ms: i64) -> Result<Vec<(String, u64)>, StoreError> {
        const SQL: &str = "SELECT service, COUNT(*) FROM events WHERE acked = FALSE AND expires_at > $1 \
            GROUP BY service ORDER BY service";
        let rows: Vec<(String, i64)> = on_pool!(self, |pool| sqlx::query_as(SQL).bind(now_ms).fetch_all(pool).await)
            .map_err(StoreError::query("counting pending events"))?;
        rows.into_iter()
            .map(|(service, n)| Ok((service, to_u64("pending events", n)?)))
            .collect()
    }
}
