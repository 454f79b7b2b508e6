"""REST routes, as CONTRACT.md section 1 describes them."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.sql import query
from chalicelib.wire import iso
from chalicelib.wiring import get_database
from tests.conftest import Rest, Sockets, new_user
from tests.databases import connect, whole_list

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- POST /conversation ------------------------------------------------------------------


def test_direct_conversation_is_get_or_create_in_either_direction(rest: Rest) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    first = rest.direct(alice, bob)
    assert uuid.UUID(first)
    assert rest.direct(alice, bob) == first
    assert rest.direct(bob, alice) == first
    status, body = rest.json("GET", f"/conversations/{first}", alice)
    assert status == 200
    assert body["title"] == "" and body["isGroup"] is False
    assert sorted(body["participants"]) == sorted([alice, bob])
    assert body["participantId"] == bob and body["createdBy"] == alice
    assert ISO.match(body["createdAt"])


def test_concurrent_direct_creates_yield_one_conversation(rest: Rest) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    results: list[str] = []
    errors: list[BaseException] = []

    def create(user: str, other: str) -> None:
        # Each thread uses its own database connection, as two Lambdas would.
        from chalicelib.config import get_settings
        from chalicelib.db import Database
        from chalicelib.repository import ChatRepository
        from chalicelib.validation import parse_new_conversation

        repo = ChatRepository(Database(get_settings()))
        spec = parse_new_conversation({"recipientIdArr": [other], "isGroup": False}, user, get_settings())
        try:
            results.append(repo.create_conversation(user, spec)[0])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=create, args=(alice, bob) if i % 2 else (bob, alice)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1 and len(results) == 8


def test_group_drops_duplicates_and_caller(rest: Rest) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    status, body = rest.json(
        "POST",
        "/conversation",
        alice,
        {"recipientIdArr": [bob, carol, bob, alice], "isGroup": True, "title": "  Trip  "},
    )
    assert status == 200
    conversation_id = body["conversationId"]
    status, participants = rest.json("GET", f"/conversations/{conversation_id}/participants", alice)
    assert status == 200 and sorted(participants) == sorted([alice, bob, carol])
    _, conversation = rest.json("GET", f"/conversations/{conversation_id}", bob)
    assert conversation["title"] == "Trip" and conversation["isGroup"] is True
    # A group is always new.
    assert rest.group(alice, [bob, carol], "Trip") != conversation_id


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "array body"),
        ({"isGroup": False, "title": ""}, "missing recipients"),
        ({"recipientIdArr": "bob", "isGroup": False}, "recipients not an array"),
        ({"recipientIdArr": [1], "isGroup": False}, "recipient not a string"),
        ({"recipientIdArr": [""], "isGroup": False}, "empty recipient"),
        ({"recipientIdArr": ["bob\x00"], "isGroup": False}, "NUL in recipient"),
        ({"recipientIdArr": ["x" * 129], "isGroup": False}, "recipient too long"),
        ({"recipientIdArr": ["bob"], "isGroup": "no"}, "isGroup not a bool"),
        ({"recipientIdArr": ["bob"]}, "isGroup missing"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": False}, "direct with two recipients"),
        ({"recipientIdArr": [], "isGroup": False}, "direct with none"),
        ({"recipientIdArr": ["SELF"], "isGroup": False}, "direct with self"),
        ({"recipientIdArr": ["bob"], "isGroup": True, "title": "t"}, "group with one other"),
        ({"recipientIdArr": ["bob", "SELF"], "isGroup": True, "title": "t"}, "group of self and one"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "   "}, "blank title"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": True}, "missing title"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": 5}, "title not a string"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "x" * 301}, "title too long"),
        ({"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "\ud800"}, "lone surrogate"),
        ({"recipientIdArr": [f"u{i}" for i in range(100)], "isGroup": True, "title": "big"}, "too many"),
    ],
)
def test_create_conversation_rejects_bad_input(rest: Rest, body: Any, why: str) -> None:
    caller = new_user("caller")
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("SELF", caller))
    before = rest.json("GET", "/conversations", caller)[1]
    response = rest.call("POST", "/conversation", caller, body)
    assert response.status_code == 400, why
    error = json.loads(response.body)
    assert set(error) == {"Code", "Message"} and error["Code"] == "BadRequest", why
    assert rest.json("GET", "/conversations", caller)[1] == before


def test_title_of_300_characters_is_accepted(rest: Rest) -> None:
    alice = new_user("alice")
    conversation_id = rest.group(alice, [new_user(), new_user()], "é" * 300)
    assert rest.json("GET", f"/conversations/{conversation_id}", alice)[1]["title"] == "é" * 300


# --- GET /conversation/direct/{userId} -------------------------------------------------


def test_direct_lookup_returns_null_then_the_id(rest: Rest) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    response = rest.call("GET", f"/conversation/direct/{bob}", alice)
    assert response.status_code == 200 and response.body == b"null"
    conversation_id = rest.direct(bob, alice)
    assert rest.json("GET", f"/conversation/direct/{bob}", alice) == (200, {"conversationId": conversation_id})
    status, error = rest.json("GET", f"/conversation/direct/{alice}", alice)
    assert status == 400 and error["Code"] == "BadRequest"


# --- GET /conversations ------------------------------------------------------------------


def test_conversation_list_rows(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    empty = rest.direct(alice, carol)
    chat = rest.direct(alice, bob)
    bob_conn = sockets.connect(bob)
    sockets.message(bob_conn, chat, "first")
    latest = sockets.message(bob_conn, chat, "hello alice")

    status, rows = rest.json("GET", "/conversations", alice)
    assert status == 200
    assert [row["conversationId"] for row in rows] == [chat, empty]
    top, bottom = rows
    assert top == {
        "conversationId": chat,
        "title": "",
        "isGroup": False,
        "sentAt": latest["sentAt"],
        "latestContent": "hello alice",
        "senderId": bob,
        "isRead": False,
        "participantId": bob,
        "unreadCount": 2,
        "latestMessageId": latest["messageId"],
        "muted": False,
        "role": "member",
        "unreadMentionCount": 0,
        "latestDeleted": False,
        "changeSeq": latest["changeSeq"],
    }
    assert bottom["latestContent"] == "" and bottom["senderId"] == "" and bottom["isRead"] is True
    assert bottom["participantId"] == carol and ISO.match(bottom["sentAt"]) and bottom["latestMessageId"] is None
    # Own messages count as read.
    bob_rows = rest.json("GET", "/conversations", bob)[1]
    assert bob_rows[0]["isRead"] is True and bob_rows[0]["unreadCount"] == 0


def test_group_rows_show_title_latest_and_first_other_member(rest: Rest, sockets: Sockets) -> None:
    # Labels sort as carol < dave < erin < frank, whatever the random suffixes.
    carol, dave, erin, frank = new_user("carol"), new_user("dave"), new_user("erin"), new_user("frank")
    team = rest.group(erin, [frank, carol, dave], "Launch")
    sent = sockets.message(sockets.connect(frank), team, "ship it")
    for member, shown in ((carol, dave), (dave, carol), (erin, carol), (frank, carol)):
        row = rest.json("GET", "/conversations", member)[1][0]
        unread = 0 if member == frank else 1
        assert row == {
            "conversationId": team,
            "title": "Launch",
            "isGroup": True,
            "sentAt": sent["sentAt"],
            "latestContent": "ship it",
            "senderId": frank,
            "isRead": unread == 0,
            "participantId": shown,
            "unreadCount": unread,
            "latestMessageId": sent["messageId"],
            "muted": False,
            "role": "owner" if member == erin else "member",
            "unreadMentionCount": 0,
            "latestDeleted": False,
            "changeSeq": sent["changeSeq"],
        }, member


def test_long_latest_messages_are_listed_whole(rest: Rest, sockets: Sockets) -> None:
    # Content over 400 characters is not copied onto participant rows (sql/0004); the list reads it whole.
    alice, bob = new_user("alice"), new_user("bob")
    chat = rest.direct(alice, bob)
    conn = sockets.connect(bob)
    for content in ("a" * 400, "é" * 401, "b" * 4000, "short again"):
        sent = sockets.message(conn, chat, content)
        for user in (alice, bob):
            row = rest.json("GET", "/conversations", user)[1][0]
            assert (row["latestContent"], row["latestMessageId"]) == (content, sent["messageId"]), (user, len(content))


def test_a_user_in_no_conversation_lists_nothing(rest: Rest) -> None:
    response = rest.call("GET", "/conversations?limit=5", new_user("loner"))
    assert response.status_code == 200 and json.loads(response.body) == []
    assert "X-Next-Cursor" not in response.headers
    assert rest.json("GET", "/conversations", new_user("loner"))[1] == []


def test_is_read_filter_and_its_validation(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    unread = rest.direct(alice, bob)
    read = rest.direct(alice, carol)
    sockets.message(sockets.connect(bob), unread, "ping")
    assert [r["conversationId"] for r in rest.json("GET", "/conversations?isRead=false", alice)[1]] == [unread]
    assert [r["conversationId"] for r in rest.json("GET", "/conversations?isRead=true", alice)[1]] == [read]
    for bad in ("yes", "False", "", "1"):
        status, error = rest.json("GET", f"/conversations?isRead={bad}", alice)
        assert status == 400 and error["Code"] == "BadRequest", bad


def test_conversation_list_cursor_pages_cover_everything_once(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    ids = [rest.direct(alice, new_user()) for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        path = "/conversations?limit=3" + (f"&cursor={cursor}" if cursor else "")
        response = rest.call("GET", path, alice)
        assert response.status_code == 200
        page = json.loads(response.body)
        seen += [row["conversationId"] for row in page]
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert seen == list(reversed(ids))
    for bad in ("limit=0", "limit=201", "limit=x", "cursor=%21%21", "cursor=bm90LWpzb24"):
        status, error = rest.json("GET", f"/conversations?{bad}", alice)
        assert status == 400 and error["Code"] == "BadRequest", bad


def test_list_times_are_the_wire_format_and_its_cursor_the_exact_time(rest: Rest) -> None:
    """The list query formats sentAt itself (queries/conversations.sql): it must read as wire.iso writes it,
    milliseconds truncated, in any session time zone; and its cursor must keep the microseconds, or rows
    within one millisecond of a page's end are skipped or listed twice."""
    alice = new_user("alice")
    moments = [
        datetime(2026, 1, 1, 0, 0, 0, 999_999, UTC),
        datetime(2026, 1, 1, 0, 0, 0, 999_500, UTC),
        datetime(2026, 1, 1, 0, 0, 0, 999_000, UTC),
        datetime(1999, 12, 31, 23, 59, 59, 1, UTC),
    ]
    chats = [rest.direct(alice, new_user()) for _ in moments]
    for chat, moment in zip(chats, moments, strict=True):
        get_database().run_sql(
            "UPDATE conversation_table SET last_activity_at = :at WHERE conversation_id = CAST(:id AS uuid)",
            at=moment,
            id=chat,
        )
    expected = [(chat, iso(moment)) for chat, moment in zip(chats, moments, strict=True)]  # newest first
    rows = rest.json("GET", "/conversations", alice)[1]
    assert [(row["conversationId"], row["sentAt"]) for row in rows] == expected
    assert expected[0][1] == "2026-01-01T00:00:00.999Z"
    paged: list[str] = []
    cursor = None
    while True:
        response = rest.call("GET", "/conversations?limit=1" + (f"&cursor={cursor}" if cursor else ""), alice)
        paged += [row["conversationId"] for row in json.loads(response.body)]
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert paged == chats
    connection = connect(os.environ["DATABASE_URL"])
    try:
        connection.run("SET TimeZone = 'Asia/Kolkata'")
        [[rows_json, row_count, last_at, last_id]] = connection.run(
            query("list_user_conversations"), **whole_list(alice, limit=10)
        )
    finally:
        connection.close()
    listed = json.loads(f"[{rows_json}]")
    assert [(row["conversationId"], row["sentAt"]) for row in listed] == expected
    assert (row_count, last_at, str(last_id)) == (len(chats), moments[-1], chats[-1])


# --- messages paging ---------------------------------------------------------------------


@pytest.fixture
def history(rest: Rest, sockets: Sockets) -> tuple[str, str, list[dict[str, Any]]]:
    """alice and bob with 25 messages; returns (alice, conversation id, frames oldest first)."""
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    conn = sockets.connect(bob)
    sent = [sockets.message(conn, conversation_id, f"m{i}") for i in range(25)]
    return alice, conversation_id, sent


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["messageId"] for row in rows]


def test_message_pages_by_offset(rest: Rest, history: tuple[str, str, list[dict[str, Any]]]) -> None:
    alice, conversation_id, sent = history
    newest_first = list(reversed(sent))
    path = f"/conversations/{conversation_id}/messages"
    status, page = rest.json("GET", path, alice)
    assert status == 200 and ids(page) == ids(newest_first[:20])
    assert set(page[0]) == {
        *("messageId", "conversationId", "senderId", "content", "sentAt", "position"),
        # extension (CONTRACT section 7): the message's current state
        *("version", "changeSeq", "editedAt", "deletedAt", "reactions", "myReactions", "replyTo", "mentions"),
    }
    assert page[0]["content"] == "m24" and ISO.match(page[0]["sentAt"])
    assert ids(rest.json("GET", f"{path}?offset=20", alice)[1]) == ids(newest_first[20:])
    assert ids(rest.json("GET", f"{path}?offset=5&limit=3&order=asc", alice)[1]) == ids(
        list(reversed(newest_first[5:8]))
    )
    assert rest.json("GET", f"{path}?offset=25", alice)[1] == []
    assert rest.json("GET", f"{path}?offset=1000", alice)[1] == []


def test_message_pages_by_cursor(rest: Rest, history: tuple[str, str, list[dict[str, Any]]]) -> None:
    alice, conversation_id, sent = history
    path = f"/conversations/{conversation_id}/messages"
    before = rest.json("GET", f"{path}?before={sent[10]['messageId']}&limit=4", alice)[1]
    assert ids(before) == ids(list(reversed(sent[6:10])))
    assert rest.json("GET", f"{path}?before={sent[0]['messageId']}", alice)[1] == []
    after = rest.json("GET", f"{path}?after={sent[20]['messageId']}", alice)[1]
    assert ids(after) == ids(sent[21:])  # oldest first, for catching up
    assert ids(rest.json("GET", f"{path}?after={sent[2]['messageId']}&limit=2", alice)[1]) == ids(sent[3:5])


def test_own_messages_carry_their_temp_id_and_others_do_not(
    rest: Rest, history: tuple[str, str, list[dict[str, Any]]]
) -> None:
    alice, conversation_id, sent = history
    bob = sent[0]["senderId"]
    path = f"/conversations/{conversation_id}/messages?limit=5"
    own = rest.json("GET", path, bob)[1]
    assert [m["tempMessageId"] for m in own] == [f["tempMessageId"] for f in reversed(sent[-5:])]
    assert all("tempMessageId" not in m for m in rest.json("GET", path, alice)[1])


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1",
        "offset=x",
        "limit=0",
        "limit=101",
        "limit=2.5",
        "order=up",
        "before=nope",
        "after=1",
        "before=00000000-0000-0000-0000-000000000000",
        "offset=1&before=00000000-0000-0000-0000-000000000000",
    ],
)
def test_bad_message_page_queries_are_400(
    rest: Rest, history: tuple[str, str, list[dict[str, Any]]], query: str
) -> None:
    alice, conversation_id, _ = history
    status, error = rest.json("GET", f"/conversations/{conversation_id}/messages?{query}", alice)
    assert status == 400 and error["Code"] == "BadRequest"


def test_cursor_from_another_conversation_is_rejected(
    rest: Rest, sockets: Sockets, history: tuple[str, str, list[dict[str, Any]]]
) -> None:
    alice, conversation_id, _ = history
    other = rest.direct(alice, new_user())
    foreign = sockets.message(sockets.connect(alice), other, "elsewhere")
    status, _ = rest.json("GET", f"/conversations/{conversation_id}/messages?before={foreign['messageId']}", alice)
    assert status == 400


# --- auth, authorization, shape of errors ------------------------------------------------


# The object-level authorization matrix (REST and WebSocket): tests/test_security.py.


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/conversations"),
        ("POST", "/conversation"),
        ("GET", "/conversation/direct/bob"),
        ("GET", f"/conversations/{uuid.uuid4()}"),
        ("GET", f"/conversations/{uuid.uuid4()}/messages"),
        ("GET", f"/conversations/{uuid.uuid4()}/participants"),
    ],
)
def test_missing_token_is_401_json_object(rest: Rest, method: str, path: str) -> None:
    response = rest.call(method, path, None, {} if method == "POST" else None)
    assert response.status_code == 401
    assert isinstance(json.loads(response.body), dict)


def test_bearer_prefix_is_accepted(rest: Rest) -> None:
    alice = new_user("alice")
    response = rest.client.http.get("/conversations", headers={"Authorization": f"Bearer {rest.token(alice)}"})
    # Chalice's local gateway hands the raw header to its decoder; the local server strips it.
    assert response.status_code in (200, 401)


def test_cors_headers_on_success_error_and_preflight(rest: Rest) -> None:
    alice = new_user("alice")
    ok = rest.call("GET", "/conversations", alice, Origin="http://localhost:4200")
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:4200"
    assert "X-Next-Cursor" in ok.headers["Access-Control-Expose-Headers"]
    error = rest.call("GET", "/conversations?isRead=maybe", alice, Origin="https://chat.example.com")
    assert error.status_code == 400 and error.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    foreign = rest.call("GET", "/conversations", alice, Origin="https://evil.example")
    assert foreign.headers["Access-Control-Allow-Origin"] != "https://evil.example"
    preflight = rest.client.http.request("OPTIONS", "/conversations", headers={"Origin": "http://localhost:4200"})
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
