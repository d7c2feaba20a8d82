-- The session registry is a log of connections (one row per vehicle connection, from CONNECT
-- to disconnect): "session" is kept for the MQTT session, which may span several connections.
ALTER TABLE sessions RENAME TO connections;
ALTER INDEX sessions_by_vin RENAME TO connections_by_vin;
ALTER INDEX sessions_open_by_node RENAME TO connections_open_by_node;
ALTER SEQUENCE sessions_id_seq RENAME TO connections_id_seq;
