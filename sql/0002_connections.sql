-- 0002: the user of each open WebSocket connection, in the store of record.
--
-- Redis is the registry that fan-out reads; this table is the durable copy of one fact in it
-- (connection -> user), written at $connect and deleted at $disconnect or on a 410. When Redis
-- is unreachable, or has lost its data, a frame's sender is still known from here, so its message
-- is stored instead of refused. API Gateway closes every connection after 2 hours, so a row older
-- than that belongs to a connection whose $disconnect never came: lookups ignore it and each
-- $connect purges a batch of them (connected_at index).

CREATE TABLE connection_table (
    connection_id  text        PRIMARY KEY CHECK (char_length(connection_id) BETWEEN 1 AND 128),
    user_id        text        NOT NULL,
    connected_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX connection_connected_at_idx ON connection_table (connected_at);
