-- 0004: each participant row carries what its member's conversation list shows (an inbox row).
--
-- With 0003 the list read participant -> conversation: one primary-key probe of conversation_table
-- per listed row (500 for a heavy user) and, for groups, one more lookup of another member. Now a
-- user's list is one range of participant_user_activity_idx and the rows it points to; nothing else.
--
-- * title, is_group and peer_id (the member shown as participantId: a direct conversation's other
--   member, a group's first other member by id) are written when the conversation is created and
--   never change: there is no rename and membership is fixed at creation.
-- * latest_seq and the latest message's id, sender and content are written by send_message in the
--   UPDATE that already bumps every participant's last_activity_at (so no extra row or statement),
--   from the position allocated under the conversation row's lock: they cannot disagree with
--   conversation_table.last_seq, which stays the allocator. unreadCount = latest_seq - last_read_seq.
-- * The content is copied only up to 400 characters (NULL above; the list then reads it from
--   message_table by latest_message_id). Most messages are short; a long one copied into every
--   member's row would be written once per member (100 x 4,000 characters for the largest group),
--   and out of line (TOAST) at that: measured, a 4,000-character send to 100 members cost 3.8 ms
--   against 1.4 ms. 400 characters keep the row under PostgreSQL's 2 kB TOAST threshold.
-- * The conversation row's copy of the latest message (0003) has no reader left and is dropped, so
--   content is not written twice. Run this migration together with deploying the code that expects
--   it: until both are live, the previous code's list and send queries (which read or write the
--   dropped columns) fail: a 500 on the list, an error frame on a send, whose retry with the same
--   tempMessageId stores the message once.

ALTER TABLE participant_table
    ADD COLUMN title             text    NOT NULL DEFAULT '',
    ADD COLUMN is_group          boolean NOT NULL DEFAULT false,
    ADD COLUMN peer_id           text,
    ADD COLUMN latest_seq        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN latest_message_id uuid,
    ADD COLUMN latest_sender_id  text,
    ADD COLUMN latest_content    text;

-- Existing rows: copy from their conversation once.
UPDATE participant_table p
SET title = c.title,
    is_group = c.is_group,
    peer_id = CASE
        WHEN NOT c.is_group THEN
            CASE WHEN c.direct_user_low = p.user_id THEN c.direct_user_high ELSE c.direct_user_low END
        ELSE (SELECT min(o.user_id) FROM participant_table o
              WHERE o.conversation_id = p.conversation_id AND o.user_id <> p.user_id)
    END,
    latest_seq = c.last_seq,
    latest_message_id = c.latest_message_id,
    latest_sender_id = c.latest_sender_id,
    latest_content = CASE WHEN char_length(c.latest_content) <= 400 THEN c.latest_content END
FROM conversation_table c
WHERE c.conversation_id = p.conversation_id;

ALTER TABLE conversation_table
    DROP COLUMN latest_message_id,
    DROP COLUMN latest_sender_id,
    DROP COLUMN latest_content;
