-- Persistence for the gateway (PostgreSQL). Times are unix milliseconds (BIGINT).
-- Keep in step with ../sqlite/0001_store.sql: the queries in src/store/ are shared.

-- Session registry: one row per vehicle connection.
CREATE TABLE sessions (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vin               TEXT   NOT NULL,
    node              TEXT   NOT NULL,
    cert_fingerprint  TEXT   NOT NULL,
    agent_version     TEXT,
    remote_addr       TEXT   NOT NULL,
    connected_at      BIGINT NOT NULL,
    disconnected_at   BIGINT,
    disconnect_reason TEXT
);
CREATE INDEX sessions_by_vin ON sessions (vin, connected_at DESC, id DESC);
CREATE INDEX sessions_open_by_node ON sessions (node) WHERE disconnected_at IS NULL;

-- Idempotency ledger keyed by (VIN, idempotency key).
-- A row without a response is a claim in flight, held by `owner` since `claimed_at` until
-- `lease_expires_at` (set by the claimer); `attempts` counts claims and is the compare-and-swap
-- token for take-overs. `expires_at` (first claim + retention) is when the whole record goes.
CREATE TABLE idempotency_ledger (
    vin              TEXT   NOT NULL,
    idempotency_key  TEXT   NOT NULL,
    method           TEXT   NOT NULL,
    payload_sha256   BYTEA  NOT NULL CHECK (octet_length(payload_sha256) = 32),
    owner            TEXT   NOT NULL,
    claimed_at       BIGINT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    attempts         BIGINT NOT NULL,
    response         BYTEA,
    completed_at     BIGINT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (vin, idempotency_key)
);
CREATE INDEX idempotency_ledger_expiry ON idempotency_ledger (expires_at);

-- Partner events: a per-VIN counter allocates gapless sequences; it is never deleted,
-- so sequences never restart after a purge.
CREATE TABLE event_streams (
    vin           TEXT   PRIMARY KEY,
    last_sequence BIGINT NOT NULL
);
CREATE TABLE events (
    vin        TEXT    NOT NULL,
    sequence   BIGINT  NOT NULL,
    service    TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    payload    BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    acked      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (vin, sequence),
    UNIQUE (vin, service, event_id)
);
CREATE INDEX events_expiry ON events (expires_at);
