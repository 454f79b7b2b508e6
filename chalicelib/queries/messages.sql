-- name: send_message
-- Store a message at the conversation's next position: a constant number of rows whatever the group
-- size (the message; the conversation's counters, activity time and latest-message copy, which is what
-- every member's list reads, sql/0005; the sender's own read position; one row per mentioned member,
-- sql/0008). Atomic: a duplicate tempMessageId (unique violation) rolls back the position too, so
-- positions stay dense. No row means the sender is not a participant. replyTo and mentions are checked
-- beforehand (check_message_refs).
-- Safe to re-run: the message id is the caller's, so a re-run meets its own row by the idempotency
-- key and the repository recognises it.
WITH allocated AS (
    UPDATE conversation_table c
    SET last_seq = c.last_seq + 1, last_change_seq = c.last_change_seq + 1, last_activity_at = clock_timestamp(),
        latest_message_id = CAST(:message_id AS uuid), latest_sender_id = :sender_id, latest_deleted = false,
        -- Long content is not copied; the list reads it from message_table.
        latest_content = CASE WHEN char_length(CAST(:content AS text)) <= 400 THEN CAST(:content AS text) END
    WHERE c.conversation_id = :conversation_id
      AND EXISTS (
          SELECT 1 FROM participant_table p
          WHERE p.conversation_id = c.conversation_id AND p.user_id = :sender_id
      )
    RETURNING c.last_seq AS seq, c.last_change_seq AS change_seq, c.last_activity_at AS sent_at, c.member_count
), inserted AS (
    INSERT INTO message_table
        (message_id, conversation_id, seq, change_seq, sender_id, temp_message_id, content, sent_at,
         reply_to, mentions)
    SELECT CAST(:message_id AS uuid), :conversation_id, a.seq, a.change_seq, :sender_id, :temp_message_id,
           CAST(:content AS text), a.sent_at, CAST(:reply_to AS uuid), CAST(:mentions AS text[])
    FROM allocated a
    RETURNING message_id, seq, change_seq, sent_at
), sender_read AS (
    UPDATE participant_table p
    SET last_read_seq = GREATEST(p.last_read_seq, i.seq), last_read_at = i.sent_at
    FROM inserted i
    WHERE p.conversation_id = :conversation_id AND p.user_id = :sender_id
    RETURNING p.user_id
), mentioned AS (
    UPDATE participant_table p
    SET mention_count = p.mention_count + 1
    FROM inserted i
    -- The cardinality test is on a parameter alone, a one-time filter: a send without mentions touches
    -- no participant here. Without it the prepared statement's generic plan, which takes a group for a
    -- couple of members, scanned all of the conversation's participant rows (3.3 ms at 10,000 members).
    WHERE cardinality(CAST(:mentions AS text[])) > 0
      AND (p.conversation_id, p.user_id) IN (
          SELECT CAST(:conversation_id AS uuid), u.user_id FROM unnest(CAST(:mentions AS text[])) AS u(user_id)
      )
      AND p.user_id <> :sender_id
    RETURNING p.user_id
)
SELECT i.message_id, i.seq, i.change_seq, i.sent_at, a.member_count,
       (SELECT count(*) FROM sender_read) + (SELECT count(*) FROM mentioned) AS member_rows,
       -- The members to fan out to, read here only for a small conversation (one round trip for a
       -- DM); a larger one's are read apart from the write (repository.participants).
       CASE WHEN a.member_count <= :inline_members THEN
           ARRAY(SELECT o.user_id FROM participant_table o
                 WHERE o.conversation_id = :conversation_id ORDER BY o.user_id)
       END AS participant_ids,
       r.sender_id AS reply_sender_id, left(r.content, 200) AS reply_content,
       r.deleted_at IS NOT NULL AS reply_deleted
FROM inserted i
CROSS JOIN allocated a
LEFT JOIN message_table r ON r.message_id = CAST(:reply_to AS uuid) AND r.conversation_id = :conversation_id;

-- name: check_message_refs
-- Whether a send's replyTo is a message of this conversation, and how many of its mentions are members.
SELECT (CAST(:reply_to AS uuid) IS NULL
        OR EXISTS (SELECT 1 FROM message_table m
                   WHERE m.message_id = CAST(:reply_to AS uuid) AND m.conversation_id = :conversation_id))
           AS reply_ok,
       (SELECT count(*) FROM participant_table p
        WHERE p.conversation_id = :conversation_id AND p.user_id = ANY(CAST(:mentions AS text[]))) AS members_mentioned;

-- name: find_sent_message
-- The message a sender already stored under this tempMessageId (idempotent retry), in its current state.
SELECT *
FROM message_with_reply m
WHERE m.conversation_id = :conversation_id
  AND m.sender_id = :sender_id
  AND m.temp_message_id = :temp_message_id;

-- name: messages_in_seq_range
-- Messages whose position lies in (low, high], newest first, in their current state.
SELECT *
FROM message_with_reply m
WHERE m.conversation_id = :conversation_id AND m.seq > :low AND m.seq <= :high
ORDER BY m.seq DESC;

-- name: changes_after
-- Every message changed after a change number, each once in its current state, oldest change first:
-- one range of message_change_seq_key, the same cost at any depth (sql/0008).
SELECT *
FROM message_with_reply m
WHERE m.conversation_id = :conversation_id AND m.change_seq > :after
ORDER BY m.change_seq
LIMIT :limit;

-- name: my_reactions
-- The caller's own reactions on some messages (a page of history), for myReactions.
SELECT message_id, emoji
FROM reaction_table
WHERE message_id = ANY(CAST(:message_ids AS uuid[])) AND user_id = :user_id
ORDER BY message_id, reacted_at, emoji;

-- name: lock_message
-- Inside a change's transaction, after lock_conversation: the message as it stands, locked. The join of
-- message_with_reply (sql/0009) written out: FOR UPDATE cannot reach through a view's outer join.
SELECT m.message_id, m.conversation_id, m.sender_id, m.temp_message_id, m.content, m.sent_at, m.seq,
       m.change_seq, m.version, m.edited_at, m.deleted_at, m.reply_to, m.mentions, m.reactions,
       r.sender_id AS reply_sender_id, left(r.content, 200) AS reply_content, r.deleted_at IS NOT NULL AS reply_deleted
FROM message_table m
LEFT JOIN LATERAL (
    -- The replied-to message's current state (a snippet: edits and deletions of it show at once).
    SELECT r1.sender_id, r1.content, r1.deleted_at FROM message_table r1
    WHERE r1.message_id = m.reply_to AND r1.conversation_id = m.conversation_id
    LIMIT 1
) r ON true
WHERE m.message_id = :message_id AND m.conversation_id = :conversation_id
FOR UPDATE OF m;

-- name: edit_message
-- Replace a message's content: next change number, version + 1; the list's copy if it is the latest.
WITH allocated AS (
    UPDATE conversation_table c
    SET last_change_seq = c.last_change_seq + 1,
        latest_content = CASE WHEN c.latest_message_id = CAST(:message_id AS uuid) THEN
                             CASE WHEN char_length(CAST(:content AS text)) <= 400 THEN CAST(:content AS text) END
                         ELSE c.latest_content END
    WHERE c.conversation_id = :conversation_id
    RETURNING c.last_change_seq
)
UPDATE message_table m
SET content = CAST(:content AS text), edited_at = clock_timestamp(), version = m.version + 1,
    change_seq = a.last_change_seq
FROM allocated a
WHERE m.message_id = CAST(:message_id AS uuid)
RETURNING m.change_seq, m.version, m.edited_at;

-- name: delete_message
-- Make a message a tombstone: content erased, reactions dropped, next change number, version + 1; the
-- list's copy if it is the latest; unread mentions of it no longer counted.
WITH allocated AS (
    UPDATE conversation_table c
    SET last_change_seq = c.last_change_seq + 1,
        latest_content = CASE WHEN c.latest_message_id = CAST(:message_id AS uuid) THEN '' ELSE c.latest_content END,
        latest_deleted = c.latest_deleted OR c.latest_message_id = CAST(:message_id AS uuid)
    WHERE c.conversation_id = :conversation_id
    RETURNING c.last_change_seq
), unreactions AS (
    DELETE FROM reaction_table WHERE message_id = CAST(:message_id AS uuid) RETURNING 1
), unmentioned AS (
    UPDATE participant_table p
    SET mention_count = p.mention_count - 1
    FROM message_table m
    WHERE m.message_id = CAST(:message_id AS uuid) AND p.conversation_id = m.conversation_id
      AND p.user_id = ANY(m.mentions) AND p.user_id <> m.sender_id
      AND p.last_read_seq < m.seq AND p.mention_count > 0
    RETURNING 1
)
UPDATE message_table m
SET content = '', reactions = '{}', deleted_at = clock_timestamp(), version = m.version + 1,
    change_seq = a.last_change_seq
FROM allocated a
WHERE m.message_id = CAST(:message_id AS uuid)
RETURNING m.change_seq, m.version, m.deleted_at, (SELECT count(*) FROM unreactions) AS reactions_dropped,
          (SELECT count(*) FROM unmentioned) AS mentions_dropped;

-- name: react
-- Add or take back one user's reaction; when it changed anything, the counts on the message row
-- change with it (exact: the message is locked), with the next change number and version + 1. No row:
-- nothing changed (a repeated reaction).
WITH added AS (
    INSERT INTO reaction_table (message_id, user_id, emoji)
    SELECT CAST(:message_id AS uuid), :user_id, :emoji
    WHERE CAST(:add AS boolean)
    ON CONFLICT DO NOTHING
    RETURNING 1
), removed AS (
    DELETE FROM reaction_table
    WHERE NOT CAST(:add AS boolean)
      AND message_id = CAST(:message_id AS uuid) AND user_id = :user_id AND emoji = :emoji
    RETURNING 1
), delta AS (
    SELECT (SELECT count(*) FROM added) - (SELECT count(*) FROM removed) AS n
), allocated AS (
    UPDATE conversation_table c
    SET last_change_seq = c.last_change_seq + 1
    FROM delta d
    WHERE c.conversation_id = :conversation_id AND d.n <> 0
    RETURNING c.last_change_seq
)
UPDATE message_table m
SET reactions = CASE
        WHEN COALESCE(CAST(m.reactions ->> :emoji AS integer), 0) + d.n <= 0 THEN m.reactions - CAST(:emoji AS text)
        ELSE jsonb_set(m.reactions, ARRAY[CAST(:emoji AS text)],
                       to_jsonb(COALESCE(CAST(m.reactions ->> :emoji AS integer), 0) + d.n))
    END,
    version = m.version + 1,
    change_seq = a.last_change_seq
FROM allocated a, delta d
WHERE m.message_id = CAST(:message_id AS uuid)
RETURNING m.reactions, m.change_seq, m.version;

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
    SET last_read_seq = GREATEST(p.last_read_seq, me.last_seq), last_read_at = CAST(:read_at AS timestamptz),
        mention_count = 0
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
