"""Who is connected where: the Redis connection registry, and the per-user send rate.

Keys (all under the configured prefix)::

    conn:{connection_id}        -> user id                   (string, expires after the TTL)
    {u:<user_id>}:conns         -> {connection_id: expiry}   (sorted set scored by expiry time)
    {u:<user_id>}:send          -> {tokens, at}              (hash: the user's send-message bucket)
    {u:<user_id>}:seen          -> epoch second of a minute  (the user's last connect or frame, 30 days)

The braces are Redis Cluster hash tags: every key of one user hashes to the same slot, so one Lua script
may touch them all. A connection's key has no tag of its own (it lives wherever its id hashes) and is only
ever used alone, by single-key commands.

Cluster rules: a script touches only keys passed in ``KEYS``, and all of them carry the same hash tag. An
operation that needs both a connection and its user is two single-slot steps, ordered so that a failure
between them is harmless (the next step retries, or the service's recovery path heals it):

- ``register``: (1) the user's set, with the connection cap, in one script; (2) ``SET`` the connection's
  key. A failure after (1) leaves a live connection in the set whose key is missing: fan-out reaches it, and
  its next frame finds no key, so the service re-registers it from ``connection_table``.
- ``touch``: (1) ``GETEX`` the connection's key (its user, expiry pushed back); (2) one script on the user's
  keys: refresh the connection's score and, for a send, take a token. A connection whose key lives but whose
  set entry is gone (pruned, or removed by a racing ``unregister``) reads as unknown, and the service's
  recovery path decides from ``connection_table``; (2) never re-adds a member, so a frame racing its own
  ``$disconnect`` cannot leave a ghost in the set. Two round trips per frame, on any deployment.
- ``unregister``: (1) ``GET`` the user; (2) remove the connection from the user's set; (3) ``DEL`` its key.
  Failing after (1) or (2) leaves the key, so a retry (a later 410, the TTL) can still finish the job; the
  reverse order would forget which set to clean.

Expiry rules: ``$disconnect`` is best effort on API Gateway, so nothing here lives forever. Every entry
carries a deadline of now + TTL, refreshed by ``touch`` on each heartbeat or frame. A user's set is read
with a score filter, so an expired member is invisible at once and pruned on the next ``register``; the
set's own key expires with its newest member. Removal is by connection id, so a late ``$disconnect`` of an
old connection never removes a newer one, and a ``GoneException`` from a push removes exactly the
connection that is gone.

Last activity (presence's ``lastActiveAt``, chalicelib/signals.py): ``register`` and ``touch`` also set
``:seen`` to the current minute, inside the scripts they run anyway and only when the minute changed, so a
heartbeat costs no extra round trip and writes nothing new within a minute.

Connection cap: ``register`` refuses (``TooManyRequests``) a new connection of a user who already holds
``max_connections_per_user`` live ones; the check and the insert are one script, so two concurrent
``$connect`` at cap - 1 cannot both pass. Re-registering a connection already in the set always succeeds
and counts once. Expired members do not count. A cap of 0 turns it off.

Send rate: ``touch(..., send=True)`` takes one token from the *user's* bucket, shared by all their
connections on every Lambda. It refills at ``send_rate`` tokens a second up to ``send_burst``; an empty
bucket raises ``TooManyRequests`` with the seconds until a token is back. The bucket outlives a
reconnect (reconnecting does not refill it) and expires once it would be full again, so idle users cost
no memory. ``chalicelib.limits.RateLimiter`` keeps the REST buckets the same way, under the same tag.

Time comes from the caller's clock (the Lambda's), not Redis's: scores and buckets stay testable with a
fake clock, and a bucket's time never runs backwards when two Lambdas' clocks disagree slightly.

Upgrading from the per-connection layout (``user:<id>`` sets, ``rate:<connection>`` buckets) needs no
migration: ``conn:`` keys kept their name, so a live connection's next frame finds its user, misses the new
set, reads as unknown and is re-registered from ``connection_table``; the old keys expire within the TTL.

Every Redis failure (refused, timed out, reset, cluster down or redirected) surfaces as
``RegistryUnavailable``, which the chat service treats as "degraded", not fatal. That includes
``RedisClusterException``, which is not a ``RedisError``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeAlias, TypeVar

from chalicelib.errors import TooManyRequests

if TYPE_CHECKING:
    import redis
    import redis.cluster

    RedisClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster

_P = ParamSpec("_P")
_T = TypeVar("_T")


class RegistryUnavailable(Exception):
    """Redis could not be reached, did not answer in time, or is not the kind of server configured."""


# A Lua function both bucket scripts include: take `cost` tokens from the bucket hash at `key`.
# Returns allowed (1/0) and, when refused, the seconds until `cost` tokens are back (a string: Lua numbers
# reach Redis truncated to integers).
BUCKET_LUA = """
local function take(key, now, cost, rate, burst)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or at == nil then tokens, at = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  local allowed, wait = 0, (cost - tokens) / rate
  if tokens + 1e-6 >= cost then  -- float time: 0.1 s at 10/s may compute as 0.99999
    tokens, allowed, wait = tokens - cost, 1, 0
  end
  -- %.17g keeps every bit of a double (tostring keeps 14 digits: 0.1 ms of an epoch time)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', math.max(at, now)))
  redis.call('EXPIRE', key, math.ceil((burst - tokens) / rate) + 1)
  return allowed, string.format('%.17g', wait)
end
"""

# How long a user's last activity is kept after they were last seen.
SEEN_TTL_S = 30 * 86400

# Record the minute of the user's latest activity (KEYS[n] seen key, ARGV[m] minute), once per minute.
_SEEN_LUA = f"""
local function seen(key, minute)
  if redis.call('GET', key) ~= minute then redis.call('SET', key, minute, 'EX', {SEEN_TTL_S}) end
end
"""

# KEYS: the user's set, the user's seen key. ARGV: connection id, now, ttl seconds, cap (0: none), minute.
# Returns {1, ''} when registered, {0, earliest expiry score} when the user is at the cap.
_REGISTER = (
    _SEEN_LUA
    + """
local now, ttl, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
if cap > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= cap then
  return {0, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
seen(KEYS[2], ARGV[5])
return {1, ''}
"""
)

# KEYS: the user's set, the user's send bucket, the user's seen key.
# ARGV: connection id, now, ttl seconds, cost, rate, burst, minute.
# Returns {0} for a connection not in the set, else {1, allowed, seconds to wait}.
_TOUCH = (
    BUCKET_LUA
    + _SEEN_LUA
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0} end
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
seen(KEYS[3], ARGV[7])
local cost, rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if cost == 0 or rate <= 0 then return {1, 1, '0'} end
local allowed, wait = take(KEYS[2], now, cost, rate, burst)
return {1, allowed, wait}
"""
)


class ConnectionRegistry(Protocol):
    """What the chat service needs from a registry (Redis here; fakes in tests)."""

    def check_capacity(self, user_id: str) -> None: ...

    def register(self, connection_id: str, user_id: str) -> None: ...

    def touch(self, connection_id: str, *, send: bool = False) -> str | None: ...

    def unregister(self, connection_id: str) -> str | None: ...

    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]: ...


def unavailable_on_redis_error(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn every Redis client failure, standalone or cluster, into ``RegistryUnavailable``."""

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        import redis  # already loaded by the client; imported here so modules that never call Redis skip it

        try:
            return method(*args, **kwargs)
        except redis.exceptions.MovedError as error:
            # Only a standalone client sees MOVED (RedisCluster follows it): the server is a cluster node.
            raise RegistryUnavailable("MovedError: REDIS_URL is a Redis Cluster; set REDIS_CLUSTER=true") from error
        except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
            raise RegistryUnavailable(type(error).__name__) from error

    return guarded


class LuaScript:
    """A Lua script run with EVALSHA, and with EVAL on the one node that does not have it cached yet.

    redis-py's own ``Script`` loads a missing script with ``SCRIPT LOAD``, which ``RedisCluster`` sends to
    every primary: with one master down, a script not yet cached could then run on none of them.
    """

    def __init__(self, client: RedisClient, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, *, keys: list[str], args: list[object]) -> Any:
        import redis

        try:
            return self._client.evalsha(self._sha, len(keys), *keys, *args)  # type: ignore[arg-type]
        except redis.exceptions.NoScriptError:
            return self._client.eval(self._source, len(keys), *keys, *args)  # type: ignore[arg-type]


def user_key(prefix: str, user_id: str, name: str) -> str:
    """A key of one user's, hash-tagged so all of that user's keys share a cluster slot."""
    return f"{prefix}{{u:{user_id}}}:{name}"


class RedisRegistry:
    """The connection registry on Redis (ElastiCache in AWS), standalone or cluster mode."""

    def __init__(
        self,
        client: RedisClient,
        *,
        ttl_seconds: int,
        prefix: str = "chat:",
        send_rate: float = 0.0,
        send_burst: int = 1,
        max_connections_per_user: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is the time source for expiry scores and the rate bucket (tests pass a fake one).

        ``send_rate`` 0 turns the send limit off; ``max_connections_per_user`` 0 turns the cap off.
        """
        self._client = client
        self._ttl = ttl_seconds
        self._prefix = prefix
        self._send_rate = send_rate
        self._send_burst = max(1, send_burst)
        self._max_connections = max(0, max_connections_per_user)
        self._clock = clock
        self._register = LuaScript(client, _REGISTER)
        self._touch = LuaScript(client, _TOUCH)

    def _conn_key(self, connection_id: str) -> str:
        return f"{self._prefix}conn:{connection_id}"

    def _conns_key(self, user_id: str) -> str:
        return user_key(self._prefix, user_id, "conns")

    @unavailable_on_redis_error
    def check_capacity(self, user_id: str) -> None:
        """``TooManyRequests`` when the user already holds the cap of live connections: one read, so a
        ``$connect`` past the cap is refused before anything is written. ``register`` still decides,
        atomically, for connects that race to the last slot."""
        if not self._max_connections:
            return
        now = self._clock()
        pipeline = self._client.pipeline(transaction=False)
        pipeline.zcount(self._conns_key(user_id), now, "+inf")
        pipeline.zrangebyscore(self._conns_key(user_id), now, "+inf", start=0, num=1, withscores=True)
        live, oldest = pipeline.execute()
        if int(live) >= self._max_connections:
            expires = float(oldest[0][1]) if oldest else now + self._ttl
            raise TooManyRequests(
                f"Too many open connections; close one (at most {self._max_connections} per user)",
                retry_after_s=max(1.0, expires - now),
            )

    @unavailable_on_redis_error
    def register(self, connection_id: str, user_id: str) -> None:
        """Record a connection of ``user_id`` (a user may hold up to the cap; again for the same id is fine).

        Raises ``TooManyRequests`` (nothing recorded) when the user already holds the cap of live
        connections; its ``retry_after_s`` is when the oldest of them expires if nothing closes it.
        """
        now = self._clock()
        registered, earliest = self._register(
            keys=[self._conns_key(user_id), user_key(self._prefix, user_id, "seen")],
            args=[connection_id, now, self._ttl, self._max_connections, _minute(now)],
        )
        if not int(registered):
            raise TooManyRequests(
                f"Too many open connections; close one (at most {self._max_connections} per user)",
                retry_after_s=max(1.0, float(_text(earliest) or now + self._ttl) - now),
            )
        self._client.set(self._conn_key(connection_id), user_id, ex=self._ttl)

    @unavailable_on_redis_error
    def touch(self, connection_id: str, *, send: bool = False) -> str | None:
        """The connection's user, with its expiry pushed back; None if unknown or expired.

        With ``send`` it also spends one token of the user's send bucket and raises
        ``TooManyRequests`` (with ``retry_after_s``) when the bucket is empty; the expiry is still refreshed.
        """
        user = _text(self._client.getex(self._conn_key(connection_id), ex=self._ttl))
        if user is None:
            return None
        now = self._clock()
        result = self._touch(
            keys=[self._conns_key(user), user_key(self._prefix, user, "send"), user_key(self._prefix, user, "seen")],
            args=[connection_id, now, self._ttl, 1 if send else 0, self._send_rate, self._send_burst, _minute(now)],
        )
        if not int(result[0]):
            return None
        if not int(result[1]):
            raise TooManyRequests(
                f"Too many messages; at most {self._send_rate:g} a second across your connections",
                retry_after_s=float(_text(result[2]) or 0),
            )
        return user

    @unavailable_on_redis_error
    def unregister(self, connection_id: str) -> str | None:
        """Forget this one connection; returns the user it belonged to, if any. The user's bucket stays."""
        conn_key = self._conn_key(connection_id)
        user = _text(self._client.get(conn_key))
        if user is None:
            return None
        self._client.zrem(self._conns_key(user), connection_id)
        self._client.delete(conn_key)
        return user

    @unavailable_on_redis_error
    def connections_for(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Live connections of each user: one pipeline (in cluster mode, one batch per node, in parallel)."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        now = self._clock()
        pipeline = self._client.pipeline(transaction=False)
        for user in users:
            pipeline.zrangebyscore(self._conns_key(user), now, "+inf")
        results = pipeline.execute()
        return {
            user: [conn for conn in (_text(c) for c in members) if conn]
            for user, members in zip(users, results, strict=True)
        }


def _minute(epoch_s: float) -> int:
    """The start of the minute, in epoch seconds (``:seen``'s value)."""
    return int(epoch_s // 60) * 60


def _text(value: object) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
