-- name: direct_peers
-- The other member of each of a user's direct conversations (who hears the user's presence).
-- The user's rows by participant_user_idx, each conversation by primary key, its other row by primary key.
SELECT other.user_id
FROM participant_table mine
JOIN conversation_table c ON c.conversation_id = mine.conversation_id AND NOT c.is_group
JOIN participant_table other ON other.conversation_id = mine.conversation_id AND other.user_id <> mine.user_id
WHERE mine.user_id = :user_id;

-- name: users_sharing_a_conversation
-- Those of some users who share at least one conversation with the caller (whose presence the caller may see).
-- Per listed user: their rows by participant_user_idx, each probing the caller's row by primary key.
SELECT u.user_id
FROM unnest(CAST(:user_ids AS text[])) AS u(user_id)
WHERE EXISTS (
    SELECT 1
    FROM participant_table theirs
    JOIN participant_table mine ON mine.conversation_id = theirs.conversation_id AND mine.user_id = :caller
    WHERE theirs.user_id = u.user_id
);
