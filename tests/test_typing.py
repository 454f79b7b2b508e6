"""The ``typing`` frame (CONTRACT.md section 8): who hears it, the 2 s throttle, membership, zero SQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.db import Database
from tests.conftest import Rest, Sockets, new_user


def typing(conversation_id: str, on: bool = True) -> dict[str, Any]:
    return {"action": "typing", "conversationId": conversation_id, "typing": on}


def typing_frames(sockets: Sockets, connection_id: str) -> list[dict[str, Any]]:
    return sockets.frames_of_type(connection_id, "typing")


def test_typing_reaches_the_other_members_connections_only(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    group = rest.group(alice, [bob, carol])
    alice_tab, alice_other_tab = sockets.connect(alice), sockets.connect(alice)
    bob_tabs = [sockets.connect(bob), sockets.connect(bob)]
    carol_tab = sockets.connect(carol)

    sockets.send(alice_tab, typing(group))

    expected = {"type": "typing", "conversationId": group, "userId": alice, "typing": True, "expiresInMs": 6000}
    for connection in [*bob_tabs, carol_tab]:
        assert typing_frames(sockets, connection) == [expected]
    assert sockets.frames(alice_tab) == [] and sockets.frames(alice_other_tab) == []


def test_one_true_per_two_seconds_and_false_only_after_a_pushed_true(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)

    sockets.send(alice_tab, typing(direct, False))  # nothing was shown: nothing to clear
    for _ in range(5):
        sockets.send(alice_tab, typing(direct, True))
    assert [frame["typing"] for frame in typing_frames(sockets, bob_tab)] == [True]

    sockets.send(alice_tab, typing(direct, False))
    sockets.send(alice_tab, typing(direct, False))  # the second has nothing left to clear
    assert [frame["typing"] for frame in typing_frames(sockets, bob_tab)] == [True, False]

    # A false clears the throttle: typing again is shown at once.
    sockets.send(alice_tab, typing(direct, True))
    assert [frame["typing"] for frame in typing_frames(sockets, bob_tab)] == [True, False, True]
    assert sockets.frames(alice_tab) == []


def test_the_window_reopens_after_two_seconds(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    sockets.send(alice_tab, typing(direct))
    time.sleep(1.5)
    sockets.send(alice_tab, typing(direct))
    assert len(typing_frames(sockets, bob_tab)) == 1
    time.sleep(0.7)
    sockets.send(alice_tab, typing(direct))
    assert len(typing_frames(sockets, bob_tab)) == 2


def test_the_throttle_holds_across_concurrent_connections_of_one_user(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    alice_tabs = [sockets.connect(alice) for _ in range(5)]
    bob_tab = sockets.connect(bob)
    start = threading.Barrier(20)

    def type_once(index: int) -> None:
        start.wait()
        sockets.send(alice_tabs[index % len(alice_tabs)], typing(direct))

    threads = [threading.Thread(target=type_once, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(typing_frames(sockets, bob_tab)) == 1
    assert all(sockets.frames(tab) == [] for tab in alice_tabs)


def test_a_message_ends_typing_and_reopens_the_window(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    sockets.send(alice_tab, typing(direct))
    sockets.message(alice_tab, direct, "hello")  # receivers stop showing alice typing on it
    sockets.send(alice_tab, typing(direct, False))  # nothing shown any more: nothing pushed
    sockets.send(alice_tab, typing(direct))  # typing the next one shows at once
    kinds = [(frame["type"], frame.get("typing")) for frame in sockets.frames(bob_tab)]
    assert kinds == [("typing", True), ("new-message", None), ("typing", True)]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"action": "typing", "conversationId": "OTHER", "typing": True}, "NotFound"),
        ({"action": "typing", "conversationId": "UNKNOWN", "typing": True}, "NotFound"),
        ({"action": "typing", "conversationId": "OTHER", "typing": False}, "NotFound"),
        ({"action": "typing", "conversationId": "not-a-uuid", "typing": True}, "BadRequest"),
        ({"action": "typing", "conversationId": "CID"}, "BadRequest"),
        ({"action": "typing", "conversationId": "CID", "typing": "yes"}, "BadRequest"),
    ],
)
def test_bad_typing_frames_get_an_error_and_push_nothing(
    rest: Rest, sockets: Sockets, frame: dict[str, Any], code: str
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    foreign = rest.direct(new_user(), bob)
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    names = {"CID": direct, "OTHER": foreign, "UNKNOWN": str(uuid.uuid4())}
    sockets.send(
        alice_tab, {key: names.get(value, value) if isinstance(value, str) else value for key, value in frame.items()}
    )
    (error,) = sockets.frames(alice_tab)
    assert (error["type"], error["code"], error["action"]) == ("error", code, "typing")
    assert typing_frames(sockets, bob_tab) == []


def test_no_typing_fan_out_above_typing_max_members(rest: Rest, sockets: Sockets, configure: Any) -> None:
    configure(TYPING_MAX_MEMBERS="3")
    alice, others = new_user("alice"), [new_user("member") for _ in range(3)]
    big = rest.group(alice, others)  # four members
    small = rest.group(alice, others[:2])  # three
    alice_tab, member_tab = sockets.connect(alice), sockets.connect(others[0])
    sockets.send(alice_tab, typing(big))
    sockets.send(alice_tab, typing(small))
    assert [frame["conversationId"] for frame in typing_frames(sockets, member_tab)] == [small]
    assert sockets.frames(alice_tab) == []  # acknowledged silently


def test_membership_changes_reach_typing_at_once(rest: Rest, sockets: Sockets) -> None:
    owner, bob, carol, dave = new_user("owner"), new_user("bob"), new_user("carol"), new_user("dave")
    group = rest.group(owner, [bob, carol])
    owner_tab, bob_tab, carol_tab, dave_tab = (sockets.connect(user) for user in (owner, bob, carol, dave))
    sockets.send(owner_tab, typing(group))  # fills the membership cache
    assert len(typing_frames(sockets, carol_tab)) == 1

    response = rest.call("DELETE", f"/conversations/{group}/participants/{carol}", owner)
    assert response.status_code == 200
    status, body = rest.json("POST", f"/conversations/{group}/participants", owner, {"userIds": [dave]})
    assert (status, body) == (200, {"added": [dave]})

    # carol can no longer signal ...
    sockets.send(carol_tab, typing(group))
    assert [frame["code"] for frame in sockets.frames_of_type(carol_tab, "error")] == ["NotFound"]
    assert len(typing_frames(sockets, bob_tab)) == 1
    # ... nor see anyone type, and dave, just added, does.
    sockets.send(bob_tab, typing(group))
    assert len(typing_frames(sockets, carol_tab)) == 1
    assert [frame["userId"] for frame in typing_frames(sockets, dave_tab)] == [bob]
    assert [frame["userId"] for frame in typing_frames(sockets, owner_tab)] == [bob]


def test_a_member_who_leaves_stops_hearing_typing(rest: Rest, sockets: Sockets) -> None:
    owner, bob, carol = new_user("owner"), new_user("bob"), new_user("carol")
    group = rest.group(owner, [bob, carol])
    owner_tab, carol_tab = sockets.connect(owner), sockets.connect(carol)
    sockets.send(owner_tab, typing(group))
    assert rest.call("DELETE", f"/conversations/{group}/participants/{carol}", carol).status_code == 200
    sockets.send(owner_tab, typing(group, False))
    assert [frame["typing"] for frame in typing_frames(sockets, carol_tab)] == [True]


class CountingDatabase(Database):
    """The app's own Database, counting every statement it sends to PostgreSQL."""

    statements = 0

    def _execute(self, connection: Any, sql: str, params: dict[str, Any]) -> tuple[Any, Any]:
        CountingDatabase.statements += 1
        return super()._execute(connection, sql, params)


@pytest.fixture
def count_statements(app_environment: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    """The app built with a counting database; returns how many statements ran so far."""
    monkeypatch.setattr(wiring, "get_database", wiring.built_once()(lambda: CountingDatabase(get_settings())))
    wiring.reset()
    get_settings()  # pinned now: the test Client overlays .chalice/config.json's variables during its calls
    CountingDatabase.statements = 0
    yield lambda: CountingDatabase.statements
    monkeypatch.undo()
    wiring.reset()
    get_settings()


def test_a_burst_of_typing_frames_runs_no_sql(
    rest: Rest, sockets: Sockets, count_statements: Callable[[], int]
) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    direct, group = rest.direct(alice, bob), rest.group(alice, [bob, carol])
    stranger_conversation = rest.direct(new_user(), new_user())
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)

    before = count_statements()
    for conversation in (direct, group):
        sockets.send(alice_tab, typing(conversation))
    sockets.send(bob_tab, typing(stranger_conversation))  # refused, and its members are cached all the same
    assert count_statements() - before == 3  # each conversation's members, loaded once into Redis

    before = count_statements()
    for round_ in range(25):
        for conversation in (direct, group):
            sockets.send(alice_tab, typing(conversation, round_ % 2 == 1))
            sockets.send(bob_tab, typing(conversation, True))
        sockets.send(bob_tab, typing(stranger_conversation))  # refused from the cache
    assert count_statements() - before == 0
    assert len(typing_frames(sockets, bob_tab)) > 2
    assert {frame["code"] for frame in sockets.frames_of_type(bob_tab, "error")} == {"NotFound"}


def test_typing_is_shed_first_when_the_push_budget_runs_low(rest: Rest, sockets: Sockets, configure: Any) -> None:
    configure(PUSH_BUDGET_PER_SECOND="50", PUSH_BUDGET_BURST="100")
    alice, bob = new_user("alice"), new_user("bob")
    direct = rest.direct(alice, bob)
    alice_tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    budget = wiring.get_push_budget()
    # A nearly empty bucket: messages wait a little and go; signals need a fifth of the burst left for messages.
    wiring.get_redis().hset(budget.key, mapping={"tokens": "0", "at": repr(time.time())})
    sockets.send(alice_tab, typing(direct))
    sockets.message(alice_tab, direct, "still delivered")
    assert [frame["type"] for frame in sockets.frames(bob_tab)] == ["new-message"]
