-- name: current_members
-- Which of these users are members of the conversation now (a queued fan-out shard's re-check; one primary-key probe each).
SELECT p.user_id
FROM unnest(CAST(:user_ids AS text[])) AS u(user_id)
CROSS JOIN LATERAL (
    -- One probe of both keys per user, whatever the planner guesses of the group's size (LIMIT keeps
    -- it a probe: as a join or EXISTS the planner read the whole group, taking it for a small one).
    SELECT p1.user_id FROM participant_table p1
    WHERE p1.conversation_id = :conversation_id AND p1.user_id = u.user_id
    LIMIT 1
) p;
