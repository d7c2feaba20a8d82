//! The interaction journal: every request, partner event and session change of a vehicle,
//! appended in batches and read back by vehicle or by customer, oldest first, a page at a time.
//!
//! Pages use keyset pagination on `(at_ms, id)` (the `journal_by_vin` index), never OFFSET: a
//! page costs the same wherever it is in the range, and holds at most [`MAX_PAGE`] rows whatever
//! the range (a ten-year query is as cheap per page as a one-hour one). A page's cursor is the
//! last row's `(at_ms, id)`, handed to callers as an opaque URL-safe token ([`JournalCursor`]).

use proto::Vin;
use sqlx::Connection as _;

use super::{CustomerId, Store, StoreError, on_pool, on_writer, parse_vin, to_i64, to_u64};

/// Most entries in one timeline page.
pub const MAX_PAGE: u32 = 1000;
/// Rows inserted by one statement (15 values each: within SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 500;
/// Rows deleted by one purge statement: a purge of years of rows never holds the write lock long.
const PURGE_BATCH: i64 = 5000;

/// A sum of money in a currency's minor unit (fen for CNY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    /// Minor units; negative for money given back.
    pub minor_units: i64,
    /// ISO 4217, e.g. `CNY`.
    pub currency: String,
}

/// A car's request to a partner service and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The gRPC service, e.g. `parking.v1.ParkingPayment` (empty if the request named none).
    pub service: String,
    /// The method, e.g. `EndSession`.
    pub method: String,
    /// The gRPC status code of the outcome (0 = OK).
    pub code: i32,
    /// From the gateway's receipt of the request to its answer.
    pub latency_us: u64,
    /// What the partner reported charging, if it did.
    pub amount: Option<Amount>,
    /// The car's request id.
    pub request_id: String,
    /// The request body, only when `journal.record_payloads` is on.
    pub request_payload: Option<Vec<u8>>,
    /// The response body, only when `journal.record_payloads` is on.
    pub response_payload: Option<Vec<u8>>,
}

/// A partner event accepted for the car.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The partner service that raised it.
    pub service: String,
    /// What happened (service-defined).
    pub kind: String,
    /// Its place in the car's event stream.
    pub sequence: u64,
}

/// What happened to a car's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionChange {
    /// The car connected.
    Connected,
    /// The car's connection ended.
    Disconnected,
    /// An operator kicked the car.
    Kicked,
    /// The car's certificate was revoked.
    Revoked,
}

impl SessionChange {
    /// The change as stored (`connected`, `disconnected`, `kicked`, `revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionChange::Connected => "connected",
            SessionChange::Disconnected => "disconnected",
            SessionChange::Kicked => "kicked",
            SessionChange::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<SessionChange, StoreError> {
        Ok(match s {
            "connected" => SessionChange::Connected,
            "disconnected" => SessionChange::Disconnected,
            "kicked" => SessionChange::Kicked,
            "revoked" => SessionChange::Revoked,
            other => return Err(StoreError::Corrupt(format!("session change {other:?}"))),
        })
    }
}

/// A session change of the car.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// What changed.
    pub change: SessionChange,
    /// Why (a disconnect's reason), from where (a connect's remote address), or who did it.
    pub detail: String,
}

/// One recorded interaction, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// A request and its outcome.
    Request(RequestRecord),
    /// A partner event.
    Event(EventRecord),
    /// A session change.
    Session(SessionRecord),
}

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its id in the journal; 0 before it is stored.
    pub id: i64,
    /// When it happened (unix ms).
    pub at_ms: i64,
    /// The vehicle.
    pub vin: Vin,
    /// What happened.
    pub what: Interaction,
}

/// Where a timeline page ends: the last entry's `(at_ms, id)`. The next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct JournalCursor {
    /// The last entry's time (unix ms).
    pub at_ms: i64,
    /// The last entry's id.
    pub id: i64,
}

/// Prefix of a cursor token: the format's version, so a later format can tell old tokens apart.
const TOKEN_PREFIX: &str = "j1";

impl JournalCursor {
    /// The cursor as an opaque URL-safe token (`j1` and 32 hex digits).
    pub fn to_token(&self) -> String {
        // The bits of the i64s, so negative times survive the round trip.
        format!("{TOKEN_PREFIX}{:016x}{:016x}", self.at_ms as u64, self.id as u64)
    }

    /// Reads a token made by [`JournalCursor::to_token`]; anything else is
    /// [`StoreError::Invalid`].
    pub fn from_token(token: &str) -> Result<JournalCursor, StoreError> {
        let bad = || StoreError::Invalid {
            what: "page token",
            problem: "not a token this gateway issued (pass next_page_token back unchanged)".into(),
        };
        let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let at = u64::from_str_radix(&hex[..16], 16).map_err(|_| bad())?;
        let id = u64::from_str_radix(&hex[16..], 16).map_err(|_| bad())?;
        Ok(JournalCursor {
            at_ms: at as i64,
            id: id as i64,
        })
    }
}

/// Which part of a timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineQuery {
    /// Inclusive start (unix ms).
    pub from_ms: i64,
    /// Exclusive end (unix ms).
    pub to_ms: i64,
    /// The previous page's `next`, or `None` for the first page.
    pub after: Option<JournalCursor>,
    /// Most entries in the page, clamped to 1..=[`MAX_PAGE`].
    pub limit: u32,
}

/// One page of a timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePage {
    /// The entries.
    pub entries: Vec<JournalEntry>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<JournalCursor>,
}

/// A journal row as the table holds it: the one place journal entries meet SQL, both ways.
#[derive(sqlx::FromRow)]
struct JournalRow {
    id: i64,
    at_ms: i64,
    vin: String,
    /// "request", "event" or "session": which of the columns below mean something.
    kind: String,
    service: Option<String>,
    /// The method of a request; the change of a session.
    method: Option<String>,
    code: Option<i64>,
    latency_us: Option<i64>,
    amount_minor: Option<i64>,
    currency: Option<String>,
    request_id: Option<String>,
    /// The kind of an event; the detail of a session change.
    detail: Option<String>,
    sequence: Option<i64>,
    request_payload: Option<Vec<u8>>,
    response_payload: Option<Vec<u8>>,
}

impl JournalRow {
    /// The row `e` is stored as (its id is the database's to give).
    fn of(e: &JournalEntry) -> JournalRow {
        let row = JournalRow {
            id: e.id,
            at_ms: e.at_ms,
            vin: e.vin.to_string(),
            kind: String::new(),
            service: None,
            method: None,
            code: None,
            latency_us: None,
            amount_minor: None,
            currency: None,
            request_id: None,
            detail: None,
            sequence: None,
            request_payload: None,
            response_payload: None,
        };
        match &e.what {
            Interaction::Request(r) => JournalRow {
                kind: "request".into(),
                service: Some(r.service.clone()),
                method: Some(r.method.clone()),
                code: Some(i64::from(r.code)),
                latency_us: Some(to_i64(r.latency_us)),
                amount_minor: r.amount.as_ref().map(|a| a.minor_units),
                currency: r.amount.as_ref().map(|a| a.currency.clone()),
                request_id: Some(r.request_id.clone()),
                request_payload: r.request_payload.clone(),
                response_payload: r.response_payload.clone(),
                ..row
            },
            Interaction::Event(ev) => JournalRow {
                kind: "event".into(),
                service: Some(ev.service.clone()),
                detail: Some(ev.kind.clone()),
                sequence: Some(to_i64(ev.sequence)),
                ..row
            },
            Interaction::Session(session) => JournalRow {
                kind: "session".into(),
                method: Some(session.change.as_str().to_owned()),
                detail: Some(session.detail.clone()),
                ..row
            },
        }
    }
}

/// `SELECT <every journal column> FROM journal j <rest>`, as one literal.
macro_rules! select_journal {
    ($rest:literal) => {
        concat!(
            "SELECT j.id, j.at_ms, j.vin, j.kind, j.service, j.method, j.code, j.latency_us, j.amount_minor, \
             j.currency, j.request_id, j.detail, j.sequence, j.request_payload, j.response_payload FROM journal j ",
            $rest
        )
    };
}

fn entry(row: JournalRow) -> Result<JournalEntry, StoreError> {
    let JournalRow {
        id,
        at_ms,
        vin,
        kind,
        service,
        method,
        code,
        latency_us,
        amount_minor,
        currency,
        request_id,
        detail,
        sequence,
        request_payload: req,
        response_payload: resp,
    } = row;
    let what = match kind.as_str() {
        "request" => Interaction::Request(RequestRecord {
            service: service.unwrap_or_default(),
            method: method.unwrap_or_default(),
            code: i32::try_from(code.unwrap_or_default())
                .map_err(|_| StoreError::Corrupt(format!("journal row {id}: code out of range")))?,
            latency_us: to_u64("latency", latency_us.unwrap_or_default())?,
            amount: match (amount_minor, currency) {
                (Some(minor_units), Some(currency)) => Some(Amount { minor_units, currency }),
                _ => None,
            },
            request_id: request_id.unwrap_or_default(),
            request_payload: req,
            response_payload: resp,
        }),
        "event" => Interaction::Event(EventRecord {
            service: service.unwrap_or_default(),
            kind: detail.unwrap_or_default(),
            sequence: to_u64("event sequence", sequence.unwrap_or_default())?,
        }),
        "session" => Interaction::Session(SessionRecord {
            change: SessionChange::parse(method.as_deref().unwrap_or_default())?,
            detail: detail.unwrap_or_default(),
        }),
        other => return Err(StoreError::Corrupt(format!("journal row {id}: kind {other:?}"))),
    };
    Ok(JournalEntry {
        id,
        at_ms,
        vin: parse_vin(&vin)?,
        what,
    })
}

/// Where a query starts (after its cursor, or at `from_ms`), how many rows it fetches (one
/// more than the page, to know whether another page follows), and the clamped page size.
fn bounds(q: &TimelineQuery) -> (i64, i64, i64, usize) {
    let start = JournalCursor {
        at_ms: q.from_ms,
        id: i64::MIN,
    };
    let after = q.after.map_or(start, |after| after.max(start));
    let limit = q.limit.clamp(1, MAX_PAGE);
    (after.at_ms, after.id, i64::from(limit) + 1, limit as usize)
}

fn page(rows: Vec<JournalRow>, limit: usize) -> Result<TimelinePage, StoreError> {
    let more = rows.len() > limit;
    let entries: Vec<JournalEntry> = rows.into_iter().take(limit).map(entry).collect::<Result<_, _>>()?;
    let next = match (more, entries.last()) {
        (true, Some(last)) => Some(JournalCursor {
            at_ms: last.at_ms,
            id: last.id,
        }),
        _ => None,
    };
    Ok(TimelinePage { entries, next })
}

impl Store {
    /// Appends `entries` (their `id`s are ignored) in one transaction; returns how many were
    /// stored. On SQLite it joins the group-commit writer's next transaction.
    pub async fn journal_append(&self, entries: &[JournalEntry]) -> Result<u64, StoreError> {
        const OP: &str = "appending to the journal";
        if entries.is_empty() {
            return Ok(0);
        }
        let entries = entries.to_vec();
        on_writer!(self, OP, |conn| {
            // A savepoint on SQLite (inside the writer's transaction), a transaction on PostgreSQL.
            let mut tx = conn.begin().await.map_err(StoreError::query(OP))?;
            let mut stored = 0;
            for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO journal (at_ms, vin, kind, service, method, code, latency_us, amount_minor, \
                     currency, request_id, detail, sequence, request_payload, response_payload) ",
                );
                insert.push_values(chunk.iter().map(JournalRow::of), |mut b, row| {
                    b.push_bind(row.at_ms)
                        .push_bind(row.vin)
                        .push_bind(row.kind)
                        .push_bind(row.service)
                        .push_bind(row.method)
                        .push_bind(row.code)
                        .push_bind(row.latency_us)
                        .push_bind(row.amount_minor)
                        .push_bind(row.currency)
                        .push_bind(row.request_id)
                        .push_bind(row.detail)
                        .push_bind(row.sequence)
                        .push_bind(row.request_payload)
                        .push_bind(row.response_payload);
                });
                stored += insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(OP))?
                    .rows_affected();
            }
            tx.commit().await.map_err(StoreError::query(OP))?;
            Ok(stored)
        })
    }

    /// One page of the vehicle's journal within `[from_ms, to_ms)`, oldest first.
    pub async fn vehicle_timeline(&self, vin: &Vin, q: TimelineQuery) -> Result<TimelinePage, StoreError> {
        const SQL: &str = select_journal!(
            "WHERE j.vin = $1 AND j.at_ms >= $2 AND j.at_ms < $4 AND (j.at_ms > $2 OR j.id > $3) \
             ORDER BY j.at_ms, j.id LIMIT $5"
        );
        self.timeline_page(SQL, vin.as_str(), q, "reading a vehicle's timeline")
            .await
    }

    /// One page of the journal of every vehicle linked to the customer, each row only if it
    /// falls inside one of that vehicle's link periods `[linked_at, unlinked_at)`, within
    /// `[from_ms, to_ms)`, oldest first. An unknown customer is [`StoreError::UnknownCustomer`].
    pub async fn customer_timeline(&self, id: &CustomerId, q: TimelineQuery) -> Result<TimelinePage, StoreError> {
        const EXISTS: &str = "SELECT id FROM customers WHERE id = $1";
        const SQL: &str = select_journal!(
            "WHERE j.vin IN (SELECT vin FROM customer_vehicles WHERE customer_id = $1) \
             AND j.at_ms >= $2 AND j.at_ms < $4 AND (j.at_ms > $2 OR j.id > $3) \
             AND EXISTS (SELECT 1 FROM customer_vehicles l WHERE l.customer_id = $1 AND l.vin = j.vin \
                 AND l.linked_at_ms <= j.at_ms AND (l.unlinked_at_ms IS NULL OR j.at_ms < l.unlinked_at_ms)) \
             ORDER BY j.at_ms, j.id LIMIT $5"
        );
        const OP: &str = "reading a customer's timeline";
        let found: Option<(String,)> = on_pool!(self, |pool| sqlx::query_as(EXISTS)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await)
        .map_err(StoreError::query(OP))?;
        if found.is_none() {
            return Err(StoreError::UnknownCustomer(id.0.clone()));
        }
        self.timeline_page(SQL, id.as_str(), q, OP).await
    }

    /// Runs a timeline query `sql` of `whose` rows (`$1`) for the page `q` asks for: `$2`, `$3`
    /// the cursor, `$4` the end of the range, `$5` how many rows to fetch.
    async fn timeline_page(
        &self,
        sql: &'static str,
        whose: &str,
        q: TimelineQuery,
        op: &'static str,
    ) -> Result<TimelinePage, StoreError> {
        let (after_at, after_id, fetch, limit) = bounds(&q);
        let rows: Vec<JournalRow> = on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(whose)
            .bind(after_at)
            .bind(after_id)
            .bind(q.to_ms)
            .bind(fetch)
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query(op))?;
        page(rows, limit)
    }

    /// Deletes the journal rows older than `before_ms`, [`PURGE_BATCH`] rows per statement (so
    /// other writes interleave); returns how many.
    pub async fn purge_journal(&self, before_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str =
            "DELETE FROM journal WHERE id IN (SELECT id FROM journal WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)";
        const OP: &str = "purging the journal";
        let mut purged = 0;
        loop {
            let n = super::rows_changed!(self, OP, SQL, before_ms, PURGE_BATCH)?;
            purged += n;
            if n < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}
