"""Every per-request query in chalicelib/queries uses the index it was written for (style rule 4).

The module's own database (a clone of the migrated template) gets enough rows for the planner to prefer indexes
on its own (no ``enable_seqscan`` tricks): a few thousand conversations, 100,000 messages, then ANALYZE. Each query is
EXPLAINed with realistic parameters; its plan must name the expected indexes and never scan message_table,
participant_table or connection_table sequentially. A query added without an entry here fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.config import settings_from_env
from chalicelib.db import Database
from chalicelib.sql import load_queries
from tests.databases import connect

CONVERSATIONS = 5_000
MESSAGES_EACH = 20
BIG_TABLES = ("message_table", "participant_table", "connection_table", "reaction_table")
# query name -> tables its plan must not read at all
UNTOUCHED: dict[str, set[str]] = {
    # The latest message is copied onto the conversation row (sql/0005): the list reads message_table
    # only by primary key for content over 400 characters, and connections never.
    "list_user_conversations": {"connection_table"},
}

# query name -> indexes its plan must use
EXPECTED: dict[str, set[str]] = {
    "create_group_conversation": set(),
    "create_direct_conversation": {"conversation_direct_pair_key"},
    "find_requested_group": {"conversation_create_request_key"},
    "find_direct_conversation": {"conversation_direct_pair_key"},
    "get_member_conversation": {
        "conversation_table_pkey",
        "participant_table_pkey|participant_user_idx",
        "message_table_pkey",
    },
    "list_participants": {"participant_table_pkey|participant_role_idx"},
    "list_user_conversations": {"participant_user_idx", "conversation_table_pkey", "message_table_pkey"},
    "send_message": {"conversation_table_pkey", "participant_table_pkey|participant_user_idx"},
    "find_sent_message": {"message_idempotency_key"},
    "messages_in_seq_range": {"message_conversation_seq_key"},
    "mark_read": {"participant_table_pkey|participant_user_idx", "message_conversation_seq_key"},
    "save_connection": {"connection_connected_at_idx", "connection_table_pkey"},
    "connection_user": {"connection_table_pkey"},
    "delete_connection": {"connection_table_pkey"},
    "connection_opened_within": {"connection_table_pkey"},
    "current_members": {"participant_table_pkey|participant_user_idx"},
    # Groups (sql/0007, queries/members.sql)
    "lock_conversation": {
        "conversation_table_pkey",
        "participant_table_pkey|participant_user_idx|participant_role_idx",
    },
    # One primary-key probe per listed user, never a filter over the whole group.
    "member_roles": {"participant_table_pkey|participant_user_idx"},
    "insert_members": {"participant_table_pkey"},
    "delete_member": {"participant_table_pkey|participant_user_idx"},
    "owner_successor": {"participant_role_idx"},
    "set_member_role": {"participant_table_pkey|participant_user_idx"},
    "recount_members": {"conversation_table_pkey", "participant_table_pkey|participant_role_idx"},
    "rename_conversation": {"conversation_table_pkey"},
    "set_muted": {"participant_table_pkey|participant_user_idx"},
    "members_page": {"participant_table_pkey|participant_role_idx", "message_conversation_seq_key"},
    # Presence (queries/signals.sql): the user's rows, then each conversation's by primary key
    "direct_peers": {"participant_user_idx", "conversation_table_pkey", "participant_table_pkey|participant_role_idx"},
    "users_sharing_a_conversation": {"participant_user_idx"},  # both sides: (user, conversation) probes
    # Message lifecycle (sql/0008)
    "check_message_refs": {"message_table_pkey", "participant_table_pkey|participant_user_idx|participant_role_idx"},
    "changes_after": {"message_change_seq_key"},
    "my_reactions": {"reaction_table_pkey"},
    "lock_message": {"message_table_pkey"},
    "edit_message": {"conversation_table_pkey", "message_table_pkey"},
    "delete_message": {"conversation_table_pkey", "message_table_pkey", "reaction_table_pkey"},
    "react": {"conversation_table_pkey", "message_table_pkey"},  # the insert path: a unique-key probe
}

SEED = f"""
INSERT INTO conversation_table (conversation_id, title, is_group, created_by, last_seq, direct_user_low, direct_user_high)
SELECT md5('c' || i)::uuid, '', false, 'u' || lpad(i::text, 5, '0'), {MESSAGES_EACH},
       'u' || lpad(i::text, 5, '0'), 'u' || lpad((i + 1)::text, 5, '0')
FROM generate_series(1, {CONVERSATIONS}) AS i;
INSERT INTO participant_table (conversation_id, user_id, last_read_seq)
SELECT c.conversation_id, u.user_id, {MESSAGES_EACH} - 1
FROM conversation_table c, LATERAL (VALUES (c.direct_user_low), (c.direct_user_high)) AS u(user_id);
INSERT INTO message_table (message_id, conversation_id, seq, change_seq, sender_id, temp_message_id, content)
SELECT md5('m' || c.n || '-' || s)::uuid, c.conversation_id, s, s, c.direct_user_low, 't' || s, 'hello'
FROM (SELECT conversation_id, direct_user_low, row_number() OVER () AS n FROM conversation_table) c,
     generate_series(1, {MESSAGES_EACH}) AS s;
INSERT INTO reaction_table (message_id, user_id, emoji)
SELECT message_id, sender_id, 'x' FROM message_table WHERE seq % 2 = 0;
CREATE TABLE IF NOT EXISTS connection_table (connection_id text PRIMARY KEY, user_id text NOT NULL,
    connected_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO connection_table (connection_id, user_id)
SELECT 'conn-' || i || '=', 'u' || lpad(i::text, 5, '0') FROM generate_series(1, {CONVERSATIONS}) AS i;
ANALYZE;
"""  # noqa: S608 - built from the module constants above, nothing else


@pytest.fixture(scope="module")
def planner_db(database_url: str) -> Iterator[Database]:
    """This module's migrated database (its own clone), loaded and analyzed."""
    loader = connect(database_url)  # no request timeout: loading is not a request
    loader.run(SEED)
    loader.close()
    database = Database(settings_from_env({"DATABASE_URL": database_url}))
    yield database
    database.close()


def parameters(sql: str, database: Database) -> dict[str, Any]:
    conversation = database.run_sql("SELECT conversation_id, direct_user_low FROM conversation_table LIMIT 1")[0]
    message = database.run_sql(
        "SELECT message_id FROM message_table WHERE conversation_id = :c LIMIT 1", c=conversation["conversation_id"]
    )[0]
    user = conversation["direct_user_low"]
    values: dict[str, Any] = {
        "conversation_id": str(conversation["conversation_id"]),
        "user_id": user,
        "sender_id": user,
        "created_by": user,
        "user_low": user,
        "user_high": user + "z",
        "user_ids": [user, user + "z", user + "y"],
        "message_id": str(message["message_id"]),
        "anchor_id": str(message["message_id"]),
        "temp_message_id": "t-1",
        "content": "hello",
        "title": "team",
        "cursor_at": datetime.max.replace(tzinfo=UTC),
        "cursor_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "unread_only": False,
        "read_only": False,
        "limit": 50,
        "low": MESSAGES_EACH - 10,
        "high": MESSAGES_EACH,
        "connection_id": "conn-1=",
        "max_age_s": 7200,
        "read_at": datetime.now(UTC),
        "request_id": "r-1",
        "inline_members": 100,
        "receipts_max_members": 100,
        "caller": user,
        "last_seq": MESSAGES_EACH,
        "role": "admin",
        "delta": 0,
        "muted": True,
        "after_user": "",
        "reply_to": str(message["message_id"]),
        "mentions": [user],
        "after": MESSAGES_EACH - 5,
        "message_ids": [str(message["message_id"])],
        "emoji": "👍",
        "add": True,
        "seconds": 10.0,
    }
    names = set(re.findall(r"(?<![:\w]):([a-z_][a-z0-9_]*)", sql))
    unknown = names - values.keys()
    assert not unknown, f"give the plan test a value for {sorted(unknown)}"
    return {name: values[name] for name in names}


QUERIES = load_queries()


def test_every_query_has_an_expectation() -> None:
    assert set(QUERIES) == set(EXPECTED), "add new queries (and their indexes) to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_query_uses_its_index(name: str, planner_db: Database) -> None:
    sql = QUERIES[name].sql
    plan = "\n".join(row["QUERY PLAN"] for row in planner_db.run_sql("EXPLAIN " + sql, **parameters(sql, planner_db)))
    for table in BIG_TABLES:
        assert f"Seq Scan on {table}" not in plan, plan
    for index in EXPECTED[name]:
        # "a|b": either index serves the lookup (each leads to the rows by the same key columns).
        assert any(choice in plan for choice in index.split("|")), f"{name} does not use {index}:\n{plan}"
    for table in UNTOUCHED.get(name, set()):
        assert f" on {table}" not in plan, f"{name} reads {table}:\n{plan}"
