"""The Redis connection registry (CONTRACT.md section 3) and the per-user REST buckets, against real Redis.

Every test runs twice: on standalone Redis and on a real 3-master Redis Cluster (tests/redis_cluster.py),
through the same code, so a key layout that crosses slots fails here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from chalicelib.errors import TooManyRequests
from chalicelib.limits import RateLimiter
from chalicelib.registry import RedisRegistry, RegistryUnavailable
from local.services import EmbeddedServices
from tests.conftest import new_user

pytestmark = pytest.mark.integration

Client = redis.Redis | redis.cluster.RedisCluster


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["standalone", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    connection: Client
    if request.param == "standalone":
        services: EmbeddedServices = request.getfixturevalue("services")
        connection = redis.Redis.from_url(services.redis_url)
    else:
        connection = redis.cluster.RedisCluster.from_url(request.getfixturevalue("redis_cluster").url)
    yield connection
    connection.close()


@dataclass
class Setup:
    client: Client
    prefix: str
    clock: Clock

    def registry(self, ttl: int = 60, **options: Any) -> RedisRegistry:
        return RedisRegistry(self.client, ttl_seconds=ttl, prefix=self.prefix, clock=self.clock, **options)


@pytest.fixture
def setup(client: Client) -> Setup:
    return Setup(client, f"reg-test-{uuid.uuid4().hex[:8]}:", Clock())


def registry(client: Client, ttl: int = 60) -> RedisRegistry:
    return RedisRegistry(client, ttl_seconds=ttl, prefix=f"reg-test-{uuid.uuid4().hex[:8]}:")


def sends_allowed(reg: RedisRegistry, connection_id: str, attempts: int) -> int:
    allowed = 0
    for _ in range(attempts):
        try:
            reg.touch(connection_id, send=True)
            allowed += 1
        except TooManyRequests:
            pass
    return allowed


# --- who is connected where ------------------------------------------------------------------------------------


def test_several_connections_per_user(client: Client) -> None:
    reg = registry(client)
    alice, bob = new_user("alice"), new_user("bob")
    for conn in ("a1", "a2", "a3"):
        reg.register(conn, alice)
    reg.register("b1", bob)
    found = reg.connections_for([alice, bob, "nobody"])
    assert sorted(found[alice]) == ["a1", "a2", "a3"] and found[bob] == ["b1"] and found["nobody"] == []
    assert reg.touch("a2") == alice and reg.touch("zz") is None


def test_connections_of_many_users_in_one_call(client: Client) -> None:
    """On a cluster the users' keys sit on all three masters; the pipeline still answers for each."""
    reg = registry(client)
    users = [new_user(f"u{i}") for i in range(60)]
    for i, user in enumerate(users):
        reg.register(f"c{i}", user)
    found = reg.connections_for([*users, users[0]])
    assert found == {user: [f"c{i}"] for i, user in enumerate(users)}
    assert reg.connections_for([]) == {}


def test_disconnect_removes_only_its_own_connection(client: Client) -> None:
    reg = registry(client)
    alice = new_user("alice")
    reg.register("old", alice)
    reg.register("new", alice)
    assert reg.unregister("old") == alice
    assert reg.unregister("old") is None  # a late duplicate $disconnect
    assert reg.connections_for([alice])[alice] == ["new"]
    assert reg.touch("old") is None and reg.touch("new") == alice


def test_entries_expire_unless_refreshed(client: Client) -> None:
    reg = registry(client, ttl=1)
    alice = new_user("alice")
    reg.register("idle", alice)
    reg.register("busy", alice)
    deadline = time.time() + 2.5
    while time.time() < deadline:
        assert reg.touch("busy") == alice
        time.sleep(0.3)
    assert reg.connections_for([alice])[alice] == ["busy"]
    assert reg.touch("idle") is None


def test_key_layout_puts_each_users_keys_in_one_slot(setup: Setup) -> None:
    reg = setup.registry(send_rate=10, send_burst=5)
    prefix, client = setup.prefix, setup.client
    reg.register("c1", "alice")
    reg.touch("c1", send=True)
    RateLimiter(client, prefix=prefix).take("alice", "create-conversation", rate_per_s=1, burst=5)
    assert client.get(f"{prefix}conn:c1") == b"alice"
    assert client.zscore(f"{prefix}{{u:alice}}:conns", "c1") is not None
    assert 0 < client.ttl(f"{prefix}{{u:alice}}:conns") <= 60 and 0 < client.ttl(f"{prefix}conn:c1") <= 60
    user_keys = [f"{prefix}{{u:alice}}:{name}" for name in ("conns", "send", "limit:create-conversation")]
    assert client.exists(*user_keys) == 3
    assert len({key_slot(key.encode()) for key in user_keys}) == 1
    reg.unregister("c1")
    assert client.exists(f"{prefix}conn:c1", f"{prefix}{{u:alice}}:conns") == 0


# --- partial steps (cluster mode splits operations into single-slot steps) -------------------------------------


def test_a_connection_missing_from_its_users_set_reads_as_unknown_and_is_not_re_added(setup: Setup) -> None:
    """A frame racing its own $disconnect (the set entry already gone) must not leave a ghost for fan-out."""
    reg = setup.registry()
    reg.register("c1", "alice")
    setup.client.zrem(f"{setup.prefix}{{u:alice}}:conns", "c1")
    assert reg.touch("c1") is None and reg.touch("c1", send=True) is None
    assert reg.connections_for(["alice"]) == {"alice": []}
    reg.register("c1", "alice")  # the service's recovery path: re-register from connection_table
    assert reg.touch("c1") == "alice" and reg.connections_for(["alice"]) == {"alice": ["c1"]}


def test_a_register_that_stopped_halfway_is_healed_by_registering_again(setup: Setup) -> None:
    reg = setup.registry()
    reg.register("c1", "alice")
    setup.client.delete(f"{setup.prefix}conn:c1")  # as if the second step had failed
    assert reg.connections_for(["alice"]) == {"alice": ["c1"]}  # fan-out still reaches it
    assert reg.touch("c1") is None  # its next frame is recovered by the service
    reg.register("c1", "alice")
    assert reg.touch("c1") == "alice"


def test_an_unregister_that_stopped_halfway_can_be_finished(setup: Setup) -> None:
    reg = setup.registry()
    reg.register("c1", "alice")
    setup.client.zrem(f"{setup.prefix}{{u:alice}}:conns", "c1")  # as if only the first removal had run
    assert reg.unregister("c1") == "alice"
    assert setup.client.exists(f"{setup.prefix}conn:c1") == 0


# --- the per-user connection cap -------------------------------------------------------------------------------


def test_the_cap_refuses_one_connection_too_many_and_records_nothing(setup: Setup) -> None:
    reg = setup.registry(ttl=60, max_connections_per_user=3)
    for conn in ("c1", "c2", "c3"):
        reg.register(conn, "alice")
        setup.clock.now += 1
    with pytest.raises(TooManyRequests) as refused:
        reg.register("c4", "alice")
    assert refused.value.message.startswith("Too many open connections; close one")
    assert refused.value.retry_after_s == pytest.approx(57, abs=0.01)  # when c1 expires unless refreshed
    assert setup.client.exists(f"{setup.prefix}conn:c4") == 0 and reg.touch("c4") is None
    assert sorted(reg.connections_for(["alice"])["alice"]) == ["c1", "c2", "c3"]
    reg.register("c2", "alice")  # again for a registered id: never refused, counted once
    reg.register("b1", "bob")  # the cap is per user
    reg.unregister("c1")
    reg.register("c4", "alice")  # closing one makes room
    assert sorted(reg.connections_for(["alice"])["alice"]) == ["c2", "c3", "c4"]


def test_expired_connections_do_not_count_against_the_cap(setup: Setup) -> None:
    reg = setup.registry(ttl=60, max_connections_per_user=2)
    reg.register("c1", "alice")
    reg.register("c2", "alice")
    setup.clock.now += 61  # neither was refreshed: both expired (no $disconnect came)
    reg.register("c3", "alice")
    reg.register("c4", "alice")
    assert sorted(reg.connections_for(["alice"])["alice"]) == ["c3", "c4"]


def test_a_cap_of_zero_is_no_cap(setup: Setup) -> None:
    reg = setup.registry(max_connections_per_user=0)
    for i in range(30):
        reg.register(f"c{i}", "alice")
    assert len(reg.connections_for(["alice"])["alice"]) == 30


def test_concurrent_registers_at_the_cap_admit_exactly_one(setup: Setup) -> None:
    reg = setup.registry(max_connections_per_user=5)
    for i in range(4):
        reg.register(f"c{i}", "alice")
    racers = 12
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []

    def connect(conn: str) -> None:
        barrier.wait()
        try:
            reg.register(conn, "alice")
            outcomes.append("ok")
        except TooManyRequests:
            outcomes.append("refused")

    threads = [threading.Thread(target=connect, args=(f"race-{i}",)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * (racers - 1)
    assert len(reg.connections_for(["alice"])["alice"]) == 5


# --- the per-user send rate ------------------------------------------------------------------------------------


def test_the_send_bucket_is_the_users_across_connections(setup: Setup) -> None:
    reg = setup.registry(send_rate=10, send_burst=20)
    for conn in ("c1", "c2", "c3"):
        reg.register(conn, "alice")
    reg.register("b1", "bob")
    assert sends_allowed(reg, "c1", 10) + sends_allowed(reg, "c2", 10) + sends_allowed(reg, "c3", 10) == 20
    with pytest.raises(TooManyRequests) as refused:
        reg.touch("c3", send=True)
    assert refused.value.retry_after_s == pytest.approx(0.1, abs=1e-3)  # one token back at 10 a second
    assert sends_allowed(reg, "b1", 25) == 20  # another user has a bucket of their own
    setup.clock.now += 0.1
    assert sends_allowed(reg, "c2", 5) == 1  # then 10 a second
    setup.clock.now += 1.0
    assert sends_allowed(reg, "c1", 15) == 10
    reg.unregister("c1")
    reg.register("c4", "alice")
    assert sends_allowed(reg, "c4", 5) == 0  # reconnecting does not refill it
    setup.clock.now += 3600
    assert sends_allowed(reg, "c2", 30) == 20  # refills to the burst, never beyond
    assert all(reg.touch("c2") == "alice" for _ in range(50))  # heartbeats and reads are never limited


def test_a_refused_send_still_refreshes_the_connection(setup: Setup) -> None:
    reg = setup.registry(ttl=60, send_rate=0.001, send_burst=1)
    reg.register("c1", "alice")
    reg.touch("c1", send=True)
    setup.clock.now += 50
    with pytest.raises(TooManyRequests):
        reg.touch("c1", send=True)
    setup.clock.now += 50  # 100 s after register, 50 after the refused send
    assert reg.connections_for(["alice"]) == {"alice": ["c1"]}


def test_an_idle_send_bucket_expires_once_it_would_be_full(setup: Setup) -> None:
    reg = setup.registry(send_rate=10, send_burst=20)
    reg.register("c1", "alice")
    assert sends_allowed(reg, "c1", 20) == 20
    assert 0 < setup.client.ttl(f"{setup.prefix}{{u:alice}}:send") <= 3


def test_a_send_rate_of_zero_is_no_limit(setup: Setup) -> None:
    reg = setup.registry(send_rate=0, send_burst=1)
    reg.register("c1", "alice")
    assert sends_allowed(reg, "c1", 50) == 50
    assert setup.client.exists(f"{setup.prefix}{{u:alice}}:send") == 0


def test_sends_of_one_user_from_many_threads_share_one_bucket(setup: Setup) -> None:
    """As from many Lambdas: 8 connections sending at once get the burst between them, not 8 bursts."""
    reg = setup.registry(send_rate=0.001, send_burst=20)
    connections = [f"c{i}" for i in range(8)]
    for conn in connections:
        reg.register(conn, "alice")
    counts: list[int] = []
    threads = [threading.Thread(target=lambda c=c: counts.append(sends_allowed(reg, c, 10))) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 20


# --- per-user REST buckets (chalicelib.limits) -----------------------------------------------------------------


def test_a_rest_bucket_allows_its_burst_then_its_rate(setup: Setup) -> None:
    limiter = RateLimiter(setup.client, prefix=setup.prefix, clock=setup.clock)

    def taken(user: str, attempts: int, bucket: str = "create-conversation") -> int:
        count = 0
        for _ in range(attempts):
            try:
                limiter.take(user, bucket, rate_per_s=0.5, burst=10)
                count += 1
            except TooManyRequests as refused:
                assert refused.retry_after_s is not None and 0 < refused.retry_after_s <= 2
        return count

    assert taken("alice", 15) == 10
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("alice", "create-conversation", rate_per_s=0.5, burst=10)
    assert refused.value.retry_after_s == pytest.approx(2.0, abs=1e-3)
    assert refused.value.message == "Too many requests; try again in 2 s"
    assert taken("bob", 15) == 10  # per user
    assert taken("alice", 15, bucket="other") == 10  # per bucket
    setup.clock.now += 4
    assert taken("alice", 5) == 2
    assert 0 < setup.client.ttl(limiter.key("alice", "create-conversation")) <= 21
    setup.clock.now += 3600
    assert taken("alice", 15) == 10  # never beyond the burst


def test_a_rest_rate_of_zero_is_no_limit_and_touches_nothing(setup: Setup) -> None:
    limiter = RateLimiter(setup.client, prefix=setup.prefix, clock=setup.clock)
    for _ in range(50):
        limiter.take("alice", "create-conversation", rate_per_s=0, burst=1)
    assert setup.client.exists(limiter.key("alice", "create-conversation")) == 0


# --- Redis gone ------------------------------------------------------------------------------------------------


def test_an_unreachable_redis_is_registry_unavailable_for_every_operation() -> None:
    dead = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 1))
    reg = RedisRegistry(dead, ttl_seconds=60)
    limiter = RateLimiter(dead)
    calls: list[Callable[[], object]] = [
        lambda: reg.register("c1", "alice"),
        lambda: reg.touch("c1", send=True),
        lambda: reg.unregister("c1"),
        lambda: reg.connections_for(["alice"]),
        lambda: limiter.take("alice", "create-conversation", rate_per_s=1, burst=1),
    ]
    for call in calls:
        with pytest.raises(RegistryUnavailable):
            call()


def test_after_a_redis_failure_the_limiter_fails_fast_for_its_cooldown_then_asks_again() -> None:
    from tests.servers import PrivateRedis

    server = PrivateRedis().start()
    client = redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = RateLimiter(client, prefix="cooldown:", unavailable_cooldown_s=0.5)

    def take() -> None:
        limiter.take("alice", "rest", rate_per_s=100, burst=100)

    try:
        take()
        server.pause()  # answers nothing: each call would wait for the full timeout
        with pytest.raises(RegistryUnavailable, match="TimeoutError"):
            take()
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="skipped"):
            take()
        assert time.monotonic() - started < 0.05
        server.resume()
        time.sleep(0.6)
        take()  # asked again once the cooldown is over
    finally:
        server.kill()
        client.close()
