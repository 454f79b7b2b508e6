"""Presence (CONTRACT.md section 8): ``presence`` pushes to direct peers, the expiry sweep, GET /presence."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.registry import user_key
from local.schedule import scheduled_event
from tests.conftest import Rest, Sockets, new_user


def presence_of(sockets: Sockets, connection_id: str, user: str) -> list[bool]:
    return [frame["online"] for frame in sockets.frames_of_type(connection_id, "presence") if frame["userId"] == user]


def sweep() -> int:
    import app as chat_app

    result: dict[str, int] = chat_app.presence_sweep(scheduled_event("presence_sweep"), None)
    return result["offline"]


def this_minute() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:00.000Z")


def test_first_connection_and_last_disconnect_reach_direct_peers(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    rest.direct(alice, bob)
    bob_tab = sockets.connect(bob)

    first = sockets.connect(alice)
    (online,) = sockets.frames_of_type(bob_tab, "presence")
    assert online == {"type": "presence", "userId": alice, "online": True, "lastActiveAt": online["lastActiveAt"]}
    assert online["lastActiveAt"].endswith(":00.000Z")

    second = sockets.connect(alice)  # not her first: nothing new
    sockets.disconnect(first)  # not her last: nothing new
    assert presence_of(sockets, bob_tab, alice) == [True]
    sockets.disconnect(second)
    assert presence_of(sockets, bob_tab, alice) == [True, False]
    offline = sockets.frames_of_type(bob_tab, "presence")[-1]
    assert offline["lastActiveAt"] == online["lastActiveAt"] or offline["lastActiveAt"] > online["lastActiveAt"]
    assert presence_of(sockets, second, alice) == []  # nobody is told of their own presence


def test_presence_goes_to_direct_peers_only(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol, dave = new_user("alice"), new_user("bob"), new_user("carol"), new_user("dave")
    rest.direct(alice, bob)
    rest.group(alice, [carol, dave])
    bob_tab, carol_tab, stranger_tab = sockets.connect(bob), sockets.connect(carol), sockets.connect(new_user())
    sockets.connect(alice)
    assert presence_of(sockets, bob_tab, alice) == [True]
    assert sockets.frames_of_type(carol_tab, "presence") == []  # a group is no direct conversation
    assert sockets.frames_of_type(stranger_tab, "presence") == []


def test_an_expired_last_connection_is_announced_by_the_sweep(rest: Rest, sockets: Sockets, configure: Any) -> None:
    configure(CONNECTION_TTL_SECONDS="1")
    alice, bob = new_user("alice"), new_user("bob")
    rest.direct(alice, bob)
    bob_tab = sockets.connect(bob)
    sockets.connect(alice)  # and then silence: no heartbeat, no $disconnect
    assert presence_of(sockets, bob_tab, alice) == [True]
    assert sweep() == 0  # nobody is due yet
    time.sleep(1.3)
    sockets.send(bob_tab, {"action": "heartbeat"})  # bob is still there (his frame re-registers him)
    assert sweep() == 1
    assert presence_of(sockets, bob_tab, alice) == [True, False]
    assert sweep() == 0  # announced once


def test_a_gone_connection_is_left_to_the_sweep(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    bob_tab = sockets.connect(bob)
    alice_tab = sockets.connect(alice)
    sockets.sink.close(alice_tab)  # the socket dropped without a $disconnect: pushes to it meet 410
    sockets.message(bob_tab, direct, "are you there?")
    assert presence_of(sockets, bob_tab, alice) == [True]
    assert sweep() >= 1
    assert presence_of(sockets, bob_tab, alice) == [True, False]


def test_heartbeats_do_not_rewrite_last_activity_within_a_minute(sockets: Sockets) -> None:
    alice = new_user("alice")
    tab = sockets.connect(alice)
    key = user_key(get_settings().redis_key_prefix, alice, "seen")
    redis = wiring.get_redis()
    minute = redis.get(key)
    first_ttl = redis.pttl(key)
    time.sleep(0.05)
    for _ in range(5):
        sockets.send(tab, {"action": "heartbeat"})
    if redis.get(key) != minute:
        pytest.skip("the minute changed during the test")
    assert redis.pttl(key) < first_ttl  # not written again: its expiry was not reset


def get_presence(rest: Rest, caller: str, users: list[str]) -> tuple[int, Any]:
    return rest.json("GET", f"/presence?userIds={','.join(users)}", caller)


def test_presence_is_shown_only_between_members_of_a_conversation(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol, stranger, unknown = (new_user(n) for n in ("alice", "bob", "carol", "stranger", "unknown"))
    rest.direct(alice, bob)
    rest.group(alice, [carol, new_user()])
    sockets.connect(bob)
    sockets.disconnect(sockets.connect(carol))
    sockets.connect(stranger)
    sockets.connect(alice)

    status, body = get_presence(rest, alice, [bob, carol, stranger, unknown, alice])
    assert status == 200
    by_user = {item["userId"]: item for item in body}
    assert [item["userId"] for item in body] == [bob, carol, stranger, unknown, alice]
    minute = this_minute()
    assert by_user[bob]["online"] is True and by_user[bob]["lastActiveAt"] <= minute
    assert by_user[carol]["online"] is False and by_user[carol]["lastActiveAt"] <= minute
    assert by_user[carol]["lastActiveAt"] is not None
    never_seen = {"online": False, "lastActiveAt": None}
    assert {k: by_user[stranger][k] for k in never_seen} == never_seen  # online, but shares nothing with alice
    assert {k: by_user[unknown][k] for k in never_seen} == never_seen
    assert by_user[alice]["online"] is True and by_user[alice]["lastActiveAt"] is not None

    # The stranger learns nothing of alice either, and bob sees her.
    assert get_presence(rest, stranger, [alice])[1] == [{"userId": alice, "online": False, "lastActiveAt": None}]
    assert get_presence(rest, bob, [alice])[1][0]["online"] is True


def test_presence_after_leaving_a_group_reads_as_never_seen(rest: Rest, sockets: Sockets) -> None:
    owner, bob, carol = new_user("owner"), new_user("bob"), new_user("carol")
    group = rest.group(owner, [bob, carol])
    sockets.connect(bob)
    assert get_presence(rest, owner, [bob])[1][0]["online"] is True
    assert rest.call("DELETE", f"/conversations/{group}/participants/{bob}", owner).status_code == 200
    assert get_presence(rest, owner, [bob])[1] == [{"userId": bob, "online": False, "lastActiveAt": None}]


@pytest.mark.parametrize(
    "query",
    ["", "?userIds=", "?userIds=,,", "?other=x", "?userIds=" + ",".join(f"u{i}" for i in range(101))],
)
def test_bad_presence_queries_are_400(rest: Rest, query: str) -> None:
    status, body = rest.json("GET", f"/presence{query}", new_user())
    assert status == 400 and body["Code"] == "BadRequest" and body["Message"]


def test_presence_answers_up_to_a_hundred_users_each_once(rest: Rest) -> None:
    users = [new_user() for _ in range(100)]
    status, body = get_presence(rest, new_user(), [*users, users[0]])
    assert status == 200 and [item["userId"] for item in body] == users


def test_presence_needs_a_token(rest: Rest) -> None:
    assert rest.call("GET", "/presence?userIds=a", None).status_code == 401
