-- The naive design chat backends start with, in its own schema, filled from the same seeded data.
--
-- * Read state is a row per message per participant (message_read), written at send and
--   updated on read: marking a conversation read updates one row per unread message.
-- * No per-conversation position: pages are OFFSET over a sort on send time.
-- * No denormalised activity: the list finds each conversation's latest message itself.
-- * participant's key leads on user_id; nothing leads on conversation_id, so "who is in this
--   conversation" scans the table.
-- Indexes are created after the bulk load (bench/baseline.py), as a restore would.

CREATE SCHEMA baseline;

CREATE TABLE baseline.conversation (
    conversation_id  uuid        NOT NULL,
    title            text        NOT NULL DEFAULT '',
    is_group         boolean     NOT NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE baseline.participant (
    user_id          text        NOT NULL,
    conversation_id  uuid        NOT NULL,
    joined_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE baseline.message (
    message_id       uuid        NOT NULL,
    conversation_id  uuid        NOT NULL,
    sender_id        text        NOT NULL,
    temp_message_id  text        NOT NULL,
    content          text        NOT NULL,
    sent_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE baseline.message_read (
    message_id       uuid        NOT NULL,
    user_id          text        NOT NULL,
    read_at          timestamptz
);
