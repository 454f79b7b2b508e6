"""The lean @connections client: it signs exactly as botocore signs, speaks the contract of push.py, and reads
every response framing HTTP/1.1 allows, from a real server on 127.0.0.1 that writes canned raw bytes."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chalicelib.connections_http import PushFailed, SignedConnectionsClient, StaticCredentials
from chalicelib.push import GoneError
from local.connections_api import ConnectionsServer
from local.recording_sink import Behaviour, RecordingSink

ENDPOINT = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
MOMENT = datetime(2026, 11, 28, 10, 33, 11, tzinfo=UTC)

# --- signing ----------------------------------------------------------------------------------


def botocore_headers(credentials: Credentials, method: str, path: str, body: bytes) -> dict[str, str]:
    """What botocore's SigV4Auth.add_auth produces, at a fixed time."""
    request = AWSRequest(method=method, url=ENDPOINT.rsplit("/", 1)[0] + path, data=body)
    auth = SigV4Auth(credentials, "execute-api", "us-east-1")
    request.context["timestamp"] = MOMENT.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)  # type: ignore[attr-defined]  # private: not in the stubs
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    auth._inject_signature_to_request(request, signature)  # type: ignore[attr-defined]
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(
    ("method", "connection_path", "body"),
    [("POST", "/prod/@connections/abc%3D", b'{"type":"new-message"}'), ("DELETE", "/prod/@connections/x~y", b"")],
)
def test_signature_matches_botocore(token: str | None, method: str, connection_path: str, body: bytes) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    client = SignedConnectionsClient(ENDPOINT, region="us-east-1", concurrency=1, timeout_s=1, credentials=credentials)
    ours = client.signed_headers(method, connection_path, body, MOMENT)
    expected = botocore_headers(credentials, method, connection_path, body)
    assert ours["authorization"] == expected["authorization"]
    assert ours["x-amz-date"] == expected["x-amz-date"]
    assert ours.get("x-amz-security-token") == expected.get("x-amz-security-token")


# --- the @connections contract, against the local API ---------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[ConnectionsServer, RecordingSink]]:
    sink = RecordingSink()
    with ConnectionsServer(sink) as running:
        yield running, sink


def client_for(url: str, *, timeout_s: float = 2, max_attempts: int = 3) -> SignedConnectionsClient:
    return SignedConnectionsClient(
        url + "/stage",
        region="us-east-1",
        concurrency=2,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        credentials=Credentials("local", "local"),
    )


def test_posts_deletes_and_gone(server: tuple[ConnectionsServer, RecordingSink]) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-1=")
    client.post("conn-1=", b'{"n":1}')
    client.post("conn-1=", b'{"n":2}')  # the same keep-alive socket again
    assert sink.json_frames("conn-1=") == [{"n": 1}, {"n": 2}]
    client.close("conn-1=")
    assert sink.deleted == ["conn-1="]
    with pytest.raises(GoneError):
        client.post("conn-1=", b"{}")


@pytest.mark.parametrize(("status", "times", "delivered"), [(429, 2, True), (500, 2, True), (503, None, False)])
def test_throttling_and_faults_are_retried_three_times(
    server: tuple[ConnectionsServer, RecordingSink], status: int, times: int | None, delivered: bool
) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-2=")
    sink.inject(Behaviour(status=status, times=times), "conn-2=")
    if delivered:
        client.post("conn-2=", b"{}")
    else:
        with pytest.raises(PushFailed):
            client.post("conn-2=", b"{}")
    assert sink.attempts("conn-2=") == 3
    assert len(sink.frames("conn-2=")) == (1 if delivered else 0)


def test_a_client_error_is_not_retried(server: tuple[ConnectionsServer, RecordingSink]) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-3=")
    sink.inject(Behaviour(status=400), "conn-3=")
    with pytest.raises(PushFailed):
        client.post("conn-3=", b"{}")
    assert sink.attempts("conn-3=") == 1


# --- response framing, against canned raw responses -------------------------------------------------

After = Literal["keep", "close", "reset", "hang", "trickle"]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Reply:
    """One canned response: each piece is its own TCP write, 20 ms apart; then ``after`` happens to the socket.

    ``reset`` aborts the connection (SO_LINGER 0, so the peer gets an RST), ``hang`` leaves it open and
    silent, ``trickle`` sends a byte every 50 ms until the client gives up.
    """

    pieces: list[bytes]
    after: After = "keep"


@dataclass
class CannedServer:
    """Answers each request, on any connection, with the next of ``replies``; closes when none is left."""

    replies: list[Reply]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, request_line: bytes) -> Reply | None:
        with self.lock:
            self.requests.append(request_line)
            return self.replies.pop(0) if self.replies else None

    def serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.connections += 1
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            length = int(fields.get(b"content-length", b"0"))
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            reply = self.next_reply(head.split(b"\r\n")[0])
            if reply is None:
                return
            for i, piece in enumerate(reply.pieces):
                if i:
                    time.sleep(0.02)
                sock.sendall(piece)
            if reply.after == "close":
                return
            if reply.after == "reset":
                time.sleep(0.02)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                return
            if reply.after == "hang":
                self.stop.wait(10)
                return
            if reply.after == "trickle":
                while not self.stop.wait(0.05):
                    sock.sendall(b"x")


@pytest.fixture
def canned() -> Iterator[tuple[CannedServer, str]]:
    state = CannedServer([])

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):  # the client dropped the socket, as after a bad response
                state.serve(self.request)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as tcp:
        tcp.daemon_threads = True
        # A short poll: shutdown() waits up to one poll interval, and this server is started once per case.
        thread = threading.Thread(target=tcp.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield state, f"http://127.0.0.1:{tcp.server_address[1]}"
        finally:
            state.stop.set()
            tcp.shutdown()
            thread.join()


def canned_client(url: str, *, timeout_s: float = 1, max_attempts: int = 3) -> SignedConnectionsClient:
    return SignedConnectionsClient(
        url + "/stage",
        region="us-east-1",
        concurrency=1,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        credentials=StaticCredentials("local", "local"),
    )


def test_a_keep_alive_socket_carries_the_next_request(canned: tuple[CannedServer, str]) -> None:
    state, url = canned
    state.replies = [Reply([OK]), Reply([OK])]
    client = canned_client(url)
    client.post("conn=", b'{"n":1}')
    client.close("conn=")
    assert state.requests == [
        b"POST /stage/@connections/conn%3D HTTP/1.1",
        b"DELETE /stage/@connections/conn%3D HTTP/1.1",
    ]
    assert state.connections == 1


def test_a_chunked_body_in_several_writes_with_extensions_and_trailers(canned: tuple[CannedServer, str]) -> None:
    state, url = canned
    chunked = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b'5;name="a;b"\r\nhel',
        b"lo\r\n5\r\n0\r\n\r\n",  # the data ends as a last chunk would: only the sizes tell them apart
        b"\r\n1A;x=1;y\r\nabcdefghijklm",
        b"nopqrstuvwxyz\r\n0;final=yes\r\n",
        b"x-amzn-trace: abc\r\nx-checksum: 1\r\n",
        b"\r\n",
    ]
    state.replies = [Reply(chunked), Reply([OK])]
    client = canned_client(url, max_attempts=1)
    client.post("conn=", b"{}")
    client.post("conn=", b"{}")
    assert state.connections == 1


def test_a_content_length_body_split_across_writes(canned: tuple[CannedServer, str]) -> None:
    state, url = canned
    body = b'{"message":"Internal server error, try again"}'
    split = [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: %d\r\n\r\n%s" % (len(body), body[:9]), body[9:20], body[20:]]
    state.replies = [Reply(split), Reply([OK])]
    client = canned_client(url, max_attempts=1)
    client.post("conn=", b"{}")
    client.post("conn=", b"{}")
    assert state.connections == 1


def test_a_body_delimited_by_close_is_read_to_the_end_and_the_socket_not_reused(
    canned: tuple[CannedServer, str],
) -> None:
    state, url = canned
    state.replies = [
        Reply([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno ", b"length"], "close"),
        Reply([OK]),
    ]
    client = canned_client(url, max_attempts=1)
    client.post("conn=", b"{}")
    client.post("conn=", b"{}")
    assert state.connections == 2


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n"],
    ids=["204", "304-with-length"],
)
def test_no_body_follows_a_204_or_304(canned: tuple[CannedServer, str], head: bytes) -> None:
    state, url = canned
    state.replies = [Reply([head]), Reply([OK])]
    client = canned_client(url, max_attempts=1)
    if b" 204 " in head:
        client.close("conn=")
    else:
        with pytest.raises(PushFailed) as failed:  # not a success, and not worth a retry
            client.close("conn=")
        assert failed.value.status == 304
    client.post("conn=", b"{}")
    assert state.connections == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nunasked bytes",
    ],
    ids=["connection-close", "http-1.0", "both-framings", "bytes-past-the-end"],
)
def test_a_socket_the_response_does_not_vouch_for_is_not_reused(canned: tuple[CannedServer, str], head: bytes) -> None:
    state, url = canned
    state.replies = [Reply([head]), Reply([OK])]
    client = canned_client(url, max_attempts=1)
    client.post("conn=", b"{}")
    client.post("conn=", b"{}")
    assert state.connections == 2


def test_an_interim_response_is_skipped(canned: tuple[CannedServer, str]) -> None:
    state, url = canned
    state.replies = [Reply([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 410 Gone\r\nContent-Length: 2\r\n\r\n{}"])]
    with pytest.raises(GoneError):
        canned_client(url, max_attempts=1).post("conn=", b"{}")


@pytest.mark.parametrize(
    ("failing", "after"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial', "reset"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial', "close"),
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"part', "close"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", "close"),  # no end of trailers
        (b"HTTP/1.1 200 O", "reset"),
        (b"", "close"),  # a keep-alive socket the server closed as the request arrived
        (b"SSH-2.0-OpenSSH\r\n\r\n", "keep"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "keep"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "keep"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n", "keep"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", "keep"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "keep"),
    ],
    ids=[
        "reset-mid-body",
        "closed-mid-body",
        "closed-mid-chunk",
        "closed-in-trailers",
        "reset-mid-head",
        "closed-before-any-byte",
        "not-http",
        "conflicting-lengths",
        "negative-length",
        "bad-chunk-size",
        "chunk-longer-than-its-size",
        "unasked-upgrade",
    ],
)
def test_a_broken_response_is_a_connection_failure_and_retried(
    canned: tuple[CannedServer, str], failing: bytes, after: After
) -> None:
    state, url = canned
    state.replies = [Reply([failing] if failing else [], after), Reply([OK])]
    started = time.monotonic()
    canned_client(url).post("conn=", b"{}")
    assert len(state.requests) == 2 and state.connections == 2
    assert time.monotonic() - started < 1  # none of these waited for a timeout


def test_a_connection_that_keeps_failing_raises_push_failed(canned: tuple[CannedServer, str]) -> None:
    state, url = canned
    state.replies = [Reply([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{"], "reset") for _ in range(3)]
    with pytest.raises(PushFailed) as failed:
        canned_client(url).post("conn=", b"{}")
    assert failed.value.status is None
    assert len(state.requests) == 3


@pytest.mark.parametrize("after", ["hang", "trickle"])
def test_a_slow_server_holds_a_push_no_longer_than_its_timeout(canned: tuple[CannedServer, str], after: After) -> None:
    state, url = canned
    state.replies = [Reply([b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"], after)]
    started = time.monotonic()
    with pytest.raises(PushFailed):
        canned_client(url, timeout_s=0.5, max_attempts=1).post("conn=", b"{}")
    assert 0.4 < time.monotonic() - started < 1.0
