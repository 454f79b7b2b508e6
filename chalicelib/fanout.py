"""Queued fan-out: a new message to more connections than one Lambda should push to goes through SQS in shards.

The sending handler stores the message first (the service does), then :class:`FanoutDispatcher` decides. Up to
``FANOUT_QUEUE_THRESHOLD`` target connections keep the direct path: no queue latency for a DM or a small
group. Above it, the sender's own connections get their ``new-message`` at once, and the other members are
enqueued in shards of at most ``FANOUT_SHARD_SIZE`` connections (counted at send time) and as many members;
members with no live connection at send time are left out (they load history when they connect). If the
queue cannot be reached, the whole fan-out falls back to the direct path.

**A conversation of more than ``FANOUT_EXPAND_MEMBERS`` is queued whole.** Counting its connections would cost
the sending handler a read of every member and a registry lookup of each (10,000 of them for a company-wide
channel), so above that size the handler answers the sender's own connections and queues one
:class:`Expansion`: the frame, the sender and a number of shards fixed at send time (the members over
``FANOUT_SHARD_SIZE``). The worker reads the members and queues their shards, each member in shard
``crc32(user id) % shards``: an expansion delivered twice queues the same members under the same shard
numbers, so the exactly-once claims below still see one delivery per connection. Those shards hold members,
not counted connections (the registry is read when they are pushed), and carry the send's time, from which
their age is counted.

**Shards carry member user ids, not connection ids.** The worker (:class:`FanoutWorker`, behind Chalice's
``@app.on_sqs_message``) re-reads which of them are still members (one primary-key probe per member) and
resolves their connections from the registry at push time: a member removed after the send gets nothing, even
from a shard already queued; a connection opened since the send gets the message, and one closed since is not
tried.

**Exactly once per connection, across redeliveries.** A shard can be delivered again: a worker failed part of
it, timed out, or SQS (a standard queue: at least once) delivered it twice. Each (message, shard) has a Redis
set of the connections already pushed, ``{prefix}fanout:{<message id>:<shard>}:pushed`` (one key per command;
its own slot). The worker reads it once per shard (``SMEMBERS``: no budget is spent on those already done),
then, chunk by chunk, right after the budget granted the chunk's tokens, *claims* the chunk's connections in one
Lua call that ``SADD``s them one by one and returns those it added (atomic: of two concurrent deliveries only one
gets each connection, and it pushes only what it got). A push that failed for good gives its claim back
(``SREM``, from the posting thread), and the pushes of a chunk that never started (cancelled at the push
deadline) give theirs back in one ``SREM`` after it, so the redelivery retries exactly the failed ones. A 410
keeps the claim (the connection is gone for good). One round trip claims a chunk where one per push cost as
much CPU as the push itself. The set lives
``2 x FANOUT_MAX_AGE_SECONDS``, longer than a shard may be processed: older shards are dropped unpushed
(a DLQ redrive hours later must not re-push), and the queue's retention is that age too. The one window
left is a worker process dying between claiming a chunk and its POSTs' answers: those connections (at most one
chunk's, ``min(PUSH_BUDGET_BURST, 4 x PUSH_CONCURRENCY)``) are not pushed again (at most once rather than twice;
the clients catch up with ``after=`` or ``/changes``). The worker stops
claiming well before its Lambda timeout, so a timeout never opens that window.

**Partial batch failures.** The worker answers ``{"batchItemFailures": [{"itemIdentifier": messageId}]}``
(the event source mapping has ``ReportBatchItemFailures``), so only failed shards come back; it asks for
them to come back after a short backoff (``ChangeMessageVisibility``) rather than the visibility timeout.
A shard that fails ``maxReceiveCount`` times (a poison shard: unreadable, or a fault that never heals) is
moved to the dead-letter queue by the queue's redrive policy.

**Budget.** The worker takes tokens from the account push budget (``chalicelib.budget``) before each chunk
of pushes and waits for them, up to its deadline; what is left then is reported failed and comes back.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.push import ConnectionsClient, GoneError, Pusher, process_pool
from chalicelib.queue import FanoutQueue, QueueUnavailable
from chalicelib.registry import ConnectionRegistry, LuaScript, unavailable_on_redis_error
from chalicelib.wire import JSONObject, Push, connections_of, new_message_frame

if TYPE_CHECKING:
    from chalicelib.budget import PushBudget
    from chalicelib.db import Database
    from chalicelib.model import StoredMessage
    from chalicelib.registry import RedisClient

log = logging.getLogger(__name__)

SHARD_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """One queued part of a fan-out: these members' connections get this frame."""

    conversation_id: str
    message_id: str
    index: int
    endpoint: str
    members: list[str]
    frame: JSONObject
    enqueued_at: float

    def body(self) -> str:
        return json.dumps(
            {
                "v": SHARD_VERSION,
                "conversationId": self.conversation_id,
                "messageId": self.message_id,
                "shard": self.index,
                "endpoint": self.endpoint,
                "members": self.members,
                "frame": self.frame,
                "enqueuedAt": self.enqueued_at,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, body: str) -> Shard:
        """A shard from a queue message's body; ``ValueError`` for anything else (a poison message)."""
        try:
            data = json.loads(body)
        except json.JSONDecodeError as error:
            raise ValueError(f"unreadable shard: {error}") from None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Any) -> Shard:
        """A shard from a queue message's decoded body; ``ValueError`` for anything else."""
        try:
            if not isinstance(data, dict) or data.get("v") != SHARD_VERSION:
                raise ValueError("not a fan-out shard of this version")
            members = data["members"]
            frame = data["frame"]
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise ValueError("members must be a list of user ids")
            if not isinstance(frame, dict):
                raise ValueError("frame must be an object")
            return cls(
                str(data["conversationId"]),
                str(data["messageId"]),
                int(data["shard"]),
                str(data["endpoint"]),
                members,
                frame,
                float(data["enqueuedAt"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"unreadable shard: {type(error).__name__}: {error}") from None


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a member in an expansion: the same in every process and on every redelivery."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


@dataclass(frozen=True)
class Expansion:
    """A big conversation's whole fan-out as one queued message; the worker turns it into shards."""

    conversation_id: str
    message_id: str  # the delivery id: the message's, or the message's and its change number
    sender: str  # pushed by the sending handler, so in no shard
    shards: int
    endpoint: str
    frame: JSONObject
    enqueued_at: float

    def body(self) -> str:
        return json.dumps(
            {
                "v": SHARD_VERSION,
                "kind": "expand",
                "conversationId": self.conversation_id,
                "messageId": self.message_id,
                "sender": self.sender,
                "shards": self.shards,
                "endpoint": self.endpoint,
                "frame": self.frame,
                "enqueuedAt": self.enqueued_at,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def shards_for(self, members: Iterable[str]) -> list[Shard]:
        """The members (the sender left out) in their shards; an empty shard is not queued."""
        groups: list[list[str]] = [[] for _ in range(self.shards)]
        for member in dict.fromkeys(members):
            if member != self.sender:
                groups[shard_of(member, self.shards)].append(member)
        return [
            Shard(self.conversation_id, self.message_id, index, self.endpoint, group, self.frame, self.enqueued_at)
            for index, group in enumerate(groups)
            if group
        ]


def parse_queued(body: str) -> Shard | Expansion:
    """A queue message's body: a shard, or an expansion; ``ValueError`` for anything else (a poison message)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise ValueError(f"unreadable queue message: {error}") from None
    try:
        if isinstance(data, dict) and data.get("v") == SHARD_VERSION and data.get("kind") == "expand":
            shards, frame = data["shards"], data["frame"]
            if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
                raise ValueError("shards must be a positive integer")
            if not isinstance(frame, dict):
                raise ValueError("frame must be an object")
            return Expansion(
                str(data["conversationId"]),
                str(data["messageId"]),
                str(data["sender"]),
                shards,
                str(data["endpoint"]),
                frame,
                float(data["enqueuedAt"]),
            )
    except (KeyError, TypeError) as error:
        raise ValueError(f"unreadable expansion: {type(error).__name__}: {error}") from None
    return Shard.from_data(data)


def plan_shards(
    message: StoredMessage,
    members: Iterable[str],
    connections_by_user: Mapping[str, Sequence[str]],
    *,
    endpoint: str,
    shard_size: int,
    now: float,
) -> list[Shard]:
    """Members (with a live connection at send time) grouped so no shard has more than ``shard_size``
    connections or members; a member with more connections than that is a shard of its own."""
    return plan_frame_shards(
        new_message_frame(message),
        message.conversation_id,
        message.message_id,
        members,
        connections_by_user,
        endpoint=endpoint,
        shard_size=shard_size,
        now=now,
    )


def plan_frame_shards(
    frame: JSONObject,
    conversation_id: str,
    delivery_id: str,
    members: Iterable[str],
    connections_by_user: Mapping[str, Sequence[str]],
    *,
    endpoint: str,
    shard_size: int,
    now: float,
) -> list[Shard]:
    """``plan_shards`` for any frame; ``delivery_id`` names this delivery for the exactly-once claims (a
    message's id for a new message, the message id and change number for a change of it)."""
    groups: list[list[str]] = []
    current: list[str] = []
    weight = 0
    for member in dict.fromkeys(members):
        count = len(connections_by_user.get(member, ()))
        if count == 0:
            continue
        if current and (weight + count > shard_size or len(current) >= shard_size):
            groups.append(current)
            current, weight = [], 0
        current.append(member)
        weight += count
    if current:
        groups.append(current)
    return [
        Shard(conversation_id, delivery_id, index, endpoint, group, frame, now) for index, group in enumerate(groups)
    ]


class FanoutDispatcher:
    """The sending side: direct pushes for a small fan-out, the sender's echo plus queued shards for a big one."""

    def __init__(
        self,
        queue: Callable[[], FanoutQueue | None],
        *,
        threshold: int,
        shard_size: int,
        expand_members: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``queue`` returns the fan-out queue, or None when none is configured (every fan-out is direct).
        ``expand_members``: above this many members a fan-out is queued whole (None: never)."""
        self._queue = queue
        self._threshold = threshold
        self._shard_size = max(1, shard_size)
        self._expand_members = expand_members
        self._clock = clock

    def expands(self, member_count: int) -> bool:
        """Whether a conversation this big is queued whole (``plan_expansion``), before any member is read."""
        return self._expand_members is not None and member_count > self._expand_members and self._queue() is not None

    def queue_whole(
        self,
        frame: JSONObject,
        conversation_id: str,
        delivery_id: str,
        member_count: int,
        endpoint: str,
        *,
        sender: str = "",
    ) -> bool:
        """Queue one expansion: ``frame`` to every member but ``sender`` (nobody, by default: no user id is
        empty). False if there is no queue or it refused: the caller pushes as for a smaller conversation."""
        queue = self._queue()
        if queue is None:
            return False
        expansion = Expansion(
            conversation_id,
            delivery_id,
            sender,
            max(1, math.ceil(member_count / self._shard_size)),
            endpoint,
            frame,
            self._clock(),
        )
        try:
            queue.send([expansion.body()])
        except QueueUnavailable as error:
            log.warning("fan-out queue unavailable (%s); the expansion is fanned out from here", error)
            return False
        return True

    def plan_expansion(
        self,
        frame: JSONObject,
        conversation_id: str,
        delivery_id: str,
        sender: str,
        member_count: int,
        sender_connections: Mapping[str, Sequence[str]],
        sending_connection: str,
        endpoint: str,
    ) -> list[Push] | None:
        """Queue the whole fan-out as one expansion; the pushes to make now are the sender's own connections,
        the sending one first. None if the queue refused it: the caller fans out as for a smaller group."""
        if not self.queue_whole(frame, conversation_id, delivery_id, member_count, endpoint, sender=sender):
            return None
        own = [Push(connection_id, frame) for connection_id in connections_of([sender], sender_connections)]
        own.sort(key=lambda push: push.connection_id != sending_connection)
        return own or [Push(sending_connection, frame)]

    def plan_frame(
        self,
        frame: JSONObject,
        conversation_id: str,
        delivery_id: str,
        sender: str,
        participants: Sequence[str],
        connections_by_user: Mapping[str, Sequence[str]],
        sending_connection: str,
        endpoint: str,
    ) -> list[Push]:
        """The pushes to make now, the sending connection's first; the rest of a big fan-out is enqueued.

        Any frame to every member: a new message (``delivery_id`` its id), or its edit, deletion or
        reaction change (the id and the change number).
        """

        def to(members: Sequence[str]) -> list[Push]:
            pushes = [Push(connection_id, frame) for connection_id in connections_of(members, connections_by_user)]
            pushes.sort(key=lambda push: push.connection_id != sending_connection)  # stable: the sender's first
            return pushes

        pushes = to(participants)
        if len(pushes) <= self._threshold:
            return pushes
        queue = self._queue()
        if queue is None:
            return pushes
        others = [member for member in participants if member != sender]
        shards = plan_frame_shards(
            frame,
            conversation_id,
            delivery_id,
            others,
            connections_by_user,
            endpoint=endpoint,
            shard_size=self._shard_size,
            now=self._clock(),
        )
        try:
            queue.send([shard.body() for shard in shards])
        except QueueUnavailable as error:
            # The shards the queue confirmed will be pushed by the worker; everyone else is pushed from here.
            queued = {member for index in error.sent for member in shards[index].members}
            log.warning(
                "fan-out queue unavailable (%s); %d shard(s) of %d pushed directly",
                error,
                len(shards) - len(error.sent),
                len(shards),
            )
            return to([member for member in participants if member not in queued])
        return to([sender]) or [Push(sending_connection, frame)]


# KEYS: the shard's set. ARGV: ttl seconds, then connection ids. Returns the ids this call claimed, in order.
# One call per chunk: SADD member by member inside one script is as atomic as one SADD per connection (of two
# concurrent deliveries only one gets each id), for one round trip instead of one per push.
_CLAIM_ALL = """
local claimed = {}
for i = 2, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then claimed[#claimed + 1] = ARGV[i] end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return claimed
"""


class ShardClaims:
    """The connections one (message, shard) has pushed to, in Redis."""

    def __init__(self, client: RedisClient, key: str, ttl_s: int) -> None:
        self._client = client
        self.key = key
        self._ttl = ttl_s
        self._claim_all = LuaScript(client, _CLAIM_ALL)

    @staticmethod
    def key_for(prefix: str, message_id: str, shard: int) -> str:
        return f"{prefix}fanout:{{{message_id}:{shard}}}:pushed"

    @unavailable_on_redis_error
    def unclaimed(self, connection_ids: Sequence[str]) -> list[str]:
        """Those not pushed yet (read once before a shard, to spend no budget on the others)."""
        done = {_text(c) for c in self._client.smembers(self.key)}
        return [connection_id for connection_id in connection_ids if connection_id not in done]

    @unavailable_on_redis_error
    def claim(self, connection_ids: Sequence[str]) -> list[str]:
        """Claim these connections in one call; returns those this call claimed (the others someone already had)."""
        if not connection_ids:
            return []
        claimed = self._claim_all(keys=[self.key], args=[self._ttl, *connection_ids])
        return [_text(c) for c in claimed or ()]

    @unavailable_on_redis_error
    def release(self, connection_ids: Sequence[str]) -> None:
        if connection_ids:
            self._client.srem(self.key, *connection_ids)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NotClaimed(Exception):
    """A push whose claim was already given back (it had not started when its chunk ended)."""


class ClaimedClient:
    """A ``ConnectionsClient`` for one chunk of connections claimed in bulk (see the module docstring).

    It posts only to connections of its chunk that no post has started for. A post that fails for good
    (anything but a 410) gives its claim back at once, from the posting thread, so a push abandoned at the
    deadline that fails later is still retried, and one that lands later is not. :meth:`release_unstarted`
    gives back, in one call, the claims of pushes that never started (cancelled at the deadline); a post that
    would start after that is refused with :class:`NotClaimed`.
    """

    def __init__(self, client: ConnectionsClient, claims: ShardClaims, claimed: Iterable[str]) -> None:
        self._client = client
        self._claims = claims
        self._lock = threading.Lock()
        self._unstarted = set(claimed)

    def post(self, connection_id: str, data: bytes) -> None:
        with self._lock:
            if connection_id not in self._unstarted:
                raise NotClaimed(connection_id)
            self._unstarted.discard(connection_id)
        try:
            self._client.post(connection_id, data)
        except GoneError:
            raise
        except BaseException:
            try:
                self._claims.release([connection_id])
            except Exception:  # without the release this connection misses the message: say so
                log.warning("could not release a fan-out claim; that connection will not be retried", exc_info=True)
            raise

    def close(self, connection_id: str) -> None:
        self._client.close(connection_id)

    def release_unstarted(self) -> int:
        """Give back the claims no post has started for; returns how many."""
        with self._lock:
            unstarted, self._unstarted = list(self._unstarted), set()
        if unstarted:
            try:
                self._claims.release(unstarted)
            except Exception:
                log.warning("could not release %d fan-out claim(s); not retried", len(unstarted), exc_info=True)
        return len(unstarted)


class Membership(Protocol):
    def current_members(self, conversation_id: str, user_ids: Sequence[str]) -> list[str]: ...

    def members(self, conversation_id: str) -> list[str]: ...


class DatabaseMembership:
    """Which of some users are members now (chalicelib/queries/fanout.sql)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def current_members(self, conversation_id: str, user_ids: Sequence[str]) -> list[str]:
        if not user_ids:
            return []
        rows = self._db.run("current_members", conversation_id=conversation_id, user_ids=list(user_ids))
        return [row["user_id"] for row in rows]

    def members(self, conversation_id: str) -> list[str]:
        """Every member now (an expansion's shards)."""
        return list(self._db.one("list_participants", conversation_id=conversation_id)["user_ids"])


@dataclass
class ShardResult:
    """What pushing one shard did (for logs, tests and the benchmark)."""

    delivered: int = 0
    gone: int = 0
    failed: int = 0
    skipped: int = 0
    dropped_members: int = 0
    complete: bool = True


def shared_shard_executor(max_workers: int) -> ThreadPoolExecutor:
    """The pool a batch's shards run on, apart from the push pool whose threads they wait on."""
    return process_pool("fanout-shard", max_workers)


class FanoutWorker:
    """The queue's consumer: pushes each shard of a batch; answers the failed ones as batch item failures."""

    def __init__(
        self,
        *,
        membership: Membership,
        registry: Callable[[], ConnectionRegistry],
        client_for: Callable[[str], ConnectionsClient],
        redis: Callable[[], RedisClient],
        budget: Callable[[], PushBudget | None],
        queue: Callable[[], FanoutQueue | None],
        on_gone: Callable[[str], object],
        executor: ThreadPoolExecutor,
        prefix: str,
        push_deadline_s: float,
        chunk: int,
        max_age_s: float,
        retry_base_s: float,
        shard_executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``shard_executor`` pushes a batch's shards side by side (one after another without it); it must not
        be ``executor``, whose threads the shards wait on."""
        self._membership = membership
        self._registry = registry
        self._client_for = client_for
        self._redis = redis
        self._budget = budget
        self._queue = queue
        self._on_gone = on_gone
        self._executor = executor
        self._prefix = prefix
        self._push_deadline_s = push_deadline_s
        self._chunk = max(1, chunk)
        self._max_age_s = max_age_s
        self._retry_base_s = retry_base_s
        self._shard_executor = shard_executor
        self._clock = clock

    def handle_event(self, event: Mapping[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
        """The Lambda entry: an SQS event and its context (whose remaining time bounds the work)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        return self.handle(event.get("Records") or [], remaining() / 1000 if callable(remaining) else 20.0)

    def handle(self, records: Sequence[Mapping[str, Any]], remaining_s: float) -> dict[str, list[dict[str, str]]]:
        """Push every record's shard within ``remaining_s`` (less a margin); the answer names the failed ones."""
        # Stop starting pushes one push deadline before the Lambda timeout, so a timeout never cuts a push short.
        end = time.monotonic() + remaining_s - self._push_deadline_s - 1.0

        def push(record: Mapping[str, Any]) -> bool:
            try:
                queued = parse_queued(str(record.get("body", "")))
                if isinstance(queued, Expansion):
                    return self.expand(queued)
                return self.push_shard(queued, end).complete
            except ValueError as error:
                log.error("poison fan-out shard %s: %s", record.get("messageId", ""), error)
            except Exception:
                log.exception("fan-out shard %s failed", record.get("messageId", ""))
            return False

        # Side by side, a batch keeps the push pool busy: one shard after another left it idle during each
        # shard's SQL and Redis reads and the tail of each shard's last wave, which capped an invocation near
        # 200 connections per 115 ms.
        if self._shard_executor is not None and len(records) > 1:
            pushed = list(self._shard_executor.map(push, records))
        else:
            pushed = [push(record) for record in records]
        failures: list[dict[str, str]] = []
        for record, ok in zip(records, pushed, strict=True):
            if not ok:
                failures.append({"itemIdentifier": str(record.get("messageId", ""))})
                self._retry_soon(record)
        return {"batchItemFailures": failures}

    def expand(self, expansion: Expansion) -> bool:
        """Queue an expansion's shards; False if it must come back (the queue refused some of them).

        A redelivery queues every shard again: those already queued are then delivered twice, which the
        claims absorb (same members, same shard numbers).
        """
        if self._clock() - expansion.enqueued_at > self._max_age_s:
            log.warning("fan-out expansion %s is too old to push; dropped", expansion.message_id)
            return True
        queue = self._queue()
        if queue is None:
            log.error(
                "fan-out expansion %s received with no FANOUT_QUEUE_URL to queue its shards", expansion.message_id
            )
            return False
        queue.send(
            [shard.body() for shard in expansion.shards_for(self._membership.members(expansion.conversation_id))]
        )
        return True

    def push_shard(self, shard: Shard, end: float) -> ShardResult:
        """Push one shard until ``end`` (a ``time.monotonic()`` instant); ``complete`` False if it must come back."""
        result = ShardResult()
        if self._clock() - shard.enqueued_at > self._max_age_s:
            log.warning("fan-out shard %s/%d is too old to push; dropped", shard.message_id, shard.index)
            return result
        members = self._membership.current_members(shard.conversation_id, shard.members)
        result.dropped_members = len(shard.members) - len(members)
        connections_by_user = self._registry().connections_for(members)
        claims = ShardClaims(
            self._redis(),
            ShardClaims.key_for(self._prefix, shard.message_id, shard.index),
            int(self._max_age_s * 2),
        )
        targets = claims.unclaimed([c for member in members for c in connections_by_user.get(member, ())])
        client = self._client_for(shard.endpoint)
        budget = self._budget()
        for start in range(0, len(targets), self._chunk):
            chunk = targets[start : start + self._chunk]
            left = end - time.monotonic()
            granted = budget.acquire(len(chunk), max_wait_s=max(0.0, left)) if budget else len(chunk)
            if granted < len(chunk):
                result.complete = False
                chunk = chunk[:granted]
            left = end - time.monotonic() + self._push_deadline_s
            if chunk and left > 0:
                # Claimed right before the pushes, after the budget's wait: a claim is held only while its push runs.
                claimed = claims.claim(chunk)
                result.skipped += len(chunk) - len(claimed)
                claiming = ClaimedClient(client, claims, claimed)
                pusher = Pusher(
                    claiming,
                    on_gone=self._on_gone,
                    executor=self._executor,
                    deadline_s=min(self._push_deadline_s, left),
                )
                report = pusher.push_all([Push(connection_id, shard.frame) for connection_id in claimed])
                claiming.release_unstarted()
                result.delivered += len(report.delivered)
                result.gone += len(report.gone)
                result.failed += len(report.failed)
            elif chunk:
                result.complete = False
            if not result.complete:
                break
        if result.failed:
            result.complete = False
        return result

    def _retry_soon(self, record: Mapping[str, Any]) -> None:
        """Ask for a failed shard back after a backoff with jitter instead of the whole visibility timeout."""
        queue = self._queue()
        handle = record.get("receiptHandle")
        if queue is None or not isinstance(handle, str):
            return
        count = int((record.get("attributes") or {}).get("ApproximateReceiveCount", "1"))
        delay = min(60.0, self._retry_base_s * 2 ** (count - 1)) * random.uniform(0.8, 1.2)
        try:
            queue.retry_later(handle, round(delay))
        except QueueUnavailable as error:  # it comes back after the visibility timeout instead
            log.warning("could not shorten a failed shard's visibility: %s", error)
