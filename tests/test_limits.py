"""Resource limits: sizes of messages, titles, conversations, pages, bodies and frames; the per-user send
rate; and what a client may not decide (sender, time, ids, position)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from chalicelib.config import get_settings, settings_from_env
from chalicelib.errors import TooManyRequests
from chalicelib.registry import RedisRegistry
from chalicelib.wiring import get_database
from local.services import EmbeddedServices
from tests.conftest import Rest, Sockets, new_user
from tests.databases import message_count

Configure = Callable[..., None]


def send(conversation_id: str, content: str, temp: str | None = None, **extra: Any) -> dict[str, Any]:
    frame = {"action": "send-message", "tempMessageId": temp or uuid.uuid4().hex, "conversationId": conversation_id}
    return frame | {"content": content} | extra


def test_documented_defaults() -> None:
    settings = settings_from_env({})
    assert (settings.max_message_chars, settings.max_title_chars, settings.max_participants) == (4000, 300, 100)
    assert (settings.send_rate_per_s, settings.send_burst) == (10.0, 20)
    assert settings.max_request_bytes == 64 * 1024
    assert settings.push_deadline_s == 5.0


# --- sizes -----------------------------------------------------------------------------------------------------


def test_message_length_is_counted_in_characters_up_to_the_configured_limit(
    rest: Rest, sockets: Sockets, configure: Configure
) -> None:
    configure(MAX_MESSAGE_CHARS="10")
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    assert sockets.message(tab, conversation_id, "🙂" * 10)["content"] == "🙂" * 10
    sockets.send(tab, send(conversation_id, "x" * 11, temp="too-long"))
    error = sockets.frames(tab)[-1]
    assert (error["type"], error["code"], error["tempMessageId"]) == ("error", "PayloadTooLarge", "too-long")
    assert message_count(conversation_id) == 1


def test_the_largest_legal_message_fits_in_a_frame_even_fully_escaped(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    frame = json.dumps(send(conversation_id, "🙂" * get_settings().max_message_chars), ensure_ascii=True)
    assert len(frame) > 40_000  # each emoji is a 12-byte surrogate-pair escape
    sockets.send(tab, frame)
    assert sockets.frames(tab)[-1]["type"] == "new-message"


@pytest.mark.parametrize(("limit", "length", "status"), [("5", 5, 200), ("5", 6, 400), ("1000", 301, 400)])
def test_title_length(rest: Rest, configure: Configure, limit: str, length: int, status: int) -> None:
    configure(MAX_TITLE_CHARS=limit)  # never above the schema's 300, whatever is configured
    body = {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "t" * length}
    assert rest.call("POST", "/conversation", new_user("alice"), body).status_code == status


@pytest.mark.parametrize(("others", "copies", "status"), [(3, 1, 200), (3, 2, 200), (4, 1, 400)])
def test_participants_per_conversation(rest: Rest, configure: Configure, others: int, copies: int, status: int) -> None:
    configure(MAX_PARTICIPANTS="4")  # the caller included
    alice = new_user("alice")
    recipients = [new_user() for _ in range(others)] * copies + [alice]
    response = rest.call("POST", "/conversation", alice, {"recipientIdArr": recipients, "isGroup": True, "title": "t"})
    assert response.status_code == status, response.body


@pytest.fixture
def crowded_user() -> str:
    """A user in 1,001 conversations, written straight into the store."""
    user = new_user("busy")
    get_database().run_sql(
        "WITH c AS (INSERT INTO conversation_table (conversation_id, title, is_group, created_by, member_count)"
        " SELECT gen_random_uuid(), 'bulk', true, :u, 1 FROM generate_series(1, 1001)"
        " RETURNING conversation_id, created_at)"
        " INSERT INTO participant_table (conversation_id, user_id, joined_at)"
        " SELECT conversation_id, :u, created_at FROM c",
        u=user,
    )
    return user


def test_conversation_list_pages(rest: Rest, crowded_user: str) -> None:
    assert len(rest.json("GET", "/conversations", crowded_user)[1]) == 1000  # unpaged: at most 1000
    page = rest.call("GET", "/conversations?limit=200", crowded_user)
    assert len(json.loads(page.body)) == 200 and page.headers["X-Next-Cursor"]
    assert rest.call("GET", "/conversations?limit=201", crowded_user).status_code == 400


def test_message_page_sizes(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    for i in range(101):
        sockets.send(tab, send(conversation_id, f"m{i}"))
    path = f"/conversations/{conversation_id}/messages"
    assert len(rest.json("GET", path, alice)[1]) == 20
    assert len(rest.json("GET", f"{path}?limit=100", alice)[1]) == 100
    assert rest.call("GET", f"{path}?limit=101", alice).status_code == 400


def test_oversized_frames_and_bodies_are_refused_before_parsing(
    rest: Rest, sockets: Sockets, configure: Configure
) -> None:
    configure(MAX_REQUEST_BYTES="2048", MAX_MESSAGE_CHARS="100000")
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    frame = json.dumps(send(conversation_id, "", temp="big"))
    sockets.send(tab, json.dumps(send(conversation_id, "x" * (2048 - len(frame)), temp="big")))
    sockets.send(tab, json.dumps(send(conversation_id, "x" * (2049 - len(frame)), temp="bigger")))
    fits, too_big = sockets.frames(tab)
    assert fits["type"] == "new-message"
    assert (too_big["type"], too_big["code"], too_big["tempMessageId"]) == ("error", "PayloadTooLarge", "bigger")
    assert message_count(conversation_id) == 1

    body = json.dumps({"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "t", "pad": "x" * 2048})
    response = rest.call("POST", "/conversation", alice, body)
    assert response.status_code == 413
    assert json.loads(response.body) == {
        "Code": "PayloadTooLarge",
        "Message": "Request body must be at most 2048 bytes",
    }


# --- send rate -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bucket(services: EmbeddedServices) -> Iterator[tuple[RedisRegistry, Clock, redis.Redis, str]]:
    client = redis.Redis.from_url(services.redis_url)
    clock = Clock()
    prefix = f"rate-test-{uuid.uuid4().hex[:8]}:"
    registry = RedisRegistry(client, ttl_seconds=60, prefix=prefix, send_rate=10, send_burst=20, clock=clock)
    yield registry, clock, client, prefix
    client.close()


def sends_allowed(registry: RedisRegistry, connection_id: str, attempts: int) -> int:
    allowed = 0
    for _ in range(attempts):
        try:
            registry.touch(connection_id, send=True)
            allowed += 1
        except TooManyRequests:
            pass
    return allowed


def test_token_bucket_allows_bursts_then_the_rate(bucket: tuple[RedisRegistry, Clock, redis.Redis, str]) -> None:
    registry, clock, client, prefix = bucket
    registry.register("c1", "alice")
    registry.register("c2", "alice")
    assert sends_allowed(registry, "c1", 25) == 20  # the burst
    clock.now += 0.1
    assert sends_allowed(registry, "c1", 5) == 1  # then 10 a second
    clock.now += 1.0
    assert sends_allowed(registry, "c1", 15) == 10
    clock.now += 3600
    assert sends_allowed(registry, "c1", 30) == 20  # refills to the burst, never beyond
    assert sends_allowed(registry, "c2", 25) == 0  # the bucket is the user's: their other connection shares it
    assert all(registry.touch("c1") == "alice" for _ in range(50))  # heartbeats and reads are never limited
    assert 0 < client.ttl(f"{prefix}{{u:alice}}:send") <= 3  # an idle bucket expires once it would be full again
    registry.unregister("c1")
    assert client.exists(f"{prefix}{{u:alice}}:send") == 1  # a reconnect does not refill it


def test_rate_limited_sends_get_too_many_requests_and_change_nothing(
    rest: Rest, sockets: Sockets, configure: Configure
) -> None:
    configure(SEND_RATE_PER_SECOND="0.001", SEND_BURST="3")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, other_tab, bob_tab = sockets.connect(alice), sockets.connect(alice), sockets.connect(bob)
    for i in range(3):
        sockets.message(tab, conversation_id, f"ok {i}")
    sockets.send(tab, send(conversation_id, "one too many", temp="t-4"))
    error = sockets.frames(tab)[-1]
    assert (error["type"], error["code"], error["action"], error["tempMessageId"]) == (
        "error",
        "TooManyRequests",
        "send-message",
        "t-4",
    )
    assert message_count(conversation_id) == 3 and len(sockets.frames_of_type(bob_tab, "new-message")) == 3
    sockets.send(tab, {"action": "heartbeat"})
    sockets.send(tab, {"action": "read-messages", "conversationId": conversation_id})
    assert sockets.frames(tab)[-1]["type"] == "read-messages"
    sockets.send(other_tab, send(conversation_id, "another tab, the same user", temp="t-5"))
    assert sockets.frames(other_tab)[-1]["code"] == "TooManyRequests"  # the bucket is the user's
    assert message_count(conversation_id) == 3


def test_a_rate_of_zero_turns_the_limit_off(rest: Rest, sockets: Sockets, configure: Configure) -> None:
    configure(SEND_RATE_PER_SECOND="0", SEND_BURST="1")
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    for i in range(5):
        sockets.message(tab, conversation_id, f"m{i}")
    assert message_count(conversation_id) == 5


# --- mass assignment -------------------------------------------------------------------------------------------


def test_a_client_cannot_choose_sender_time_ids_or_position(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab = sockets.connect(alice)
    sockets.message(tab, conversation_id, "first")
    forged_id = str(uuid.uuid4())
    extra = {
        "senderId": bob,
        "userId": bob,
        "messageId": forged_id,
        "sentAt": "2000-01-01T00:00:00.000Z",
        "position": 999,
        "seq": 999,
        "type": "new-message",
    }
    sockets.send(tab, send(conversation_id, "forged?", temp="t-forged", **extra))
    echo = sockets.frames_of_type(tab, "new-message")[-1]
    assert echo["senderId"] == alice and echo["messageId"] != forged_id and echo["position"] == 2
    assert not echo["sentAt"].startswith("2000")
    row = get_database().run_sql(
        "SELECT sender_id, seq, sent_at > now() - interval '1 hour' AS recent FROM message_table WHERE message_id = :m",
        m=echo["messageId"],
    )
    assert row == [{"sender_id": alice, "seq": 2, "recent": True}]


def test_a_client_cannot_choose_conversation_id_creator_or_members_by_extra_fields(rest: Rest) -> None:
    alice, bob, carol, mallory = (new_user(n) for n in ("alice", "bob", "carol", "mallory"))
    forged_id = str(uuid.uuid4())
    body = {
        "recipientIdArr": [bob, carol],
        "isGroup": True,
        "title": "team",
        "conversationId": forged_id,
        "createdBy": mallory,
        "createdAt": "2000-01-01T00:00:00.000Z",
        "participants": [mallory],
        "isRead": False,
        "lastSeq": 42,
    }
    status, created = rest.json("POST", "/conversation", alice, body)
    assert status == 200 and created["conversationId"] != forged_id
    conversation = rest.json("GET", f"/conversations/{created['conversationId']}", alice)[1]
    assert conversation["createdBy"] == alice and not conversation["createdAt"].startswith("2000")
    assert sorted(conversation["participants"]) == sorted([alice, bob, carol])
    assert rest.json("GET", f"/conversations/{created['conversationId']}", mallory)[0] == 404
