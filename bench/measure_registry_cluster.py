"""The connection registry (issue 12) on a real 3-master Redis Cluster beside standalone Redis.

The cluster is tests/redis_cluster.py's: three ``redis-server`` processes in cluster mode on loopback ports,
started for this phase and removed after it. Both registries are the app's own (``wiring.get_registry()``, the
cluster one built with ``REDIS_CLUSTER=true`` and ``REDIS_URL`` naming one node, so redis-py's ``RedisCluster``
with the app's client options); standalone is the benchmark's Redis. Each operation is timed on both in
alternating rounds: register (a new connection), touch (a heartbeat), touch with a send (the rate bucket too),
connections_for 100 users (one connection each; in cluster mode a pipeline per node), and unregister (of a
connection registered just before, untimed).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from bench.context import BenchContext
from bench.phase import Operation, interleaved, settings
from chalicelib import wiring
from chalicelib.registry import RedisRegistry
from tests.redis_cluster import LocalRedisCluster

USERS = 100
OPERATIONS = ("register", "touch", "touch send", "connections_for 100", "unregister")


def _operations(registry: RedisRegistry, tag: str) -> dict[str, tuple[Operation, Operation | None]]:
    run = uuid.uuid4().hex[:8]
    ids = itertools.count()
    users = [f"bench-{tag}-{run}-u{index:03d}" for index in range(USERS)]
    for index, user in enumerate(users):
        registry.register(f"bench-{tag}-{run}-c{index:03d}", user)
    heartbeat = f"bench-{tag}-{run}-c000"
    pending: list[str] = []

    def register() -> None:
        registry.register(f"bench-{tag}-{run}-n{next(ids)}", users[next(ids) % USERS])

    def register_one() -> None:
        connection_id = f"bench-{tag}-{run}-x{next(ids)}"
        registry.register(connection_id, users[1])
        pending.append(connection_id)

    def unregister() -> None:
        registry.unregister(pending.pop())

    def lookup() -> None:
        found = registry.connections_for(users)
        if len(found) != USERS:
            raise RuntimeError(f"connections_for found {len(found)} of {USERS} users")

    return {
        "register": (register, None),
        "touch": (lambda: registry.touch(heartbeat), None),
        "touch send": (lambda: registry.touch(heartbeat, send=True), None),
        "connections_for 100": (lookup, None),
        "unregister": (unregister, register_one),
    }


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """p50 stats by ``<operation> cluster`` and ``<operation> standalone``."""
    with LocalRedisCluster() as cluster:
        with settings({"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}):
            clustered = wiring.get_registry()
            # Keep this client past the phase's settings (reset would close it); closed below.
            wiring.get_registry.cache_clear()
            wiring.get_redis.cache_clear()
        try:
            on_cluster = _operations(clustered, "cl")
            on_standalone = _operations(wiring.get_registry(), "st")
            variants = {}
            for name in OPERATIONS:
                variants[f"{name} standalone"] = on_standalone[name]
                variants[f"{name} cluster"] = on_cluster[name]
            stats = interleaved(variants, rounds=ctx.iterations(10), per_round=50, warmup=20)
        finally:
            clustered._client.close()
    results: dict[str, Any] = dict(stats)
    results["cluster masters"] = len(cluster.ports)
    for name in OPERATIONS:
        log(f"  {name:<20} standalone {stats[f'{name} standalone']}; cluster {stats[f'{name} cluster']}")
    return results
