"""Messages that live (CONTRACT.md section 7, issue 13): edit, delete, react, reply, mention, and the change feed.

Every frame and route, success and failure, on real PostgreSQL and Redis; the authorization matrix for the new
frames; concurrency of reactions and edits; and a property test that replaying the change feed from any point
reproduces the REST history.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.repository import ChatRepository
from chalicelib.service import ChatService
from chalicelib.sql import query
from chalicelib.wire import CONVERSATION_ROW_FIELDS
from tests.conftest import Rest, Sockets, new_user
from tests.databases import connect, message_count, whole_list

Configure = Callable[..., None]


def frame(action: str, conversation_id: str, **fields: Any) -> str:
    return json.dumps({"action": action, "conversationId": conversation_id, **fields})


def last(sockets: Sockets, connection_id: str, frame_type: str) -> dict[str, Any]:
    frames = sockets.frames_of_type(connection_id, frame_type)
    assert frames, sockets.frames(connection_id)
    return dict(frames[-1])


def history(rest: Rest, user: str, conversation_id: str) -> list[dict[str, Any]]:
    status, body = rest.json("GET", f"/conversations/{conversation_id}/messages?order=asc&limit=100", user)
    assert status == 200, body
    return list(body)


def changes(rest: Rest, user: str, conversation_id: str, after: int, limit: int = 500) -> dict[str, Any]:
    status, body = rest.json("GET", f"/conversations/{conversation_id}/changes?after={after}&limit={limit}", user)
    assert status == 200, body
    return dict(body)


class Chat:
    """alice and bob in a direct conversation, each with a connection; plus a group of three with carol."""

    def __init__(self, rest: Rest, sockets: Sockets) -> None:
        self.rest, self.sockets = rest, sockets
        self.alice, self.bob, self.carol = new_user("alice"), new_user("bob"), new_user("carol")
        self.direct = rest.direct(self.alice, self.bob)
        self.a, self.b, self.c = sockets.connect(self.alice), sockets.connect(self.bob), sockets.connect(self.carol)


@pytest.fixture
def chat(rest: Rest, sockets: Sockets) -> Chat:
    return Chat(rest, sockets)


# --- edit ------------------------------------------------------------------------------------------


def test_an_edit_reaches_every_connection_with_a_higher_version_and_shows_in_history_and_list(chat: Chat) -> None:
    sent = chat.sockets.message(chat.a, chat.direct, "helo")
    assert (sent["version"], sent["editedAt"], sent["reactions"]) == (1, None, {})
    chat.sockets.send(chat.a, frame("edit-message", chat.direct, messageId=sent["messageId"], content="hello"))
    for tab in (chat.a, chat.b):
        updated = last(chat.sockets, tab, "message-updated")
        assert updated["messageId"] == sent["messageId"] and updated["content"] == "hello"
        assert updated["version"] == 2 and updated["changeSeq"] > sent["changeSeq"] and updated["editedAt"]
        assert updated["position"] == sent["position"] and updated["senderId"] == chat.alice
    [stored] = history(chat.rest, chat.bob, chat.direct)
    assert (stored["content"], stored["version"], stored["editedAt"]) == ("hello", 2, updated["editedAt"])
    [row] = chat.rest.json("GET", "/conversations", chat.bob)[1]
    assert row["latestContent"] == "hello" and row["changeSeq"] == updated["changeSeq"]
    assert row["unreadCount"] == 1  # an edit does not make a conversation (more) unread
    # The same content again changes nothing and is acknowledged to the editor only.
    frames_before = len(chat.sockets.frames(chat.b))
    chat.sockets.send(chat.a, frame("edit-message", chat.direct, messageId=sent["messageId"], content="hello"))
    assert last(chat.sockets, chat.a, "message-updated")["version"] == 2
    assert len(chat.sockets.frames(chat.b)) == frames_before


@pytest.mark.parametrize(
    ("who", "fields", "code"),
    [
        ("bob", {}, "Forbidden"),  # only the sender edits
        ("alice", {"content": ""}, "BadRequest"),
        ("alice", {"content": "   "}, "BadRequest"),
        ("alice", {"content": "x" * 4001}, "PayloadTooLarge"),
        ("alice", {"messageId": "not-a-uuid"}, "BadRequest"),
        ("alice", {"messageId": str(uuid.uuid4())}, "BadRequest"),  # no such message here
        ("carol", {}, "NotFound"),  # not in the conversation
    ],
)
def test_bad_edits_get_an_error_frame_and_change_nothing(
    chat: Chat, who: str, fields: dict[str, Any], code: str
) -> None:
    sent = chat.sockets.message(chat.a, chat.direct, "original")
    tab = {"alice": chat.a, "bob": chat.b, "carol": chat.c}[who]
    request = {"messageId": sent["messageId"], "content": "changed", **fields}
    chat.sockets.send(tab, frame("edit-message", chat.direct, **request))
    error = last(chat.sockets, tab, "error")
    assert (error["code"], error["action"]) == (code, "edit-message"), error
    [stored] = history(chat.rest, chat.alice, chat.direct)
    assert (stored["content"], stored["version"]) == ("original", 1)


def test_a_message_of_another_conversation_is_refused(chat: Chat, rest: Rest) -> None:
    elsewhere = rest.direct(chat.alice, chat.carol)
    other = chat.sockets.message(chat.a, elsewhere, "there")
    chat.sockets.send(chat.a, frame("edit-message", chat.direct, messageId=other["messageId"], content="x"))
    assert last(chat.sockets, chat.a, "error")["code"] == "BadRequest"
    assert history(rest, chat.alice, elsewhere)[0]["content"] == "there"


# --- delete -----------------------------------------------------------------------------------------


def test_a_deletion_is_a_tombstone_everywhere_and_a_late_retry_never_brings_it_back(chat: Chat) -> None:
    chat.sockets.message(chat.b, chat.direct, "first")
    sent = chat.sockets.message(chat.a, chat.direct, "regret", temp="t-regret")
    chat.sockets.send(chat.a, frame("react", chat.direct, messageId=sent["messageId"], emoji="👍", add=True))
    chat.sockets.send(chat.a, frame("delete-message", chat.direct, messageId=sent["messageId"]))
    for tab in (chat.a, chat.b):
        deleted = last(chat.sockets, tab, "message-deleted")
        assert deleted["messageId"] == sent["messageId"] and deleted["deletedAt"] and deleted["version"] == 3
    stored = history(chat.rest, chat.bob, chat.direct)[-1]
    assert (stored["content"], stored["reactions"], stored["myReactions"]) == ("", {}, [])
    assert stored["deletedAt"] == deleted["deletedAt"]
    [row] = chat.rest.json("GET", "/conversations", chat.bob)[1]
    assert (row["latestContent"], row["latestDeleted"]) == ("", True)
    # The original send retried late echoes the tombstone, stores nothing new.
    chat.sockets.send(
        chat.a,
        json.dumps(
            {"action": "send-message", "tempMessageId": "t-regret", "conversationId": chat.direct, "content": "regret"}
        ),
    )
    echo = last(chat.sockets, chat.a, "new-message")
    assert (echo["messageId"], echo["content"], echo["deletedAt"]) == (sent["messageId"], "", deleted["deletedAt"])
    assert message_count(chat.direct) == 2
    # It cannot be edited or reacted to; a second delete is acknowledged to its sender only.
    for action, extra in (("edit-message", {"content": "back"}), ("react", {"emoji": "👍", "add": True})):
        chat.sockets.send(chat.a, frame(action, chat.direct, messageId=sent["messageId"], **extra))
        assert last(chat.sockets, chat.a, "error")["code"] == "BadRequest"
    before = len(chat.sockets.frames(chat.b))
    chat.sockets.send(chat.a, frame("delete-message", chat.direct, messageId=sent["messageId"]))
    assert last(chat.sockets, chat.a, "message-deleted")["version"] == 3
    assert len(chat.sockets.frames(chat.b)) == before


def test_in_a_group_the_owner_and_admins_delete_others_messages_members_do_not(rest: Rest, sockets: Sockets) -> None:
    owner, admin, member = new_user("owner"), new_user("admin"), new_user("member")
    group = rest.group(owner, [admin, member], "G")
    rest.json("PATCH", f"/conversations/{group}/participants/{admin}", owner, {"role": "admin"})
    tabs = {user: sockets.connect(user) for user in (owner, admin, member)}
    by_member = sockets.message(tabs[member], group, "m")
    by_owner = sockets.message(tabs[owner], group, "o")
    sockets.send(tabs[member], frame("delete-message", group, messageId=by_owner["messageId"]))
    assert last(sockets, tabs[member], "error")["code"] == "Forbidden"
    sockets.send(tabs[admin], frame("delete-message", group, messageId=by_member["messageId"]))
    assert last(sockets, tabs[member], "message-deleted")["messageId"] == by_member["messageId"]
    sockets.send(tabs[admin], frame("edit-message", group, messageId=by_owner["messageId"], content="no"))
    assert last(sockets, tabs[admin], "error")["code"] == "Forbidden"  # deleting is not editing


# --- reactions --------------------------------------------------------------------------------------


def test_reactions_count_once_per_user_and_emoji_and_change_neither_order_nor_unread(chat: Chat, rest: Rest) -> None:
    older = rest.direct(chat.bob, chat.carol)
    sent = chat.sockets.message(chat.a, chat.direct, "react to me")
    chat.sockets.message(chat.c, older, "newer elsewhere")
    order_before = [row["conversationId"] for row in rest.json("GET", "/conversations", chat.bob)[1]]
    for tab, emoji in ((chat.a, "👍"), (chat.b, "👍"), (chat.b, "🎉"), (chat.b, "👍")):
        chat.sockets.send(tab, frame("react", chat.direct, messageId=sent["messageId"], emoji=emoji, add=True))
    update = last(chat.sockets, chat.a, "reactions-updated")
    assert (update["userId"], update["emoji"], update["add"]) == (chat.bob, "🎉", True)
    assert update["reactions"] == {"👍": 2, "🎉": 1} and update["version"] == 4
    chat.sockets.send(chat.b, frame("react", chat.direct, messageId=sent["messageId"], emoji="👍", add=False))
    assert last(chat.sockets, chat.a, "reactions-updated")["reactions"] == {"👍": 1, "🎉": 1}
    [stored] = [m for m in history(rest, chat.bob, chat.direct) if m["messageId"] == sent["messageId"]]
    assert stored["reactions"] == {"👍": 1, "🎉": 1} and stored["myReactions"] == ["🎉"]
    assert [m["myReactions"] for m in history(rest, chat.alice, chat.direct)] == [["👍"]]
    assert [row["conversationId"] for row in rest.json("GET", "/conversations", chat.bob)[1]] == order_before
    row = next(r for r in rest.json("GET", "/conversations", chat.bob)[1] if r["conversationId"] == chat.direct)
    assert row["unreadCount"] == 1


@pytest.mark.parametrize("emoji", ["", " ", "a b", "x" * 33, 5, None, "\n"])
def test_bad_emoji_are_refused(chat: Chat, emoji: Any) -> None:
    sent = chat.sockets.message(chat.a, chat.direct, "m")
    chat.sockets.send(chat.b, frame("react", chat.direct, messageId=sent["messageId"], emoji=emoji, add=True))
    assert last(chat.sockets, chat.b, "error")["code"] == "BadRequest"
    assert history(chat.rest, chat.bob, chat.direct)[0]["reactions"] == {}


def test_the_21st_distinct_emoji_is_refused(chat: Chat) -> None:
    sent = chat.sockets.message(chat.a, chat.direct, "m")
    for index in range(20):
        chat.sockets.send(chat.b, frame("react", chat.direct, messageId=sent["messageId"], emoji=f"e{index}", add=True))
    chat.sockets.send(chat.b, frame("react", chat.direct, messageId=sent["messageId"], emoji="one-too-many", add=True))
    assert last(chat.sockets, chat.b, "error")["code"] == "BadRequest"
    # An emoji already there can still be added by someone else.
    chat.sockets.send(chat.a, frame("react", chat.direct, messageId=sent["messageId"], emoji="e3", add=True))
    reactions = history(chat.rest, chat.bob, chat.direct)[0]["reactions"]
    assert len(reactions) == 20 and reactions["e3"] == 2


def service_of_its_own() -> tuple[ChatService, Database]:
    """A service on a database connection of its own, as another Lambda would have."""
    database = Database(get_settings())
    service = ChatService(
        get_settings(),
        ChatRepository(database),
        registry=wiring.get_registry,
        pusher=wiring.get_pusher,
        verifier=wiring.get_verifier,
    )
    return service, database


def test_concurrent_reactions_and_edits_lose_no_update(chat: Chat, sockets: Sockets) -> None:
    sent = sockets.message(chat.a, chat.direct, "busy")
    users = [chat.alice, chat.bob]
    connections = {chat.alice: [sockets.connect(chat.alice) for _ in range(3)], chat.bob: [sockets.connect(chat.bob)]}
    endpoint = get_settings().connections_endpoint_url
    errors: list[BaseException] = []

    def work(user: str, connection_id: str, index: int) -> None:
        service, database = service_of_its_own()
        try:
            for round_ in range(5):
                emoji = f"r{index}-{round_}"
                service.handle_frame(
                    connection_id,
                    frame("react", chat.direct, messageId=sent["messageId"], emoji=emoji, add=True),
                    endpoint,
                )
                if user == chat.alice:
                    service.handle_frame(
                        connection_id,
                        frame("edit-message", chat.direct, messageId=sent["messageId"], content=f"v{index}-{round_}"),
                        endpoint,
                    )
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            database.close()

    threads = [
        threading.Thread(target=work, args=(user, connection_id, index))
        for index, (user, connection_id) in enumerate(
            (user, connection_id) for user in users for connection_id in connections[user]
        )
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [stored] = history(chat.rest, chat.bob, chat.direct)
    assert len(stored["reactions"]) == 20 and set(stored["reactions"].values()) == {1}
    # 1 + 20 reactions + 15 edits (each edit's content is new): every change took one version.
    assert stored["version"] == 1 + 20 + 15
    # Every connection that applies the highest version it saw ends in the same state.
    for connection_id in connections[chat.bob]:
        frames = [f for f in sockets.frames(connection_id) if f.get("messageId") == sent["messageId"]]
        assert max(f["version"] for f in frames) == stored["version"]


# --- replies and mentions ----------------------------------------------------------------------------


def test_replies_carry_a_snippet_of_the_original_as_it_stands(chat: Chat) -> None:
    original = chat.sockets.message(chat.a, chat.direct, "x" * 300)
    chat.sockets.send(
        chat.b,
        json.dumps(
            {
                "action": "send-message",
                "tempMessageId": "r1",
                "conversationId": chat.direct,
                "content": "agreed",
                "replyTo": original["messageId"],
            }
        ),
    )
    reply = last(chat.sockets, chat.a, "new-message")
    assert reply["replyTo"] == {
        "messageId": original["messageId"],
        "senderId": chat.alice,
        "content": "x" * 200,
        "deleted": False,
    }
    chat.sockets.send(chat.a, frame("delete-message", chat.direct, messageId=original["messageId"]))
    stored = history(chat.rest, chat.alice, chat.direct)[-1]
    assert stored["replyTo"] == {
        "messageId": original["messageId"],
        "senderId": chat.alice,
        "content": "",
        "deleted": True,
    }


def test_mentions_name_members_and_count_until_read(rest: Rest, sockets: Sockets) -> None:
    owner, bob, carol = new_user("owner"), new_user("bob"), new_user("carol")
    group = rest.group(owner, [bob, carol], "G")
    owner_tab, bob_tab = sockets.connect(owner), sockets.connect(bob)

    def mention(mentions: Any, temp: str) -> None:
        sockets.send(
            owner_tab,
            json.dumps(
                {
                    "action": "send-message",
                    "tempMessageId": temp,
                    "conversationId": group,
                    "content": "hey",
                    "mentions": mentions,
                }
            ),
        )

    mention([bob], "m1")
    mention([bob, carol], "m2")
    assert last(sockets, bob_tab, "new-message")["mentions"] == [bob, carol]

    def mentions_of(user: str) -> int:
        row = next(r for r in rest.json("GET", "/conversations", user)[1] if r["conversationId"] == group)
        return int(row["unreadMentionCount"])

    assert (mentions_of(bob), mentions_of(carol), mentions_of(owner)) == (2, 1, 0)
    sockets.send(
        owner_tab, frame("delete-message", group, messageId=last(sockets, bob_tab, "new-message")["messageId"])
    )
    assert (mentions_of(bob), mentions_of(carol)) == (1, 0)
    sockets.send(bob_tab, frame("read-messages", group))
    assert mentions_of(bob) == 0
    # Mentions of non-members, or a reply to another conversation's message, store nothing.
    stored = message_count(group)
    bad_mentions: list[Any] = [[new_user()], ["ok", 5], "bob"]
    for bad in bad_mentions:
        mention(bad, f"bad-{uuid.uuid4().hex[:6]}")
        assert last(sockets, owner_tab, "error")["code"] == "BadRequest"
    elsewhere = rest.direct(owner, bob)
    other = sockets.message(owner_tab, elsewhere, "there")
    sockets.send(
        owner_tab,
        json.dumps(
            {
                "action": "send-message",
                "tempMessageId": "r",
                "conversationId": group,
                "content": "x",
                "replyTo": other["messageId"],
            }
        ),
    )
    assert last(sockets, owner_tab, "error")["code"] == "BadRequest"
    assert message_count(group) == stored


def test_outsiders_learn_nothing_from_replies_and_mentions(chat: Chat) -> None:
    sent = chat.sockets.message(chat.a, chat.direct, "private")
    chat.sockets.send(
        chat.c,
        json.dumps(
            {
                "action": "send-message",
                "tempMessageId": "x",
                "conversationId": chat.direct,
                "content": "hi",
                "replyTo": sent["messageId"],
                "mentions": [chat.alice],
            }
        ),
    )
    assert last(chat.sockets, chat.c, "error")["code"] == "NotFound"
    for action, extra in (
        ("edit-message", {"content": "x"}),
        ("delete-message", {}),
        ("react", {"emoji": "👍", "add": True}),
    ):
        chat.sockets.send(chat.c, frame(action, chat.direct, messageId=sent["messageId"], **extra))
        assert last(chat.sockets, chat.c, "error")["code"] == "NotFound"
        assert chat.rest.call("GET", f"/conversations/{chat.direct}/changes?after=0", chat.carol).status_code == 404


# --- the change feed ---------------------------------------------------------------------------------


def test_the_change_feed_returns_each_changed_message_once_in_its_current_state(chat: Chat) -> None:
    first = chat.sockets.message(chat.a, chat.direct, "one")
    second = chat.sockets.message(chat.b, chat.direct, "two")
    seen = changes(chat.rest, chat.alice, chat.direct, 0)
    assert [m["messageId"] for m in seen["changes"]] == [first["messageId"], second["messageId"]]
    mark = seen["next"]
    assert mark == second["changeSeq"]
    chat.sockets.send(chat.a, frame("edit-message", chat.direct, messageId=first["messageId"], content="one!"))
    chat.sockets.send(chat.b, frame("react", chat.direct, messageId=first["messageId"], emoji="👀", add=True))
    chat.sockets.send(chat.b, frame("delete-message", chat.direct, messageId=second["messageId"]))
    third = chat.sockets.message(chat.a, chat.direct, "three")
    caught_up = changes(chat.rest, chat.alice, chat.direct, mark)
    assert [m["messageId"] for m in caught_up["changes"]] == [
        first["messageId"],
        second["messageId"],
        third["messageId"],
    ]
    one, two, _third = caught_up["changes"]
    assert (one["content"], one["reactions"], one["version"]) == ("one!", {"👀": 1}, 3)
    assert (two["content"], two["deletedAt"] is not None) == ("", True)
    assert (
        caught_up["next"] == third["changeSeq"]
        and changes(chat.rest, chat.alice, chat.direct, caught_up["next"])["changes"] == []
    )
    # Paging: a limit splits it, next continues.
    page = changes(chat.rest, chat.alice, chat.direct, mark, limit=2)
    assert len(page["changes"]) == 2
    assert changes(chat.rest, chat.alice, chat.direct, page["next"])["changes"][0]["messageId"] == third["messageId"]


@pytest.mark.parametrize("query", ["", "?after=-1", "?after=x", "?after=0&limit=0", "?after=0&limit=501"])
def test_bad_change_feed_queries_are_400(chat: Chat, query: str) -> None:
    assert chat.rest.call("GET", f"/conversations/{chat.direct}/changes{query}", chat.alice).status_code == 400


OPS = st.lists(
    st.tuples(st.sampled_from(["send", "edit", "delete", "react", "unreact"]), st.integers(0, 5), st.booleans()),
    min_size=1,
    max_size=25,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, cut=st.integers(0, 30))
def test_replaying_the_change_feed_reproduces_the_history(rest: Rest, sockets: Sockets, ops: Any, cut: int) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tabs = {alice: sockets.connect(alice), bob: sockets.connect(bob)}
    sent: list[dict[str, Any]] = []
    for op, pick, by_bob in ops:
        user = bob if by_bob else alice
        tab = tabs[user]
        if op == "send" or not sent:
            sent.append(sockets.message(tab, conversation_id, f"m{len(sent)}"))
            continue
        target = sent[pick % len(sent)]
        sender_tab = tabs[alice] if target["senderId"] == alice else tabs[bob]
        if op == "edit":
            sockets.send(
                sender_tab,
                frame(
                    "edit-message", conversation_id, messageId=target["messageId"], content=f"e{uuid.uuid4().hex[:4]}"
                ),
            )
        elif op == "delete":
            sockets.send(sender_tab, frame("delete-message", conversation_id, messageId=target["messageId"]))
        else:
            sockets.send(
                tab, frame("react", conversation_id, messageId=target["messageId"], emoji="🙂", add=op == "react")
            )
    truth = {m["messageId"]: m for m in history(rest, alice, conversation_id)}
    for start in (0, cut % (max(m["changeSeq"] for m in truth.values()) + 1)):
        # A client that had everything up to `start` (from history as it was then) and replays the feed.
        replayed: dict[str, dict[str, Any]] = {}
        after = 0
        while True:
            page = changes(rest, alice, conversation_id, after, limit=7)
            for message in page["changes"]:
                replayed[message["messageId"]] = message
            if not page["changes"]:
                break
            after = page["next"]
        assert replayed == truth
        since = changes(rest, alice, conversation_id, start)["changes"]
        assert all(m["changeSeq"] > start for m in since)
        assert {m["messageId"] for m in since} == {i for i, m in truth.items() if m["changeSeq"] > start}


# --- the list rows of direct conversations (sql/0010) ------------------------------------------------


def list_bodies_with_and_without_the_copies(user: str, conversation_id: str) -> tuple[Any, Any]:
    """The user's list as the app reads it (a direct conversation from the member's own row, sql/0010) and
    as it reads once that copy is gone (through the conversation's row, as for a group), in one snapshot."""
    arguments = whole_list(user, limit=100)
    connection = connect(os.environ["DATABASE_URL"])
    try:
        connection.run("BEGIN ISOLATION LEVEL REPEATABLE READ")
        [[copied, *_]] = connection.run(query("list_user_conversations"), **arguments)
        cleared = connection.run(
            "UPDATE participant_table SET inbox_activity_at = NULL, inbox_last_seq = NULL, inbox_fragment = NULL"
            " WHERE conversation_id = CAST(:c AS uuid) RETURNING 1",
            c=conversation_id,
        )
        assert len(cleared) == 2
        [[read_through, *_]] = connection.run(query("list_user_conversations"), **arguments)
        connection.run("ROLLBACK")
    finally:
        connection.close()
    return json.loads(f"[{copied}]"), json.loads(f"[{read_through}]")


def test_a_direct_conversations_copied_list_row_reads_as_its_conversation_row(chat: Chat, rest: Rest) -> None:
    """Every kind of change of a direct conversation refreshes both members' copies (the trigger of sql/0010),
    and the list shows the same row from the copy as from the conversation row."""
    awkward = 'quote " backslash \\ newline \n tab \t é 👍 \u2028 <b>&'
    long = "y" * 399 + awkward  # over 400 characters: not on the conversation row, only in message_table
    sent = chat.sockets.message(chat.a, chat.direct, awkward)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("sent", lambda: None),
        ("read", lambda: chat.sockets.send(chat.b, frame("read-messages", chat.direct))),
        (
            "reacted",
            lambda: chat.sockets.send(
                chat.b, frame("react", chat.direct, messageId=sent["messageId"], emoji="👍", add=True)
            ),
        ),
        (
            "edited",
            lambda: chat.sockets.send(
                chat.a, frame("edit-message", chat.direct, messageId=sent["messageId"], content=long)
            ),
        ),
        (
            "deleted",
            lambda: chat.sockets.send(chat.a, frame("delete-message", chat.direct, messageId=sent["messageId"])),
        ),
        (
            "long",
            lambda: chat.sockets.send(chat.b, frame("send-message", chat.direct, content=long, tempMessageId="long")),
        ),
    ]
    seen = []
    for step, act in steps:
        act()
        for user in (chat.alice, chat.bob):
            copied, read_through = list_bodies_with_and_without_the_copies(user, chat.direct)
            assert copied == read_through, step
            [row] = [row for row in copied if row["conversationId"] == chat.direct]
            assert set(row) == set(CONVERSATION_ROW_FIELDS), step
            assert row == rest.json("GET", "/conversations", user)[1][0], step
            seen.append((step, user == chat.bob, row["latestContent"], row["unreadCount"], row["muted"]))
    by_bob = {(step, content, unread, muted) for step, bob, content, unread, muted in seen if bob}
    assert ("sent", awkward, 1, False) in by_bob and ("read", awkward, 0, False) in by_bob
    assert ("reacted", awkward, 0, False) in by_bob and ("edited", long, 0, False) in by_bob
    assert ("deleted", "", 0, False) in by_bob and ("long", long, 0, False) in by_bob
