"""The account's push budget: one token bucket in Redis that every ``@connections`` push of the app draws from.

API Gateway has no broadcast, and every ``@connections`` POST counts against the account-wide 10,000
requests/s (5,000 burst) that every REST and WebSocket API of the account shares. One bucket at
``{prefix}{budget}:push`` (one key, so one cluster slot; every script touches only it) refills at
``PUSH_BUDGET_PER_SECOND`` up to ``PUSH_BUDGET_BURST``, so a big fan-out slows down instead of starving REST.

Who waits and who is shed:

- **Queued fan-out** (``chalicelib.fanout``) waits for tokens, chunk by chunk, up to its invocation's deadline;
  what it could not push by then goes back to the queue, so nothing is dropped.
- **Direct pushes** (a DM, a small group, a read receipt, an error frame) wait at most
  ``PUSH_BUDGET_DIRECT_WAIT_SECONDS`` (0.1 s). The pushes to the *requesting* connection (the sender's echo,
  an error frame) are always sent and always charged, even into debt: a debt only makes the queued workers
  wait longer. Pushes beyond what the bucket granted are shed (reported as failed and logged); the recipients
  see the message on their next history load or catch-up. Typing and presence (a later issue) go through the
  same direct path and will be shed first, by waiting 0.

``registry.BUCKET_LUA`` is all-or-nothing; a fan-out wants "as many as there are, up to n", and an echo
wants "this one even into debt", so the bucket has its own ten lines of Lua with the same refill rule.

Redis failures fail open, as the REST limiter does (``limits.RateLimiter``): the push goes out ungoverned
and API Gateway's own throttling (429, retried with backoff and jitter by the push clients) still stands;
after a failure the budget skips Redis for a few seconds so a stalled Redis does not add its timeout to
every send. A rate of 0 turns the budget off without touching Redis.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chalicelib.push import ConnectionsClient, Pusher, PushOutcome, PushReport
from chalicelib.registry import LuaScript, RegistryUnavailable, unavailable_on_redis_error
from chalicelib.wire import Push

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.registry import RedisClient

log = logging.getLogger(__name__)

# KEYS: the bucket. ARGV: now, want, must, rate, burst.
# Grants max(must, min(want, whole tokens available)); `must` tokens are taken even into debt.
# Returns {granted, seconds until the rest of `want` (at most a burst) could be granted}.
_TAKE_UP_TO = """
local now, want, must = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.max(must, math.min(want, math.floor(tokens + 1e-6)))
tokens = tokens - granted
local rest = math.min(want - granted, burst)
local wait = 0
if rest > 0 then wait = (rest - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', math.max(at, now)))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return {granted, string.format('%.17g', wait)}
"""


class PushBudget:
    """The shared bucket; ``acquire`` hands out tokens, waiting up to a bound."""

    def __init__(
        self,
        redis: Callable[[], RedisClient],
        *,
        rate_per_s: float,
        burst: int,
        prefix: str = "chat:",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        unavailable_cooldown_s: float = 5.0,
    ) -> None:
        """``redis`` returns the client (called on the first take: a budget that is off never connects).

        ``clock`` and ``sleep`` are the bucket's time (tests may pass fakes); ``rate_per_s`` 0 turns it off.
        """
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.key = f"{prefix}{{budget}}:push"
        self._clock = clock
        self._sleep = sleep
        self._cooldown = unavailable_cooldown_s
        self._skip_until = 0.0
        self._redis = redis
        self._take: LuaScript | None = None

    def acquire(self, count: int, *, max_wait_s: float, must: int = 0) -> int:
        """Take up to ``count`` tokens, waiting at most ``max_wait_s``; returns how many were granted.

        ``must`` tokens (at most ``count``) are granted at once whatever the bucket holds. With the budget off,
        or Redis failing, every token is granted (fail open).
        """
        if count <= 0:
            return 0
        if self.rate_per_s <= 0 or time.monotonic() < self._skip_until:
            return count
        deadline = time.monotonic() + max(0.0, max_wait_s)
        granted = 0
        must = min(must, count)
        while True:
            try:
                got, wait = self._take_tokens(count - granted, must)
            except RegistryUnavailable as error:
                self._skip_until = time.monotonic() + self._cooldown
                log.warning("push budget unavailable (%s); pushing ungoverned for %gs", error, self._cooldown)
                return count
            granted += got
            must = 0
            if granted >= count:
                return granted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return granted
            # Jitter: workers that waited for the same refill should not all ask again at the same instant.
            self._sleep(min(remaining, max(0.001, wait) * random.uniform(1.0, 1.2)))

    @unavailable_on_redis_error
    def _take_tokens(self, want: int, must: int) -> tuple[int, float]:
        if self._take is None:
            self._take = LuaScript(self._redis(), _TAKE_UP_TO)
        granted, wait = self._take(keys=[self.key], args=[self._clock(), want, must, self.rate_per_s, self.burst])
        return int(granted), float(wait.decode() if isinstance(wait, bytes) else wait)


class BudgetedPusher(Pusher):
    """A :class:`Pusher` whose pushes draw from the budget first (the direct path).

    The first connection in a list is the requesting one (the service lists it first: the sender's echo, the
    reader's acknowledgement, an error frame): its pushes are always sent. The rest get what the bucket grants
    within ``max_wait_s``, in list order; the others are shed and reported as failed.
    """

    def __init__(
        self,
        client: ConnectionsClient,
        *,
        on_gone: Callable[[str], object],
        executor: ThreadPoolExecutor,
        deadline_s: float,
        budget: PushBudget,
        max_wait_s: float,
    ) -> None:
        super().__init__(client, on_gone=on_gone, executor=executor, deadline_s=deadline_s)
        self._budget = budget
        self._max_wait_s = max_wait_s

    def push_all(self, pushes: Sequence[Push]) -> PushReport:
        if not pushes:
            return PushReport()
        first = pushes[0].connection_id
        own = sum(1 for push in pushes if push.connection_id == first)
        granted = self._budget.acquire(len(pushes), max_wait_s=self._max_wait_s, must=own)
        if granted >= len(pushes):
            return super().push_all(pushes)
        sent = [push for push in pushes if push.connection_id == first]
        others = [push for push in pushes if push.connection_id != first]
        sent += others[: granted - own]
        shed = others[granted - own :]
        report = super().push_all(sent)
        for push in shed:
            report.add(push.connection_id, PushOutcome.FAILED)
        log.warning("push budget: %d of %d push(es) shed", len(shed), len(pushes))
        return report
