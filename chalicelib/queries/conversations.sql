-- name: create_group_conversation
-- Create a group conversation and its participants in one atomic statement, in time linear in the members.
-- The creator is its owner. A requestId the creator already used returns no row (its group is found by
-- find_requested_group).
-- Safe to re-run: the id is the caller's, so a re-run meets its own row (conversation_table_pkey).
WITH lowest AS (
    -- The two lowest member ids (participantId of every list row, sql/0007): two aggregates over the
    -- array, not one per member.
    SELECT min(u.user_id) AS first_id,
           min(u.user_id) FILTER (WHERE u.user_id > (SELECT min(v) FROM unnest(CAST(:user_ids AS text[])) AS v))
               AS second_id
    FROM unnest(CAST(:user_ids AS text[])) AS u(user_id)
), conversation AS (
    INSERT INTO conversation_table
        (conversation_id, title, is_group, created_by, member_count, create_request_id,
         first_member_id, second_member_id)
    SELECT :conversation_id, :title, true, :created_by, cardinality(CAST(:user_ids AS text[])),
           CAST(:request_id AS text), l.first_id, l.second_id
    FROM lowest l
    ON CONFLICT (created_by, create_request_id) WHERE create_request_id IS NOT NULL DO NOTHING
    RETURNING conversation_id, created_at
), members AS (
    INSERT INTO participant_table (conversation_id, user_id, joined_at, role)
    SELECT c.conversation_id, u.user_id, c.created_at,
           CASE WHEN u.user_id = :created_by THEN 'owner' ELSE 'member' END
    FROM conversation c, unnest(CAST(:user_ids AS text[])) AS u(user_id)
    RETURNING user_id
)
SELECT c.conversation_id, c.created_at, (SELECT count(*) FROM members) AS member_count
FROM conversation c;

-- name: find_requested_group
-- The group a creator already made with this requestId (a retried POST /conversation).
SELECT conversation_id
FROM conversation_table
WHERE created_by = :created_by AND create_request_id = :request_id;

-- name: create_direct_conversation
-- Create the direct conversation of a pair unless it exists (the pair's unique index decides).
-- Safe to re-run: a re-run finds the pair created and returns no row; the pair's id is then looked up.
WITH conversation AS (
    INSERT INTO conversation_table
        (conversation_id, title, is_group, created_by, direct_user_low, direct_user_high, member_count,
         first_member_id, second_member_id)
    VALUES (:conversation_id, '', false, :created_by, :user_low, :user_high, 2, :user_low, :user_high)
    ON CONFLICT (direct_user_low, direct_user_high) WHERE NOT is_group DO NOTHING
    RETURNING conversation_id, created_at
), members AS (
    INSERT INTO participant_table (conversation_id, user_id, joined_at)
    SELECT c.conversation_id, u.user_id, c.created_at
    FROM conversation c,
         (VALUES (CAST(:user_low AS text)), (CAST(:user_high AS text))) AS u(user_id)
    RETURNING user_id
)
SELECT c.conversation_id, c.created_at, (SELECT count(*) FROM members) AS member_count
FROM conversation c;

-- name: find_direct_conversation
-- The direct conversation of an ordered pair of users, if any.
SELECT conversation_id
FROM conversation_table
WHERE NOT is_group AND direct_user_low = :user_low AND direct_user_high = :user_high;

-- name: get_member_conversation
-- One conversation with the caller's read state, only if the caller is a participant; and the position of
-- the message anchor_id names, if it is one of this conversation's (a message page's before=/after=; NULL
-- without one): a page by cursor then takes the round trips of a newest page, this and the range.
SELECT c.conversation_id, c.title, c.is_group, c.created_by, c.created_at, c.last_seq, c.member_count,
       p.last_read_seq, p.role, p.muted,
       (SELECT m.seq FROM message_table m
        WHERE m.message_id = CAST(:anchor_id AS uuid) AND m.conversation_id = c.conversation_id) AS anchor_seq
FROM conversation_table c
JOIN participant_table p ON p.conversation_id = c.conversation_id AND p.user_id = :user_id
WHERE c.conversation_id = :conversation_id;

-- name: list_participants
-- Every participant of a conversation by user id, as ONE json array: pg8000 decodes a row per member in
-- Python (26 ms for 10,000 members), a json cell in one json.loads (6 ms in all). The aggregate reads the
-- subquery in its index order; an ORDER BY inside json_agg would sort the ids again (18.6 ms).
SELECT coalesce(json_agg(p.user_id), '[]') AS user_ids
FROM (
    SELECT user_id FROM participant_table WHERE conversation_id = :conversation_id ORDER BY user_id
) p;

-- name: list_user_conversations
-- A page of the caller's conversations, newest activity first, after a keyset cursor, as the response
-- body itself: the rows of the JSON array, comma-separated (NULL for none; the caller adds the
-- brackets), with the page's row count and its last row's exact activity time and id (the next
-- cursor's). Field by field, a row is sql/0010's list_row_part and the member's own fields.
-- Every participant row of the caller (participant_user_idx), then a top-N sort: the cost follows
-- the caller's number of conversations, never a group's size, and is the same at any page depth.
-- A direct conversation is read from the caller's own row (its inbox_* copy, sql/0010); any other
-- row probes its conversation by primary key (the LATERAL's condition on the outer row skips the
-- probe for the others), and only a latest message over 400 characters costs one more probe
-- (message_table by id). The rows' JSON is text already written by the schema: concatenating it
-- here saves encoding 14 columns per row in SQL and the decoding, rebuilding and re-encoding of them
-- in Python (~3 ms of a 500-row list, docs/performance.md). The aggregates read the sorted subquery
-- in one pass, so the rows stay in its order and the last one is the page's oldest.
SELECT string_agg(page.row_json, ',') AS rows_json,
       count(*) AS row_count,
       min(page.activity_at) AS last_activity_at,
       (array_agg(page.conversation_id))[count(*)] AS last_conversation_id
FROM (
    SELECT m.activity_at, m.conversation_id,
           '{"unreadCount":' || GREATEST(m.last_seq - m.last_read_seq, 0)::text
           || ',"isRead":' || (m.last_seq <= m.last_read_seq)::text
           || ',"muted":' || m.muted::text
           -- role's CHECK allows three plain words: nothing to escape.
           || ',"role":"' || m.role || '"'
           || ',"unreadMentionCount":' || m.mention_count::text
           || ',' || m.conversation_part AS row_json
    FROM (
        SELECT p.conversation_id, p.last_read_seq, p.muted, p.role, p.mention_count,
               coalesce(p.inbox_activity_at, c.last_activity_at) AS activity_at,
               coalesce(p.inbox_last_seq, c.last_seq) AS last_seq,
               -- The same text as the trigger copy_direct_list_rows copies (sql/0010), with to_json
               -- itself for json_string (the IMMUTABLE wrapper the generated column needs): a PL/pgSQL
               -- call less per row.
               coalesce(p.inbox_fragment, '"participantId":'
                   || coalesce(to_json(CASE WHEN c.first_member_id = p.user_id THEN c.second_member_id
                                             ELSE c.first_member_id END)::text, '""')
                   || ',' || coalesce(c.list_json, list_row_part(
                          c.conversation_id, c.title, c.is_group, c.last_activity_at, c.latest_message_id,
                          c.latest_sender_id,
                          (SELECT l.content FROM message_table l WHERE l.message_id = c.latest_message_id),
                          c.latest_deleted, c.last_change_seq))) AS conversation_part
        FROM participant_table p
        -- One primary-key probe per row without a copy. As a plain join, a user in hundreds of
        -- conversations tips the planner into hashing a sequential scan of every conversation.
        LEFT JOIN LATERAL (
            SELECT c1.title, c1.is_group, c1.last_activity_at, c1.last_seq, c1.latest_message_id,
                   c1.latest_sender_id, c1.first_member_id, c1.second_member_id, c1.latest_deleted,
                   c1.last_change_seq, c1.list_json, c1.conversation_id
            FROM conversation_table c1
            WHERE c1.conversation_id = p.conversation_id AND p.inbox_activity_at IS NULL
            LIMIT 1
        ) c ON true
        WHERE p.user_id = :user_id
    ) m
    WHERE (m.activity_at, m.conversation_id) < (CAST(:cursor_at AS timestamptz), CAST(:cursor_id AS uuid))
      AND (CAST(:unread_only AS boolean) IS NOT TRUE OR m.last_read_seq < m.last_seq)
      AND (CAST(:read_only AS boolean) IS NOT TRUE OR m.last_read_seq >= m.last_seq)
    ORDER BY m.activity_at DESC, m.conversation_id DESC
    LIMIT :limit
) page;
