"""A send costs the same at any group size (issue 11), and the database never runs away.

- Rows written per send are counted from the rows the send's own transaction wrote (their ``xmin``):
  the same three for groups of 2, 100 and 2,000 members; four for a direct conversation (both members'
  list rows, sql/0010).
- A 10,000-member group is created, sent to and read from on the real database.
- A stalled database is cancelled server-side by the session time limits of sql/0006: the client
  gets a clear error and nothing is committed twice.
- A group creation whose reply was lost, and a client's retry with the same ``requestId``, make one
  group.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.native
import pytest

from chalicelib.config import get_settings
from chalicelib.db import connection_parameters
from chalicelib.sql import query
from chalicelib.wiring import get_database
from tests.conftest import Rest, Sockets, new_user
from tests.databases import connect, message_count

Configure = Callable[..., None]


def rows_written_by_transaction_of(message_id: str) -> dict[str, int]:
    """How many rows of each table carry the xmin of the transaction that stored this message."""
    row = get_database().run_sql(
        "WITH tx AS (SELECT xmin AS x FROM message_table WHERE message_id = CAST(:m AS uuid))"
        " SELECT (SELECT count(*) FROM message_table, tx WHERE message_table.xmin = tx.x) AS messages,"
        "        (SELECT count(*) FROM conversation_table, tx WHERE conversation_table.xmin = tx.x) AS conversations,"
        "        (SELECT count(*) FROM participant_table, tx WHERE participant_table.xmin = tx.x) AS participants",
        m=message_id,
    )[0]
    return {name: int(count) for name, count in row.items()}


def group_of(rest: Rest, size: int, owner: str) -> str:
    members = [f"{owner}-m{index:05d}" for index in range(size - 1)]
    status, body = rest.json(
        "POST", "/conversation", owner, {"recipientIdArr": members, "isGroup": True, "title": f"{size} people"}
    )
    assert status == 200, body
    return str(body["conversationId"])


@pytest.fixture
def large_groups(configure: Configure) -> None:
    # 10,000 member ids do not fit the default 64 KiB body: the README says to raise both together.
    configure(MAX_PARTICIPANTS="10000", MAX_REQUEST_BYTES="1000000")


def test_a_send_writes_the_same_rows_at_any_group_size(rest: Rest, sockets: Sockets, large_groups: None) -> None:
    written = {}
    for size in (2, 100, 2_000):
        owner = new_user("owner")
        conversation_id = group_of(rest, max(size, 3), owner)
        if size == 2:  # a group is created with three members at least; this one loses one
            status, _ = rest.json("DELETE", f"/conversations/{conversation_id}/participants/{owner}-m00001", owner)
            assert status == 200
        tab = sockets.connect(owner)
        sockets.message(tab, conversation_id, "warm-up")  # the first send of a member is no different
        sent = sockets.message(tab, conversation_id, f"hello {size}")
        written[size] = rows_written_by_transaction_of(sent["messageId"])
    # The message, its conversation's row, the sender's own read position: nothing per member.
    assert written[2] == {"messages": 1, "conversations": 1, "participants": 1}, written
    assert written[100] == written[2] and written[2_000] == written[2], written


def test_a_direct_send_writes_both_members_list_rows(rest: Rest, sockets: Sockets) -> None:
    """A direct conversation's members carry a copy of its list row (sql/0010): one more row than a group's
    send, and a constant one, since a direct conversation never has more than two members."""
    owner = new_user("owner")
    conversation_id = rest.direct(owner, new_user())
    tab = sockets.connect(owner)
    sockets.message(tab, conversation_id, "warm-up")
    sent = sockets.message(tab, conversation_id, "hello")
    assert rows_written_by_transaction_of(sent["messageId"]) == {"messages": 1, "conversations": 1, "participants": 2}


def literal(value: Any) -> str:
    """A SQL literal of the few kinds the send takes (text, ints, NULL, a text array)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return f"CAST(ARRAY[{', '.join(literal(item) for item in value)}] AS text[])"
    return "'" + str(value).replace("'", "''") + "'"


def send_buffers_in_the_generic_plan(conversation_id: str, sender: str, mentions: list[str]) -> int:
    """Shared buffers one send reads and writes under the plan the app's prepared statement settles on.

    pg8000 prepares each query once per connection, and PostgreSQL switches a prepared statement to a generic
    plan after five runs: one planned for parameters it does not know, which takes a conversation for a couple
    of members. ``force_generic_plan`` gets that plan on the first run. The send is rolled back.
    """
    sql = query("send_message")
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    values = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "sender_id": sender,
        "temp_message_id": uuid.uuid4().hex,
        "content": "generic",
        "reply_to": None,
        "mentions": mentions,
        "inline_members": 100,
    }
    connection = connect(os.environ["DATABASE_URL"])
    try:
        connection.run("BEGIN")
        connection.run("PREPARE send AS " + re.sub(r"(?<![:\w]):([a-z_]+)", positional, sql))
        connection.run("SET LOCAL plan_cache_mode = force_generic_plan")
        arguments = ", ".join(literal(values[name]) for name in names)  # EXECUTE takes no bound parameters
        plan = connection.run(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE send({arguments})")
        connection.run("ROLLBACK")
    finally:
        connection.close()
    top = plan[0][0][0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def test_the_prepared_send_reads_the_same_pages_at_any_group_size(rest: Rest, large_groups: None) -> None:
    """The generic plan once scanned every participant row for the mentions (3.3 ms at 10,000 members)."""
    read: dict[int, tuple[int, int]] = {}
    for size in (2, 2_000):
        owner = new_user("owner")
        conversation_id = rest.direct(owner, new_user()) if size == 2 else group_of(rest, size, owner)
        mentioned = [new_user()] if size == 2 else [f"{owner}-m00007", f"{owner}-m01234"]
        read[size] = (
            send_buffers_in_the_generic_plan(conversation_id, owner, []),
            send_buffers_in_the_generic_plan(conversation_id, owner, mentioned),
        )
    assert read[2_000][0] <= read[2][0] + 10, read  # no mentions: no participant beyond the sender's
    assert read[2_000][1] <= read[2][1] + 30, read  # two mentions: two probes, not a scan of 2,000 rows


@pytest.mark.slow
def test_a_10000_member_group_is_created_sent_to_and_read(rest: Rest, sockets: Sockets, large_groups: None) -> None:
    owner = new_user("owner")
    conversation_id = group_of(rest, 10_000, owner)
    member = f"{owner}-m00042"
    status, participants = rest.json("GET", f"/conversations/{conversation_id}/participants", owner)
    assert status == 200 and len(participants) == 10_000 and member in participants

    owner_tab, member_tab, member_tab2 = sockets.connect(owner), sockets.connect(member), sockets.connect(member)
    other_member_tab = sockets.connect(f"{owner}-m09998")
    sent = sockets.message(owner_tab, conversation_id, "to everyone")
    for tab in (member_tab, member_tab2, other_member_tab):
        assert [f["messageId"] for f in sockets.frames_of_type(tab, "new-message")] == [sent["messageId"]]

    [row] = [r for r in rest.json("GET", "/conversations", member)[1] if r["conversationId"] == conversation_id]
    assert (row["unreadCount"], row["latestContent"], row["senderId"]) == (1, "to everyone", owner)

    # A read in a group over RECEIPTS_MAX_MEMBERS reaches the reader's own connections only.
    sockets.send(member_tab, json.dumps({"action": "read-messages", "conversationId": conversation_id}))
    for tab in (member_tab, member_tab2):
        [receipt] = sockets.frames_of_type(tab, "read-messages")
        assert receipt["lastReadMessageId"] == sent["messageId"]
    assert sockets.frames_of_type(owner_tab, "read-messages") == []
    assert sockets.frames_of_type(other_member_tab, "read-messages") == []
    [row] = [r for r in rest.json("GET", "/conversations", member)[1] if r["conversationId"] == conversation_id]
    assert row["isRead"] is True


def test_small_groups_keep_read_receipts_to_every_member(rest: Rest, sockets: Sockets) -> None:
    owner, a, b = new_user("owner"), new_user("a"), new_user("b")
    conversation_id = rest.group(owner, [a, b])
    owner_tab, a_tab, b_tab = sockets.connect(owner), sockets.connect(a), sockets.connect(b)
    sent = sockets.message(owner_tab, conversation_id, "hi")
    sockets.send(a_tab, json.dumps({"action": "read-messages", "conversationId": conversation_id}))
    for tab in (owner_tab, a_tab, b_tab):
        [receipt] = sockets.frames_of_type(tab, "read-messages")
        assert (receipt["userId"], receipt["lastReadMessageId"]) == (a, sent["messageId"])


# --- server-side time limits ----------------------------------------------------------------------


@pytest.fixture
def holder() -> Iterator[pg8000.native.Connection]:
    connection = pg8000.native.Connection(**connection_parameters(get_settings().database, "us-east-1"))
    yield connection
    connection.close()


def test_the_app_sessions_carry_the_servers_time_limits(app_environment: None) -> None:
    limits = get_database().run_sql(
        "SELECT current_setting('statement_timeout') AS statement,"
        " current_setting('lock_timeout') AS lock,"
        " current_setting('idle_in_transaction_session_timeout') AS idle"
    )[0]
    assert limits == {"statement": "4s", "lock": "2s", "idle": "15s"}
    # No SET on the request path: the limits come from the database's defaults.
    assert get_settings().database.read_timeout_s > 4


def test_a_stalled_send_is_cancelled_by_the_server_and_commits_nothing(
    rest: Rest, sockets: Sockets, holder: pg8000.native.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    frame = {"action": "send-message", "tempMessageId": "stalled", "conversationId": conversation_id, "content": "x"}
    holder.run("BEGIN")
    holder.run(
        "SELECT 1 FROM conversation_table WHERE conversation_id = CAST(:c AS uuid) FOR UPDATE", c=conversation_id
    )
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="chalicelib.db"):
        sockets.send(tab, json.dumps(frame))
    waited = time.monotonic() - started
    holder.run("ROLLBACK")

    [error] = sockets.frames(tab)
    assert (error["type"], error["code"], error["tempMessageId"]) == ("error", "InternalError", "stalled")
    assert "busy" in error["message"]
    assert 1.5 < waited < get_settings().database.read_timeout_s  # the server's lock_timeout, not the client's
    assert not any("connection lost" in record.getMessage() for record in caplog.records)
    assert message_count(conversation_id) == 0 and sockets.frames(bob_tab) == []
    # The client's retry of the same send stores it once.
    assert sockets.message(tab, conversation_id, "x", temp="stalled")["position"] == 1
    assert message_count(conversation_id) == 1


def test_a_stalled_rest_call_is_a_503_with_nothing_written(rest: Rest, holder: pg8000.native.Connection) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    low, high = sorted((alice, bob))
    # Another session is creating the same pair: the app's insert waits on its unique-index entry.
    holder.run("BEGIN")
    holder.run(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by, direct_user_low,"
        " direct_user_high) VALUES (gen_random_uuid(), '', false, :a, :low, :high)",
        a=alice,
        low=low,
        high=high,
    )
    try:
        response = rest.call("POST", "/conversation", alice, {"recipientIdArr": [bob], "isGroup": False})
    finally:
        holder.run("ROLLBACK")
    assert response.status_code == 503, response.body
    assert json.loads(response.body)["Code"] == "ServiceUnavailable"
    assert rest.json("GET", f"/conversation/direct/{bob}", alice) == (200, None)


# --- idempotent group creation -----------------------------------------------------------------


def group_count(creator: str) -> int:
    return int(
        get_database().run_sql("SELECT count(*) AS n FROM conversation_table WHERE created_by = :u", u=creator)[0]["n"]
    )


def test_a_retried_group_creation_with_its_request_id_returns_the_same_group(rest: Rest) -> None:
    owner = new_user("owner")
    body = {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "once", "requestId": "r-1"}
    first = rest.json("POST", "/conversation", owner, body)
    again = rest.json("POST", "/conversation", owner, body)
    assert first[0] == again[0] == 200 and first[1] == again[1]
    assert group_count(owner) == 1
    # Another requestId (or none) is another group; another creator's same requestId too.
    assert rest.json("POST", "/conversation", owner, {**body, "requestId": "r-2"})[1] != first[1]
    other = new_user("other")
    assert rest.json("POST", "/conversation", other, body)[1] != first[1]
    assert group_count(owner) == 2


@pytest.mark.parametrize("bad", [7, "", " ", "x" * 65, ["r"], "a\x00b"])
def test_a_bad_request_id_is_400_and_creates_nothing(rest: Rest, bad: Any) -> None:
    owner = new_user("owner")
    body = {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "t", "requestId": bad}
    status, error = rest.json("POST", "/conversation", owner, body)
    assert (status, error["Code"]) == (400, "BadRequest")
    assert group_count(owner) == 0


def test_a_group_creation_whose_reply_was_lost_makes_one_group(
    rest: Rest, holder: pg8000.native.Connection, configure: Configure
) -> None:
    configure(DB_READ_TIMEOUT="1")
    owner = new_user("owner")
    members = [new_user(), new_user()]
    # Another session inserts the same (creator, requestId): the app's attempts wait on it, the first one
    # times out on the client's side, the re-run queues behind it, and the other session backs out.
    holder.run("BEGIN")
    holder.run(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by, create_request_id)"
        " VALUES (gen_random_uuid(), 'decoy', true, :u, 'lost-reply')",
        u=owner,
    )
    answers: list[tuple[int, Any]] = []
    body = {"recipientIdArr": members, "isGroup": True, "title": "once", "requestId": "lost-reply"}
    worker = threading.Thread(target=lambda: answers.append(rest.json("POST", "/conversation", owner, body)))
    worker.start()
    time.sleep(1.6)
    holder.run("ROLLBACK")
    worker.join(timeout=30)
    [(status, created)] = answers
    assert status == 200, created
    assert group_count(owner) == 1
    status, conversation = rest.json("GET", f"/conversations/{created['conversationId']}", owner)
    assert status == 200 and sorted(conversation["participants"]) == sorted([owner, *members])
    assert rest.json("POST", "/conversation", owner, body)[1] == created
