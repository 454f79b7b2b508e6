"""Deliver frames through API Gateway's ``@connections`` management API.

Plan in, report out: :meth:`Pusher.push_all` takes the pushes a chat event causes (``wire.Push``, already a
snapshot of connection ids) and returns a :class:`PushReport` of what became of each. The pushes go out at once
on a bounded thread pool, as one HTTPS round trip each is the cost to hide. A dead connection is normal flow: a
410 (``GoneError``) unregisters that one connection and the rest go on. The client retries throttling and 5xx
answers a bounded number of times; whatever still fails is reported, never raised, because the message it
carries is already stored. A fan-out also has a deadline: pushes still running when it passes (a hanging
endpoint) are reported as failed and left to end on their own per-request timeouts, so no send stalls past it.

Two clients speak the ``ConnectionsClient`` protocol: ``connections_http.SignedConnectionsClient``, the default,
and :class:`Boto3ConnectionsClient`; the ``PUSH_CLIENT`` setting picks one.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

from chalicelib.wire import Push

log = logging.getLogger(__name__)


class GoneError(Exception):
    """The connection no longer exists (HTTP 410 from @connections)."""


class ConnectionsClient(Protocol):
    """The two calls a pusher makes; ``GoneError`` for a connection that no longer exists."""

    def post(self, connection_id: str, data: bytes) -> None: ...

    def close(self, connection_id: str) -> None: ...


class PushOutcome(enum.Enum):
    """What became of one push."""

    DELIVERED = "delivered"
    GONE = "gone"  # 410: the connection was unregistered
    FAILED = "failed"  # still failing after the client's retries, or past the deadline


@dataclass
class PushReport:
    """The connection ids of a fan-out, by outcome (one entry per push)."""

    delivered: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, connection_id: str, outcome: PushOutcome) -> None:
        match outcome:
            case PushOutcome.DELIVERED:
                self.delivered.append(connection_id)
            case PushOutcome.GONE:
                self.gone.append(connection_id)
            case PushOutcome.FAILED:
                self.failed.append(connection_id)
            case _:
                assert_never(outcome)


class Pusher:
    """Posts frames concurrently and unregisters connections that are gone."""

    def __init__(
        self,
        client: ConnectionsClient,
        *,
        on_gone: Callable[[str], object],
        executor: ThreadPoolExecutor,
        deadline_s: float,
    ) -> None:
        self._client = client
        self._on_gone = on_gone
        self._executor = executor
        self._deadline_s = deadline_s

    def push_all(self, pushes: Sequence[Push]) -> PushReport:
        """Deliver every push by the deadline; never raises for a single connection's failure.

        Every push runs on the pool, single ones too, so a hanging endpoint cannot hold the
        caller. Pushes to one connection go out one after another in the order given (an echo
        before the notice about it); different connections are served concurrently.
        """
        report = PushReport()
        if not pushes:
            return report
        by_connection: dict[str, list[tuple[Push, bytes]]] = {}
        # A fan-out sends one frame object to every connection: encode it once, not once per push.
        encoded: dict[int, bytes] = {}
        for push in pushes:
            data = encoded.get(id(push.frame))
            if data is None:
                data = encoded[id(push.frame)] = encode_frame(push.frame)
            by_connection.setdefault(push.connection_id, []).append((push, data))
        running: list[tuple[list[tuple[Push, bytes]], Future[list[PushOutcome]]]] = [
            (group, self._executor.submit(self._push_in_order, group)) for group in by_connection.values()
        ]
        wait([future for _, future in running], timeout=self._deadline_s)
        abandoned = 0
        for group, future in running:
            if future.done():
                for (push, _), outcome in zip(group, future.result(), strict=True):
                    report.add(push.connection_id, outcome)
            else:
                future.cancel()  # not started yet: never will; running: ends on its own timeouts
                for push, _ in group:
                    report.add(push.connection_id, PushOutcome.FAILED)
                abandoned += len(group)
        if abandoned:
            log.warning("push deadline of %ss passed; %d push(es) abandoned", self._deadline_s, abandoned)
        return report

    def close(self, connection_id: str) -> None:
        """Close a connection from the server side; a gone one is already closed."""
        try:
            self._client.close(connection_id)
        except GoneError:
            pass
        except Exception as error:
            log.warning("closing a connection failed: %s", type(error).__name__)

    def _push_in_order(self, group: list[tuple[Push, bytes]]) -> list[PushOutcome]:
        """One connection's pushes, one outcome each; after a 410 the rest would only meet the same 410."""
        outcomes: list[PushOutcome] = []
        for push, data in group:
            outcome = self._push(push.connection_id, data)
            outcomes.append(outcome)
            if outcome is PushOutcome.GONE:
                outcomes += [PushOutcome.GONE] * (len(group) - len(outcomes))
                break
        return outcomes

    def _push(self, connection_id: str, data: bytes) -> PushOutcome:
        try:
            self._client.post(connection_id, data)
        except GoneError:
            try:
                self._on_gone(connection_id)
            except Exception:  # the registry expires it anyway
                log.warning("could not unregister gone connection", exc_info=True)
            return PushOutcome.GONE
        except Exception as error:
            log.warning("push failed: %s", type(error).__name__)
            return PushOutcome.FAILED
        return PushOutcome.DELIVERED


def encode_frame(frame: object) -> bytes:
    """A frame as the bytes of one WebSocket text message (compact UTF-8 JSON)."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_pools_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}


def process_pool(name: str, max_workers: int) -> ThreadPoolExecutor:
    """The process's one pool of this name, kept across warm invocations (its first caller sizes it)."""
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        return pool


def shared_executor(max_workers: int) -> ThreadPoolExecutor:
    """The pool every push runs on."""
    return process_pool("push", max_workers)


class Boto3ConnectionsClient:
    """``apigatewaymanagementapi`` for one endpoint; boto3 is imported on first use.

    botocore's "standard" retry mode gives the same policy as the signed client: 429, 5xx and
    connection errors retried with backoff and jitter, ``max_attempts`` attempts in all.
    """

    def __init__(
        self, endpoint_url: str, *, region: str, concurrency: int, timeout_s: float, max_attempts: int = 3
    ) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            max_pool_connections=concurrency,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "standard", "max_attempts": max_attempts},
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
