"""The WebSocket side of the local server: API Gateway's WebSocket API, emulated over real sockets.

Every socket gets an API-Gateway-style connection id. The app's ``$connect`` handler runs during the opening
handshake (``process_request``), so a non-2xx answer refuses the handshake with that status and nothing is
registered. Each client frame, JSON or not, becomes a ``$default`` event. ``$disconnect`` runs exactly once when
a socket ends, however it ends: clean close, dropped TCP, idle timeout, maximum duration, ``DELETE
@connections``, server shutdown, or a handshake that failed after ``$connect`` had already succeeded.

The handlers are synchronous Lambda handlers, so they run on a bounded thread pool and never block the event loop.
One connection's frames are handled one at a time in arrival order (API Gateway does not promise an order; a
deterministic one keeps local debugging sane), and its ``$disconnect`` runs after its last ``$default``.

Pushes come from other threads (the ``@connections`` HTTP server) through :class:`SocketSink`, which hands each
call to the event loop with ``asyncio.run_coroutine_threadsafe`` and waits for the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import importlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from chalice.app import Chalice
from chalice.local import LambdaContext
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from local.connections_api import ConnectionInfo, PushRejectedError, iso_timestamp

log = logging.getLogger(__name__)

#: API Gateway's limit on one WebSocket message from a client; a larger one closes the socket with 1009.
MAX_MESSAGE_BYTES = 128 * 1024

Event = dict[str, Any]
LambdaHandler = Callable[[Event, Any], Any]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Limits:
    """The platform limits the local server enforces (API Gateway's quotas, shortened in tests).

    Idle means no data frame from the client: heartbeats count, pushes and protocol pings do not.
    """

    idle_timeout_s: float = 600.0
    max_duration_s: float = 7200.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    handler_threads: int = 16
    # How long a push waits for a socket whose handshake is still completing, or for the loop to take it.
    push_timeout_s: float = 10.0


@dataclass(frozen=True)
class WebSocketHandlers:
    """The three route handlers, called as Lambda calls them: ``handler(event, context)``."""

    connect: LambdaHandler
    message: LambdaHandler
    disconnect: LambdaHandler

    @classmethod
    def from_app(cls, app: Chalice) -> WebSocketHandlers:
        """The handlers Lambda would invoke, found by their handler strings (``app.connect``, ...).

        A route the app does not declare behaves as on API Gateway without that route: connections are accepted
        and frames go nowhere.
        """
        found: dict[str, LambdaHandler] = {}
        for route_key, config in app.websocket_handlers.items():
            module_name, _, attribute = str(config.handler_string).rpartition(".")
            found[route_key] = getattr(importlib.import_module(module_name), attribute)
        return cls(
            connect=found.get("$connect", _accept),
            message=found.get("$default", _accept),
            disconnect=found.get("$disconnect", _accept),
        )


def _accept(event: Event, context: Any) -> Event:
    return {"statusCode": 200}


def new_connection_id() -> str:
    """An id shaped like API Gateway's (``L0SM9cOFvHcCIhw=``): 11 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(11)).decode("ascii")


def _request_time(when: float) -> str:
    """API Gateway's ``requestTime`` format: ``28/Nov/2026:10:33:11 +0000``."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))


@dataclass(frozen=True)
class ConnectionContext:
    """What API Gateway knows about a connection and repeats in every event for it."""

    connection_id: str
    connected_at: float
    source_ip: str
    user_agent: str
    domain_name: str
    stage: str
    api_id: str


def websocket_event(
    route_key: str,
    conn: ConnectionContext,
    *,
    body: str | None = None,
    is_base64_encoded: bool = False,
    headers: Mapping[str, list[str]] | None = None,
    query: Mapping[str, list[str]] | None = None,
    close: tuple[int, str] | None = None,
) -> Event:
    """An event shaped like the one API Gateway sends the route's Lambda.

    ``$connect`` carries the handshake's headers and query string, ``$default`` the frame, ``$disconnect`` the close
    code and reason.
    """
    now = time.time()
    event_type = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}.get(route_key, "MESSAGE")
    request_id = new_connection_id()
    context: Event = {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": _request_time(now),
        "messageDirection": "IN",
        "stage": conn.stage,
        "connectedAt": int(conn.connected_at * 1000),
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
        "requestId": request_id,
        "domainName": conn.domain_name,
        "connectionId": conn.connection_id,
        "apiId": conn.api_id,
    }
    event: Event = {"requestContext": context, "isBase64Encoded": is_base64_encoded}
    if event_type == "CONNECT":
        multi_headers = dict(headers or {})
        multi_query = dict(query or {})
        event["headers"] = {name: values[-1] for name, values in multi_headers.items()}
        event["multiValueHeaders"] = multi_headers
        # API Gateway sends null, not {}, when there is no query string.
        event["queryStringParameters"] = {name: values[-1] for name, values in multi_query.items()} or None
        event["multiValueQueryStringParameters"] = multi_query or None
    elif event_type == "MESSAGE":
        context["messageId"] = new_connection_id()
        event["body"] = body
    else:
        code, reason = close or (CloseCode.ABNORMAL_CLOSURE, "")
        context["disconnectStatusCode"] = int(code)
        context["disconnectReason"] = reason
        event["headers"] = {"Host": conn.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
        event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
    return event


@dataclass(eq=False)
class _Socket:
    """One connection: its socket and where it is in its life."""

    context: ConnectionContext
    ws: ServerConnection
    started: float = field(default_factory=time.monotonic)
    last_active_at: float = field(default_factory=time.time)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    is_open: bool = False
    finished: bool = False

    @property
    def connection_id(self) -> str:
        return self.context.connection_id


class WebSocketGateway:
    """Serves the app's WebSocket handlers on a listening socket, the way API Gateway invokes them."""

    def __init__(
        self,
        handlers: WebSocketHandlers,
        *,
        limits: Limits,
        domain_name: str,
        stage: str = "local",
        api_id: str = "local",
    ) -> None:
        self._handlers = handlers
        self._limits = limits
        self._domain_name = domain_name
        self._stage = stage
        self._api_id = api_id
        self._executor = ThreadPoolExecutor(max_workers=limits.handler_threads, thread_name_prefix="ws-handler")
        self._sockets: dict[str, _Socket] = {}
        self._by_ws: dict[ServerConnection, _Socket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, which is already bound and listening."""
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._serve,
            sock=sock,
            process_request=self._connect,
            max_size=self._limits.max_message_bytes,
            compression=None,
            # $connect runs inside the handshake; API Gateway allows an integration 29 s.
            open_timeout=30,
            close_timeout=2,
        )

    def sink(self) -> SocketSink:
        """The ``ConnectionSink`` that ``@connections`` calls land on; usable from any thread."""
        if self._loop is None:
            raise RuntimeError("WebSocketGateway is not started")
        return SocketSink(self, self._loop, self._limits.push_timeout_s)

    async def close(self) -> None:
        """Refuse new sockets, close open ones with 1001 (each runs ``$disconnect``), then stop the pool."""
        self._closing = True
        if self._server is not None:
            self._server.close(code=CloseCode.GOING_AWAY, reason="Server shutting down")
            try:
                async with asyncio.timeout(15):
                    await self._server.wait_closed()
                    while self._tasks:
                        await asyncio.wait(set(self._tasks))
            except TimeoutError:
                log.warning("some WebSocket handlers did not finish in time")
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the connection's life ----------------------------------------------------------------------------------

    async def _connect(self, ws: ServerConnection, request: Request) -> Response | None:
        """``process_request``: run ``$connect``; refuse the handshake unless it answers 2xx."""
        if self._closing:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
        url = urlsplit(request.path)
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.raw_items():
            headers.setdefault(name, []).append(value)
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(url.query, keep_blank_values=True):
            query.setdefault(name, []).append(value)
        remote = ws.remote_address
        context = ConnectionContext(
            connection_id=new_connection_id(),
            connected_at=time.time(),
            source_ip=str(remote[0]) if remote else "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            domain_name=self._domain_name,
            stage=self._stage,
            api_id=self._api_id,
        )
        event = websocket_event("$connect", context, headers=headers, query=query)
        try:
            reply = await self._invoke(self._handlers.connect, event, "websocket_connect")
        except Exception:
            log.exception("$connect handler failed")
            return ws.respond(HTTPStatus.INTERNAL_SERVER_ERROR, '{"message": "Internal server error"}')
        status, body = _connect_outcome(reply)
        if not 200 <= status < 300:
            log.info("WS  refused %s (%d)", context.connection_id, status)
            return ws.respond(status, body)
        entry = _Socket(context, ws)
        self._sockets[context.connection_id] = entry
        self._by_ws[ws] = entry
        # If the handshake fails from here on (client gone, bad upgrade, shutdown), _serve never runs.
        self._spawn(self._finish_if_never_opened(entry))
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        """The connection handler: frames to ``$default`` in order until the socket ends, then ``$disconnect``."""
        entry = self._by_ws.get(ws)
        if entry is None:  # not registered by _connect; cannot happen unless the server is misused
            await ws.close(CloseCode.INTERNAL_ERROR)
            return
        entry.is_open = True
        entry.opened.set()
        log.info("WS  connected %s", entry.connection_id)
        try:
            await self._receive(entry)
        finally:
            await self._finish(entry)

    async def _receive(self, entry: _Socket) -> None:
        ws = entry.ws
        while True:
            idle_left = self._limits.idle_timeout_s
            life_left = self._limits.max_duration_s - (time.monotonic() - entry.started)
            try:
                async with asyncio.timeout(max(0.0, min(idle_left, life_left))):
                    frame = await ws.recv()
            except TimeoutError:
                reason = "Idle timeout" if idle_left <= life_left else "Maximum connection duration"
                await ws.close(CloseCode.GOING_AWAY, reason)
                return
            except ConnectionClosed:
                return
            entry.last_active_at = time.time()
            await self._message(entry, frame)

    async def _message(self, entry: _Socket, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            event = websocket_event(
                "$default", entry.context, body=base64.b64encode(frame).decode("ascii"), is_base64_encoded=True
            )
        else:
            event = websocket_event("$default", entry.context, body=frame)
        try:
            await self._invoke(self._handlers.message, event, "websocket_message")
        except Exception:
            log.exception("$default handler failed")
            # What API Gateway sends a client whose route integration failed.
            error = {
                "message": "Internal server error",
                "connectionId": entry.connection_id,
                "requestId": event["requestContext"]["requestId"],
            }
            with contextlib.suppress(ConnectionClosed):
                await entry.ws.send(json.dumps(error))

    async def _finish_if_never_opened(self, entry: _Socket) -> None:
        await entry.ws.wait_closed()
        if not entry.is_open:
            await self._finish(entry)

    async def _finish(self, entry: _Socket) -> None:
        """Forget the socket and run ``$disconnect``, once per connection."""
        if entry.finished:
            return
        entry.finished = True
        entry.opened.set()  # wakes pushes that were waiting for the handshake
        self._sockets.pop(entry.connection_id, None)
        self._by_ws.pop(entry.ws, None)
        code = entry.ws.close_code if entry.ws.close_code is not None else CloseCode.ABNORMAL_CLOSURE
        reason = entry.ws.close_reason or ""
        event = websocket_event("$disconnect", entry.context, close=(int(code), reason))
        try:
            await self._invoke(self._handlers.disconnect, event, "websocket_disconnect")
        except Exception:
            log.exception("$disconnect handler failed")
        if entry.is_open:
            log.info("WS  disconnected %s (%d)", entry.connection_id, code)

    async def _invoke(self, handler: LambdaHandler, event: Event, function_name: str) -> Any:
        loop = asyncio.get_running_loop()
        context = LambdaContext(function_name=function_name, memory_size=512, max_runtime_ms=20_000)
        return await loop.run_in_executor(self._executor, functools.partial(handler, event, context))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- @connections, on the loop ------------------------------------------------------------------------------

    async def _ready(self, connection_id: str) -> _Socket | None:
        """The open socket for ``connection_id``, waiting briefly if its handshake is still completing."""
        entry = self._sockets.get(connection_id)
        if entry is None or entry.finished:
            return None
        if not entry.is_open:
            try:
                async with asyncio.timeout(self._limits.push_timeout_s):
                    await entry.opened.wait()
            except TimeoutError:
                return None
        return None if entry.finished else entry

    async def push(self, connection_id: str, data: bytes) -> bool:
        entry = await self._ready(connection_id)
        if entry is None:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            frame: str | bytes = data
        else:
            frame = text
        try:
            await entry.ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def describe(self, connection_id: str) -> ConnectionInfo | None:
        entry = self._sockets.get(connection_id)
        if entry is None or entry.finished:
            return None
        return {
            "connectedAt": iso_timestamp(entry.context.connected_at),
            "identity": {"sourceIp": entry.context.source_ip, "userAgent": entry.context.user_agent},
            "lastActiveAt": iso_timestamp(entry.last_active_at),
        }

    async def drop(self, connection_id: str) -> bool:
        entry = self._sockets.get(connection_id)
        if entry is None or entry.finished:
            return False
        # Answer at once, as API Gateway does; the close handshake (and $disconnect) follow on their own.
        self._spawn(self._close_when_open(entry))
        return True

    async def _close_when_open(self, entry: _Socket) -> None:
        ready = await self._ready(entry.connection_id)
        if ready is not None:
            await ready.ws.close(CloseCode.NORMAL_CLOSURE)


def _connect_outcome(reply: Any) -> tuple[int, str]:
    """The status and body of a ``$connect`` reply (a Lambda proxy response, or nothing for 200)."""
    if not isinstance(reply, Mapping):
        return 200, ""
    try:
        status = int(reply.get("statusCode", 200))
    except (TypeError, ValueError):
        return 500, '{"message": "Internal server error"}'
    try:
        HTTPStatus(status)
    except ValueError:
        status = 500  # not something an HTTP response can carry
    body = reply.get("body")
    return status, body if isinstance(body, str) else ""


class SocketSink:
    """The ``ConnectionSink`` behind ``@connections``: runs each call on the gateway's event loop and waits."""

    def __init__(self, gateway: WebSocketGateway, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._gateway = gateway
        self._loop = loop
        self._timeout_s = timeout_s

    def post(self, connection_id: str, data: bytes) -> bool:
        return self._run(self._gateway.push(connection_id, data), False)

    def info(self, connection_id: str) -> ConnectionInfo | None:
        return self._run(self._gateway.describe(connection_id), None)

    def delete(self, connection_id: str) -> bool:
        return self._run(self._gateway.drop(connection_id), False)

    def _run(self, coroutine: Coroutine[Any, Any, _T], when_stopped: _T) -> _T:
        if self._loop.is_closed() or not self._loop.is_running():
            coroutine.close()
            return when_stopped  # the server is shutting down: every connection is gone
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # A little over the gateway's own wait, so a socket mid-handshake answers before this gives up.
            return future.result(self._timeout_s + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PushRejectedError(500, "The connection did not take the message in time") from None
