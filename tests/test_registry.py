"""The Redis connection registry (CONTRACT.md section 3), against real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from chalicelib.config import get_settings
from chalicelib.registry import RedisRegistry
from tests.conftest import new_user


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(get_settings().redis_url)
    yield connection
    connection.close()


def registry(client: redis.Redis, ttl: int = 60) -> RedisRegistry:
    return RedisRegistry(client, ttl_seconds=ttl, prefix=f"reg-test-{uuid.uuid4().hex[:8]}:")


def test_several_connections_per_user(client: redis.Redis) -> None:
    reg = registry(client)
    alice, bob = new_user("alice"), new_user("bob")
    for conn in ("a1", "a2", "a3"):
        reg.register(conn, alice)
    reg.register("b1", bob)
    found = reg.connections_for([alice, bob, "nobody"])
    assert sorted(found[alice]) == ["a1", "a2", "a3"] and found[bob] == ["b1"] and found["nobody"] == []
    assert reg.touch("a2") == alice and reg.touch("zz") is None


def test_disconnect_removes_only_its_own_connection(client: redis.Redis) -> None:
    reg = registry(client)
    alice = new_user("alice")
    reg.register("old", alice)
    reg.register("new", alice)
    assert reg.unregister("old") == alice
    assert reg.unregister("old") is None  # a late duplicate $disconnect
    assert reg.connections_for([alice])[alice] == ["new"]
    assert reg.touch("new") == alice


def test_entries_expire_unless_refreshed(client: redis.Redis) -> None:
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


def test_register_and_unregister_are_atomic_pairs(client: redis.Redis) -> None:
    prefix = f"reg-test-{uuid.uuid4().hex[:8]}:"
    reg = RedisRegistry(client, ttl_seconds=60, prefix=prefix)
    reg.register("c1", "alice")
    assert client.get(f"{prefix}conn:c1") == b"alice"
    assert client.zscore(f"{prefix}user:alice", "c1") is not None
    assert 0 < client.ttl(f"{prefix}user:alice") <= 60
    reg.unregister("c1")
    assert client.exists(f"{prefix}conn:c1", f"{prefix}user:alice") == 0
