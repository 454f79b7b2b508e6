-- name: create_group_conversation
-- Create a group conversation and its participants in one atomic statement.
WITH conversation AS (
    INSERT INTO conversation_table (conversation_id, title, is_group, created_by)
    VALUES (:conversation_id, :title, true, :created_by)
    RETURNING conversation_id, created_at
), members AS (
    INSERT INTO participant_table (conversation_id, user_id, joined_at, last_activity_at)
    SELECT c.conversation_id, u.user_id, c.created_at, c.created_at
    FROM conversation c, unnest(CAST(:user_ids AS text[])) AS u(user_id)
    RETURNING user_id
)
SELECT c.conversation_id, (SELECT count(*) FROM members) AS member_count
FROM conversation c;

-- name: create_direct_conversation
-- Create the direct conversation of a pair unless it exists (the pair's unique index decides).
WITH conversation AS (
    INSERT INTO conversation_table
        (conversation_id, title, is_group, created_by, direct_user_low, direct_user_high)
    VALUES (:conversation_id, '', false, :created_by, :user_low, :user_high)
    ON CONFLICT (direct_user_low, direct_user_high) WHERE NOT is_group DO NOTHING
    RETURNING conversation_id, created_at
), members AS (
    INSERT INTO participant_table (conversation_id, user_id, joined_at, last_activity_at)
    SELECT c.conversation_id, u.user_id, c.created_at, c.created_at
    FROM conversation c, unnest(ARRAY[CAST(:user_low AS text), CAST(:user_high AS text)]) AS u(user_id)
    RETURNING user_id
)
SELECT c.conversation_id, (SELECT count(*) FROM members) AS member_count
FROM conversation c;

-- name: find_direct_conversation
-- The direct conversation of an ordered pair of users, if any.
SELECT conversation_id
FROM conversation_table
WHERE NOT is_group AND direct_user_low = :user_low AND direct_user_high = :user_high;

-- name: get_member_conversation
-- One conversation with the caller's read state, only if the caller is a participant.
SELECT c.conversation_id, c.title, c.is_group, c.created_by, c.created_at, c.last_seq,
       p.last_read_seq
FROM conversation_table c
JOIN participant_table p ON p.conversation_id = c.conversation_id AND p.user_id = :user_id
WHERE c.conversation_id = :conversation_id;

-- name: list_participants
-- Every participant of a conversation.
SELECT user_id
FROM participant_table
WHERE conversation_id = :conversation_id
ORDER BY user_id;

-- name: list_user_conversations
-- A page of the caller's conversations, newest activity first, after a keyset cursor.
-- Reads participant -> conversation only: the latest message is copied onto the conversation row
-- (0003), and its time is the activity time (send_message writes both from one clock reading; an
-- empty conversation's is its creation time). Only the cells wire.conversation_row_body needs.
SELECT CAST(c.conversation_id AS text) AS conversation_id, c.title, c.is_group,
       p.last_activity_at, GREATEST(c.last_seq - p.last_read_seq, 0) AS unread_count,
       CAST(c.latest_message_id AS text) AS latest_message_id, c.latest_sender_id, c.latest_content,
       -- A direct conversation names its other member itself; only a group looks one up.
       CASE WHEN NOT c.is_group
            THEN CASE WHEN c.direct_user_low = p.user_id THEN c.direct_user_high ELSE c.direct_user_low END
            ELSE (SELECT o.user_id FROM participant_table o
                  WHERE o.conversation_id = p.conversation_id AND o.user_id <> p.user_id
                  ORDER BY o.user_id LIMIT 1)
       END AS participant_id
FROM participant_table p
-- One primary-key probe per row of the page. As a plain join, a user in hundreds of conversations
-- tips the planner into hashing a sequential scan of every conversation; LIMIT 1 keeps it a probe.
CROSS JOIN LATERAL (
    SELECT c1.conversation_id, c1.title, c1.is_group, c1.last_seq, c1.latest_message_id,
           c1.latest_sender_id, c1.latest_content, c1.direct_user_low, c1.direct_user_high
    FROM conversation_table c1
    WHERE c1.conversation_id = p.conversation_id
    LIMIT 1
) c
WHERE p.user_id = :user_id
  AND (p.last_activity_at, p.conversation_id) < (CAST(:cursor_at AS timestamptz), CAST(:cursor_id AS uuid))
  AND (CAST(:unread_only AS boolean) IS NOT TRUE OR p.last_read_seq < c.last_seq)
  AND (CAST(:read_only AS boolean) IS NOT TRUE OR p.last_read_seq >= c.last_seq)
ORDER BY p.last_activity_at DESC, p.conversation_id DESC
LIMIT :limit;
