"""Per-user token buckets for REST calls, in Redis, shared by every Lambda.

One bucket per (user, name) at ``{prefix}{u:<user_id>}:limit:<name>``: a hash of the tokens left and the time
they were counted, under the user's hash tag (so it sits in the same cluster slot as the user's registry
keys). ``take`` is one Lua round trip: refill at ``rate_per_s`` up to ``burst``, take one token or refuse
with the seconds until one is back. A bucket expires once it would be full again, so idle users cost
nothing. A rate of 0 turns a bucket off without touching Redis.

Redis failures raise ``RegistryUnavailable`` like the registry's; callers fail open on it (log a warning,
serve the request): API Gateway's stage throttling still stands in front. After a failure the limiter skips
Redis for a few seconds (raising ``RegistryUnavailable`` at once), so a stalled Redis does not add its
timeout to every REST call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chalicelib.errors import TooManyRequests
from chalicelib.registry import BUCKET_LUA, LuaScript, RegistryUnavailable, unavailable_on_redis_error, user_key

if TYPE_CHECKING:
    from chalicelib.registry import RedisClient

# Bucket names the REST edge uses (settings: CREATE_CONVERSATION_*, REST_*).
CREATE_CONVERSATION = "create-conversation"
REST_REQUEST = "rest"
REST_WRITE = "rest-write"

# KEYS: the bucket. ARGV: now, rate per second, burst. Returns {allowed, seconds to wait}.
_TAKE = (
    BUCKET_LUA
    + """
local allowed, wait = take(KEYS[1], tonumber(ARGV[1]), 1, tonumber(ARGV[2]), tonumber(ARGV[3]))
return {allowed, wait}
"""
)


class RateLimiter:
    """Named per-user token buckets on Redis (standalone or cluster mode).

    After a Redis failure it stops asking for ``unavailable_cooldown_s`` and raises ``RegistryUnavailable`` at
    once: REST fails open on it, and a paused Redis would otherwise add its full timeout to every request.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "chat:",
        clock: Callable[[], float] = time.time,
        unavailable_cooldown_s: float = 5.0,
    ) -> None:
        """``clock`` is the buckets' time source (tests pass a fake one)."""
        self._prefix = prefix
        self._clock = clock
        self._cooldown = unavailable_cooldown_s
        self._skip_until = 0.0
        self._take = LuaScript(client, _TAKE)

    def key(self, user_id: str, bucket: str) -> str:
        """Where ``bucket`` of ``user_id`` lives."""
        return user_key(self._prefix, user_id, f"limit:{bucket}")

    def take(self, user_id: str, bucket: str, *, rate_per_s: float, burst: int) -> None:
        """Spend one token of ``user_id``'s ``bucket``; raises ``TooManyRequests`` with ``retry_after_s`` when empty.

        ``rate_per_s`` 0 (or less) turns the bucket off. Raises ``RegistryUnavailable`` when Redis failed
        (now, or within the cooldown).
        """
        if rate_per_s <= 0:
            return
        if time.monotonic() < self._skip_until:
            raise RegistryUnavailable(f"skipped: Redis failed within the last {self._cooldown:g} s")
        try:
            allowed, retry_after = self._take_token(self.key(user_id, bucket), rate_per_s, max(1, burst))
        except RegistryUnavailable:
            self._skip_until = time.monotonic() + self._cooldown
            raise
        if not allowed:
            raise TooManyRequests(
                f"Too many requests; try again in {max(1, math.ceil(retry_after))} s", retry_after_s=retry_after
            )

    @unavailable_on_redis_error
    def _take_token(self, key: str, rate_per_s: float, burst: int) -> tuple[bool, float]:
        allowed, wait = self._take(keys=[key], args=[self._clock(), rate_per_s, burst])
        return bool(int(allowed)), float(wait.decode() if isinstance(wait, bytes) else wait)
