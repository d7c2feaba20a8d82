-- The reference parking adapter's state: everything it must not forget across a restart.
-- Times are unix milliseconds; money is in fen (1/100 CNY).

-- Parking sessions; ended_at_unix_ms is NULL while the car is parked.
CREATE TABLE sessions (
    session_id          TEXT PRIMARY KEY NOT NULL,
    -- The car that started it, from the gateway's x-vehicle-vin: its owner.
    vin                 TEXT NOT NULL,
    lot_id              TEXT NOT NULL,
    plate               TEXT NOT NULL,
    started_at_unix_ms  INTEGER NOT NULL,
    ended_at_unix_ms    INTEGER,
    -- Who ended it: 'car' (EndSession), 'exit_gate' (ParkingLot.VehicleExited) or 'max_stay'.
    ended_by            TEXT
);
-- A car parks in one place at a time; the database enforces it, whatever the code does.
CREATE UNIQUE INDEX sessions_one_active_per_vin ON sessions (vin) WHERE ended_at_unix_ms IS NULL;
-- The exit gate finds a session by lot and plate.
CREATE INDEX sessions_active_by_lot_plate ON sessions (lot_id, plate) WHERE ended_at_unix_ms IS NULL;

-- One charge per session (UNIQUE session_id): the fee, and the receipt exactly as issued.
CREATE TABLE charges (
    receipt_id          TEXT PRIMARY KEY NOT NULL,
    session_id          TEXT NOT NULL UNIQUE REFERENCES sessions (session_id),
    amount_minor        INTEGER NOT NULL CHECK (amount_minor >= 0),
    payment_reference   TEXT NOT NULL,
    charged_at_unix_ms  INTEGER NOT NULL,
    -- The encoded parking.v1.Receipt (without refunds, which are summed when read).
    receipt             BLOB NOT NULL
);

-- Money given back; the sum per session never exceeds its charge (checked when refunding).
CREATE TABLE refunds (
    refund_id            TEXT PRIMARY KEY NOT NULL,
    session_id           TEXT NOT NULL REFERENCES charges (session_id),
    amount_minor         INTEGER NOT NULL CHECK (amount_minor > 0),
    reason               TEXT NOT NULL,
    payment_reference    TEXT NOT NULL,
    refunded_at_unix_ms  INTEGER NOT NULL
);
CREATE INDEX refunds_by_session ON refunds (session_id);

-- The answer given to each idempotency key, replayed to retries. Written in the same
-- transaction as the effect it answers for, so there is never one without the other.
CREATE TABLE idempotency_keys (
    vin                 TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    -- The method and encoded request that first used the key: a retry must match them.
    method              TEXT NOT NULL,
    request             BLOB NOT NULL,
    -- The encoded response; NULL only inside the transaction that claimed the key.
    response            BLOB,
    created_at_unix_ms  INTEGER NOT NULL,
    PRIMARY KEY (vin, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_unix_ms);

-- Events for cars, written in the transaction that made them happen and deleted once the
-- gateway accepted them: a crash in between publishes them after the restart, with the same
-- event_id, which the gateway deduplicates.
CREATE TABLE event_outbox (
    event_id            TEXT PRIMARY KEY NOT NULL,
    vin                 TEXT NOT NULL,
    kind                TEXT NOT NULL,
    payload             BLOB NOT NULL,
    created_at_unix_ms  INTEGER NOT NULL
);
CREATE INDEX event_outbox_by_age ON event_outbox (created_at_unix_ms);
