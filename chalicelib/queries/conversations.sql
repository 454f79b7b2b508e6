-- name: create_group_conversation
-- Create a group conversation and its participants in one atomic statement.
WITH conversation AS (
    INSERT INTO conversation_table (conversation_id, title, is_group, created_by)
    VALUES (:conversation_id, :title, true, :created_by)
    RETURNING conversation_id, created_at
), members AS (
    -- Each member's row shows the title and, as participantId, the first other member by id.
    INSERT INTO participant_table
        (conversation_id, user_id, joined_at, last_activity_at, title, is_group, peer_id)
    SELECT c.conversation_id, u.user_id, c.created_at, c.created_at, :title, true,
           (SELECT min(o.user_id) FROM unnest(CAST(:user_ids AS text[])) AS o(user_id) WHERE o.user_id <> u.user_id)
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
    -- Each member's row shows the other member as participantId.
    INSERT INTO participant_table
        (conversation_id, user_id, joined_at, last_activity_at, title, is_group, peer_id)
    SELECT c.conversation_id, u.user_id, c.created_at, c.created_at, '', false, u.peer_id
    FROM conversation c,
         (VALUES (CAST(:user_low AS text), CAST(:user_high AS text)),
                 (CAST(:user_high AS text), CAST(:user_low AS text))) AS u(user_id, peer_id)
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
-- A page of the caller's conversations, newest activity first, after a keyset cursor, as ONE json
-- value: an array of positional rows in the order wire.conversation_row_body unpacks them.
-- Reads participant rows (each carries what its member's list shows, sql/0004) and, only for a
-- latest message over 400 characters, that message's content. The latest message's time is the
-- activity time (send_message writes both from one clock reading; an empty conversation's is its
-- creation time). One json cell instead of 500 rows of 9 cells: pg8000 decodes rows in Python at
-- ~1 us a cell, which cost more than running the query.
SELECT json_agg(
           json_build_array(page.conversation_id, page.title, page.is_group, page.last_activity_at,
                            page.unread_count, page.latest_message_id, page.latest_sender_id,
                            page.latest_content, page.peer_id)
           ORDER BY page.last_activity_at DESC, page.conversation_id DESC
       ) AS page
FROM (
    SELECT p.conversation_id, p.title, p.is_group, p.last_activity_at,
           GREATEST(p.latest_seq - p.last_read_seq, 0) AS unread_count,
           p.latest_message_id, p.latest_sender_id,
           -- Content over 400 characters is not copied onto participant rows (sql/0004): one probe.
           CASE WHEN p.latest_content IS NOT NULL OR p.latest_message_id IS NULL THEN p.latest_content
                ELSE (SELECT m.content FROM message_table m WHERE m.message_id = p.latest_message_id)
           END AS latest_content,
           p.peer_id
    FROM participant_table p
    WHERE p.user_id = :user_id
      AND (p.last_activity_at, p.conversation_id) < (CAST(:cursor_at AS timestamptz), CAST(:cursor_id AS uuid))
      AND (CAST(:unread_only AS boolean) IS NOT TRUE OR p.last_read_seq < p.latest_seq)
      AND (CAST(:read_only AS boolean) IS NOT TRUE OR p.last_read_seq >= p.latest_seq)
    ORDER BY p.last_activity_at DESC, p.conversation_id DESC
    LIMIT :limit
) page;
