"""API Gateway's ``@connections`` management API, served over real HTTP for local runs and tests.

boto3's ``apigatewaymanagementapi`` client talks to :class:`ConnectionsServer` unchanged (``endpoint_url`` is
``server.url``, optionally with a stage path appended), so the app pushes through the very code it runs on AWS.
The HTTP layer knows nothing about sockets: it delegates every call to a :class:`ConnectionSink`. The local
WebSocket server supplies a sink that writes to real sockets; tests and benchmarks use :class:`RecordingSink`.

Error responses carry the ``x-amzn-ErrorType`` header, which is what botocore's rest-json parser reads to raise
the modelled exception (``client.exceptions.GoneException`` for 410, ``LimitExceededException`` for 429, ...).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, Self, TypedDict
from urllib.parse import unquote, urlsplit

#: API Gateway's limit on one WebSocket frame pushed through ``@connections`` (128 KB).
MAX_PAYLOAD_BYTES = 128 * 1024

_PATH = re.compile(r"^(?P<stage>(?:/[^/]+)*)/@connections/(?P<id>[^/]+)$")

#: The error type botocore maps to a modelled exception, per status.
ERROR_TYPES: dict[int, str] = {
    400: "BadRequestException",
    403: "ForbiddenException",
    410: "GoneException",
    413: "PayloadTooLargeException",
    429: "LimitExceededException",
    500: "InternalServerErrorException",
}


def iso_timestamp(when: float) -> str:
    """``when`` (epoch seconds) as ISO-8601 UTC with milliseconds and ``Z``, the contract's timestamp format."""
    moment = datetime.fromtimestamp(when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class ConnectionIdentity(TypedDict):
    sourceIp: str
    userAgent: str


class ConnectionInfo(TypedDict):
    """The body of ``GET @connections/{id}``, as API Gateway returns it."""

    connectedAt: str
    identity: ConnectionIdentity
    lastActiveAt: str


class PushRejectedError(Exception):
    """Raised by a sink to answer with an error status other than 410 (throttling, a server fault, ...)."""

    def __init__(self, status: int, message: str = "", error_type: str | None = None) -> None:
        super().__init__(message or f"status {status}")
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, f"Http{status}Exception")


class ConnectionSink(Protocol):
    """Where ``@connections`` calls land. ``False``/``None`` means the connection is gone (410)."""

    def post(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame; ``False`` if the connection is unknown or closed."""
        ...

    def info(self, connection_id: str) -> ConnectionInfo | None:
        """Describe an open connection; ``None`` if it is unknown or closed."""
        ...

    def delete(self, connection_id: str) -> bool:
        """Close the connection; ``False`` if it was unknown or already closed."""
        ...


class ConnectionsRequestHandler(BaseHTTPRequestHandler):
    """Answers ``@connections`` calls from the server's sink.

    The local server subclasses it to serve REST and ``@connections`` on one port.
    """

    # Keep-alive is what boto3 expects; without HTTP/1.1 every push would pay a new TCP connection.
    protocol_version = "HTTP/1.1"
    server: ConnectionsHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a push per request would drown the dev server's own log."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_POST(self) -> None:
        connection_id = self._connection_id()
        if connection_id is None:
            return
        data = self._read_body()
        if len(data) > MAX_PAYLOAD_BYTES:
            self._error(413, "Message too long")
            return
        try:
            delivered = self.server.sink.post(connection_id, data)
        except PushRejectedError as exc:
            self._error(exc.status, exc.message, exc.error_type)
            return
        if delivered:
            self._reply(200)
        else:
            self._error(410, None)

    def do_GET(self) -> None:
        connection_id = self._connection_id()
        if connection_id is None:
            return
        self._read_body()
        try:
            info = self.server.sink.info(connection_id)
        except PushRejectedError as exc:
            self._error(exc.status, exc.message, exc.error_type)
            return
        if info is None:
            self._error(410, None)
        else:
            self._reply(200, json.dumps(info).encode())

    def do_DELETE(self) -> None:
        connection_id = self._connection_id()
        if connection_id is None:
            return
        self._read_body()
        try:
            deleted = self.server.sink.delete(connection_id)
        except PushRejectedError as exc:
            self._error(exc.status, exc.message, exc.error_type)
            return
        if deleted:
            self._reply(204)
        else:
            self._error(410, None)

    def _connection_id(self) -> str | None:
        match = _PATH.match(urlsplit(self.path).path)
        if match is None:
            self._read_body()
            self._error(404, "Not Found", "NotFoundException")
            return None
        # botocore percent-encodes the id (API Gateway ids end in '='); split first so an encoded '/' stays put.
        return unquote(match["id"])

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _error(self, status: int, message: str | None, error_type: str | None = None) -> None:
        kind = error_type or ERROR_TYPES.get(status, f"Http{status}Exception")
        body = json.dumps({"message": message}).encode()
        self._reply(status, body, {"x-amzn-ErrorType": kind})

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204:  # a 204 must not carry a Content-Length (RFC 9110)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class ConnectionsHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the sink and can drop its keep-alive connections on stop."""

    # The default backlog of 5 makes a burst of concurrent boto3 connections wait for SYN retries (~1 s each).
    request_queue_size = 256
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        sink: ConnectionSink,
        handler: type[ConnectionsRequestHandler] = ConnectionsRequestHandler,
    ) -> None:
        self.sink = sink
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            if is_open:
                self._open.add(conn)
            else:
                self._open.discard(conn)

    def drop_open_connections(self) -> None:
        """Ends keep-alive connections, whose handler threads would otherwise outlive ``shutdown()``."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ConnectionsServer:
    """Serves the ``@connections`` API on 127.0.0.1 from a daemon thread, delegating to ``sink``.

    ``port=0`` picks a free port; ``url`` is the ``endpoint_url`` for boto3. Usable as a context manager.
    """

    def __init__(self, sink: ConnectionSink, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sink = sink
        self._host = host
        self._port = port
        self._httpd: ConnectionsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ConnectionsServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._httpd = ConnectionsHTTPServer((self._host, self._port), self.sink)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"connections-api:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_open_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Behaviour:
    """An injected fault for :class:`RecordingSink`.

    ``delay`` seconds pass before the push is handled (0.02 mimics AWS's HTTPS round trip; a large value is a
    hang, cut short by ``RecordingSink.release()``); then ``status``, if set, is returned instead of delivering.
    ``times`` limits how many pushes are affected (``None``: all).
    """

    status: int | None = None
    delay: float = 0.0
    times: int | None = None


@dataclass
class _Connection:
    connected_at: float
    last_active_at: float
    source_ip: str
    user_agent: str


class RecordingSink:
    """A thread-safe in-memory sink: a set of open connections that records every frame posted to them.

    Posts to an id that was never opened, or was closed, answer 410. Faults are injected per connection or
    globally with :meth:`inject`. Frames are recorded only when delivered (status 200).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._released = threading.Event()
        self._open: dict[str, _Connection] = {}
        self._frames: defaultdict[str, list[bytes]] = defaultdict(list)
        self._attempts: defaultdict[str, int] = defaultdict(int)
        self._deleted: list[str] = []
        self._behaviours: dict[str | None, tuple[Behaviour, list[int]]] = {}

    # -- connections ----------------------------------------------------------------------------------------

    def open(self, connection_id: str, *, source_ip: str = "127.0.0.1", user_agent: str = "test") -> None:
        now = time.time()
        with self._lock:
            self._open[connection_id] = _Connection(now, now, source_ip, user_agent)

    def close(self, connection_id: str) -> None:
        with self._lock:
            self._open.pop(connection_id, None)

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            return connection_id in self._open

    # -- faults ---------------------------------------------------------------------------------------------

    def inject(self, behaviour: Behaviour, connection_id: str | None = None) -> None:
        """Apply ``behaviour`` to pushes to ``connection_id``, or to every connection when it is ``None``."""
        with self._lock:
            self._behaviours[connection_id] = (behaviour, [behaviour.times or 0])

    def clear_faults(self) -> None:
        with self._lock:
            self._behaviours.clear()

    def release(self) -> None:
        """Ends every current and future delay at once (e.g. hanging pushes at teardown)."""
        self._released.set()

    def _take_behaviour(self, connection_id: str) -> Behaviour | None:
        for key in (connection_id, None):
            entry = self._behaviours.get(key)
            if entry is None:
                continue
            behaviour, remaining = entry
            if behaviour.times is not None:
                if remaining[0] <= 0:
                    del self._behaviours[key]
                    continue
                remaining[0] -= 1
            return behaviour
        return None

    # -- ConnectionSink -------------------------------------------------------------------------------------

    def post(self, connection_id: str, data: bytes) -> bool:
        with self._lock:
            self._attempts[connection_id] += 1
            behaviour = self._take_behaviour(connection_id)
        if behaviour is not None:
            if behaviour.delay > 0:
                self._released.wait(behaviour.delay)
            if behaviour.status is not None:
                if behaviour.status == 410:
                    return False
                raise PushRejectedError(behaviour.status, "injected fault")
        with self._changed:
            conn = self._open.get(connection_id)
            if conn is None:
                return False
            conn.last_active_at = time.time()
            self._frames[connection_id].append(data)
            self._changed.notify_all()
            return True

    def info(self, connection_id: str) -> ConnectionInfo | None:
        with self._lock:
            conn = self._open.get(connection_id)
            if conn is None:
                return None
            return {
                "connectedAt": iso_timestamp(conn.connected_at),
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
                "lastActiveAt": iso_timestamp(conn.last_active_at),
            }

    def delete(self, connection_id: str) -> bool:
        with self._lock:
            if self._open.pop(connection_id, None) is None:
                return False
            self._deleted.append(connection_id)
            return True

    # -- inspection -----------------------------------------------------------------------------------------

    def frames(self, connection_id: str) -> list[bytes]:
        with self._lock:
            return list(self._frames.get(connection_id, ()))

    def json_frames(self, connection_id: str) -> list[Any]:
        return [json.loads(frame) for frame in self.frames(connection_id)]

    def attempts(self, connection_id: str) -> int:
        """How many posts reached the sink for ``connection_id``, delivered or not (retries included)."""
        with self._lock:
            return self._attempts.get(connection_id, 0)

    @property
    def deleted(self) -> list[str]:
        """Connection ids closed through ``DELETE @connections/{id}``, in order."""
        with self._lock:
            return list(self._deleted)

    def total_frames(self) -> int:
        with self._lock:
            return sum(len(frames) for frames in self._frames.values())

    def wait_for_frames(self, connection_id: str, count: int, timeout: float = 5.0) -> list[bytes]:
        """Blocks until ``connection_id`` has received at least ``count`` frames; raises ``TimeoutError``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._frames.get(connection_id, ())) >= count, timeout):
                got = len(self._frames.get(connection_id, ()))
                raise TimeoutError(f"{connection_id}: {got} of {count} frames after {timeout}s")
            return list(self._frames[connection_id])

    def all_frames(self) -> list[tuple[str, bytes]]:
        """Every delivered frame as ``(connection_id, data)``, grouped by connection."""
        with self._lock:
            return [(cid, frame) for cid, frames in self._frames.items() for frame in frames]
