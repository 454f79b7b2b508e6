-- name: send_message
-- Store a message at the conversation's next position: three rows whatever the group size (the
-- message; the conversation's counter, activity time and latest-message copy, which is what every
-- member's list reads, sql/0005; the sender's own read position). Atomic: a duplicate tempMessageId
-- (unique violation) rolls back the position too, so positions stay dense. No row means the sender
-- is not a participant.
-- Safe to re-run: the message id is the caller's, so a re-run meets its own row by the idempotency
-- key and the repository recognises it.
WITH allocated AS (
    UPDATE conversation_table c
    SET last_seq = c.last_seq + 1, last_activity_at = clock_timestamp(),
        latest_message_id = CAST(:message_id AS uuid), latest_sender_id = :sender_id,
        -- Long content is not copied; the list reads it from message_table.
        latest_content = CASE WHEN char_length(CAST(:content AS text)) <= 400 THEN CAST(:content AS text) END
    WHERE c.conversation_id = :conversation_id
      AND EXISTS (
          SELECT 1 FROM participant_table p
          WHERE p.conversation_id = c.conversation_id AND p.user_id = :sender_id
      )
    RETURNING c.last_seq AS seq, c.last_activity_at AS sent_at, c.member_count
), inserted AS (
    INSERT INTO message_table
        (message_id, conversation_id, seq, sender_id, temp_message_id, content, sent_at)
    SELECT CAST(:message_id AS uuid), :conversation_id, a.seq, :sender_id, :temp_message_id,
           CAST(:content AS text), a.sent_at
    FROM allocated a
    RETURNING message_id, seq, sent_at
), sender_read AS (
    UPDATE participant_table p
    SET last_read_seq = GREATEST(p.last_read_seq, i.seq), last_read_at = i.sent_at
    FROM inserted i
    WHERE p.conversation_id = :conversation_id AND p.user_id = :sender_id
    RETURNING p.user_id
)
SELECT i.message_id, i.seq, i.sent_at, a.member_count, (SELECT count(*) FROM sender_read) AS sender_rows,
       -- The members to fan out to, read here only for a small conversation (one round trip for a
       -- DM); a larger one's are read apart from the write (repository.participants).
       CASE WHEN a.member_count <= :inline_members THEN
           ARRAY(SELECT o.user_id FROM participant_table o
                 WHERE o.conversation_id = :conversation_id ORDER BY o.user_id)
       END AS participant_ids
FROM inserted i, allocated a;

-- name: find_sent_message
-- The message a sender already stored under this tempMessageId (idempotent retry).
SELECT m.message_id, m.conversation_id, m.sender_id, m.temp_message_id, m.content, m.sent_at, m.seq
FROM message_table m
WHERE m.conversation_id = :conversation_id
  AND m.sender_id = :sender_id
  AND m.temp_message_id = :temp_message_id;

-- name: messages_in_seq_range
-- Messages whose position lies in (low, high], newest first.
SELECT message_id, conversation_id, sender_id, content, sent_at, seq, temp_message_id
FROM message_table
WHERE conversation_id = :conversation_id AND seq > :low AND seq <= :high
ORDER BY seq DESC;

-- name: message_position
-- The position of a message inside a given conversation.
SELECT seq
FROM message_table
WHERE message_id = :message_id AND conversation_id = :conversation_id;

-- name: mark_read
-- Move the reader's watermark to the latest message; reports where it stands when this request moved it.
-- One row update however many messages were unread; a read that moves nothing writes nothing. No row
-- means not a participant. The read time is the caller's (:read_at): a re-run whose first attempt
-- committed unseen (a lost connection) finds the row carrying it, rewrites it and so still reports the
-- receipt, even when it started before that attempt committed (the UPDATE re-checks the newest row).
-- Safe to re-run: for that same reason.
WITH me AS (
    SELECT c.last_seq, c.member_count
    FROM participant_table p
    JOIN conversation_table c ON c.conversation_id = p.conversation_id
    WHERE p.conversation_id = :conversation_id AND p.user_id = :user_id
), advanced AS (
    UPDATE participant_table p
    SET last_read_seq = GREATEST(p.last_read_seq, me.last_seq), last_read_at = CAST(:read_at AS timestamptz)
    FROM me
    WHERE p.conversation_id = :conversation_id AND p.user_id = :user_id
      AND (p.last_read_seq < me.last_seq OR p.last_read_at = CAST(:read_at AS timestamptz))
    RETURNING p.last_read_seq, p.last_read_at
)
SELECT me.last_seq, me.member_count, a.last_read_seq, a.last_read_at,
       (SELECT m.message_id FROM message_table m
        WHERE m.conversation_id = :conversation_id AND m.seq = a.last_read_seq) AS last_read_message_id,
       -- Who hears the receipt: the members, only when it moved and the group is small enough
       -- (RECEIPTS_MAX_MEMBERS); larger groups read each other's positions over REST.
       CASE WHEN a.last_read_seq IS NOT NULL AND me.member_count <= :receipts_max_members THEN
           ARRAY(SELECT o.user_id FROM participant_table o
                 WHERE o.conversation_id = :conversation_id ORDER BY o.user_id)
       END AS participant_ids
FROM me
LEFT JOIN advanced a ON true;
