-- 0001: conversations, participants with a read watermark, messages with a per-conversation position.
--
-- Design notes:
-- * message_table.seq is a position assigned under the conversation row's lock
--   (conversation_table.last_seq + 1), so order never depends on clocks and is the same for
--   every reader. A rolled-back send rolls the counter back too, so positions are dense
--   (1..last_seq): an offset from the newest end is a seq range, not a scan.
-- * Read state is one watermark per participant (last_read_seq), not a row per message per
--   reader: marking read is one row update whatever the number of unread messages, and
--   unread count is last_seq - last_read_seq (sending moves the sender's watermark to its
--   own message, so every message above the watermark is someone else's).
-- * participant_table.last_activity_at copies the conversation's latest activity so a
--   user's conversation list is an index range scan in activity order, at any page depth.

CREATE TABLE conversation_table (
    conversation_id   uuid PRIMARY KEY,
    title             text        NOT NULL DEFAULT '' CHECK (char_length(title) <= 300),
    is_group          boolean     NOT NULL,
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_activity_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seq          bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    -- A direct conversation's members, ordered, so the pair is unique whichever way round.
    direct_user_low   text,
    direct_user_high  text,
    CHECK (
        (is_group AND direct_user_low IS NULL AND direct_user_high IS NULL)
        OR (NOT is_group AND direct_user_low < direct_user_high)
    )
);

CREATE UNIQUE INDEX conversation_direct_pair_key
    ON conversation_table (direct_user_low, direct_user_high)
    WHERE NOT is_group;

CREATE TABLE participant_table (
    conversation_id   uuid        NOT NULL REFERENCES conversation_table ON DELETE CASCADE,
    user_id           text        NOT NULL,
    joined_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_read_seq     bigint      NOT NULL DEFAULT 0,
    last_read_at      timestamptz,
    last_activity_at  timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- A user's conversations, newest activity first (list and its keyset cursor).
CREATE INDEX participant_user_activity_idx
    ON participant_table (user_id, last_activity_at DESC, conversation_id DESC);

CREATE TABLE message_table (
    message_id        uuid PRIMARY KEY,
    conversation_id   uuid        NOT NULL REFERENCES conversation_table ON DELETE CASCADE,
    seq               bigint      NOT NULL CHECK (seq > 0),
    sender_id         text        NOT NULL,
    temp_message_id   text        NOT NULL CHECK (char_length(temp_message_id) BETWEEN 1 AND 64),
    content           text        NOT NULL,
    sent_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Paging by position, and the latest message of a conversation.
    CONSTRAINT message_conversation_seq_key UNIQUE (conversation_id, seq),
    -- Idempotent send: a retried tempMessageId stores nothing new.
    CONSTRAINT message_idempotency_key UNIQUE (conversation_id, sender_id, temp_message_id)
);
