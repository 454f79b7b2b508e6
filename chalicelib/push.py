"""Deliver frames through API Gateway's ``@connections`` management API.

A broadcast works on a snapshot of connection ids and posts to all of them at
once on a bounded thread pool (one HTTPS round trip each is the cost to hide).
A dead connection is normal flow: ``GoneException`` (410) unregisters that one
connection and the rest go on. Throttling and 5xx answers are retried by
botocore's "standard" retry mode (exponential backoff with jitter, bounded
attempts); whatever still fails is reported, never raised, because the message
it carries is already stored.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from chalicelib.wire import Push

log = logging.getLogger(__name__)


class GoneError(Exception):
    """The connection no longer exists (HTTP 410 from @connections)."""


class ConnectionsClient(Protocol):
    """The one call a pusher needs; boto3's client is wrapped to this shape."""

    def post(self, connection_id: str, data: bytes) -> None: ...

    def close(self, connection_id: str) -> None: ...


@dataclass
class PushReport:
    delivered: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Boto3ConnectionsClient:
    """``apigatewaymanagementapi`` for one endpoint; boto3 is imported on first use."""

    def __init__(self, endpoint_url: str, *, region: str, concurrency: int, timeout_s: float) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            max_pool_connections=concurrency,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "standard", "max_attempts": 3},
        )
        self._client: Any = boto3.session.Session().client(
            "apigatewaymanagementapi", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def post(self, connection_id: str, data: bytes) -> None:
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=data)
        except self._client.exceptions.GoneException:
            raise GoneError(connection_id) from None

    def close(self, connection_id: str) -> None:
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except self._client.exceptions.GoneException:
            raise GoneError(connection_id) from None


class Pusher:
    """Posts frames concurrently and unregisters connections that are gone."""

    def __init__(
        self,
        client: ConnectionsClient,
        *,
        on_gone: Callable[[str], object],
        executor: ThreadPoolExecutor,
    ) -> None:
        self._client = client
        self._on_gone = on_gone
        self._executor = executor

    def _deliver(self, push: Push) -> tuple[str, str]:
        data = json.dumps(push.frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            self._client.post(push.connection_id, data)
        except GoneError:
            try:
                self._on_gone(push.connection_id)
            except Exception:  # the registry expires it anyway
                log.warning("could not unregister gone connection", exc_info=True)
            return push.connection_id, "gone"
        except Exception as error:
            log.warning("push failed: %s", type(error).__name__)
            return push.connection_id, "failed"
        return push.connection_id, "delivered"

    def push_all(self, pushes: Sequence[Push]) -> PushReport:
        """Deliver every push; never raises for a single connection's failure."""
        report = PushReport()
        # A single push (an echo, an error frame) is not worth a thread hop.
        outcomes = [self._deliver(pushes[0])] if len(pushes) == 1 else list(self._executor.map(self._deliver, pushes))
        for connection_id, outcome in outcomes:
            getattr(report, outcome).append(connection_id)
        return report

    def close(self, connection_id: str) -> None:
        """Close a connection from the server side; a gone one is already closed."""
        try:
            self._client.close(connection_id)
        except GoneError:
            pass
        except Exception as error:
            log.warning("closing a connection failed: %s", type(error).__name__)


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def shared_executor(max_workers: int) -> ThreadPoolExecutor:
    """One pool per process, kept across warm invocations."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="push")
        return _executor
