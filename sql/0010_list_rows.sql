-- 0010: the conversation list with no per-row encoding at read time, and direct conversations read
-- without a probe of their conversation row.
--
-- With 0005 the list of a user in 500 conversations probed 500 conversation rows and encoded 14
-- columns of each into JSON, which Python decoded, rebuilt as objects and encoded again: ~6 ms, of
-- which the encoding (in SQL and in Python) was more than half (docs/performance.md, "The list,
-- 0010"). Now:
--
-- * Each conversation row carries its part of every member's list row as JSON text, list_json
--   (conversationId, title, isGroup, sentAt, latestContent, senderId, latestMessageId,
--   latestDeleted, changeSeq), a generated column: PostgreSQL renders it on every write of the row,
--   whichever statement writes it, so it cannot disagree with the columns. NULL while the latest
--   message is over 400 characters (latest_content is NULL then): the list renders that row with
--   the message's content. The list query adds the member's own fields (unreadCount, isRead,
--   muted, role, unreadMentionCount, participantId) and returns the response body itself.
-- * A direct conversation's two participant rows carry a copy of that part and of the activity
--   time and last_seq (inbox_*), so the list reads a direct conversation from the member's own row,
--   with no probe of the conversation. The trigger below refreshes both copies on every insert or
--   update of a direct conversation's row, in the same transaction. A direct conversation always
--   has exactly two members, so a send to one writes four rows (the message, the conversation, both
--   members' rows), a constant; a send to a group still writes three whatever its size, and no
--   group member's row is copied to. A participant row whose copy is NULL (a group member's; or a
--   direct conversation's whose members were inserted by a later statement than its row, which no
--   query of the app does) is read through its conversation row, as before: a missing copy is never
--   wrong, only slower. A copy is never stale: every write of the conversation's row rewrites it.
-- * participant_table gets fillfactor 80 so that these updates of unindexed columns stay HOT.
--
-- What it costs a send (bench dataset, the same statement on a copy of it without this migration's
-- trigger and column, interleaved): direct 0.75 -> 0.95 ms and +1.2 KB of WAL (both members' rows),
-- group 0.86 -> 1.00 ms and +0.3 KB (rendering list_json).
--
-- Upgrade: the backfill below copies every existing direct conversation once. Deploy the code that
-- expects this schema together with it: the old list query still runs on it (it reads no new
-- column), the new one needs the new columns.

-- JSON escaping of a text (to_json is STABLE only because of other types' output functions; for text
-- it depends on nothing but its argument). For the generated column, which needs IMMUTABLE.
-- PL/pgSQL rather than SQL: PostgreSQL inlines no IMMUTABLE SQL function that calls a STABLE one, and a
-- PL/pgSQL function keeps its plan across calls.
CREATE FUNCTION json_string(value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN to_json(value)::text;
END
$$;

-- A time in the wire's form (wire.iso: UTC, milliseconds truncated, a Z), whatever the session's
-- TimeZone; to_char is STABLE only for its locale-dependent (TM) patterns, which this one has none of.
CREATE FUNCTION wire_time(at timestamptz) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
END
$$;

-- A conversation's part of a GET /conversations row, without the braces' opening and the member's
-- fields. A conversation without messages reads latestContent and senderId "" (the contract).
CREATE FUNCTION list_row_part(
    conversation_id uuid, title text, is_group boolean, activity_at timestamptz, latest_message_id uuid,
    latest_sender_id text, latest_content text, latest_deleted boolean, last_change_seq bigint
) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '"conversationId":"' || conversation_id::text
        || '","title":' || json_string(title)
        || ',"isGroup":' || is_group::text
        || ',"sentAt":"' || wire_time(activity_at)
        || '","latestContent":' || CASE WHEN latest_message_id IS NULL THEN '""'
                                        ELSE coalesce(json_string(latest_content), 'null') END
        || ',"senderId":' || CASE WHEN latest_message_id IS NULL THEN '""'
                                  ELSE coalesce(json_string(latest_sender_id), 'null') END
        || ',"latestMessageId":' || coalesce('"' || latest_message_id::text || '"', 'null')
        || ',"latestDeleted":' || (latest_deleted AND latest_message_id IS NOT NULL)::text
        || ',"changeSeq":' || last_change_seq::text
        || '}';

ALTER TABLE conversation_table
    ADD COLUMN list_json text GENERATED ALWAYS AS (
        CASE WHEN latest_content IS NOT NULL OR latest_message_id IS NULL THEN
            list_row_part(conversation_id, title, is_group, last_activity_at, latest_message_id,
                          latest_sender_id, latest_content, latest_deleted, last_change_seq)
        END
    ) STORED;

ALTER TABLE participant_table
    ADD COLUMN inbox_activity_at timestamptz,
    ADD COLUMN inbox_last_seq    bigint,
    ADD COLUMN inbox_fragment    text;

ALTER TABLE participant_table SET (fillfactor = 80);

-- Copy a direct conversation's list part onto both members' rows, with participantId (the other member)
-- in front: the only code that writes inbox_*. The list query's read-through path (a group's row) spells
-- out the same expression; tests/test_lifecycle.py checks that both give the same row after every kind
-- of change. The UPDATE is here rather than in a function the trigger calls: one executor level less,
-- measured 0.30-0.34 -> 0.17-0.25 ms a send.
CREATE FUNCTION copy_direct_list_rows() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE participant_table p
    SET inbox_activity_at = NEW.last_activity_at,
        inbox_last_seq = NEW.last_seq,
        inbox_fragment = '"participantId":'
            || coalesce(json_string(CASE WHEN NEW.first_member_id = p.user_id THEN NEW.second_member_id
                                         ELSE NEW.first_member_id END), '""')
            || ',' || coalesce(NEW.list_json, list_row_part(
                   NEW.conversation_id, NEW.title, NEW.is_group, NEW.last_activity_at, NEW.latest_message_id,
                   NEW.latest_sender_id,
                   (SELECT m.content FROM message_table m WHERE m.message_id = NEW.latest_message_id),
                   NEW.latest_deleted, NEW.last_change_seq))
    WHERE p.conversation_id = NEW.conversation_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversation_copies_direct_list_rows
    AFTER INSERT OR UPDATE ON conversation_table
    FOR EACH ROW WHEN (NOT NEW.is_group)
    EXECUTE FUNCTION copy_direct_list_rows();

-- Existing direct conversations: a write of each row makes the trigger copy it (an UPDATE that changes
-- nothing still fires row triggers).
UPDATE conversation_table SET last_seq = last_seq WHERE NOT is_group;
