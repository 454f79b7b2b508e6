"""Deliver frames through API Gateway's ``@connections`` management API.

A broadcast works on a snapshot of connection ids and posts to all of them at
once on a bounded thread pool (one HTTPS round trip each is the cost to hide).
A dead connection is normal flow: ``GoneException`` (410) unregisters that one
connection and the rest go on. Throttling and 5xx answers are retried with
exponential backoff and jitter, a bounded number of times (botocore's "standard"
retry mode for the boto3 client; the same policy in the signed client, which is
the default: ``PUSH_CLIENT`` picks one); whatever still fails is reported, never
raised, because the message it carries is already stored. A fan-out also has a deadline: pushes still
running when it passes (a hanging endpoint) are reported as failed and left to
end on their own per-request timeouts, so no send stalls past it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

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


class PushFailed(Exception):
    """A push that still failed after its bounded retries (or could not be retried)."""

    def __init__(self, connection_id: str, status: int | None) -> None:
        super().__init__(f"push to {connection_id} failed with {status or 'a connection error'}")
        self.status = status


class SignedConnectionsClient:
    """``@connections`` over keep-alive HTTP connections, each request signed with SigV4.

    The same requests boto3's ``apigatewaymanagementapi`` client sends (``POST``/``DELETE
    /{stage}/@connections/{id}``, SigV4 for ``execute-api``, credentials from botocore's usual chain,
    refreshed as botocore refreshes them), for a fraction of the CPU: boto3 runs its whole request
    pipeline per call (validation, serialisation, event hooks, endpoint rules, parsing), about 2 ms of
    GIL-bound time, so a 1,000-connection fan-out was CPU-bound however many threads posted. Here a
    post is one HMAC chain over a cached signing key and one ``http.client`` round trip on the
    calling thread's own connection. Retries mirror botocore's standard mode: 429, 5xx and
    connection errors are retried with exponential backoff and full jitter, ``max_attempts``
    attempts in all; 410 raises ``GoneError`` at once.
    """

    _BACKOFF_BASE_S = 0.05
    _BACKOFF_CAP_S = 1.0
    _SERVICE = "execute-api"

    def __init__(
        self,
        endpoint_url: str,
        *,
        region: str,
        concurrency: int,
        timeout_s: float,
        max_attempts: int = 3,
        credentials: Any = None,
    ) -> None:
        """``credentials`` is anything with ``get_frozen_credentials()`` (botocore's chain when omitted)."""
        self._credentials = credentials if credentials is not None else default_credentials()
        self._region = region
        url = urlsplit(endpoint_url.rstrip("/"))
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._host_header = url.netloc
        self._base_path = url.path
        self._timeout_s = timeout_s
        self._max_attempts = max(1, max_attempts)
        self._local = threading.local()
        self._key_lock = threading.Lock()
        self._signing_key: tuple[str, str, bytes] = ("", "", b"")

    def post(self, connection_id: str, data: bytes) -> None:
        self._call("POST", connection_id, data)

    def close(self, connection_id: str) -> None:
        self._call("DELETE", connection_id, b"")

    # --- SigV4 --------------------------------------------------------------------------

    def _key(self, day: str, secret: str) -> bytes:
        cached_day, cached_secret, key = self._signing_key
        if cached_day == day and cached_secret == secret:
            return key
        key = _hmac(("AWS4" + secret).encode(), day)
        for part in (self._region, self._SERVICE, "aws4_request"):
            key = _hmac(key, part)
        with self._key_lock:
            self._signing_key = (day, secret, key)
        return key

    def signed_headers(self, method: str, path: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """SigV4 headers for a request (what botocore's ``SigV4Auth`` produces for it)."""
        creds = self._credentials.get_frozen_credentials()
        moment = now or datetime.now(UTC)
        amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers = {"host": self._host_header, "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                quote(path, safe="/~"),
                "",
                "".join(f"{name}:{headers[name]}\n" for name in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{day}/{self._region}/{self._SERVICE}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(day, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers

    # --- HTTP -----------------------------------------------------------------------------
    # A minimal HTTP/1.1 client: one keep-alive socket per posting thread, each request written
    # with one send and its (small) answer read with, usually, one recv. http.client costs about
    # three times the CPU per request (two sends, email-package header parsing), which is what a
    # 1,000-push fan-out is bound by.

    def _socket(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.create_connection((self._host, self._port or (443 if self._https else 80)), self._timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            self._local.sock = sock
        return sock

    def _drop_socket(self) -> None:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _send(self, method: str, path: str, body: bytes) -> int | None:
        """One attempt: the status, or None when the connection failed (and was dropped)."""
        headers = self.signed_headers(method, path, body)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"{method} {path} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body
        try:
            sock = self._socket()
            sock.sendall(request)
            status, keep_alive = _read_response(sock)
        except (OSError, ValueError):
            self._drop_socket()
            return None
        if not keep_alive:
            self._drop_socket()
        return status

    def _call(self, method: str, connection_id: str, body: bytes) -> None:
        path = f"{self._base_path}/@connections/{quote(connection_id, safe='~')}"
        status: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            status = self._send(method, path, body)
            if status is not None and status < 300:
                return
            if status == 410:
                raise GoneError(connection_id)
            if (status is not None and status != 429 and status < 500) or attempt == self._max_attempts:
                break
            time.sleep(random.uniform(0, min(self._BACKOFF_CAP_S, self._BACKOFF_BASE_S * 2**attempt)))
        raise PushFailed(connection_id, status)


@dataclass(frozen=True)
class StaticCredentials:
    """Credentials read once, as botocore's environment provider reads them (a Lambda's role keys)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


def default_credentials() -> Any:
    """The Lambda runtime's keys from the environment without importing botocore (~300 ms of a cold
    start); anywhere else botocore's full chain (profiles, container and instance roles, refresh)."""
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return StaticCredentials(access_key, secret_key, os.environ.get("AWS_SESSION_TOKEN") or None)
    import botocore.session

    return botocore.session.get_session().get_credentials()


def _read_response(sock: socket.socket) -> tuple[int, bool]:
    """(status, keep-alive) of one HTTP/1.1 response, its body read and discarded."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    keep_alive = fields.get("connection") != "close"
    if "chunked" in fields.get("transfer-encoding", ""):
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside a chunked body")
            body += chunk
    elif "content-length" in fields:
        missing = int(fields["content-length"]) - len(body)
        while missing > 0:
            chunk = sock.recv(min(missing, 65536))
            if not chunk:
                raise ConnectionError("connection closed inside the body")
            missing -= len(chunk)
    elif status not in (204, 304):
        keep_alive = False  # the body runs to the end of the connection
    return status, keep_alive


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


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
        """Deliver every push by the deadline; never raises for a single connection's failure.

        Every push runs on the pool, single ones too, so a hanging endpoint cannot hold the
        caller. Pushes to one connection go out one after another in the order given (an echo
        before the notice about it); different connections are served concurrently.
        """
        if not pushes:
            return PushReport()
        deadline_s = self._deadline_s
        groups: dict[str, list[Push]] = {}
        for push in pushes:
            groups.setdefault(push.connection_id, []).append(push)
        futures: list[tuple[list[Push], Future[list[tuple[str, str]]]]] = [
            (group, self._executor.submit(self._deliver_in_order, group)) for group in groups.values()
        ]
        wait([future for _, future in futures], timeout=deadline_s)
        report = PushReport()
        abandoned = 0
        for group, future in futures:
            if future.done():
                for connection_id, outcome in future.result():
                    getattr(report, outcome).append(connection_id)
            else:
                future.cancel()  # not started yet: never will; running: ends on its own timeouts
                report.failed.extend(push.connection_id for push in group)
                abandoned += len(group)
        if abandoned:
            log.warning("push deadline of %ss passed; %d push(es) abandoned", deadline_s, abandoned)
        return report

    def _deliver_in_order(self, group: list[Push]) -> list[tuple[str, str]]:
        outcomes: list[tuple[str, str]] = []
        for push in group:
            outcomes.append(self._deliver(push))
            if outcomes[-1][1] == "gone":  # the rest would only meet the same 410
                outcomes += [(later.connection_id, "gone") for later in group[len(outcomes) :]]
                break
        return outcomes

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
