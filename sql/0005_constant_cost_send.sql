-- 0005: a send writes the same rows whatever the group size; the list is ordered at read time.
--
-- With 0004 a send copied its message onto every member's participant row (an "inbox row"), so a
-- send to 10,000 members rewrote 10,000 rows (5.3 MiB of WAL, 221 ms) and serialized every sender
-- behind it. Now a send writes three rows, always: the message, its conversation's row (the
-- position counter, the activity time and a copy of the latest message) and the sender's own
-- participant row (read position). No member row changes.
--
-- * The conversation row carries what every member's list shows of it: title, kind, activity time,
--   last_seq and the latest message's id, sender and content (up to 400 characters; NULL above, the
--   list then reads message_table). One row, written under the lock that allocates the position,
--   so it cannot disagree with last_seq. fillfactor 70 leaves room on its page so that this update
--   is a HOT update (no index entry written: no indexed column changes).
-- * A member's list is their participant rows (participant_user_idx), each joined to its
--   conversation row by primary key and ordered by the conversation's activity at read time: the
--   cost grows with the member's own number of conversations, never with a group's size, and a
--   page at any depth costs the same (see docs/performance.md for the measured alternatives).
-- * Unread count is conversation.last_seq - participant.last_read_seq; a send moves the sender's
--   own watermark, so every message above a member's watermark is someone else's.
-- * member_count is kept on the conversation row so that fan-out and read receipts can decide how
--   to reach a large group without counting it on every frame.
-- * create_request_id is the client's optional requestId of POST /conversation: a retried group
--   creation (its reply lost) returns the group the first attempt made instead of a second one.
-- * Old participant copies (title, is_group, latest_*, last_activity_at) are dropped with their index.
--   Deploy the code that expects this schema together with it (as for 0004): until both are live,
--   the other half's list and send queries fail, and a send's retry with the same tempMessageId
--   stores it once.

ALTER TABLE conversation_table
    ADD COLUMN latest_message_id uuid,
    ADD COLUMN latest_sender_id  text,
    ADD COLUMN latest_content    text,
    ADD COLUMN member_count      integer NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    ADD COLUMN create_request_id text CHECK (char_length(create_request_id) BETWEEN 1 AND 64);

ALTER TABLE conversation_table SET (fillfactor = 70);

-- Existing conversations: their latest message (position last_seq) and their member count, once.
UPDATE conversation_table c
SET latest_message_id = m.message_id,
    latest_sender_id = m.sender_id,
    latest_content = CASE WHEN char_length(m.content) <= 400 THEN m.content END
FROM message_table m
WHERE c.last_seq > 0 AND m.conversation_id = c.conversation_id AND m.seq = c.last_seq;

UPDATE conversation_table c
SET member_count = counted.n
FROM (SELECT conversation_id, count(*) AS n FROM participant_table GROUP BY conversation_id) counted
WHERE counted.conversation_id = c.conversation_id;

CREATE UNIQUE INDEX conversation_create_request_key
    ON conversation_table (created_by, create_request_id)
    WHERE create_request_id IS NOT NULL;

-- A member's conversations, for the list (the primary key leads with the conversation instead).
CREATE INDEX participant_user_idx ON participant_table (user_id, conversation_id);

DROP INDEX participant_user_activity_idx;

ALTER TABLE participant_table
    DROP COLUMN last_activity_at,
    DROP COLUMN title,
    DROP COLUMN is_group,
    DROP COLUMN latest_seq,
    DROP COLUMN latest_message_id,
    DROP COLUMN latest_sender_id,
    DROP COLUMN latest_content;
