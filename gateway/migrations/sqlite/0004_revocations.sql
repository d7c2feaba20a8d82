-- Vehicles an operator revoked: every certificate of the VIN issued before revoked_at is
-- refused at CONNECT, on every node, across restarts. One row per VIN; a later revocation of
-- the same VIN moves revoked_at forward.
CREATE TABLE revocations (
    vin TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL
);

-- Fleet ops list the most recently closed connections.
CREATE INDEX connections_closed ON connections (disconnected_at DESC) WHERE disconnected_at IS NOT NULL;
