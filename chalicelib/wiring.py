"""The one place that builds real collaborators, lazily, once per process.

A REST Lambda touches PostgreSQL, and Redis for its per-user rate limits; a
WebSocket Lambda adds the registry on the same Redis client, the push client
and PyJWT. Each factory imports and connects on first use and is cached
across warm invocations. ``reset()`` drops everything (tests, local server).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, ParamSpec, TypeVar

from chalicelib.config import get_settings, reset_settings
from chalicelib.db import Database
from chalicelib.repository import ChatRepository
from chalicelib.service import ChatService

if TYPE_CHECKING:
    from chalicelib.auth import TokenVerifier
    from chalicelib.budget import PushBudget
    from chalicelib.fanout import FanoutDispatcher, FanoutWorker
    from chalicelib.limits import RateLimiter
    from chalicelib.push import ConnectionsClient, Pusher
    from chalicelib.queue import FanoutQueue
    from chalicelib.registry import RedisClient, RedisRegistry
    from chalicelib.signals import LiveSignals

# Factories build each other (the service asks for the database), hence re-entrant.
_lock = threading.RLock()
#: Records per fan-out invocation: app.py's ``batch_size`` for ``fanout_worker``; its shards are pushed side by side.
FANOUT_BATCH_SIZE = 10

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _BuiltOnce(Generic[_P, _R]):
    """``functools.lru_cache`` whose builds never race: the local server calls the factories from many
    threads at once, and two concurrent first calls would otherwise build (and leak) two clients."""

    def __init__(self, factory: Callable[_P, _R], maxsize: int) -> None:
        self._cached = functools.lru_cache(maxsize=maxsize)(factory)
        functools.update_wrapper(self, factory)

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _lock:
            return self._cached(*args, **kwargs)  # type: ignore[arg-type]  # ids and URLs: hashable

    def built(self) -> bool:
        return self._cached.cache_info().currsize > 0

    def cache_clear(self) -> None:
        self._cached.cache_clear()


def built_once(maxsize: int = 1) -> Callable[[Callable[_P, _R]], _BuiltOnce[_P, _R]]:
    return lambda factory: _BuiltOnce(factory, maxsize)


@built_once()
def get_database() -> Database:
    return Database(get_settings())


@built_once()
def get_redis() -> RedisClient:
    """The process's one Redis client (and pool), shared by the registry and the rate limiter.

    ``REDIS_CLUSTER=true`` builds a ``RedisCluster``, which reads the slot map from the node in
    ``REDIS_URL`` now: an unreachable cluster, or a server not in cluster mode, raises
    ``RegistryUnavailable`` here (not cached, so the next call tries again).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from chalicelib.registry import RegistryUnavailable

    settings = get_settings()
    # One immediate retry heals a pooled connection that a Redis restart broke; more would only
    # stretch the stall when Redis is really gone (then the service degrades instead).
    options = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "health_check_interval": 30,
    }
    if not settings.redis_cluster:
        return redis.Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 1), **options)
    try:
        return redis.cluster.RedisCluster.from_url(settings.redis_url, retry=Retry(NoBackoff(), 1), **options)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        raise RegistryUnavailable(
            f"REDIS_CLUSTER=true, but REDIS_URL is not a reachable Redis Cluster ({type(error).__name__}: {error})"
        ) from error


@built_once()
def get_registry() -> RedisRegistry:
    from chalicelib.registry import RedisRegistry

    settings = get_settings()
    return RedisRegistry(
        get_redis(),
        ttl_seconds=settings.connection_ttl_s,
        prefix=settings.redis_key_prefix,
        send_rate=settings.send_rate_per_s,
        send_burst=settings.send_burst,
        max_connections_per_user=settings.max_connections_per_user,
    )


@built_once()
def get_rate_limiter() -> RateLimiter:
    """Per-user REST buckets; REST Lambdas load Redis only when they first take a token."""
    from chalicelib.limits import RateLimiter

    return RateLimiter(get_redis(), prefix=get_settings().redis_key_prefix)


@built_once()
def get_verifier() -> TokenVerifier:
    from chalicelib.auth import TokenVerifier

    return TokenVerifier(get_settings())


@built_once(maxsize=8)
def get_connections_client(endpoint_url: str) -> ConnectionsClient:
    """The ``@connections`` client of one management endpoint (one per WebSocket API stage)."""
    from chalicelib.connections_http import SignedConnectionsClient
    from chalicelib.push import Boto3ConnectionsClient

    settings = get_settings()
    client_class = Boto3ConnectionsClient if settings.push_client == "boto3" else SignedConnectionsClient
    return client_class(
        endpoint_url,
        region=settings.aws_region,
        concurrency=settings.push_concurrency,
        timeout_s=settings.push_timeout_s,
        max_attempts=settings.push_max_attempts,
    )


@built_once(maxsize=8)
def get_pusher(endpoint_url: str) -> Pusher:
    """A pusher for one management endpoint, drawing from the account's push budget (the direct path)."""
    from chalicelib.budget import BudgetedPusher
    from chalicelib.push import shared_executor

    settings = get_settings()
    return BudgetedPusher(
        get_connections_client(endpoint_url),
        on_gone=lambda connection_id: get_service().gone(connection_id),
        executor=shared_executor(settings.push_concurrency),
        deadline_s=settings.push_deadline_s,
        budget=get_push_budget(),
        max_wait_s=settings.push_budget_direct_wait_s,
    )


@built_once(maxsize=8)
def get_signal_pusher(endpoint_url: str) -> Pusher:
    """The pusher of typing and presence frames: the same budget, shed first (chalicelib/signals.py)."""
    from chalicelib.push import shared_executor
    from chalicelib.signals import SignalPusher

    settings = get_settings()
    return SignalPusher(
        get_connections_client(endpoint_url),
        on_gone=lambda connection_id: get_service().gone(connection_id),
        executor=shared_executor(settings.push_concurrency),
        deadline_s=settings.push_deadline_s,
        budget=get_push_budget(),
        redis=get_redis,
    )


@built_once()
def get_signals() -> LiveSignals:
    """Typing and presence state, on the registry's Redis client."""
    from chalicelib.signals import LiveSignals

    settings = get_settings()
    return LiveSignals(
        get_redis(),
        prefix=settings.redis_key_prefix,
        connection_ttl_s=settings.connection_ttl_s,
        members_ttl_s=settings.typing_members_ttl_s,
    )


@built_once()
def get_push_budget() -> PushBudget:
    """The account's push budget; Redis is reached on the first push only (and not at all when it is off)."""
    from chalicelib.budget import PushBudget

    settings = get_settings()
    return PushBudget(
        get_redis,
        rate_per_s=settings.push_budget_per_s,
        burst=settings.push_budget_burst,
        prefix=settings.redis_key_prefix,
    )


@built_once()
def get_fanout_queue() -> FanoutQueue | None:
    """The fan-out queue ``FANOUT_QUEUE_URL`` names, or None (every fan-out direct)."""
    from chalicelib.queue import queue_for_url

    settings = get_settings()
    return queue_for_url(settings.fanout_queue_url, region=settings.aws_region) if settings.fanout_queue_url else None


@built_once()
def get_fanout_dispatcher() -> FanoutDispatcher:
    from chalicelib.fanout import FanoutDispatcher

    settings = get_settings()
    return FanoutDispatcher(
        get_fanout_queue,
        threshold=settings.fanout_queue_threshold,
        shard_size=settings.fanout_shard_size,
        expand_members=settings.fanout_expand_members,
    )


@built_once()
def get_fanout_worker() -> FanoutWorker:
    """The SQS handler's worker: shards in, pushes out (chalicelib/fanout.py)."""
    from chalicelib.fanout import DatabaseMembership, FanoutWorker, shared_shard_executor
    from chalicelib.push import shared_executor

    settings = get_settings()
    return FanoutWorker(
        membership=DatabaseMembership(get_database()),
        registry=get_registry,
        client_for=get_connections_client,
        redis=get_redis,
        budget=get_push_budget,
        queue=get_fanout_queue,
        on_gone=lambda connection_id: get_service().gone(connection_id),
        executor=shared_executor(settings.push_concurrency),
        prefix=settings.redis_key_prefix,
        push_deadline_s=settings.push_deadline_s,
        chunk=min(max(1, settings.push_budget_burst), 4 * settings.push_concurrency),
        max_age_s=settings.fanout_max_age_s,
        retry_base_s=settings.fanout_retry_base_s,
        shard_executor=shared_shard_executor(FANOUT_BATCH_SIZE),
    )


@built_once()
def get_service() -> ChatService:
    return ChatService(
        get_settings(),
        ChatRepository(get_database(), receipts_max_members=get_settings().receipts_max_members),
        registry=get_registry,
        pusher=get_pusher,
        verifier=get_verifier,
        limiter=get_rate_limiter,
        fanout=get_fanout_dispatcher(),
        signals=get_signals,
        signal_pusher=get_signal_pusher,
    )


def connections_endpoint(domain_name: str, stage: str) -> str:
    """Where to post pushes: configured, or the API's own https://{domain}/{stage}."""
    configured = get_settings().connections_endpoint_url
    return configured or f"https://{domain_name}/{stage}"


def reset() -> None:
    """Forget every cached collaborator and the settings (closes the database and Redis connections)."""
    with _lock:
        if get_database.built():
            get_database().close()
        if get_redis.built():
            get_redis().close()
        for factory in (
            get_database,
            get_redis,
            get_registry,
            get_rate_limiter,
            get_verifier,
            get_connections_client,
            get_pusher,
            get_signal_pusher,
            get_signals,
            get_push_budget,
            get_fanout_queue,
            get_fanout_dispatcher,
            get_fanout_worker,
            get_service,
        ):
            factory.cache_clear()
        reset_settings()
