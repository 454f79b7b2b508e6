-- name: current_members
-- Which of these users are members of the conversation now (a queued fan-out shard's re-check; one primary-key probe each).
SELECT user_id
FROM participant_table
WHERE conversation_id = :conversation_id
  AND user_id = ANY(:user_ids);
