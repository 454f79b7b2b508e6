"""Who is connected where: the Redis connection registry.

Keys (all under the configured prefix)::

    conn:{connection_id}  -> user id                     (string, expires after the TTL)
    user:{user_id}        -> {connection_id: expiry}     (sorted set scored by expiry time)

Expiry rules: ``$disconnect`` is best effort on API Gateway, so nothing here
lives forever. Every entry carries a deadline of now + TTL, refreshed by
``touch`` on each heartbeat or frame. A user's set is read with a score filter,
so an expired member is invisible at once and pruned on the next write; the
set's own key expires with its newest member. Removal is by connection id, so
a late ``$disconnect`` of an old connection never removes a newer one, and a
``GoneException`` from a push removes exactly the connection that is gone.

Each operation that touches both keys is one Lua script, so it is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis

# KEYS: conn key, user key. ARGV: connection id, user id, ttl seconds, now.
_REGISTER = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: conn key. ARGV: connection id, ttl seconds, now, user key prefix. Returns the user or false.
_TOUCH = """
local user = redis.call('GET', KEYS[1])
if not user then return false end
local user_key = ARGV[4] .. user
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', user_key, tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', user_key, ARGV[2])
return user
"""

# KEYS: conn key. ARGV: connection id, user key prefix. Returns the user it belonged to, or false.
_UNREGISTER = """
local user = redis.call('GET', KEYS[1])
if not user then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. user, ARGV[1])
return user
"""


class ConnectionRegistry(Protocol):
    """What the chat service needs from a registry (Redis here; fakes in tests)."""

    def register(self, connection_id: str, user_id: str) -> None: ...

    def touch(self, connection_id: str) -> str | None: ...

    def unregister(self, connection_id: str) -> str | None: ...

    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]: ...


class RedisRegistry:
    """The connection registry on Redis (ElastiCache in AWS)."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int, prefix: str = "chat:") -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._conn_prefix = f"{prefix}conn:"
        self._user_prefix = f"{prefix}user:"
        self._register = client.register_script(_REGISTER)
        self._touch = client.register_script(_TOUCH)
        self._unregister = client.register_script(_UNREGISTER)

    def register(self, connection_id: str, user_id: str) -> None:
        """Record a new connection of ``user_id`` (a user may hold many)."""
        self._register(
            keys=[self._conn_prefix + connection_id, self._user_prefix + user_id],
            args=[connection_id, user_id, self._ttl, time.time()],
        )

    def touch(self, connection_id: str) -> str | None:
        """The connection's user, with its expiry pushed back; None if unknown or expired."""
        user = self._touch(
            keys=[self._conn_prefix + connection_id],
            args=[connection_id, self._ttl, time.time(), self._user_prefix],
        )
        return _text(user)

    def unregister(self, connection_id: str) -> str | None:
        """Forget this one connection; returns the user it belonged to, if any."""
        user = self._unregister(keys=[self._conn_prefix + connection_id], args=[connection_id, self._user_prefix])
        return _text(user)

    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Live connections of each user, in one round trip."""
        users = list(dict.fromkeys(user_ids))
        now = time.time()
        pipeline = self._client.pipeline(transaction=False)
        for user in users:
            pipeline.zrangebyscore(self._user_prefix + user, now, "+inf")
        results = pipeline.execute()
        return {
            user: [conn for conn in (_text(c) for c in members) if conn]
            for user, members in zip(users, results, strict=True)
        }


def _text(value: object) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
