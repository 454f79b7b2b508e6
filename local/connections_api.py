"""API Gateway's ``@connections`` management API, served over real HTTP for local runs and tests.

The app's push clients (``connections_http.SignedConnectionsClient`` by default, boto3's
``apigatewaymanagementapi`` client with ``PUSH_CLIENT=boto3``) talk to :class:`ConnectionsServer` unchanged (the
endpoint URL is ``server.url``, optionally with a stage path appended), so the app pushes through the very code
it runs on AWS.
The HTTP layer knows nothing about sockets: it delegates every call to a :class:`ConnectionSink`. The local
WebSocket server supplies a sink that writes to real sockets; tests and benchmarks use :class:`RecordingSink`.

Error responses carry the ``x-amzn-ErrorType`` header, which is what botocore's rest-json parser reads to raise
the modelled exception (``client.exceptions.GoneException`` for 410, ``LimitExceededException`` for 429, ...).

Every call must be signed with SigV4 for ``execute-api`` by the server's :class:`SigningKey`, as API Gateway
requires of ``@connections`` callers; anything else is refused with 403 before the sink sees it, so another
local process cannot push forged frames to a socket or close it. Bodies are read in pieces and never past
their cap, and a client that hangs up is normal flow: one DEBUG log line, never a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, Self, TypedDict
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)

#: API Gateway's limit on one WebSocket frame pushed through ``@connections`` (128 KB).
MAX_PAYLOAD_BYTES = 128 * 1024
#: API Gateway's payload limit for a REST request (10 MB); no body is read past it.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: How far ``x-amz-date`` may be from the server's clock, as AWS allows (15 minutes).
MAX_CLOCK_SKEW_S = 15 * 60
#: After refusing a body it did not read, the server discards what is still arriving for at most this long (or
#: this many bytes) before closing: closing with unread data makes the kernel send a reset, which can destroy the
#: answer still on its way to the client.
LINGER_S = 1.0
LINGER_BYTES = 4 * 1024 * 1024
_MAX_CHUNK_LINE = 1024
_MAX_TRAILER_LINES = 64
#: How a client's hang-up surfaces in a request thread.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

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


class BodyTooLarge(Exception):
    """The request body is over its cap; what is left of it was not read."""


class MalformedBody(Exception):
    """The body's framing (``Content-Length``, chunk sizes) is not valid HTTP/1.1."""


@dataclass(frozen=True)
class SigningKey:
    """The one key pair whose SigV4 signatures the endpoint accepts, for ``execute-api`` in ``region``."""

    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    @classmethod
    def generate(cls, region: str = "us-east-1") -> SigningKey:
        """A fresh random pair, shaped like an IAM access key (20 characters) and its secret (40)."""
        return cls("LOCAL" + secrets.token_hex(8).upper()[:15], secrets.token_urlsafe(30), region)


#: The pair the tests and benchmarks configure the app with, for their short-lived in-process endpoints.
#: ``make dev`` never uses it: it generates a key per start (see ``local/server.py``).
TEST_SIGNING_KEY = SigningKey("local", "local")


class SignatureError(Exception):
    """A request API Gateway would refuse with 403; ``message`` and ``error_type`` are what it answers."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<day>[0-9]{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9-]+(?:;[a-z0-9-]+)*),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_INCOMPLETE = (
    "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters and an 'X-Amz-Date' header"
)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    """As botocore builds it from a URL's query: pairs sorted, their encoding left as sent."""
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{name}={value}" for name, value in pairs)


def verify_signature(key: SigningKey, method: str, target: str, headers: Message, body: bytes, now: float) -> None:
    """Check a request's SigV4 signature as API Gateway does; raise :class:`SignatureError` if it fails.

    ``target`` is the request target exactly as received (still percent-encoded). Each check answers with the
    message and error type API Gateway uses for it.
    """
    authorization = headers.get("Authorization")
    if not authorization:
        raise SignatureError("Missing Authentication Token", "MissingAuthenticationTokenException")
    match = _AUTHORIZATION.fullmatch(authorization.strip())
    amz_date = headers.get("X-Amz-Date", "")
    if match is None or not _AMZ_DATE.fullmatch(amz_date):
        raise SignatureError(_INCOMPLETE, "IncompleteSignatureException")
    if not hmac.compare_digest(match["key"], key.access_key_id):
        raise SignatureError("The security token included in the request is invalid.", "UnrecognizedClientException")
    if (match["service"], match["region"], match["day"]) != ("execute-api", key.region, amz_date[:8]):
        raise SignatureError(
            f"Credential should be scoped to a valid date, region {key.region!r} and service 'execute-api'.",
            "InvalidSignatureException",
        )
    signed = match["headers"].split(";")
    if "host" not in signed or "x-amz-date" not in signed or any(headers.get(name) is None for name in signed):
        raise SignatureError(_INCOMPLETE, "IncompleteSignatureException")
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    if abs(now - signed_at) > MAX_CLOCK_SKEW_S:
        raise SignatureError(
            f"Signature expired: {amz_date} is not within {MAX_CLOCK_SKEW_S // 60} minutes of the server's time.",
            "InvalidSignatureException",
        )
    path, _, query = target.partition("?")
    canonical_headers = "".join(
        f"{name}:{','.join(' '.join(value.split()) for value in headers.get_all(name, []))}\n" for name in signed
    )
    canonical = "\n".join(
        [
            method,
            quote(path, safe="/~"),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed),
            headers.get("X-Amz-Content-SHA256") or hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{key.region}/execute-api/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signing_key = _hmac(("AWS4" + key.secret_access_key).encode(), amz_date[:8])
    for part in (key.region, "execute-api", "aws4_request"):
        signing_key = _hmac(signing_key, part)
    expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureError(_MISMATCH, "InvalidSignatureException")


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
    """Answers ``@connections`` calls from the server's sink, once their signature checks out.

    The local server subclasses it to serve REST and ``@connections`` on one port.
    """

    # Keep-alive is what both push clients expect; without HTTP/1.1 every push would pay a new TCP connection.
    protocol_version = "HTTP/1.1"
    server: ConnectionsHTTPServer
    #: Set when a body was refused unread: the connection closes, after a short linger (see ``LINGER_S``).
    _unread_body = False

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a push per request would drown the dev server's own log."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
            if self._unread_body:
                self._linger()
        finally:
            self.server.track(self.connection, False)

    def do_POST(self) -> None:
        connection_id = self._connection_id()
        if connection_id is None:
            return
        data = self._signed_body(MAX_PAYLOAD_BYTES)
        if data is None:
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
        if connection_id is None or self._signed_body(MAX_PAYLOAD_BYTES) is None:
            return
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
        if connection_id is None or self._signed_body(MAX_PAYLOAD_BYTES) is None:
            return
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
            if self._signed_body(MAX_PAYLOAD_BYTES) is not None:
                self._error(404, "Not Found", "NotFoundException")
            return None
        # botocore percent-encodes the id (API Gateway ids end in '='); split first so an encoded '/' stays put.
        return unquote(match["id"])

    def _signed_body(self, limit: int) -> bytes | None:
        """The body of a correctly signed request; ``None`` once the request has been answered (413, 400, 403)."""
        try:
            body = self._read_body(limit)
        except BodyTooLarge:
            self._error(413, "Message too long")
            return None
        except MalformedBody:
            self._error(400, "Malformed request body")
            return None
        try:
            verify_signature(self.server.signing_key, self.command, self.path, self.headers, body, time.time())
        except SignatureError as refused:
            log.info("@connections %s refused: %s", self.command, refused.error_type)
            self._error(403, refused.message, refused.error_type)
            return None
        return body

    # -- bodies --------------------------------------------------------------------------------------------------

    def _read_body(self, limit: int) -> bytes:
        """The request body, read in pieces and never past ``limit`` bytes.

        Raises :class:`BodyTooLarge` as soon as the declared length, or the running total of a chunked body, passes
        ``limit`` (without reading further), :class:`MalformedBody` for bad framing, and ``ConnectionAbortedError``
        when the client hangs up inside the body. After either of the first two, the connection will close.
        """
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked(limit)
            raw = (self.headers.get("Content-Length") or "0").strip()
            if not raw.isascii() or not raw.isdigit():
                raise MalformedBody(f"Content-Length {raw!r}")
            length = int(raw)
            if length > limit:
                raise BodyTooLarge(f"Content-Length {length} is over {limit}")
            data = self.rfile.read(length) if length else b""
            if len(data) < length:
                raise ConnectionAbortedError(f"the client left after {len(data)} of {length} bytes")
            return data
        except (BodyTooLarge, MalformedBody):
            self.close_connection = True
            self._unread_body = True
            raise

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            size = self._chunk_size()
            if size == 0:
                for _ in range(_MAX_TRAILER_LINES):
                    if self._line() in (b"\r\n", b"\n"):
                        return bytes(body)
                raise MalformedBody("too many trailer lines")
            if len(body) + size > limit:
                raise BodyTooLarge(f"chunked body over {limit}")
            data = self.rfile.read(size)
            if len(data) < size:
                raise ConnectionAbortedError("the client left inside a chunk")
            body += data
            if self._line() not in (b"\r\n", b"\n"):
                raise MalformedBody("a chunk is longer than its size")

    def _chunk_size(self) -> int:
        field = self._line().split(b";", 1)[0].strip()
        if not field or len(field) > 16 or field.strip(b"0123456789abcdefABCDEF"):
            raise MalformedBody(f"chunk size {field!r}")
        return int(field, 16)

    def _line(self) -> bytes:
        line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
        if not line:
            raise ConnectionAbortedError("the client left inside a chunked body")
        if len(line) > _MAX_CHUNK_LINE or not line.endswith(b"\n"):
            raise MalformedBody("chunk line too long")
        return line

    def _linger(self) -> None:
        """Say we are done sending, then discard what the client still sends (briefly) so the close is clean."""
        sock = self.connection
        deadline = time.monotonic() + LINGER_S
        discarded = 0
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while discarded < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                discarded += len(data)

    # -- answers -------------------------------------------------------------------------------------------------

    def _error(self, status: int, message: str | None, error_type: str | None = None) -> None:
        kind = error_type or ERROR_TYPES.get(status, f"Http{status}Exception")
        body = json.dumps({"message": message}).encode()
        self._reply(status, body, {"x-amzn-ErrorType": kind})

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        if status != 204:  # a 204 must not carry a Content-Length (RFC 9110)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class ConnectionsHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the sink and the signing key, logs client hang-ups quietly, and can
    drop its keep-alive connections on stop."""

    # The default backlog of 5 makes a burst of concurrent boto3 connections wait for SYN retries (~1 s each).
    request_queue_size = 256
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        sink: ConnectionSink,
        handler: type[ConnectionsRequestHandler] = ConnectionsRequestHandler,
        *,
        signing_key: SigningKey = TEST_SIGNING_KEY,
    ) -> None:
        self.sink = sink
        self.signing_key = signing_key
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver calls this from a request thread's ``except``; its default prints the traceback to stderr,
        past the log redaction. A client that went away is normal flow (one DEBUG line); anything else is logged
        with its traceback."""
        error = sys.exc_info()[1]
        peer = ":".join(str(part) for part in client_address) if isinstance(client_address, tuple) else "?"
        if isinstance(error, CLIENT_GONE):
            log.debug("HTTP client %s went away (%s)", peer, type(error).__name__)
        else:
            log.exception("HTTP request from %s failed", peer)

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

    ``port=0`` picks a free port; ``url`` is the endpoint URL for either push client. Calls must be signed with
    ``signing_key``. Usable as a context manager.
    """

    def __init__(
        self,
        sink: ConnectionSink,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signing_key: SigningKey = TEST_SIGNING_KEY,
    ) -> None:
        self.sink = sink
        self.signing_key = signing_key
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
        self._httpd = ConnectionsHTTPServer((self._host, self._port), self.sink, signing_key=self.signing_key)
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
