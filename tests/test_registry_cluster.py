"""Cluster mode (REDIS_CLUSTER=true) beyond the registry contract, which tests/test_registry.py runs on both:
the wiring, a mismatched setting, a master stopped mid-run, and the app's WebSocket path on a real cluster."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from chalicelib import wiring
from chalicelib.errors import TooManyRequests
from chalicelib.limits import RateLimiter
from chalicelib.registry import RedisRegistry, RegistryUnavailable
from local.services import EmbeddedServices
from tests.conftest import Rest, Sockets, new_user
from tests.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration

Configure = Callable[..., None]


def test_redis_cluster_true_builds_one_cluster_client_for_the_registry_and_the_limiter(
    configure: Configure, redis_cluster: LocalRedisCluster
) -> None:
    configure(REDIS_URL=redis_cluster.url, REDIS_CLUSTER="true", MAX_CONNECTIONS_PER_USER="2")
    client = wiring.get_redis()
    assert isinstance(client, redis.cluster.RedisCluster) and wiring.get_redis() is client
    user = new_user("alice")
    registry = wiring.get_registry()
    registry.register("c1", user)
    registry.register("c2", user)
    with pytest.raises(TooManyRequests):
        registry.register("c3", user)
    assert registry.touch("c1", send=True) == user
    wiring.get_rate_limiter().take(user, "create-conversation", rate_per_s=1, burst=1)
    with pytest.raises(TooManyRequests):
        wiring.get_rate_limiter().take(user, "create-conversation", rate_per_s=1, burst=1)


def test_redis_cluster_true_on_a_standalone_server_says_so_at_first_use(
    configure: Configure, services: EmbeddedServices
) -> None:
    configure(REDIS_URL=services.redis_url, REDIS_CLUSTER="true")
    with pytest.raises(RegistryUnavailable, match="REDIS_CLUSTER=true, but REDIS_URL is not a reachable Redis Cluster"):
        wiring.get_registry()


def test_a_standalone_client_on_a_cluster_node_is_told_to_set_redis_cluster(redis_cluster: LocalRedisCluster) -> None:
    client = redis.Redis.from_url(redis_cluster.url)
    registry = RedisRegistry(client, ttl_seconds=60, prefix=f"mismatch-{uuid.uuid4().hex[:6]}:")
    with pytest.raises(RegistryUnavailable, match="set REDIS_CLUSTER=true"):
        for i in range(50):  # some users' slots live on this node; the first that does not is MOVED
            registry.register(f"c{i}", f"user-{i}")
    client.close()


@pytest.fixture
def private_cluster() -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own, since it stops one of the masters."""
    with LocalRedisCluster() as cluster:
        yield cluster


def attempt(call: Callable[[], Any]) -> str:
    try:
        call()
    except RegistryUnavailable:
        return "unavailable"
    return "ok"


def test_a_master_stopped_mid_run_is_registry_unavailable_then_recovers(private_cluster: LocalRedisCluster) -> None:
    """Redirections and dead nodes surface as RegistryUnavailable (degraded mode), never RedisClusterException."""
    client = redis.cluster.RedisCluster.from_url(
        private_cluster.url, retry=Retry(NoBackoff(), 1), socket_timeout=1, socket_connect_timeout=1
    )
    registry = RedisRegistry(client, ttl_seconds=60, send_rate=10, send_burst=20, max_connections_per_user=5)
    limiter = RateLimiter(client)
    users = [new_user(f"u{i}") for i in range(30)]
    for i, user in enumerate(users):
        registry.register(f"c{i}", user)

    private_cluster.stop_node(private_cluster.ports[1])
    outcomes = {attempt(partial(registry.touch, f"c{i}", send=True)) for i in range(len(users))}
    outcomes |= {attempt(partial(limiter.take, u, "rest", rate_per_s=1, burst=5)) for u in users}
    outcomes |= {attempt(partial(registry.register, f"new{i}", u)) for i, u in enumerate(users)}
    assert outcomes == {"ok", "unavailable"}  # the other masters still answer for their slots
    assert attempt(lambda: registry.connections_for(users)) == "unavailable"

    private_cluster.start_node(private_cluster.ports[1])  # empty: its keys are lost, as in a failover
    private_cluster.wait_until_ok()
    for i, user in enumerate(users):
        if registry.touch(f"c{i}") is None:
            registry.register(f"c{i}", user)  # what the service does from connection_table
        assert registry.touch(f"c{i}", send=True) == user
    assert all(f"c{i}" in found for i, found in enumerate(registry.connections_for(users).values()))
    client.close()


def test_the_websocket_path_on_a_cluster(
    configure: Configure, redis_cluster: LocalRedisCluster, rest: Rest, sockets: Sockets
) -> None:
    configure(REDIS_URL=redis_cluster.url, REDIS_CLUSTER="true", SEND_RATE_PER_SECOND="0.001", SEND_BURST="3")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, other_tab = sockets.connect(alice), sockets.connect(alice)
    bob_tabs = [sockets.connect(bob), sockets.connect(bob)]
    assert sorted(wiring.get_registry().connections_for([bob])[bob]) == sorted(bob_tabs)
    sockets.message(tab, conversation_id, "over the cluster")
    sockets.message(other_tab, conversation_id, "from the other tab")
    for bob_tab in bob_tabs:
        contents = [frame["content"] for frame in sockets.frames_of_type(bob_tab, "new-message")]
        assert contents == ["over the cluster", "from the other tab"]
    sockets.send(tab, {"action": "read-messages", "conversationId": conversation_id})
    assert sockets.frames(tab)[-1]["type"] == "read-messages"
    sockets.message(tab, conversation_id, "third")
    sockets.send(
        other_tab,
        {
            "action": "send-message",
            "tempMessageId": "t-4",
            "conversationId": conversation_id,
            "content": "one too many for alice",
        },
    )
    assert sockets.frames(other_tab)[-1]["code"] == "TooManyRequests"  # one bucket for both tabs, on the cluster
    sockets.disconnect(bob_tabs[0])
    assert wiring.get_registry().connections_for([bob])[bob] == [bob_tabs[1]]
