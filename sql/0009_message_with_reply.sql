-- 0009: one definition of "a message as the API shows it": the message row with the current state of
-- the message it replies to (a 200-character snippet; an edit or deletion of the original shows at once).
-- The queries that read messages (queries/messages.sql) select from this view instead of each spelling
-- out the same join. The planner inlines it: a page of 50 probes the replied-to messages of those 50 rows.
-- lock_message keeps its own copy of the join: FOR UPDATE cannot reach through the outer join of a view.

CREATE VIEW message_with_reply AS
SELECT m.message_id, m.conversation_id, m.sender_id, m.temp_message_id, m.content, m.sent_at, m.seq,
       m.change_seq, m.version, m.edited_at, m.deleted_at, m.reply_to, m.mentions, m.reactions,
       r.sender_id AS reply_sender_id, left(r.content, 200) AS reply_content,
       r.deleted_at IS NOT NULL AS reply_deleted
FROM message_table m
LEFT JOIN LATERAL (
    SELECT r1.sender_id, r1.content, r1.deleted_at
    FROM message_table r1
    WHERE r1.message_id = m.reply_to AND r1.conversation_id = m.conversation_id
    LIMIT 1
) r ON true;
