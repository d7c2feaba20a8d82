-- Persistence for the gateway (SQLite). Times are unix milliseconds (INTEGER).
-- Keep in step with ../postgres/0001_store.sql: the queries in src/store/ are shared.

-- Session registry: one row per vehicle connection.
CREATE TABLE sessions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    vin               TEXT    NOT NULL,
    node              TEXT    NOT NULL,
    cert_fingerprint  TEXT    NOT NULL,
    agent_version     TEXT,
    remote_addr       TEXT    NOT NULL,
    connected_at      INTEGER NOT NULL,
    disconnected_at   INTEGER,
    disconnect_reason TEXT
);
CREATE INDEX sessions_by_vin ON sessions (vin, connected_at DESC, id DESC);
CREATE INDEX sessions_open_by_node ON sessions (node) WHERE disconnected_at IS NULL;

-- Idempotency ledger keyed by (VIN, idempotency key).
-- A row without a response is a claim in flight, held by `owner` since `claimed_at` until
-- `lease_expires_at` (set by the claimer); `attempts` counts claims and is the compare-and-swap
-- token for take-overs. `expires_at` (first claim + retention) is when the whole record goes.
CREATE TABLE idempotency_ledger (
    vin              TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    payload_sha256   BLOB    NOT NULL CHECK (length(payload_sha256) = 32),
    owner            TEXT    NOT NULL,
    claimed_at       INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    response         BLOB,
    completed_at     INTEGER,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    PRIMARY KEY (vin, idempotency_key)
);
CREATE INDEX idempotency_ledger_expiry ON idempotency_ledger (expires_at);

-- Partner events: a per-VIN counter allocates gapless sequences; it is never deleted,
-- so sequences never restart after a purge.
CREATE TABLE event_streams (
    vin           TEXT    PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
CREATE TABLE events (
    vin        TEXT    NOT NULL,
    sequence   INTEGER NOT NULL,
    service    TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    acked      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (vin, sequence),
    UNIQUE (vin, service, event_id)
);
CREATE INDEX events_expiry ON events (expires_at);
