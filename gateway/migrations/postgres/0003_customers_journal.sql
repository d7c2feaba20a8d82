-- Customers (one id linking vehicles and social identities) and the interaction journal (PostgreSQL).
-- Keep in step with ../sqlite/0003_customers_journal.sql: the queries in src/store/ are shared.

CREATE TABLE customers (
    id            TEXT    PRIMARY KEY, -- a UUID v4, assigned by the gateway
    display_name  TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

-- A vehicle's links to customers, ended ones kept (unlinked_at_ms set) so that a customer's
-- timeline shows only what happened while the vehicle was theirs.
CREATE TABLE customer_vehicles (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id    TEXT    NOT NULL REFERENCES customers (id),
    vin            TEXT    NOT NULL,
    role           TEXT    NOT NULL CHECK (role IN ('owner', 'driver')),
    linked_at_ms   BIGINT  NOT NULL,
    unlinked_at_ms BIGINT
);
-- One current link per (customer, vehicle), and one current owner per vehicle.
CREATE UNIQUE INDEX customer_vehicles_current ON customer_vehicles (customer_id, vin) WHERE unlinked_at_ms IS NULL;
CREATE UNIQUE INDEX customer_vehicles_one_owner ON customer_vehicles (vin) WHERE unlinked_at_ms IS NULL AND role = 'owner';
CREATE INDEX customer_vehicles_by_vin ON customer_vehicles (vin, linked_at_ms);
CREATE INDEX customer_vehicles_by_customer ON customer_vehicles (customer_id, linked_at_ms);

-- A social identity links to at most one customer.
CREATE TABLE customer_social_identities (
    provider     TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL REFERENCES customers (id),
    linked_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX customer_social_identities_by_customer ON customer_social_identities (customer_id);

-- Every interaction of a vehicle. By kind:
--   request: service, method, code (gRPC), latency_us, amount_minor + currency (when the partner
--            reported one), request_id, request_payload / response_payload (journal.record_payloads)
--   event:   service, detail = the event's kind, sequence
--   session: method = the change (connected, disconnected, kicked, revoked), detail = why / from where
CREATE TABLE journal (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms            BIGINT  NOT NULL,
    vin              TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('request', 'event', 'session')),
    service          TEXT,
    method           TEXT,
    code             BIGINT,
    latency_us       BIGINT,
    amount_minor     BIGINT,
    currency         TEXT,
    request_id       TEXT,
    detail           TEXT,
    sequence         BIGINT,
    request_payload  BYTEA,
    response_payload BYTEA
);
CREATE INDEX journal_by_vin ON journal (vin, at_ms, id);
CREATE INDEX journal_by_time ON journal (at_ms);
