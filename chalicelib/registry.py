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

Send rate limit: ``touch(..., send=True)`` also takes one token from the
connection's bucket ``rate:{connection_id}`` (a hash of tokens and the time
they were counted) in the same script, so a frame costs one round trip. The
bucket refills at ``send_rate`` tokens a second up to ``send_burst``; an empty
bucket raises ``TooManyRequests``. The bucket expires once it would be full
again, so idle connections cost no memory.

Every Redis failure (refused, timed out, reset) surfaces as
``RegistryUnavailable``, which the chat service treats as "degraded", not fatal.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from chalicelib.errors import TooManyRequests

if TYPE_CHECKING:
    import redis

_P = ParamSpec("_P")
_T = TypeVar("_T")


class RegistryUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


# KEYS: conn key, user key. ARGV: connection id, user id, ttl seconds, now.
_REGISTER = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: conn key, rate key. ARGV: connection id, ttl seconds, now, user key prefix, cost, rate, burst.
# Returns false for an unknown connection, else {user, allowed}: allowed is 0 when the bucket lacks `cost`.
_TOUCH = """
local user = redis.call('GET', KEYS[1])
if not user then return false end
local user_key = ARGV[4] .. user
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', user_key, tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', user_key, ARGV[2])
local cost, rate, burst = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if cost == 0 or rate <= 0 then return {user, 1} end
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[2], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens + 1e-6 >= cost then  -- float time: 0.1 s at 10/s may compute as 0.99999
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[2], math.ceil(burst / rate) + 1)
return {user, allowed}
"""

# KEYS: conn key, rate key. ARGV: connection id, user key prefix. Returns the user it belonged to, or false.
_UNREGISTER = """
redis.call('DEL', KEYS[2])
local user = redis.call('GET', KEYS[1])
if not user then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. user, ARGV[1])
return user
"""


class ConnectionRegistry(Protocol):
    """What the chat service needs from a registry (Redis here; fakes in tests)."""

    def register(self, connection_id: str, user_id: str) -> None: ...

    def touch(self, connection_id: str, *, send: bool = False) -> str | None: ...

    def unregister(self, connection_id: str) -> str | None: ...

    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]: ...


def _unavailable_on_redis_error(method: Callable[_P, _T]) -> Callable[_P, _T]:
    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        import redis  # already loaded by the client; imported here so REST cold starts never load it

        try:
            return method(*args, **kwargs)
        except redis.RedisError as error:
            raise RegistryUnavailable(type(error).__name__) from error

    return guarded


class RedisRegistry:
    """The connection registry on Redis (ElastiCache in AWS)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_seconds: int,
        prefix: str = "chat:",
        send_rate: float = 0.0,
        send_burst: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is the time source for expiry scores and the rate bucket (tests pass a fake one)."""
        self._client = client
        self._ttl = ttl_seconds
        self._conn_prefix = f"{prefix}conn:"
        self._user_prefix = f"{prefix}user:"
        self._rate_prefix = f"{prefix}rate:"
        self._send_rate = send_rate
        self._send_burst = max(1, send_burst)
        self._clock = clock
        self._register = client.register_script(_REGISTER)
        self._touch = client.register_script(_TOUCH)
        self._unregister = client.register_script(_UNREGISTER)

    @_unavailable_on_redis_error
    def register(self, connection_id: str, user_id: str) -> None:
        """Record a new connection of ``user_id`` (a user may hold many)."""
        self._register(
            keys=[self._conn_prefix + connection_id, self._user_prefix + user_id],
            args=[connection_id, user_id, self._ttl, self._clock()],
        )

    @_unavailable_on_redis_error
    def touch(self, connection_id: str, *, send: bool = False) -> str | None:
        """The connection's user, with its expiry pushed back; None if unknown or expired.

        With ``send`` it also spends one token of the connection's send bucket and
        raises ``TooManyRequests`` when the bucket is empty (the expiry is still refreshed).
        """
        result = self._touch(
            keys=[self._conn_prefix + connection_id, self._rate_prefix + connection_id],
            args=[
                connection_id,
                self._ttl,
                self._clock(),
                self._user_prefix,
                1 if send else 0,
                self._send_rate,
                self._send_burst,
            ],
        )
        if not result:
            return None
        user, allowed = result
        if not int(allowed):
            raise TooManyRequests(f"Too many messages; at most {self._send_rate:g} a second")
        return _text(user)

    @_unavailable_on_redis_error
    def unregister(self, connection_id: str) -> str | None:
        """Forget this one connection; returns the user it belonged to, if any."""
        user = self._unregister(
            keys=[self._conn_prefix + connection_id, self._rate_prefix + connection_id],
            args=[connection_id, self._user_prefix],
        )
        return _text(user)

    @_unavailable_on_redis_error
    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Live connections of each user, in one round trip."""
        users = list(dict.fromkeys(user_ids))
        now = self._clock()
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
