-- The session registry is a log of connections (one row per vehicle connection, from CONNECT
-- to disconnect): "session" is kept for the MQTT session, which may span several connections.
ALTER TABLE sessions RENAME TO connections;
DROP INDEX sessions_by_vin;
DROP INDEX sessions_open_by_node;
CREATE INDEX connections_by_vin ON connections (vin, connected_at DESC, id DESC);
CREATE INDEX connections_open_by_node ON connections (node) WHERE disconnected_at IS NULL;
