-- 0008: messages that live: edits, tombstones, reactions, replies, mentions, and a change feed.
--
-- * change_seq: every change in a conversation (a new message, an edit, a deletion, a reaction change)
--   takes the conversation's next change number (conversation_table.last_change_seq + 1, under that
--   row's lock), and the message it changed carries it. A message holds only its latest change, so
--   GET /conversations/{id}/changes?after=N is one range of message_change_seq_key: every message
--   changed since N, each once, in its current state, at a cost that follows the page, never the
--   conversation's length. Existing messages start with change_seq = seq (their one change so far).
-- * version: 1 when sent, + 1 per edit, deletion or reaction change; a client keeps the highest seen.
-- * A deletion is a tombstone, never a row deletion: the (conversation, sender, tempMessageId) key is
--   what makes sends idempotent, so a late retry of the original send meets the tombstone. Its
--   content is erased ('') and its reactions dropped; deleted_at says it is gone.
-- * reactions: the counts per emoji on the message row ({"👍": 2}), kept exact by updating them
--   under the conversation's lock in the statement that changes reaction_table, which says who
--   reacted with what (a user counts once per emoji per message; myReactions).
-- * reply_to and mentions are set at send time; a reply's snippet is read from the original at read
--   time, so an edit or deletion of the original shows everywhere.
-- * participant_table.mention_count: mentions of the member above their read position, + 1 per
--   mentioning send (one row per mentioned member, never per group member), back to 0 when a read
--   moves the watermark to the latest message, - 1 when an unread mention's message is deleted.
-- * conversation_table.latest_deleted: the latest message is a tombstone (list rows: latestDeleted).

ALTER TABLE message_table
    ADD COLUMN change_seq bigint      NOT NULL DEFAULT 0,
    ADD COLUMN version    integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    ADD COLUMN edited_at  timestamptz,
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN reply_to   uuid,
    ADD COLUMN mentions   text[],
    ADD COLUMN reactions  jsonb       NOT NULL DEFAULT '{}';

UPDATE message_table SET change_seq = seq;

ALTER TABLE message_table
    ADD CONSTRAINT message_change_seq_key UNIQUE (conversation_id, change_seq);

ALTER TABLE conversation_table
    ADD COLUMN last_change_seq bigint  NOT NULL DEFAULT 0,
    ADD COLUMN latest_deleted  boolean NOT NULL DEFAULT false;

UPDATE conversation_table SET last_change_seq = last_seq WHERE last_seq > 0;

ALTER TABLE participant_table
    ADD COLUMN mention_count integer NOT NULL DEFAULT 0 CHECK (mention_count >= 0);

CREATE TABLE reaction_table (
    message_id  uuid NOT NULL REFERENCES message_table ON DELETE CASCADE,
    user_id     text NOT NULL,
    emoji       text NOT NULL CHECK (char_length(emoji) BETWEEN 1 AND 32),
    reacted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (message_id, user_id, emoji)
);
