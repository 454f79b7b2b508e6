"""WebSocket handlers, as CONTRACT.md section 2 describes them.

Handlers get API-Gateway-shaped events; pushes travel over HTTP through the
app's real push client (the signed one, unless a test picks boto3's) to a
recording @connections endpoint.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from chalicelib.wiring import get_database, get_registry, get_service
from local.recording_sink import Behaviour, RecordingSink
from tests.conftest import Rest, Sockets, new_user
from tests.databases import message_count

# --- connect / disconnect ------------------------------------------------------------------


def test_connect_registers_and_disconnect_unregisters(sockets: Sockets) -> None:
    alice = new_user("alice")
    first, second = sockets.connect(alice), sockets.connect(alice)
    assert sorted(get_registry().connections_for([alice])[alice]) == sorted([first, second])
    sockets.disconnect(first)
    assert get_registry().connections_for([alice])[alice] == [second]
    sockets.disconnect(first)  # a late, repeated disconnect removes nothing else
    assert get_registry().connections_for([alice])[alice] == [second]


# Token attacks on $connect: tests/test_security.py (one table shared with the REST side).


# --- send-message ----------------------------------------------------------------------


def test_message_reaches_every_connection_of_every_participant_once(rest: Rest, sockets: Sockets) -> None:
    alice, bob, outsider = new_user("alice"), new_user("bob"), new_user("mallory")
    conversation_id = rest.direct(alice, bob)
    alice_tabs = [sockets.connect(alice), sockets.connect(alice)]
    bob_tabs = [sockets.connect(bob), sockets.connect(bob), sockets.connect(bob)]
    stranger = sockets.connect(outsider)

    echo = sockets.message(alice_tabs[0], conversation_id, "hi bob", temp="t-1")
    assert set(echo) == {
        *("type", "messageId", "tempMessageId", "conversationId", "senderId", "content", "sentAt"),
        "position",  # extension: the message's place in its conversation
        # extension (CONTRACT section 7): its version and change number, edit/deletion, reply, mentions
        *("version", "changeSeq", "editedAt", "deletedAt", "reactions", "replyTo", "mentions"),
    }
    assert echo["tempMessageId"] == "t-1" and echo["senderId"] == alice and echo["content"] == "hi bob"
    for connection_id in alice_tabs + bob_tabs:
        assert sockets.frames_of_type(connection_id, "new-message") == [echo]
    assert sockets.frames(stranger) == []


def test_resending_a_temp_id_stores_nothing_and_echoes_the_original(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, other_tab, bob_conn = sockets.connect(alice), sockets.connect(alice), sockets.connect(bob)
    original = sockets.message(tab, conversation_id, "once", temp="retry-me")
    sockets.send(
        tab,
        {"action": "send-message", "tempMessageId": "retry-me", "conversationId": conversation_id, "content": "once"},
    )
    echoes = sockets.frames_of_type(tab, "new-message")
    assert echoes == [original, original]
    assert len(sockets.frames_of_type(bob_conn, "new-message")) == 1
    assert len(sockets.frames_of_type(other_tab, "new-message")) == 1
    assert message_count(conversation_id) == 1
    # The same temp id in another conversation is another message.
    elsewhere = rest.direct(alice, new_user())
    assert sockets.message(tab, elsewhere, "twice", temp="retry-me")["messageId"] != original["messageId"]


def test_concurrent_retries_store_exactly_one(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tabs = [sockets.connect(alice) for _ in range(4)]
    frame = {"action": "send-message", "tempMessageId": "race", "conversationId": conversation_id, "content": "x"}

    def send(connection_id: str) -> None:
        from chalicelib.config import get_settings
        from chalicelib.db import Database
        from chalicelib.repository import ChatRepository

        # Separate database connections, as separate Lambda instances would have.
        ChatRepository(Database(get_settings())).send_message(alice, conversation_id, "race", "x")

    threads = [threading.Thread(target=send, args=(tab,)) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sockets.send(tabs[0], frame)
    assert message_count(conversation_id) == 1
    rows = get_database().run_sql(
        "SELECT last_seq FROM conversation_table WHERE conversation_id = :c", c=conversation_id
    )
    assert rows[0]["last_seq"] == 1  # the losers' positions were rolled back: no gap


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "BadRequest"),
        ("[1, 2]", "BadRequest"),
        ('"send-message"', "BadRequest"),
        ({"action": "dance"}, "BadRequest"),
        ({"action": 5}, "BadRequest"),
        ({}, "BadRequest"),
        ({"action": "send-message", "conversationId": "CID", "content": "hi"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "", "conversationId": "CID", "content": "hi"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "x" * 65, "conversationId": "CID", "content": "hi"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": 7, "conversationId": "CID", "content": "hi"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "nope", "content": "hi"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": " \n\t "}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": None}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": "a\x00b"}, "BadRequest"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": "\ud83d"}, "BadRequest"),
        (
            {"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": "x" * 4001},
            "PayloadTooLarge",
        ),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "OTHER", "content": "hi"}, "NotFound"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "UNKNOWN", "content": "hi"}, "NotFound"),
        ({"action": "read-messages"}, "BadRequest"),
        ({"action": "read-messages", "conversationId": "OTHER"}, "NotFound"),
    ],
)
def test_bad_frames_get_an_error_frame_and_store_nothing(rest: Rest, sockets: Sockets, frame: Any, code: str) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    foreign = rest.direct(new_user(), new_user())
    tab, bob_conn = sockets.connect(alice), sockets.connect(bob)
    if isinstance(frame, dict):
        frame = {
            key: {"CID": conversation_id, "OTHER": foreign, "UNKNOWN": str(uuid.uuid4())}.get(value, value)
            if isinstance(value, str)
            else value
            for key, value in frame.items()
        }
    sockets.send(tab, frame)
    (error,) = sockets.frames(tab)
    assert error["type"] == "error" and error["code"] == code and error["message"]
    if isinstance(frame, dict) and isinstance(frame.get("action"), str):
        assert error["action"] == frame["action"]
    if isinstance(frame, dict) and frame.get("tempMessageId") == "t":
        assert error["tempMessageId"] == "t"
    assert sockets.frames(bob_conn) == []
    assert message_count(conversation_id) == 0 and message_count(foreign) == 0
    # The connection stays usable.
    sockets.message(tab, conversation_id, "still here")


def test_message_of_exactly_the_limit_is_accepted(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    assert len(sockets.message(sockets.connect(alice), conversation_id, "🙂" * 4000)["content"]) == 4000


def test_heartbeat_refreshes_and_needs_no_reply(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    tab = sockets.connect(alice)
    sockets.send(tab, {"action": "heartbeat"})
    assert sockets.frames(tab) == []
    assert get_registry().touch(tab) == alice


def test_frame_from_an_unregistered_connection_is_told_to_reconnect(sockets: Sockets, sink: RecordingSink) -> None:
    alice = new_user("alice")
    tab = sockets.connect(alice)
    get_service().disconnect(tab)  # neither the registry nor the database knows it any more
    sockets.send(tab, {"action": "heartbeat"})
    (error,) = sockets.frames(tab)
    assert error["type"] == "error" and error["code"] == "BadRequest"
    assert tab in sink.deleted


def test_gone_connection_is_unregistered_and_the_rest_still_get_the_message(
    rest: Rest, sockets: Sockets, sink: RecordingSink
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, dead, alive = sockets.connect(alice), sockets.connect(bob), sockets.connect(bob)
    sink.close(dead)  # the socket dropped without a $disconnect
    echo = sockets.message(tab, conversation_id, "anyone there?")
    assert sockets.frames_of_type(alive, "new-message") == [echo]
    assert get_registry().connections_for([bob])[bob] == [alive]


def test_a_410_right_after_connect_keeps_the_connection(
    rest: Rest, sockets: Sockets, sink: RecordingSink, configure: Any
) -> None:
    """API Gateway answers 410 until a connection's $connect returns, and the registry lists it before that:
    a push meeting that 410 (a peer's presence, a message fanned out that instant) must not forget it."""
    configure(CONNECT_GRACE_SECONDS="10")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, opening = sockets.connect(alice), sockets.connect(bob)
    sink.close(opening)  # not live at the endpoint yet: 410
    sockets.message(tab, conversation_id, "while bob connects")
    assert get_registry().connections_for([bob])[bob] == [opening]
    sink.open(opening)  # $connect returned
    later = sockets.message(tab, conversation_id, "now")
    assert sockets.frames_of_type(opening, "new-message")[-1] == later
    # An old connection's 410 still forgets it.
    configure(CONNECT_GRACE_SECONDS="0")
    sink.close(opening)
    sockets.message(tab, conversation_id, "gone?")
    assert get_registry().connections_for([bob])[bob] == []


def test_failing_pushes_never_fail_a_stored_send(rest: Rest, sockets: Sockets, sink: RecordingSink) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_conn = sockets.connect(alice), sockets.connect(bob)
    sink.inject(Behaviour(status=500), bob_conn)
    echo = sockets.message(tab, conversation_id, "stored anyway")
    assert message_count(conversation_id) == 1
    assert get_registry().connections_for([bob])[bob] == [bob_conn]  # a 500 is not a 410
    assert echo["content"] == "stored anyway"


# --- read-messages ---------------------------------------------------------------------


def test_read_clears_badges_and_sends_receipts_once(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    conversation_id = rest.group(alice, [bob, carol])
    alice_tab, bob_tabs, carol_tab = (
        sockets.connect(alice),
        [sockets.connect(bob), sockets.connect(bob)],
        sockets.connect(carol),
    )
    sockets.message(alice_tab, conversation_id, "one")
    latest = sockets.message(alice_tab, conversation_id, "two")
    assert rest.json("GET", "/conversations", bob)[1][0]["unreadCount"] == 2

    sockets.send(bob_tabs[0], {"action": "read-messages", "conversationId": conversation_id})
    for connection_id in [alice_tab, *bob_tabs, carol_tab]:
        (frame,) = sockets.frames_of_type(connection_id, "read-messages")
        assert frame["conversationId"] == conversation_id and frame["userId"] == bob
        assert frame["lastReadMessageId"] == latest["messageId"] and frame["readAt"].endswith("Z")
    row = rest.json("GET", "/conversations", bob)[1][0]
    assert row["isRead"] is True and row["unreadCount"] == 0

    # Reading again moves nothing: only the reading tab hears back, with no receipt.
    sockets.send(bob_tabs[1], {"action": "read-messages", "conversationId": conversation_id})
    assert sockets.frames_of_type(bob_tabs[1], "read-messages")[-1] == {
        "type": "read-messages",
        "conversationId": conversation_id,
        "userId": bob,
    }
    assert len(sockets.frames_of_type(alice_tab, "read-messages")) == 1
    assert len(sockets.frames_of_type(bob_tabs[0], "read-messages")) == 1


def test_two_clients_chat_end_to_end(rest: Rest, sockets: Sockets) -> None:
    """The issue's 'done when': create, exchange on several connections each, read, page."""
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    assert rest.direct(bob, alice) == conversation_id
    alice_tabs = [sockets.connect(alice), sockets.connect(alice)]
    bob_tabs = [sockets.connect(bob), sockets.connect(bob)]
    sent = []
    for i in range(6):
        tab = alice_tabs[i % 2] if i % 3 else bob_tabs[i % 2]
        sent.append(sockets.message(tab, conversation_id, f"message {i}"))
    for tab in alice_tabs + bob_tabs:
        assert [f["messageId"] for f in sockets.frames_of_type(tab, "new-message")] == [m["messageId"] for m in sent]
    sockets.send(alice_tabs[1], {"action": "read-messages", "conversationId": conversation_id})
    sockets.send(bob_tabs[0], {"action": "read-messages", "conversationId": conversation_id})
    assert all(row["isRead"] for row in rest.json("GET", "/conversations", alice)[1])
    page = rest.json("GET", f"/conversations/{conversation_id}/messages?limit=4", bob)[1]
    older = rest.json("GET", f"/conversations/{conversation_id}/messages?before={page[-1]['messageId']}&limit=4", bob)[
        1
    ]
    assert [m["content"] for m in page + older] == [f"message {i}" for i in reversed(range(6))]
    assert json.loads(json.dumps(page))[0]["sentAt"] == sent[-1]["sentAt"]


def test_boto3_push_client_is_an_equal_alternative(
    rest: Rest, sockets: Sockets, sink: RecordingSink, configure: Any
) -> None:
    """PUSH_CLIENT=boto3 delivers through boto3's apigatewaymanagementapi client, 410 handling included."""
    configure(PUSH_CLIENT="boto3")
    from chalicelib.push import Boto3ConnectionsClient
    from chalicelib.wiring import get_pusher

    assert isinstance(get_pusher("http://127.0.0.1:9")._client, Boto3ConnectionsClient)
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, dead, alive = sockets.connect(alice), sockets.connect(bob), sockets.connect(bob)
    sink.close(dead)
    echo = sockets.message(tab, conversation_id, "via boto3")
    assert sockets.frames_of_type(alive, "new-message") == [echo]
    assert get_registry().connections_for([bob])[bob] == [alive]
