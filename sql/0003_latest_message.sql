-- 0003: the latest message's id, sender and content, copied onto its conversation row.
--
-- A user's conversation list shows each conversation's latest message. Reading it from
-- message_table meant one probe into the largest index per listed row (500 for a heavy user);
-- with the copy the list reads participant -> conversation and nothing else. send_message
-- writes these columns in the UPDATE that already allocates the position, under the same row
-- lock, so they cannot disagree with last_seq and a send costs no extra statement or row.
-- NULL while the conversation has no message. The latest message's time is not copied: it is
-- already the conversation's (and every participant's) last_activity_at. Content is not indexed.

ALTER TABLE conversation_table
    ADD COLUMN latest_message_id uuid,
    ADD COLUMN latest_sender_id  text,
    ADD COLUMN latest_content    text;

-- Existing conversations: copy their latest message (position last_seq) once.
UPDATE conversation_table c
SET latest_message_id = m.message_id, latest_sender_id = m.sender_id, latest_content = m.content
FROM message_table m
WHERE c.last_seq > 0 AND m.conversation_id = c.conversation_id AND m.seq = c.last_seq;
