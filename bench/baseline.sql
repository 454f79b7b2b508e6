-- name: baseline_fill
-- Copy the seeded dataset into the naive schema, in the server (no round trip through Python).
INSERT INTO baseline.conversation (conversation_id, title, is_group, created_by, created_at)
SELECT conversation_id, title, is_group, created_by, created_at FROM conversation_table;
INSERT INTO baseline.participant (user_id, conversation_id, joined_at)
SELECT user_id, conversation_id, joined_at FROM participant_table;
INSERT INTO baseline.message (message_id, conversation_id, sender_id, temp_message_id, content, sent_at)
SELECT message_id, conversation_id, sender_id, temp_message_id, content, sent_at FROM message_table;
-- One read row per message per participant: read (with the message's time) up to the
-- participant's watermark in the seeded data, unread above it.
INSERT INTO baseline.message_read (message_id, user_id, read_at)
SELECT m.message_id, p.user_id, CASE WHEN m.seq <= p.last_read_seq THEN m.sent_at END
FROM message_table m
JOIN participant_table p ON p.conversation_id = m.conversation_id

-- name: baseline_index
-- Keys and indexes of the naive design, built after the load.
ALTER TABLE baseline.conversation ADD PRIMARY KEY (conversation_id);
ALTER TABLE baseline.participant ADD PRIMARY KEY (user_id, conversation_id);
ALTER TABLE baseline.message ADD PRIMARY KEY (message_id);
CREATE INDEX message_conversation_sent_idx ON baseline.message (conversation_id, sent_at);
ALTER TABLE baseline.message_read ADD PRIMARY KEY (message_id, user_id);
ALTER TABLE baseline.participant ADD FOREIGN KEY (conversation_id) REFERENCES baseline.conversation;
ALTER TABLE baseline.message ADD FOREIGN KEY (conversation_id) REFERENCES baseline.conversation;
ALTER TABLE baseline.message_read ADD FOREIGN KEY (message_id) REFERENCES baseline.message

-- name: baseline_list_conversations
-- The caller's conversations: every other participant, a LATERAL latest message, its read row, DISTINCT ON.
SELECT * FROM (
    SELECT DISTINCT ON (c.conversation_id)
           c.conversation_id, c.title, c.is_group, c.created_at,
           lm.message_id AS latest_message_id, lm.sender_id AS latest_sender_id,
           lm.content AS latest_content, lm.sent_at AS latest_sent_at,
           (lm.message_id IS NULL OR lm.sender_id = me.user_id OR r.read_at IS NOT NULL) AS is_read,
           other.user_id AS participant_id
    FROM baseline.participant me
    JOIN baseline.conversation c ON c.conversation_id = me.conversation_id
    JOIN baseline.participant other
      ON other.conversation_id = me.conversation_id AND other.user_id <> me.user_id
    LEFT JOIN LATERAL (
        SELECT m.message_id, m.sender_id, m.content, m.sent_at
        FROM baseline.message m
        WHERE m.conversation_id = c.conversation_id
        ORDER BY m.sent_at DESC
        LIMIT 1
    ) lm ON true
    LEFT JOIN baseline.message_read r ON r.message_id = lm.message_id AND r.user_id = me.user_id
    WHERE me.user_id = :user_id
    ORDER BY c.conversation_id, other.user_id
) rows
ORDER BY coalesce(latest_sent_at, created_at) DESC
LIMIT 1000;

-- name: baseline_is_member
-- Whether the caller is in the conversation.
SELECT 1 AS member FROM baseline.participant WHERE user_id = :user_id AND conversation_id = :conversation_id;

-- name: baseline_message_page
-- A page of messages by OFFSET over a sort on send time.
SELECT message_id, conversation_id, sender_id, content, sent_at
FROM baseline.message
WHERE conversation_id = :conversation_id
ORDER BY sent_at DESC
OFFSET :offset LIMIT :limit;

-- name: baseline_send_message
-- Store a message and a read-state row for every participant (the sender's marked read).
WITH member AS (
    SELECT 1 FROM baseline.participant WHERE user_id = :sender_id AND conversation_id = :conversation_id
), inserted AS (
    INSERT INTO baseline.message (message_id, conversation_id, sender_id, temp_message_id, content)
    SELECT :message_id, :conversation_id, :sender_id, :temp_message_id, :content FROM member
    RETURNING message_id, sent_at
), reads AS (
    INSERT INTO baseline.message_read (message_id, user_id, read_at)
    SELECT i.message_id, p.user_id, CASE WHEN p.user_id = :sender_id THEN i.sent_at END
    FROM inserted i
    JOIN baseline.participant p ON p.conversation_id = :conversation_id
    RETURNING user_id
)
SELECT i.message_id, i.sent_at, ARRAY(SELECT user_id FROM reads ORDER BY user_id) AS participant_ids
FROM inserted i;

-- name: baseline_mark_read
-- Mark every unread message of the conversation read for the caller: one row update per message.
WITH updated AS (
    UPDATE baseline.message_read r
    SET read_at = clock_timestamp()
    FROM baseline.message m
    WHERE m.conversation_id = :conversation_id
      AND r.message_id = m.message_id AND r.user_id = :user_id AND r.read_at IS NULL
    RETURNING r.message_id
)
SELECT (SELECT count(*) FROM updated) AS marked,
       ARRAY(SELECT p.user_id FROM baseline.participant p
             WHERE p.conversation_id = :conversation_id ORDER BY p.user_id) AS participant_ids;

-- name: baseline_unread_reset
-- Benchmark setup, not timed: make the newest :count messages unread again for the reader.
UPDATE baseline.message_read r
SET read_at = NULL
WHERE r.user_id = :user_id
  AND r.message_id IN (SELECT m.message_id FROM baseline.message m
                       WHERE m.conversation_id = :conversation_id
                       ORDER BY m.sent_at DESC LIMIT :count);
