-- 0007: groups people can run: roles, mute, and a participantId that follows membership changes.
--
-- * role: a group's creator is its owner; members are admin or member (CONTRACT.md section 6).
--   Direct conversations have two members and no roles to speak of: both read 'member'.
--   participant_role_idx finds an owner's successor (the admin who joined first, else the member
--   who joined first) without reading the whole group, so removing the owner costs what removing
--   anyone costs.
-- * muted: per member; shown on the member's list row (later offline notifications honour it).
-- * first_member_id / second_member_id: the conversation's two lowest member ids. A list row's
--   participantId is the other member of a direct conversation and a group's first other member by
--   id; both are "the lower of these two that is not me". Kept on the conversation row, a removal
--   or an add updates one row (looking the next lowest up by primary key when one of the two
--   leaves) instead of rewriting every member's copy, which is what participant.peer_id (0004)
--   would have needed; peer_id is dropped.

ALTER TABLE participant_table
    ADD COLUMN role  text    NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    ADD COLUMN muted boolean NOT NULL DEFAULT false;

UPDATE participant_table p
SET role = 'owner'
FROM conversation_table c
WHERE c.conversation_id = p.conversation_id AND c.is_group AND p.user_id = c.created_by;

CREATE INDEX participant_role_idx ON participant_table (conversation_id, role, joined_at, user_id);

ALTER TABLE conversation_table
    ADD COLUMN first_member_id  text,
    ADD COLUMN second_member_id text;

UPDATE conversation_table c
SET first_member_id = lowest.ids[1], second_member_id = lowest.ids[2]
FROM (
    SELECT conversation_id, (array_agg(user_id ORDER BY user_id))[1:2] AS ids
    FROM participant_table
    GROUP BY conversation_id
) lowest
WHERE lowest.conversation_id = c.conversation_id;

ALTER TABLE participant_table DROP COLUMN peer_id;
