"""Live signals on Redis alone: typing indicators and presence (CONTRACT.md section 8).

Both are hot (every keystroke burst, every connect) and must never cost PostgreSQL on their hot path, so
everything a typing frame needs lives here, in Redis.

Keys (under the configured prefix; braces are Redis Cluster hash tags, so every script below touches one
slot)::

    {c:<conversation>}:members      set of member ids plus "" (a cached conversation; "" alone: no members)
    {c:<conversation>}:members-gen  counter bumped by every invalidation
    {u:<user>}:typing-gate:<conv>   "1" for 2 s after a pushed ``typing: true`` (the throttle)
    {u:<user>}:typing:<conv>        "1" while receivers show the user typing (``expiresInMs``)
    {u:<user>}:online               "1" from the user's first live connection until presence said offline
    {u:<user>}:conns, :seen         the registry's (chalicelib/registry.py): live connections, last activity
    {presence}:due                  sorted set: user -> when the sweep should look at them again

**Membership cache.** A typing frame reads the conversation's members from ``:members``; on a miss they are
loaded from PostgreSQL once (the only SQL typing ever runs) and stored with a short TTL as a backstop. Every
committed membership change calls :meth:`LiveSignals.forget_members` before its pushes go out, which bumps the
generation and drops the set. A fill stores what it read only if the generation is still the one it saw
before reading PostgreSQL, so a fill that raced a removal (read the old members, then the removal committed
and invalidated) stores nothing: a removed member can neither signal nor see typing once the change's
response is out. A conversation with no members (or that does not exist) is cached as an empty set, so
typing frames naming random ids cost no SQL either.

**Throttle.** ``typing: true`` is pushed when ``SET gate NX PX 2000`` succeeds, so at most one per user per
conversation per 2 s, whatever the number of connections or Lambdas (Redis's own clock keeps the window).
The push's ``:typing`` key lives ``expiresInMs``; ``typing: false`` is pushed only when it deletes that key
(so only after a pushed ``true`` that receivers still show) and clears the gate too. A sent message clears
both: receivers stop showing a typer on that user's next message, and a ``true`` right after it goes out.

**Presence.** ``online`` is "at least one live connection in the registry's set". The transitions are one
script each over the user's set and ``:online`` flag, so concurrent connects and disconnects announce each
change once: the first connection sets the flag (``online`` pushed), and the step that finds no live
connection left deletes it (``offline`` pushed). ``$disconnect`` runs that step at once. An expired
connection has no event, so every user who comes online is put in ``{presence}:due`` with the time their
connections would expire; a sweep (``app.presence_sweep``, every minute; locally on a timer) looks at the
users that are due: still live, they are rescheduled at their newest connection's expiry; none left, the
flag goes and the offline push is made. A 410 from a push unregisters the connection and makes its user due
at once, so the next sweep decides. Heartbeats write nothing here.

Redis failures raise ``RegistryUnavailable``, as the registry's do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from chalicelib.budget import PushBudget
from chalicelib.push import ConnectionsClient, Pusher, PushOutcome, PushReport
from chalicelib.registry import LuaScript, RegistryUnavailable, unavailable_on_redis_error, user_key
from chalicelib.wire import Push

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.registry import RedisClient

log = logging.getLogger(__name__)

# At most one pushed ``typing: true`` per user per conversation in this window (CONTRACT section 8).
TYPING_THROTTLE_MS = 2000
# Receivers show a typer this long after a ``typing: true`` unless a newer one, a false or a message comes:
# three throttle windows, so one lost push does not make the indicator flicker.
TYPING_EXPIRES_MS = 6000
# The online flag outlives any connection (API Gateway closes them after 2 hours); a connect refreshes it.
ONLINE_FLAG_TTL_S = 86400
# A generation counter outlives any fill in flight by far.
GENERATION_TTL_S = 86400
# Signals draw from the push budget only above this share of its burst, which stays for messages.
SIGNAL_RESERVE_SHARE = 0.2

# KEYS: members set. ARGV: user, max members. {0}: not cached; {-1}: not a member;
# {2, count}: member of a group too large for typing; {1, count, members}.
_MEMBERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if ARGV[1] == '' or redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {-1} end
local count = redis.call('SCARD', KEYS[1]) - 1
if count > tonumber(ARGV[2]) then return {2, count} end
return {1, count, redis.call('SMEMBERS', KEYS[1])}
"""

# KEYS: members set, generation. ARGV: generation seen before the load ('' for none), ttl, members...
_FILL = """
local generation = redis.call('GET', KEYS[2]) or ''
if generation ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], '')
for i = 3, #ARGV, 1000 do redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: members set, generation. ARGV: generation ttl.
_FORGET = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: gate, shown. ARGV: throttle ms, expires ms. 1: push ``typing: true``.
_START_TYPING = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: gate, shown. 1: a pushed ``true`` was still showing, push ``typing: false``.
_STOP_TYPING = """
local shown = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[1])
return shown
"""

# KEYS: the user's connection set, online flag. ARGV: now, flag ttl. 1: the user just came online.
_ONLINE = """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 1 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 0
"""

# KEYS: the user's connection set, online flag. ARGV: now.
# {1, ''}: the user just went offline; {0, ''}: was offline already; {0, expiry}: online until then.
_OFFLINE = """
local newest = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, 1)
if #newest > 0 then return {0, newest[2]} end
return {redis.call('DEL', KEYS[2]), ''}
"""

# KEYS: the due set. ARGV: user, the score the sweep read, the new score ('' removes). Changes nothing when
# the score moved meanwhile (a connect rescheduled the user): that connect's own schedule stands.
_RESCHEDULE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""

# KEYS: the push budget's bucket. ARGV: now, want, rate, burst, reserve. The budget's refill rule
# (chalicelib/budget.py), all or nothing, and only while ``reserve`` tokens would be left for messages.
_TAKE_ABOVE_RESERVE = """
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate, burst, reserve = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = 0
if tokens - want + 1e-6 >= reserve then granted, tokens = want, tokens - want end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', math.max(at, now)))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return granted
"""


@dataclass(frozen=True)
class TypingAudience:
    """Who hears a member's typing: ``others`` is None when the conversation is too large for typing."""

    others: list[str] | None


@dataclass(frozen=True)
class Presence:
    user_id: str
    online: bool
    # The minute of the user's last connect or frame; None for a user never seen.
    last_active_at: datetime | None


@dataclass(frozen=True)
class DueUser:
    """A user the sweep should look at, with the score it read (for the compare-and-set that follows)."""

    user_id: str
    score: float


def minute_of(epoch_s: float) -> int:
    """The start of the minute, in epoch seconds: how ``lastActiveAt`` is stored (registry ``:seen``)."""
    return int(epoch_s // 60) * 60


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class LiveSignals:
    """Typing and presence state in Redis, standalone or cluster mode."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "chat:",
        connection_ttl_s: int = 660,
        members_ttl_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``connection_ttl_s`` is the registry's TTL (when a silent connection expires); ``clock`` as there."""
        self._client = client
        self._prefix = prefix
        self._connection_ttl = connection_ttl_s
        self._members_ttl = max(1, members_ttl_s)
        self._clock = clock
        self._due_key = f"{prefix}{{presence}}:due"
        self._members = LuaScript(client, _MEMBERS)
        self._fill = LuaScript(client, _FILL)
        self._forget = LuaScript(client, _FORGET)
        self._start = LuaScript(client, _START_TYPING)
        self._stop = LuaScript(client, _STOP_TYPING)
        self._online = LuaScript(client, _ONLINE)
        self._offline = LuaScript(client, _OFFLINE)
        self._reschedule = LuaScript(client, _RESCHEDULE)

    # --- membership cache -------------------------------------------------------------

    def _members_keys(self, conversation_id: str) -> list[str]:
        tag = f"{self._prefix}{{c:{conversation_id}}}"
        return [f"{tag}:members", f"{tag}:members-gen"]

    @unavailable_on_redis_error
    def typing_audience(
        self, conversation_id: str, user_id: str, max_members: int, load: Callable[[], Sequence[str]]
    ) -> TypingAudience | None:
        """The other members who hear ``user_id`` type; None when ``user_id`` is not a member.

        ``load`` reads the members from the store of record; it runs only on a cache miss.
        """
        keys = self._members_keys(conversation_id)
        found = self._members(keys=keys[:1], args=[user_id, max_members])
        status = int(found[0])
        if status == 0:
            generation = self._client.get(keys[1])
            members = list(dict.fromkeys(load()))
            self._fill(
                keys=keys,
                args=[_text(generation) if generation is not None else "", self._members_ttl, *members],
            )
            if user_id not in members:
                return None
            if len(members) > max_members:
                return TypingAudience(None)
            return TypingAudience([member for member in members if member != user_id])
        if status < 0:
            return None
        if status == 2:
            return TypingAudience(None)
        others = sorted(member for member in (_text(m) for m in found[2]) if member and member != user_id)
        return TypingAudience(others)

    @unavailable_on_redis_error
    def forget_members(self, conversation_id: str) -> None:
        """Drop the cached members (after every committed membership change, before its pushes)."""
        self._forget(keys=self._members_keys(conversation_id), args=[GENERATION_TTL_S])

    # --- typing -------------------------------------------------------------------------

    def _typing_keys(self, user_id: str, conversation_id: str) -> list[str]:
        return [
            user_key(self._prefix, user_id, f"typing-gate:{conversation_id}"),
            user_key(self._prefix, user_id, f"typing:{conversation_id}"),
        ]

    @unavailable_on_redis_error
    def start_typing(self, user_id: str, conversation_id: str) -> bool:
        """Whether this ``typing: true`` is pushed (the first in its 2 s window)."""
        keys = self._typing_keys(user_id, conversation_id)
        return bool(int(self._start(keys=keys, args=[TYPING_THROTTLE_MS, TYPING_EXPIRES_MS])))

    @unavailable_on_redis_error
    def stop_typing(self, user_id: str, conversation_id: str) -> bool:
        """Whether this ``typing: false`` is pushed (receivers still show a pushed ``true``); clears the gate."""
        return bool(int(self._stop(keys=self._typing_keys(user_id, conversation_id), args=[])))

    @unavailable_on_redis_error
    def message_sent(self, user_id: str, conversation_id: str) -> None:
        """A message ends its sender's typing: receivers clear it themselves, so nothing is pushed."""
        self._client.delete(*self._typing_keys(user_id, conversation_id))

    # --- presence -----------------------------------------------------------------------

    def _presence_keys(self, user_id: str) -> list[str]:
        return [user_key(self._prefix, user_id, "conns"), user_key(self._prefix, user_id, "online")]

    @unavailable_on_redis_error
    def came_online(self, user_id: str) -> bool:
        """After a connection registered: whether it is the user's first (push ``online``).

        The user is scheduled for the sweep first, so a failure in between leaves only a harmless check.
        """
        now = self._clock()
        self._client.zadd(self._due_key, {user_id: now + self._connection_ttl})
        return bool(int(self._online(keys=self._presence_keys(user_id), args=[now, ONLINE_FLAG_TTL_S])))

    @unavailable_on_redis_error
    def went_offline(self, user_id: str) -> bool:
        """After a connection was unregistered: whether it was the user's last one (push ``offline``)."""
        gone, _ = self._offline(keys=self._presence_keys(user_id), args=[self._clock()])
        return bool(int(gone))

    @unavailable_on_redis_error
    def check_soon(self, user_id: str) -> None:
        """Have the next sweep decide whether ``user_id`` is still online (a 410 removed a connection)."""
        self._client.zadd(self._due_key, {user_id: self._clock()})

    @unavailable_on_redis_error
    def due(self, limit: int) -> list[DueUser]:
        """Users the sweep should look at now, most overdue first."""
        rows: list[tuple[bytes | str, float]] = self._client.zrangebyscore(
            self._due_key, "-inf", self._clock(), start=0, num=limit, withscores=True
        )  # type: ignore[assignment]  # redis-py types the result loosely
        return [DueUser(_text(member), float(score)) for member, score in rows]

    @unavailable_on_redis_error
    def settle(self, due: DueUser) -> bool:
        """Look at one due user: whether they just went offline (push ``offline``); else reschedule them."""
        gone, newest = self._offline(keys=self._presence_keys(due.user_id), args=[self._clock()])
        newest_text = _text(newest) if newest else ""
        self._reschedule(keys=[self._due_key], args=[due.user_id, repr(due.score), newest_text])
        return bool(int(gone))

    @unavailable_on_redis_error
    def presence(self, user_ids: Iterable[str]) -> list[Presence]:
        """Online (a live connection) and last activity of each user: one pipeline, any deployment."""
        users = list(user_ids)
        if not users:
            return []
        now = self._clock()
        pipeline = self._client.pipeline(transaction=False)
        for user in users:
            pipeline.zcount(user_key(self._prefix, user, "conns"), now, "+inf")
            pipeline.get(user_key(self._prefix, user, "seen"))
        results = pipeline.execute()
        found = []
        for index, user in enumerate(users):
            live, seen = results[2 * index], results[2 * index + 1]
            moment = datetime.fromtimestamp(int(_text(seen)), UTC) if seen is not None else None
            found.append(Presence(user, int(live) > 0, moment))
        return found

    @unavailable_on_redis_error
    def last_active(self, user_id: str) -> datetime | None:
        seen = self._client.get(user_key(self._prefix, user_id, "seen"))
        return datetime.fromtimestamp(int(_text(seen)), UTC) if seen is not None else None


class SignalPusher(Pusher):
    """Pushes typing and presence frames, which the push budget sheds first.

    They take tokens only while the bucket would keep ``SIGNAL_RESERVE_SHARE`` of its burst for messages,
    never wait, and are all-or-nothing per frame: when the budget is that low a signal is dropped (reported
    as failed), while messages still wait for their tokens. No push in the list is the requester's own.
    """

    def __init__(
        self,
        client: ConnectionsClient,
        *,
        on_gone: Callable[[str], object],
        executor: ThreadPoolExecutor,
        deadline_s: float,
        budget: PushBudget,
        redis: Callable[[], RedisClient],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, on_gone=on_gone, executor=executor, deadline_s=deadline_s)
        self._budget = budget
        self._redis = redis
        self._clock = clock
        self._take: LuaScript | None = None

    def push_all(self, pushes: Sequence[Push]) -> PushReport:
        if not pushes or self._granted(len(pushes)):
            return super().push_all(pushes)
        report = PushReport()
        for push in pushes:
            report.add(push.connection_id, PushOutcome.FAILED)
        log.info("push budget low: %d signal push(es) shed", len(pushes))
        return report

    def _granted(self, count: int) -> bool:
        budget = self._budget
        if budget.rate_per_s <= 0:
            return True
        try:
            return bool(self._take_tokens(count))
        except RegistryUnavailable as error:  # fail open, as the budget does
            log.warning("push budget unavailable (%s); signal pushed ungoverned", error)
            return True

    @unavailable_on_redis_error
    def _take_tokens(self, count: int) -> int:
        budget = self._budget
        if self._take is None:
            self._take = LuaScript(self._redis(), _TAKE_ABOVE_RESERVE)
        reserve = budget.burst * SIGNAL_RESERVE_SHARE
        return int(self._take(keys=[budget.key], args=[self._clock(), count, budget.rate_per_s, budget.burst, reserve]))
