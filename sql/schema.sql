-- The current schema: what sql/0001..0009 build, written out as one file to read.
--
-- Nothing applies this file: databases are built and upgraded by the numbered migrations
-- (make migrate, chalicelib/migrations.py, which skips schema.sql). It exists so that the shape of a
-- table is read here rather than replayed in the head from every migration that touched it.
--
-- Each new migration updates this file in the same commit. tests/test_migrations.py enforces it: it
-- builds one scratch database from the migrations and one from this file and fails, showing the
-- diff, unless their schemas are identical (columns in order, types, defaults, constraints and
-- indexes by name). So keep column order as the migrations leave it (ALTER TABLE ADD COLUMN appends)
-- and let PostgreSQL name what the migrations let it name. The why of each change, and its upgrade
-- notes, stay in the migration that made it.

-- Conversations --------------------------------------------------------------------------------
--
-- last_seq is the position allocator: a send takes last_seq + 1 under this row's lock, so message
-- order never depends on clocks and is the same for every reader, and a rolled-back send rolls the
-- counter back too. Positions are dense (1..last_seq): an offset from the newest end is a seq range,
-- not a scan. (0001)
--
-- The row also carries what every member's conversation list shows of it (0005): title, kind,
-- last_activity_at (the latest message's time, or the creation time) and a copy of the latest
-- message's id, sender and content (content up to 400 characters, NULL above: the list then reads
-- message_table). A send writes them in the UPDATE that allocates the position, so they cannot
-- disagree with last_seq, and it writes no member's row: three rows per send at any group size (the
-- message, this row, the sender's read position). Members' lists are ordered by this row's activity
-- at read time. fillfactor 70 keeps that UPDATE a HOT update (no indexed column changes).
-- member_count lets fan-out and receipts choose how to reach a large group; create_request_id is a
-- group creator's optional requestId, so a retried creation returns the group it made.
-- first_member_id / second_member_id are the two lowest member ids: a list row's participantId is
-- the lower one that is not the caller (a direct conversation's other member, a group's first other
-- member by id), kept here so that a membership change updates one row, not every member's. (0007)

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
    latest_message_id uuid,
    latest_sender_id  text,
    latest_content    text,
    member_count      integer     NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    create_request_id text CHECK (char_length(create_request_id) BETWEEN 1 AND 64),
    first_member_id   text,
    second_member_id  text,
    last_change_seq   bigint      NOT NULL DEFAULT 0,
    latest_deleted    boolean     NOT NULL DEFAULT false,
    CHECK (
        (is_group AND direct_user_low IS NULL AND direct_user_high IS NULL)
        OR (NOT is_group AND direct_user_low < direct_user_high)
    )
) WITH (fillfactor = 70);

CREATE UNIQUE INDEX conversation_direct_pair_key
    ON conversation_table (direct_user_low, direct_user_high)
    WHERE NOT is_group;

CREATE UNIQUE INDEX conversation_create_request_key
    ON conversation_table (created_by, create_request_id)
    WHERE create_request_id IS NOT NULL;

-- Participants: membership and read state --------------------------------------------------------
--
-- * Read state is one watermark per member (last_read_seq), not a row per message per reader:
--   marking read is one row update whatever the number of unread messages. Sending moves the
--   sender's watermark to its own message, so every message above it is someone else's and
--   unreadCount = conversation_table.last_seq - last_read_seq. (0001)
-- * role: a group's creator is its owner, the others admin or member; direct conversations' members
--   are both 'member'. participant_role_idx finds an owner's successor (the admin who joined first,
--   else the member who joined first) without reading the whole group. muted is per member. (0007)
-- * A member's list reads their rows by participant_user_idx and each row's conversation by primary
--   key (0005): its cost follows the member's own number of conversations, never a group's size.

CREATE TABLE participant_table (
    conversation_id   uuid        NOT NULL REFERENCES conversation_table ON DELETE CASCADE,
    user_id           text        NOT NULL,
    joined_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_read_seq     bigint      NOT NULL DEFAULT 0,
    last_read_at      timestamptz,
    role              text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    muted             boolean     NOT NULL DEFAULT false,
    mention_count     integer     NOT NULL DEFAULT 0 CHECK (mention_count >= 0),
    PRIMARY KEY (conversation_id, user_id)
);

-- A member's conversations, for the list.
CREATE INDEX participant_user_idx ON participant_table (user_id, conversation_id);

-- An owner's successor: the admin, else the member, who joined first.
CREATE INDEX participant_role_idx ON participant_table (conversation_id, role, joined_at, user_id);

-- Messages --------------------------------------------------------------------------------------
--
-- seq is the message's position (dense, 1..last_seq). Every change of a conversation (a send, an edit,
-- a deletion, a reaction change) takes the conversation's next change number (last_change_seq + 1,
-- under its row's lock) and the message it changed carries it in change_seq; version counts the
-- message's changes. A deletion is a tombstone (content '', reactions gone, deleted_at set), never a
-- row deletion, so the idempotency key still answers a late retry. reply_to and mentions are set at
-- send time; mention_count on participant rows counts unread mentions of the member. (0008)

CREATE TABLE message_table (
    message_id        uuid PRIMARY KEY,
    conversation_id   uuid        NOT NULL REFERENCES conversation_table ON DELETE CASCADE,
    seq               bigint      NOT NULL CHECK (seq > 0),
    sender_id         text        NOT NULL,
    temp_message_id   text        NOT NULL CHECK (char_length(temp_message_id) BETWEEN 1 AND 64),
    content           text        NOT NULL,
    sent_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    change_seq        bigint      NOT NULL DEFAULT 0,
    version           integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    edited_at         timestamptz,
    deleted_at        timestamptz,
    reply_to          uuid,
    mentions          text[],
    reactions         jsonb       NOT NULL DEFAULT '{}',
    -- Paging by position, and the latest message of a conversation.
    CONSTRAINT message_conversation_seq_key UNIQUE (conversation_id, seq),
    -- Idempotent send: a retried tempMessageId stores nothing new.
    CONSTRAINT message_idempotency_key UNIQUE (conversation_id, sender_id, temp_message_id),
    -- The change feed: every message changed after a change number, each once (0008).
    CONSTRAINT message_change_seq_key UNIQUE (conversation_id, change_seq)
);

-- Reactions: who reacted with what (a user counts once per emoji per message; myReactions). The counts
-- live on the message row, updated in the same statement under the conversation's lock. (0008)

CREATE TABLE reaction_table (
    message_id  uuid NOT NULL REFERENCES message_table ON DELETE CASCADE,
    user_id     text NOT NULL,
    emoji       text NOT NULL CHECK (char_length(emoji) BETWEEN 1 AND 32),
    reacted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (message_id, user_id, emoji)
);

-- A message as the API shows it: the row with the current state of the message it replies to (a
-- 200-character snippet), for every query that reads messages (0009).
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

-- Connections -----------------------------------------------------------------------------------
--
-- The user of each open WebSocket connection, in the store of record (0002). Redis is the registry
-- fan-out reads; this is the durable copy of one fact in it, written at $connect and deleted at
-- $disconnect or on a 410, so a frame's sender is still known when Redis is unreachable or lost its
-- data. API Gateway closes every connection after 2 hours, so an older row belongs to a connection
-- whose $disconnect never came: lookups ignore it and each $connect purges a batch (connected_at).

CREATE TABLE connection_table (
    connection_id  text        PRIMARY KEY CHECK (char_length(connection_id) BETWEEN 1 AND 128),
    user_id        text        NOT NULL,
    connected_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX connection_connected_at_idx ON connection_table (connected_at);

-- Session time limits ---------------------------------------------------------------------------------
--
-- Database-level defaults, so the app never sends a SET (which pins an RDS Proxy session): a stalled
-- statement is cancelled by the server before the client's read timeout fires. (0006)

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET statement_timeout = %L', current_database(), '4s');
    EXECUTE format('ALTER DATABASE %I SET lock_timeout = %L', current_database(), '2s');
    EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = %L', current_database(), '15s');
END
$$;
