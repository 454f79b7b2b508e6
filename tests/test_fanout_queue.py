"""Queued fan-out and the push budget, end to end: the app's handlers, real PostgreSQL and Redis, the local queue
behind the same wiring, and the recording @connections endpoint.

The threshold is lowered to 5 so a group of 10 members with 3 connections each (30 connections) takes the queue.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.budget import PushBudget
from chalicelib.fanout import ClaimedClient, NotClaimed, Shard, ShardClaims, plan_shards
from chalicelib.model import StoredMessage
from chalicelib.push import GoneError
from chalicelib.queue import register_local_queue, unregister_local_queue
from local.queue import LocalQueue, LocalQueueWorker
from local.recording_sink import Behaviour, RecordingSink
from tests.conftest import Sockets, new_user

MEMBERS = 10
CONNECTIONS_EACH = 3


@dataclass
class Fanout:
    queue: LocalQueue
    dead: LocalQueue
    worker: LocalQueueWorker


@pytest.fixture
def fanout(configure: Any) -> Iterator[Fanout]:
    import app as chat_app

    name = f"fanout-{uuid.uuid4().hex[:8]}"
    dead = LocalQueue(f"{name}-dlq")
    queue = LocalQueue(name, visibility_timeout_s=0.3, max_receive_count=3, dead_letter=dead)
    url = register_local_queue(name, queue)
    configure(
        FANOUT_QUEUE_URL=url,
        FANOUT_QUEUE_THRESHOLD="5",
        FANOUT_SHARD_SIZE="7",
        FANOUT_RETRY_BASE_SECONDS="0",
        PUSH_MAX_ATTEMPTS="2",
    )
    yield Fanout(queue, dead, LocalQueueWorker(queue, chat_app.fanout_worker, batch_size=3))
    unregister_local_queue(name)


@dataclass
class Group:
    conversation_id: str
    sender: str
    sender_connections: list[str]
    connections: dict[str, list[str]]  # member -> connections (the sender's excluded)

    def every_connection(self) -> list[str]:
        return [*self.sender_connections, *(c for cs in self.connections.values() for c in cs)]


def big_group(rest: Any, sockets: Sockets) -> Group:
    sender = new_user("sender")
    members = [new_user("member") for _ in range(MEMBERS)]
    conversation_id = rest.group(sender, members)
    return Group(
        conversation_id,
        sender,
        [sockets.connect(sender), sockets.connect(sender)],
        {member: [sockets.connect(member) for _ in range(CONNECTIONS_EACH)] for member in members},
    )


def deliveries(sink: RecordingSink, connections: list[str], message_id: str) -> Counter[str]:
    """How many times each connection got the message's new-message frame."""
    return Counter(
        {
            connection: sum(
                1
                for frame in sink.json_frames(connection)
                if frame.get("type") == "new-message" and frame["messageId"] == message_id
            )
            for connection in connections
        }
    )


def test_a_big_group_gets_every_connection_exactly_once_and_the_sender_is_answered_first(
    fanout: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = big_group(rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "to everyone")
    # Answered at once, on all of the sender's connections; nobody else has it before the queue drains.
    assert deliveries(sink, group.sender_connections, echo["messageId"]) == Counter(
        dict.fromkeys(group.sender_connections, 1)
    )
    others = [c for cs in group.connections.values() for c in cs]
    assert sum(deliveries(sink, others, echo["messageId"]).values()) == 0
    shards = [Shard.parse(body) for body in fanout.queue.bodies()]
    assert sorted(m for s in shards for m in s.members) == sorted(group.connections)
    assert all(len(s.members) * CONNECTIONS_EACH <= 7 for s in shards)

    fanout.worker.drain()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    assert len(fanout.dead) == 0


def test_a_small_conversation_keeps_the_direct_path(fanout: Fanout, rest: Any, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    alice_conn, bob_conn = sockets.connect(alice), sockets.connect(bob)
    echo = sockets.message(alice_conn, conversation_id, "hi")
    assert [f["messageId"] for f in sockets.frames_of_type(bob_conn, "new-message")] == [echo["messageId"]]
    assert len(fanout.queue) == 0


def test_a_shard_failing_midway_is_redelivered_with_no_duplicate_and_nothing_lost(
    fanout: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = big_group(rest, sockets)
    unlucky = [cs[1] for cs in list(group.connections.values())[:4]]
    for connection in unlucky:  # both attempts of the first delivery answer 503; the redelivery's succeed
        sink.inject(Behaviour(status=503, times=2), connection)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "flaky")

    first = fanout.worker.run_once()
    assert first is not None and first.failed  # some shards of this batch failed midway
    fanout.worker.drain()
    counts = deliveries(sink, group.every_connection(), echo["messageId"])
    assert counts == Counter(dict.fromkeys(group.every_connection(), 1))  # 0 duplicates, 0 lost
    assert all(sink.attempts(connection) >= 3 for connection in unlucky)


def test_a_push_abandoned_at_the_deadline_that_then_lands_is_not_pushed_again(
    fanout: Fanout, configure: Any, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    configure(PUSH_DEADLINE_SECONDS="0.3")
    group = big_group(rest, sockets)
    slow = next(iter(group.connections.values()))[0]
    sink.inject(Behaviour(delay=1.0, times=1), slow)  # outlives the deadline, then delivers
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "slow")
    fanout.worker.drain()
    time.sleep(1.0)  # the abandoned push lands
    fanout.worker.drain()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )


def test_a_poison_shard_lands_in_the_dead_letter_queue_after_max_receive_count(fanout: Fanout) -> None:
    fanout.queue.send_message('{"v": 1, "members": "not a list"}')
    fanout.worker.drain()
    assert len(fanout.queue) == 0
    assert fanout.dead.receive_counts() == [3]


def test_a_member_removed_before_the_worker_runs_gets_nothing(
    fanout: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = big_group(rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "not for the leaver")
    leaver, leaver_connections = next(iter(group.connections.items()))
    wiring.get_database().run_sql(
        "DELETE FROM participant_table WHERE conversation_id = :c AND user_id = :u",
        c=group.conversation_id,
        u=leaver,
    )
    fanout.worker.drain()
    counts = deliveries(sink, group.every_connection(), echo["messageId"])
    assert all(counts[c] == 0 for c in leaver_connections)
    assert all(counts[c] == 1 for c in group.every_connection() if c not in leaver_connections)


def test_the_budget_slows_a_queued_burst_and_drops_nothing(
    fanout: Fanout, configure: Any, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    configure(PUSH_BUDGET_PER_SECOND="40", PUSH_BUDGET_BURST="5")
    group = big_group(rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "slowly")
    started = time.monotonic()
    fanout.worker.drain(timeout_s=30)
    elapsed = time.monotonic() - started
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    # 30 queued pushes, at most 5 from the bucket at once, then 40/s: at least (30 - 5) / 40 s.
    assert elapsed >= (30 - 5) / 40 * 0.9, elapsed
    assert len(fanout.dead) == 0


def test_the_direct_path_sheds_beyond_the_budget_but_never_the_senders_echo(
    configure: Any, rest: Any, sockets: Sockets
) -> None:
    configure(PUSH_BUDGET_PER_SECOND="0.001", PUSH_BUDGET_BURST="1", PUSH_BUDGET_DIRECT_WAIT_SECONDS="0")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    alice_conn, bob_conn = sockets.connect(alice), sockets.connect(bob)
    sockets.message(alice_conn, conversation_id, "first")  # takes the one token (the echo is charged too)
    echo = sockets.message(alice_conn, conversation_id, "second")  # the echo still goes out
    bob_ids = [f["messageId"] for f in sockets.frames_of_type(bob_conn, "new-message")]
    assert echo["messageId"] not in bob_ids  # shed: bob sees it in history


def test_the_shards_of_one_batch_are_pushed_side_by_side(
    fanout: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = big_group(rest, sockets)
    sockets.message(group.sender_connections[0], group.conversation_id, "three at once")
    shards = [Shard.parse(body) for body in fanout.queue.bodies()]
    for shard in shards[:3]:  # the fixture's batch: one slow push in each of its three shards
        sink.inject(Behaviour(delay=0.5, times=1), group.connections[shard.members[0]][0])
    started = time.monotonic()
    batch = fanout.worker.run_once()
    elapsed = time.monotonic() - started
    assert batch is not None and len(batch.received) == 3 and not batch.failed
    assert elapsed < 1.0, elapsed  # one after another: at least 1.5 s


def test_two_concurrent_deliveries_of_every_shard_push_each_connection_once(
    fanout: Fanout, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    group = big_group(rest, sockets)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "delivered twice")
    shards = fanout.queue.receive(100)
    for shard in shards:  # SQS is at least once: every shard arrives twice, the copies side by side
        fanout.queue.delete(shard.receipt_handle)
        fanout.queue.send([shard.body, shard.body])
    pollers = [LocalQueueWorker(fanout.queue, fanout.worker._handler, batch_size=1) for _ in range(2)]
    for poller in pollers:
        poller.start()
    try:
        deadline = time.monotonic() + 20
        while len(fanout.queue) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for poller in pollers:
            poller.stop()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )
    assert len(fanout.queue) == 0 and len(fanout.dead) == 0


def test_the_fan_out_on_a_redis_cluster_pushes_each_connection_once_across_a_redelivery(
    fanout: Fanout, configure: Any, redis_cluster: Any, rest: Any, sockets: Sockets, sink: RecordingSink
) -> None:
    configure(REDIS_URL=redis_cluster.url, REDIS_CLUSTER="true")
    group = big_group(rest, sockets)
    unlucky = [cs[0] for cs in list(group.connections.values())[:3]]
    for connection in unlucky:
        sink.inject(Behaviour(status=503, times=2), connection)
    echo = sockets.message(group.sender_connections[0], group.conversation_id, "over the cluster")
    for body in fanout.queue.bodies():
        fanout.queue.send_message(body)
    fanout.worker.drain()
    assert deliveries(sink, group.every_connection(), echo["messageId"]) == Counter(
        dict.fromkeys(group.every_connection(), 1)
    )


# --- the claims themselves, on real Redis ----------------------------------------------------------------


@pytest.fixture
def claims(app_environment: None) -> ShardClaims:
    key = ShardClaims.key_for(f"claims-test-{uuid.uuid4().hex[:8]}:", str(uuid.uuid4()), 0)
    return ShardClaims(wiring.get_redis(), key, 60)


def test_a_bulk_claim_returns_only_what_it_newly_claimed(claims: ShardClaims) -> None:
    assert claims.claim(["a", "b", "c"]) == ["a", "b", "c"]
    assert claims.claim(["c", "d", "a", "e"]) == ["d", "e"]  # a redelivery gets only the rest
    claims.release(["a", "d"])
    assert claims.unclaimed(["a", "b", "c", "d", "e", "f"]) == ["a", "d", "f"]
    assert claims.claim(["a", "d", "f"]) == ["a", "d", "f"]
    assert claims.claim([]) == []
    assert 0 < wiring.get_redis().ttl(claims.key) <= 60


def test_concurrent_bulk_claims_of_one_shard_split_its_connections(claims: ShardClaims) -> None:
    connections = [f"c{i}" for i in range(2000)]
    won: list[list[str]] = []

    def claim_all() -> None:
        mine: list[str] = []
        for start in range(0, len(connections), 100):
            mine += claims.claim(connections[start : start + 100])
        won.append(mine)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c for mine in won for c in mine) == sorted(connections)  # each claimed once, by one of them


class Posts:
    """A ConnectionsClient that records posts and fails the ones it is told to."""

    def __init__(self, failing: set[str]) -> None:
        self.posted: list[str] = []
        self._failing = failing

    def post(self, connection_id: str, data: bytes) -> None:
        if connection_id in self._failing:
            raise RuntimeError("503")
        if connection_id == "gone":
            raise GoneError(connection_id)
        self.posted.append(connection_id)

    def close(self, connection_id: str) -> None:
        pass


def test_a_chunk_gives_back_the_claims_of_failed_and_unstarted_pushes_but_not_of_delivered_or_gone(
    claims: ShardClaims,
) -> None:
    ids = ["ok", "gone", "fails", "never-started", "also-never"]
    client = ClaimedClient(Posts({"fails"}), claims, claims.claim(ids))
    client.post("ok", b"{}")
    with pytest.raises(GoneError):
        client.post("gone", b"{}")
    with pytest.raises(RuntimeError):
        client.post("fails", b"{}")
    assert client.release_unstarted() == 2
    assert claims.unclaimed(ids) == ["fails", "never-started", "also-never"]  # the redelivery retries these
    with pytest.raises(NotClaimed):  # a push starting after its claim was given back
        client.post("never-started", b"{}")
    with pytest.raises(NotClaimed):  # and one this chunk never claimed
        client.post("someone-elses", b"{}")


# --- the budget itself, on real Redis with a fake clock ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def budget(app_environment: None) -> tuple[PushBudget, Clock]:
    clock = Clock()
    made = PushBudget(
        wiring.get_redis,
        rate_per_s=100,
        burst=10,
        prefix=f"budget-test-{uuid.uuid4().hex[:8]}:",
        clock=clock,
        sleep=clock.sleep,
    )
    return made, clock


def test_the_budget_grants_what_it_has_without_waiting(budget: tuple[PushBudget, Clock]) -> None:
    bucket, clock = budget
    assert bucket.acquire(25, max_wait_s=0) == 10
    assert bucket.acquire(1, max_wait_s=0) == 0
    clock.now += 0.05
    assert bucket.acquire(25, max_wait_s=0) == 5


def test_a_must_take_goes_into_debt_that_later_takes_wait_out(budget: tuple[PushBudget, Clock]) -> None:
    bucket, clock = budget
    assert bucket.acquire(10, max_wait_s=0) == 10
    assert bucket.acquire(3, max_wait_s=0, must=3) == 3  # -3 tokens now
    clock.now += 0.03
    assert bucket.acquire(1, max_wait_s=0) == 0  # the debt is paid back first
    clock.now += 0.011
    assert bucket.acquire(1, max_wait_s=0) == 1


def test_acquire_waits_for_the_tokens_it_needs(budget: tuple[PushBudget, Clock]) -> None:
    bucket, clock = budget
    assert bucket.acquire(40, max_wait_s=10) == 40
    assert 0.3 <= clock.slept <= 0.3 * 1.25, clock.slept  # (40 - 10) / 100 s, plus jitter


def test_the_budget_fails_open_when_redis_is_unreachable(configure: Any) -> None:
    configure(REDIS_URL="redis://127.0.0.1:9/0", REDIS_TIMEOUT_SECONDS="0.2")
    assert wiring.get_push_budget().acquire(5000, max_wait_s=0) == 5000


def test_plan_shards_caps_connections_per_shard_and_skips_offline_members() -> None:
    message = StoredMessage(str(uuid.uuid4()), str(uuid.uuid4()), "s", "t", "hi", datetime.now(UTC), 1)
    connections = {f"u{i}": [f"c{i}-{j}" for j in range(i % 4)] for i in range(20)}
    shards = plan_shards(message, list(connections), connections, endpoint="https://x/y", shard_size=5, now=0.0)
    members = [m for s in shards for m in s.members]
    assert sorted(members) == sorted(u for u, cs in connections.items() if cs)
    assert all(sum(len(connections[m]) for m in s.members) <= 5 for s in shards)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert Shard.parse(shards[0].body()) == shards[0]


# --- make dev: the local server runs the same worker on its in-process queue --------------------------------


def test_the_local_server_fans_a_big_group_out_through_its_queue(
    app_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import json
    import os

    from tests.local_server import server_env, start_server

    data_dir = tmp_path_factory.mktemp("fanout-server") / "data"
    env = server_env(
        data_dir,
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        REDIS_KEY_PREFIX=f"chat-local-{uuid.uuid4().hex[:8]}:",
        FANOUT_QUEUE_THRESHOLD="2",
        FANOUT_SHARD_SIZE="1",
    )
    server = start_server(data_dir, env)
    try:
        alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
        tokens = {user: server.token(user) for user in (alice, bob, carol)}
        status, body = server.call(
            "POST", "/conversation", tokens[alice], {"recipientIdArr": [bob, carol], "isGroup": True, "title": "t"}
        )
        assert status == 200, body
        sockets = [server.socket(tokens[u]) for u in (alice, bob, bob, carol)]
        try:
            temp = uuid.uuid4().hex
            frame = {"action": "send-message", "tempMessageId": temp, "conversationId": body["conversationId"]}
            sockets[0].send(json.dumps({**frame, "content": "queued"}))
            firsts = [json.loads(ws.recv(timeout=10)) for ws in sockets]
            assert [(f["type"], f["tempMessageId"]) for f in firsts] == [("new-message", temp)] * 4
            time.sleep(0.3)  # room for a duplicate to arrive
            for ws in sockets:
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0)
        finally:
            for ws in sockets:
                ws.close()
    finally:
        assert server.stop() == 0, server.output()
    assert "fanout_worker failed" not in server.output()
