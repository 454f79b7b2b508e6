-- name: save_connection
-- Record a connection's user and purge a batch of rows older than API Gateway's connection limit.
-- Safe to re-run: an upsert of the same row, and a purge of rows no reader sees.
WITH purged AS (
    -- ARRAY(...) is computed once, so the delete looks rows up by key; as an IN (subquery) the
    -- planner hash-joined it against a sequential scan of the whole table on every $connect.
    DELETE FROM connection_table
    WHERE connection_id = ANY (ARRAY(
        SELECT connection_id FROM connection_table
        WHERE connected_at < clock_timestamp() - CAST(:max_age_s AS integer) * interval '1 second'
        ORDER BY connected_at
        LIMIT 100
    ))
    RETURNING connection_id
)
INSERT INTO connection_table (connection_id, user_id)
VALUES (:connection_id, :user_id)
ON CONFLICT (connection_id) DO UPDATE
SET user_id = EXCLUDED.user_id, connected_at = EXCLUDED.connected_at
RETURNING (SELECT count(*) FROM purged) AS purged;

-- name: connection_user
-- The user of a connection that may still be open (younger than API Gateway's connection limit).
SELECT user_id
FROM connection_table
WHERE connection_id = :connection_id
  AND connected_at > clock_timestamp() - CAST(:max_age_s AS integer) * interval '1 second';

-- name: connection_opened_within
-- Whether a connection was recorded less than :seconds ago (a 410 then may mean "still connecting").
SELECT connected_at > clock_timestamp() - CAST(:seconds AS double precision) * interval '1 second' AS recent
FROM connection_table
WHERE connection_id = :connection_id;

-- name: delete_connection
-- Forget a connection ($disconnect, or a 410 from a push).
-- Safe to re-run: deleting a deleted row changes nothing.
DELETE FROM connection_table
WHERE connection_id = :connection_id;
