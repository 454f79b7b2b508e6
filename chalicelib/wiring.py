"""The one place that builds real collaborators, lazily, once per process.

A REST Lambda touches only PostgreSQL; a WebSocket Lambda adds Redis, boto3
and PyJWT. Each factory imports and connects on first use and is cached
across warm invocations. ``reset()`` drops everything (tests, local server).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

from chalicelib.config import get_settings, reset_settings
from chalicelib.db import Database
from chalicelib.repository import ChatRepository
from chalicelib.service import ChatService

if TYPE_CHECKING:
    from chalicelib.auth import TokenVerifier
    from chalicelib.push import Pusher
    from chalicelib.registry import RedisRegistry

_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def get_database() -> Database:
    return Database(get_settings())


@functools.lru_cache(maxsize=1)
def get_registry() -> RedisRegistry:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from chalicelib.registry import RedisRegistry

    settings = get_settings()
    # One immediate retry heals a pooled connection that a Redis restart broke; more would only
    # stretch the stall when Redis is really gone (then the service degrades instead).
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
    )
    return RedisRegistry(
        client,
        ttl_seconds=settings.connection_ttl_s,
        prefix=settings.redis_key_prefix,
        send_rate=settings.send_rate_per_s,
        send_burst=settings.send_burst,
    )


@functools.lru_cache(maxsize=1)
def get_verifier() -> TokenVerifier:
    from chalicelib.auth import TokenVerifier

    return TokenVerifier(get_settings())


@functools.lru_cache(maxsize=8)
def get_pusher(endpoint_url: str) -> Pusher:
    """A pusher for one management endpoint (one per WebSocket API stage)."""
    from chalicelib.push import Boto3ConnectionsClient, Pusher, SignedConnectionsClient, shared_executor

    settings = get_settings()
    clients = {"signed": SignedConnectionsClient, "boto3": Boto3ConnectionsClient}
    if settings.push_client not in clients:
        raise ValueError(f"PUSH_CLIENT must be one of {', '.join(clients)}")
    client = clients[settings.push_client](
        endpoint_url,
        region=settings.aws_region,
        concurrency=settings.push_concurrency,
        timeout_s=settings.push_timeout_s,
        max_attempts=settings.push_max_attempts,
    )
    return Pusher(
        client,
        on_gone=lambda connection_id: get_service().disconnect(connection_id),
        executor=shared_executor(settings.push_concurrency),
        deadline_s=settings.push_deadline_s,
    )


@functools.lru_cache(maxsize=1)
def get_service() -> ChatService:
    return ChatService(
        get_settings(),
        ChatRepository(get_database()),
        registry=get_registry,
        pusher=get_pusher,
        verifier=get_verifier,
    )


def connections_endpoint(domain_name: str, stage: str) -> str:
    """Where to post pushes: configured, or the API's own https://{domain}/{stage}."""
    configured = get_settings().connections_endpoint_url
    return configured or f"https://{domain_name}/{stage}"


def reset() -> None:
    """Forget every cached collaborator and the settings (closes the database connection)."""
    with _lock:
        if get_database.cache_info().currsize:
            get_database().close()
        for factory in (get_database, get_registry, get_verifier, get_pusher, get_service):
            factory.cache_clear()
        reset_settings()
