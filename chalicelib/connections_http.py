"""``@connections`` over HTTP/1.1 without boto3: a SigV4 signer and a minimal keep-alive client.

The requests are the ones boto3's ``apigatewaymanagementapi`` client sends (``POST``/``DELETE
/{stage}/@connections/{id}``, signed with SigV4 for ``execute-api``), for a fraction of the CPU. boto3 runs its
whole request pipeline per call (validation, serialisation, event hooks, endpoint rules, parsing), about 2 ms
of GIL-bound time, so a 1,000-connection fan-out was CPU-bound however many threads posted; ``http.client``
still costs about three times what this does (two sends per request, email-package header parsing). Here a
post is one HMAC chain over a cached signing key, one ``send`` on the calling thread's own keep-alive socket
and, usually, one ``recv``.

The response reader is small but not a guess: it frames the body as RFC 9112 section 6.3 says (no body for
1xx, 204 and 304; chunked transfer coding with its extensions and trailers; ``Content-Length``; otherwise up to
the close of the connection) and reuses the socket only when the response ended exactly where its framing
says and the server did not ask to close. A response cut short, malformed or slower than the timeout in
total is a connection failure: the socket is dropped and the attempt counts toward the retry policy.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import random
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import quote, urlsplit

from chalicelib.push import GoneError


class PushFailed(Exception):
    """A push that still failed after its bounded retries (or could not be retried)."""

    def __init__(self, connection_id: str, status: int | None) -> None:
        super().__init__(f"push to {connection_id} failed with {status or 'a connection error'}")
        self.status = status


# --- credentials ----------------------------------------------------------------------------


class FrozenCredentials(Protocol):
    """One consistent set of keys (botocore's ``ReadOnlyCredentials`` has this shape)."""

    @property
    def access_key(self) -> str | None: ...

    @property
    def secret_key(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...


class CredentialSource(Protocol):
    """Where keys come from; botocore's refreshing ``Credentials`` is one."""

    def get_frozen_credentials(self) -> FrozenCredentials: ...


@dataclass(frozen=True)
class StaticCredentials:
    """Credentials read once, as botocore's environment provider reads them (a Lambda's role keys)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


def default_credentials() -> CredentialSource:
    """The Lambda runtime's keys from the environment without importing botocore (~300 ms of a cold
    start); anywhere else botocore's full chain (profiles, container and instance roles, refresh)."""
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return StaticCredentials(access_key, secret_key, os.environ.get("AWS_SESSION_TOKEN") or None)
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise RuntimeError("no AWS credentials to sign pushes with (botocore's chain found none)")
    credentials: CredentialSource = found
    return credentials


# --- SigV4 ------------------------------------------------------------------------------------


class SigV4Signer:
    """Signs requests to one host as botocore's ``SigV4Auth`` does; the signing key is cached per day."""

    def __init__(self, credentials: CredentialSource, *, host: str, region: str, service: str) -> None:
        self._credentials = credentials
        self._host = host
        self._region = region
        self._service = service
        self._lock = threading.Lock()
        self._signing_key: tuple[str, str, bytes] = ("", "", b"")
        self._amz_date: tuple[int, str] = (-1, "")

    def _key(self, day: str, secret: str) -> bytes:
        cached_day, cached_secret, key = self._signing_key
        if cached_day == day and cached_secret == secret:
            return key
        key = _hmac(("AWS4" + secret).encode(), day)
        for part in (self._region, self._service, "aws4_request"):
            key = _hmac(key, part)
        with self._lock:
            self._signing_key = (day, secret, key)
        return key

    def headers(self, method: str, path: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """``host``, ``x-amz-date``, the session token if any, and ``authorization`` for one request."""
        creds = self._credentials.get_frozen_credentials()
        if not creds.access_key or not creds.secret_key:
            raise RuntimeError("credentials without an access key or a secret key")
        amz_date = now.strftime("%Y%m%dT%H%M%SZ") if now is not None else self._date_now()
        day = amz_date[:8]
        headers = {"host": self._host, "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                canonical_path(path),
                "",
                "".join(f"{name}:{headers[name]}\n" for name in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(day, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers

    def _date_now(self) -> str:
        """``x-amz-date`` now; it has a resolution of a second, so each second's string is formatted once."""
        second = int(time.time())
        cached_second, text = self._amz_date
        if cached_second != second:
            text = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._amz_date = (second, text)
        return text


# Characters that quote(path, safe="/~") leaves alone, plus "%" and "@" (which it encodes as %25 and %40).
_PLAIN_PATH = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~/%@")


def canonical_path(path: str) -> str:
    """SigV4's canonical URI for a non-S3 service: the request's (already encoded) path encoded once more.

    The client's own paths hold only unreserved characters, ``/``, ``@`` and percent escapes, for which that is
    two replacements; ``quote`` (a per-character loop, a third of the signing time) handles anything else.
    """
    if not path.translate(_PLAIN_PATH):
        return path.replace("%", "%25").replace("@", "%40")
    return quote(path, safe="/~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


# --- the client ---------------------------------------------------------------------------------


class SignedConnectionsClient:
    """``@connections`` over keep-alive HTTP connections, each request signed with SigV4.

    One socket per posting thread, opened on first use and kept while responses allow. Retries mirror
    botocore's standard mode: 429, 5xx and connection failures are retried with exponential backoff and
    full jitter, ``max_attempts`` attempts in all; 410 raises ``GoneError`` at once; anything else that is
    not a success raises ``PushFailed``.
    """

    _BACKOFF_BASE_S = 0.05
    _BACKOFF_CAP_S = 1.0

    def __init__(
        self,
        endpoint_url: str,
        *,
        region: str,
        concurrency: int,
        timeout_s: float,
        max_attempts: int = 3,
        credentials: CredentialSource | None = None,
    ) -> None:
        """``concurrency`` is accepted for the ``Boto3ConnectionsClient`` signature (sockets are per thread).

        ``credentials`` defaults to :func:`default_credentials`.
        """
        url = urlsplit(endpoint_url.rstrip("/"))
        self._https = url.scheme == "https"
        self._address = (url.hostname or "", url.port or (443 if self._https else 80))
        self._base_path = url.path
        self._signer = SigV4Signer(
            credentials if credentials is not None else default_credentials(),
            host=url.netloc,
            region=region,
            service="execute-api",
        )
        self._timeout_s = timeout_s
        self._max_attempts = max(1, max_attempts)
        self._local = threading.local()
        # Every open socket, whichever thread holds it, so that dropping the client closes them all.
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        weakref.finalize(self, _close_all, self._open, self._open_lock)

    def post(self, connection_id: str, data: bytes) -> None:
        self._call("POST", connection_id, data)

    def close(self, connection_id: str) -> None:
        self._call("DELETE", connection_id, b"")

    def signed_headers(self, method: str, path: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """SigV4 headers for a request (what botocore's ``SigV4Auth`` produces for it)."""
        return self._signer.headers(method, path, body, now)

    def _call(self, method: str, connection_id: str, body: bytes) -> None:
        path = f"{self._base_path}/@connections/{quote(connection_id, safe='~')}"
        status: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            status = self._attempt(method, path, body)
            if status is not None and status < 300:
                return
            if status == 410:
                raise GoneError(connection_id)
            if (status is not None and status != 429 and status < 500) or attempt == self._max_attempts:
                break
            time.sleep(random.uniform(0, min(self._BACKOFF_CAP_S, self._BACKOFF_BASE_S * 2**attempt)))
        raise PushFailed(connection_id, status)

    def _attempt(self, method: str, path: str, body: bytes) -> int | None:
        """One request: its status, or None when the connection failed (the socket is then dropped)."""
        head = "".join(f"{name}: {value}\r\n" for name, value in self._signer.headers(method, path, body).items())
        request = f"{method} {path} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body
        try:
            sock = self._socket()
            sock.sendall(request)
            status, reusable = read_response(sock, self._timeout_s)
        except (OSError, ValueError):
            self._drop_socket()
            return None
        if not reusable:
            self._drop_socket()
        return status

    def _socket(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.create_connection(self._address, self._timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._address[0])
            self._local.sock = sock
            with self._open_lock:
                self._open.add(sock)
        return sock

    def _drop_socket(self) -> None:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with self._open_lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()


def _close_all(sockets: set[socket.socket], lock: threading.Lock) -> None:
    with lock:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        sockets.clear()


# --- reading a response ---------------------------------------------------------------------------

_RECV_BYTES = 65536
_MAX_HEAD_BYTES = 65536  # status line and fields, or all trailers
_MAX_CHUNK_LINE_BYTES = 4096  # a chunk size and its extensions
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class _Reader:
    """Bytes of one response, received as the parser needs them.

    The first ``recv`` waits the socket's own timeout; every further one only what is left of the
    response's total ``timeout_s``, so a server that trickles bytes cannot hold a thread for longer.
    """

    __slots__ = ("_buffer", "_deadline", "_pos", "_sock", "_timeout_s", "recvs")

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._buffer = b""
        self._pos = 0
        self.recvs = 0

    def _recv(self) -> bytes:
        if self.recvs:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response within {self._timeout_s}s")
            self._sock.settimeout(remaining)
        self.recvs += 1
        return self._sock.recv(_RECV_BYTES)

    def _fill(self) -> None:
        data = self._recv()
        if not data:
            raise ConnectionError("connection closed inside the response")
        self._buffer = self._buffer[self._pos :] + data if self._pos else self._buffer + data
        self._pos = 0

    def until(self, delimiter: bytes, limit: int) -> bytes:
        """The bytes before the next ``delimiter`` (consumed with it); ValueError past ``limit`` bytes."""
        start = self._pos
        while True:
            end = self._buffer.find(delimiter, start)
            if end >= 0:
                found = self._buffer[self._pos : end]
                self._pos = end + len(delimiter)
                return found
            unread = len(self._buffer) - self._pos
            if unread > limit:
                raise ValueError("a response line or head is too long")
            self._fill()  # keeps the unread bytes, from self._pos on
            start = self._pos + max(0, unread - len(delimiter) + 1)

    def skip(self, count: int) -> None:
        """Consume ``count`` bytes."""
        available = len(self._buffer) - self._pos
        while available < count:
            count -= available
            self._buffer, self._pos = b"", 0
            self._fill()
            available = len(self._buffer)
        self._pos += count

    def skip_to_eof(self) -> None:
        """Consume everything up to the close of the connection."""
        self._buffer, self._pos = b"", 0
        while self._recv():
            pass

    @property
    def leftover(self) -> bool:
        return self._pos < len(self._buffer)


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int, bool]:
    """Read one response to a request other than ``HEAD``: (status, whether the socket can carry another).

    The body is read and discarded. Raises ``OSError`` (``ConnectionError``, ``TimeoutError``) when the
    connection fails, closes early or is too slow, ``ValueError`` when the response is not HTTP/1.x.
    """
    reader = _Reader(sock, timeout_s)
    try:
        status, reusable, framing = _head(reader.until(b"\r\n\r\n", _MAX_HEAD_BYTES))
        while 100 <= status < 200:  # interim responses (100 Continue, 103 Early Hints) precede the real one
            if status == 101:
                raise ValueError("the server switched protocols unasked")
            status, reusable, framing = _head(reader.until(b"\r\n\r\n", _MAX_HEAD_BYTES))
        if status in (204, 304):
            pass
        elif isinstance(framing, int):
            reader.skip(framing)
        elif framing == "chunked":
            _skip_chunked(reader)
        else:
            reader.skip_to_eof()
            reusable = False
        # Bytes past the end of this response belong to nothing we asked for.
        return status, reusable and not reader.leftover
    finally:
        if reader.recvs > 1:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout_s)


def _head(head: bytes) -> tuple[int, bool, int | str]:
    """(status, keep-alive, framing) of a status line and its fields.

    Framing is ``"chunked"``, ``"to-close"`` or a content length. Only the three fields that frame the
    body or end the connection are looked at, found in the lowercased head (a few ``find`` calls instead of
    parsing every line: this runs once per push).
    """
    status_line, _, _ = head.partition(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise ValueError("not an HTTP/1.x status line")
    fields = head.lower()
    length: int | None = None
    content_length = _field(fields, b"\r\ncontent-length:")
    if content_length is not None:
        for item in content_length.split(b","):  # a repeated field or a list: every value must agree
            item = item.strip()
            if not item.isdigit() or (length is not None and int(item) != length):
                raise ValueError("an invalid or conflicting Content-Length")
            length = int(item)
    connection = _field(fields, b"\r\nconnection:")
    tokens = {token.strip() for token in connection.split(b",")} if connection else set()
    reusable = b"keep-alive" in tokens if version == b"HTTP/1.0" else b"close" not in tokens
    transfer_encoding = _field(fields, b"\r\ntransfer-encoding:")
    framing: int | str
    if transfer_encoding is not None:
        codings = [coding.strip() for coding in transfer_encoding.split(b",") if coding.strip()]
        framing = "chunked" if codings and codings[-1] == b"chunked" else "to-close"
        if length is not None:
            reusable = False  # both framings at once: answer this one, trust the connection no further
    elif length is not None:
        framing = length
    else:
        framing = "to-close"
    return int(code), reusable, framing


def _field(fields: bytes, prefix: bytes) -> bytes | None:
    """The value of every line starting with ``prefix`` (CRLF, name, colon), joined by commas; None if none."""
    start = fields.find(prefix)
    if start < 0:
        return None
    values = []
    while start >= 0:
        start += len(prefix)
        end = fields.find(b"\r\n", start)
        if end < 0:
            end = len(fields)
        values.append(fields[start:end])
        start = fields.find(prefix, end)
    return b",".join(values)


def _skip_chunked(reader: _Reader) -> None:
    """Consume a chunked body: ``size[;extensions]`` CRLF, data, CRLF, ..., ``0``, trailer fields, CRLF."""
    while True:
        size = reader.until(b"\r\n", _MAX_CHUNK_LINE_BYTES).partition(b";")[0].strip(b" \t")
        if not size or len(size) > 16 or size.strip(_HEX_DIGITS):
            raise ValueError("an invalid chunk size")
        if size.strip(b"0") == b"":
            break
        reader.skip(int(size, 16))
        if reader.until(b"\r\n", 1):  # 1: a lone CR may be all that arrived so far
            raise ValueError("chunk data longer than its size")
    trailers = 0
    while line := reader.until(b"\r\n", _MAX_HEAD_BYTES):
        trailers += len(line) + 2
        if trailers > _MAX_HEAD_BYTES:
            raise ValueError("trailer fields are too long")
