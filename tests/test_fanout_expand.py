"""A conversation above FANOUT_EXPAND_MEMBERS is queued whole: the sending handler looks up nobody's connections but
the sender's and reads no member list; the worker expands it into shards; every connection still gets the message
exactly once, across redeliveries of the expansion and failures to queue its shards.

The fixtures are test_fanout_queue's: a group of a sender and 10 members with 3 connections each, shards of 7.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from chalicelib.fanout import Expansion, Shard, parse_queued, shard_of
from chalicelib.queue import QueueUnavailable
from chalicelib.registry import RedisRegistry
from chalicelib.repository import ChatRepository
from local.recording_sink import RecordingSink
from tests.conftest import Sockets
from tests.test_fanout_queue import MEMBERS, Fanout, Group, big_group, deliveries, fanout  # noqa: F401 - fixture

EXPAND_ABOVE = 5  # the group has 11 members


@pytest.fixture
def expanding(fanout: Fanout, configure: Any) -> Fanout:  # noqa: F811 - the imported fixture, requested
    configure(FANOUT_EXPAND_MEMBERS=str(EXPAND_ABOVE))
    return fanout


def settled_group(expanding: Fanout, rest: Any, sockets: Sockets) -> Group:
    """test_fanout_queue's big group, its own conversation-created expansion (queued too) pushed and gone."""
    group = big_group(rest, sockets)
    expanding.worker.drain()
    return group


def test_the_sending_handler_looks_up_only_the_sender_and_the_worker_reaches_everyone_once(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = settled_group(expanding, rest, sockets)
    looked_up: list[list[str]] = []
    members_read: list[str] = []
    real_lookup, real_members = RedisRegistry.connections_for, ChatRepository.participants

    def lookup(registry: RedisRegistry, users: Any) -> Any:
        looked_up.append(list(users))
        return real_lookup(registry, users)

    def members(repository: ChatRepository, conversation_id: str) -> list[str]:
        members_read.append(conversation_id)
        return real_members(repository, conversation_id)

    monkeypatch.setattr(RedisRegistry, "connections_for", lookup)
    monkeypatch.setattr(ChatRepository, "participants", members)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "to a channel")
    assert looked_up == [[group.sender]] and members_read == []
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        {**dict.fromkeys(group.every_connection(), 0), **dict.fromkeys(group.sender_connections, 1)}
    )
    (expansion,) = [parse_queued(body) for body in expanding.queue.bodies()]
    assert isinstance(expansion, Expansion)
    assert (expansion.sender, expansion.shards) == (group.sender, math.ceil((MEMBERS + 1) / 7))

    expanding.worker.drain()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    assert len(expanding.queue) == 0 and len(expanding.dead) == 0


def test_an_expansion_delivered_twice_still_pushes_each_connection_once(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = settled_group(expanding, rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "expanded twice")
    (received,) = expanding.queue.receive(10)
    expanding.queue.delete(received.receipt_handle)
    expanding.queue.send([received.body, received.body])  # SQS is at least once
    expanding.worker.drain()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    assert len(expanding.dead) == 0


def test_an_expansion_whose_shards_the_queue_refused_comes_back_and_duplicates_nothing(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = settled_group(expanding, rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "queue hiccup")
    real_send = expanding.queue.send
    refusals = [1]

    def send_one_then_refuse(bodies: Any) -> None:
        # The first shard goes in, then the queue fails: the expansion must come back and queue them all again.
        bodies = list(bodies)
        if refusals and len(bodies) > 1:
            refusals.pop()
            real_send(bodies[:1])
            raise QueueUnavailable("SendMessageBatch failed", frozenset({0}))
        real_send(bodies)

    monkeypatch.setattr(expanding.queue, "send", send_one_then_refuse)
    expanding.worker.drain()
    assert not refusals
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    assert len(expanding.queue) == 0 and len(expanding.dead) == 0


def test_a_queue_out_of_reach_at_send_time_fans_out_from_the_handler(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = settled_group(expanding, rest, sockets)

    def refuse(bodies: Any) -> None:
        raise QueueUnavailable("unreachable", frozenset())

    monkeypatch.setattr(expanding.queue, "send", refuse)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "no queue")
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )


def test_a_member_removed_before_the_expansion_runs_gets_nothing(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = settled_group(expanding, rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "not for the leaver")
    leaver, leaver_connections = next(iter(group.connections.items()))
    status, _ = rest.json("DELETE", f"/conversations/{group.conversation_id}/participants/{leaver}", leaver)
    assert status == 200
    expanding.worker.drain()
    counts = deliveries(sink, group.every_connection(), echo["messageId"])
    assert all(counts[c] == 0 for c in leaver_connections)
    assert all(counts[c] == 1 for c in group.every_connection() if c not in leaver_connections)


def test_edits_of_a_message_in_a_big_group_are_expanded_too(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = settled_group(expanding, rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "tpyo")
    expanding.worker.drain()
    frame = {
        "action": "edit-message",
        "conversationId": group.conversation_id,
        "messageId": echo["messageId"],
        "content": "typo",
    }
    sockets.send(group.sender_connections[0], frame)
    queued = [parse_queued(body) for body in expanding.queue.bodies()]
    assert [type(item) for item in queued] == [Expansion]
    expanding.worker.drain()
    for connection in group.every_connection():
        edits = [f for f in sink.json_frames(connection) if f.get("type") == "message-updated"]
        assert [f["content"] for f in edits] == ["typo"], connection


def test_every_member_lands_in_one_fixed_shard_and_the_sender_in_none() -> None:
    expansion = Expansion("c-1", "m-1", "sender", 4, "https://endpoint", {"type": "new-message"}, 0.0)
    members = [f"user-{i}" for i in range(200)]
    shards = expansion.shards_for([*members, "sender", members[0]])
    placed = [member for shard in shards for member in shard.members]
    assert sorted(placed) == sorted(members)
    assert all(shard_of(member, 4) == shard.index for shard in shards for member in shard.members)
    assert expansion.shards_for(reversed(members)) != [] and {s.index for s in shards} == {0, 1, 2, 3}
    assert parse_queued(expansion.body()) == expansion
    assert isinstance(parse_queued(shards[0].body()), Shard)
    for bad in ('{"v": 1, "kind": "expand", "shards": 0}', '{"v": 1, "kind": "expand"}', "[]", "not json"):
        with pytest.raises(ValueError):
            parse_queued(bad)


def _frames(sink: RecordingSink, connection: str, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in sink.json_frames(connection) if frame.get("type") == kind]


def test_a_member_leaving_a_big_group_is_announced_through_the_queue(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = settled_group(expanding, rest, sockets)
    leaver, leaver_connections = next(iter(group.connections.items()))
    staying = [c for c in group.every_connection() if c not in leaver_connections]
    looked_up: list[list[str]] = []
    real_lookup = RedisRegistry.connections_for

    def lookup(registry: RedisRegistry, users: Any) -> Any:
        looked_up.append(list(users))
        return real_lookup(registry, users)

    monkeypatch.setattr(RedisRegistry, "connections_for", lookup)
    status, _ = rest.json("DELETE", f"/conversations/{group.conversation_id}/participants/{leaver}", leaver)
    assert status == 200
    assert looked_up == [[leaver]]  # the leaver hears of it from the request; the members through the queue
    assert all(len(_frames(sink, c, "participants-updated")) == 1 for c in leaver_connections)
    assert all(not _frames(sink, c, "participants-updated") for c in staying)
    expanding.worker.drain()
    for connection in group.every_connection():
        (frame,) = _frames(sink, connection, "participants-updated")
        assert frame["removed"] == [leaver] and frame["conversationId"] == group.conversation_id, connection
        assert frame["participants"] is not None and leaver not in frame["participants"]


def test_a_renamed_big_group_reaches_every_connection_once_through_the_queue(
    expanding: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = settled_group(expanding, rest, sockets)
    status, _ = rest.json("PATCH", f"/conversations/{group.conversation_id}", group.sender, {"title": "Renamed"})
    assert status == 200
    assert [type(item) for item in (parse_queued(body) for body in expanding.queue.bodies())] == [Expansion]
    expanding.worker.drain()
    for connection in group.every_connection():
        assert [f["title"] for f in _frames(sink, connection, "conversation-updated")] == ["Renamed"], connection
