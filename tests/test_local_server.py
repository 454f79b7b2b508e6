"""The local server (``make dev``), run as a user runs it: a subprocess driven by real clients.

REST over plain HTTP, sockets with ``websockets``, pushes with boto3's ``apigatewaymanagementapi`` client. Most
tests share one server that uses the session's PostgreSQL and Redis; the restart test runs embedded ones.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import jwt
import psutil
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from chalicelib.registry import RedisRegistry
from local.connections_api import TEST_SIGNING_KEY, SigningKey
from local.rest_gateway import gateway_claims
from local.websocket_gateway import MAX_MESSAGE_BYTES
from tests.conftest import new_user
from tests.local_server import (
    CLIENT_ID,
    ROOT,
    LocalServer,
    is_running,
    server_env,
    session_server,
    sigv4_headers,
    start_server,
)


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A server on the session's PostgreSQL and Redis, with its own data dir and registry prefix."""
    with session_server(tmp_path_factory.mktemp("local-server") / "data") as running:
        yield running


@pytest.fixture
def connections_of(server: LocalServer) -> Iterator[Callable[[str], list[str]]]:
    """The registry's live connections of a user, read from the server's Redis."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    registry = RedisRegistry(client, ttl_seconds=660, prefix=server.prefix)
    yield lambda user: registry.connections_for([user])[user]
    client.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def frames(ws: ClientConnection, *, first_within: float = 5.0, quiet_for: float = 0.3) -> list[dict[str, Any]]:
    """Every frame that arrives, waiting up to ``first_within`` for the first and stopping after ``quiet_for``
    seconds without one (so a duplicate would show up)."""
    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(json.loads(ws.recv(timeout=quiet_for if received else first_within)))
        except TimeoutError:
            return received


# -- the local identity provider -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "username"),
    [
        ('{"username": "alice"}', "alice"),
        ('{"username": "' + "a" * 128 + '"}', "a" * 128),
        ('{"username": "Zoë Ünïcode"}', "Zoë Ünïcode"),
        ('{"username": "' + "a" * 129 + '"}', None),
        ('{"username": ""}', None),
        ('{"username": "   "}', None),
        ('{"username": "a\\u0007b"}', None),
        ('{"username": "a\\u007fb"}', None),
        ('{"username": "a\\nb"}', None),
        ('{"username": 42}', None),
        ('{"username": null}', None),
        ("{}", None),
        ('["alice"]', None),
        ("not json", None),
        ("", None),
    ],
)
def test_local_token_is_minted_for_a_valid_username_only(server: LocalServer, body: str, username: str | None) -> None:
    status, _headers, raw = server.request("POST", "/_local/token", body)
    payload = json.loads(raw)
    if username is None:
        assert status == 400, payload
        assert set(payload) == {"Code", "Message"} and payload["Code"] == "BadRequest"
        return
    assert status == 200, payload
    claims = jwt.decode(payload["idToken"], options={"verify_signature": False})
    assert claims["cognito:username"] == username
    assert claims["token_use"] == "id"
    assert claims["aud"] == CLIENT_ID
    assert claims["iss"] == f"{server.rest_url}/_local"
    assert jwt.get_unverified_header(payload["idToken"])["alg"] == "RS256"


def test_tokens_verify_against_the_published_jwks_and_config_names_both_urls(server: LocalServer) -> None:
    token = server.token("alice")
    key = jwt.PyJWKClient(f"{server.rest_url}/_local/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=CLIENT_ID, issuer=f"{server.rest_url}/_local")
    assert claims["cognito:username"] == "alice"

    status, config = server.call("GET", "/_local/config", None)
    assert status == 200
    assert config["websocketUrl"] == server.ws_url
    assert config["restUrl"] == server.rest_url


def test_claims_reach_handlers_shaped_as_api_gateway_renders_them() -> None:
    claims = {"cognito:username": "alice", "exp": 0, "auth_time": 5, "email_verified": True, "aud": "c"}
    assert gateway_claims(claims) == {
        "cognito:username": "alice",
        "exp": "Thu Jan 01 00:00:00 UTC 1970",
        "auth_time": "5",
        "email_verified": "true",
        "aud": "c",
    }


# -- REST ----------------------------------------------------------------------------------------------------


def _forged(server: LocalServer, user: str) -> str:
    """Signed by another key under the server's own ``kid``: only a signature check catches it."""
    kid = server.own_key().kid
    return server.identity(kid=kid).mint_id_token(user)


@pytest.mark.parametrize(
    ("make_header", "status"),
    [
        (lambda s, u: s.token(u), 200),
        (lambda s, u: f"Bearer {s.token(u)}", 200),
        (lambda s, u: None, 401),
        (lambda s, u: "not-a-token", 401),
        (_forged, 401),
        (lambda s, u: s.own_key().mint_id_token(u, ttl_seconds=-60), 401),
        (lambda s, u: s.own_key().mint_id_token(u, aud="another-client"), 401),
        (lambda s, u: s.own_key().mint_id_token(u, token_use="access"), 401),
    ],
    ids=["raw", "bearer", "missing", "garbage", "forged", "expired", "wrong-audience", "access-token"],
)
def test_rest_checks_tokens_like_the_cognito_authorizer(
    server: LocalServer, make_header: Callable[[LocalServer, str], str | None], status: int
) -> None:
    header = make_header(server, new_user("alice"))
    headers = {"Origin": "http://localhost:4200"}
    if header is not None:
        headers["Authorization"] = header
    got, response_headers, raw = server.request("GET", "/conversations", headers=headers)
    assert got == status, raw
    assert response_headers["Access-Control-Allow-Origin"] == "http://localhost:4200"
    if status == 401:
        assert json.loads(raw) == {"Code": "Unauthorized", "Message": "Unauthorized"}
    else:
        assert json.loads(raw) == []


def test_static_web_client_is_served_and_nothing_else(server: LocalServer) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="app.js"' in body
    for name, kind in [("app.js", "text/javascript"), ("api.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, body = server.request("GET", f"/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind), name
        assert body == (ROOT / "local" / "web" / name).read_bytes()
    for path in ["/../app.py", "/%2e%2e/app.py", "/..%2fapp.py", "/local/web/index.html", "//etc/passwd", "/.env"]:
        status, _headers, body = server.request("GET", path)
        assert status in (403, 404), path
        assert b"Chalice" not in body and b"root:" not in body


# -- WebSocket -----------------------------------------------------------------------------------------------


def test_websocket_connects_with_a_good_token_and_refuses_bad_ones(
    server: LocalServer, connections_of: Callable[[str], list[str]]
) -> None:
    alice = new_user("alice")
    for token in ["", "garbage", _forged(server, alice), server.own_key().mint_id_token(alice, ttl_seconds=-60)]:
        with pytest.raises(InvalidStatus) as refused:
            server.socket(token)
        assert refused.value.response.status_code in (401, 403)
    assert connections_of(alice) == []

    with server.socket(server.token(alice)):
        assert eventually(lambda: len(connections_of(alice)) == 1)
        (connection_id,) = connections_of(alice)
        assert re.fullmatch(r"[A-Za-z0-9+/]{15}=", connection_id)


def next_chat_frame(ws: Any) -> Any:
    """The next frame other than ``presence`` (a direct peer's first socket opening pushes one)."""
    while (frame := json.loads(ws.recv(timeout=5)))["type"] == "presence":
        pass
    return frame


def test_every_socket_of_every_participant_gets_each_message_once(server: LocalServer) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    alice_token, bob_token = server.token(alice), server.token(bob)
    conversation_id = server.direct(alice_token, bob)
    sockets = [server.socket(alice_token), server.socket(alice_token), server.socket(bob_token)]
    sockets.append(server.socket(bob_token))
    try:
        for sender, text in [(sockets[0], "hi bob"), (sockets[3], "hi alice")]:
            temp = uuid.uuid4().hex
            frame = {"action": "send-message", "tempMessageId": temp, "conversationId": conversation_id}
            sender.send(json.dumps({**frame, "content": text}))
            firsts = [next_chat_frame(ws) for ws in sockets]
            assert [(f["type"], f["tempMessageId"], f["content"]) for f in firsts] == [("new-message", temp, text)] * 4
            time.sleep(0.3)  # room for a duplicate to arrive
            for ws in sockets:
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0)
    finally:
        for ws in sockets:
            ws.close()

    status, history = server.call("GET", f"/conversations/{conversation_id}/messages?order=asc", alice_token)
    assert status == 200
    assert [(m["senderId"], m["content"]) for m in history] == [(alice, "hi bob"), (bob, "hi alice")]


def test_frames_of_one_socket_are_handled_in_arrival_order(server: LocalServer) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    token = server.token(alice)
    conversation_id = server.direct(token, bob)
    with server.socket(token) as ws:
        temps = [f"t{n}" for n in range(8)]
        for temp in temps:
            frame = {"action": "send-message", "tempMessageId": temp, "conversationId": conversation_id}
            ws.send(json.dumps({**frame, "content": temp}))
        assert [f["tempMessageId"] for f in frames(ws) if f["type"] == "new-message"] == temps


def test_a_frame_that_is_not_json_still_reaches_the_app(server: LocalServer) -> None:
    with server.socket(server.token(new_user("alice"))) as ws:
        ws.send("hello?")
        (reply,) = frames(ws)
        assert reply["type"] == "error" and reply["code"] == "BadRequest"


def test_an_abrupt_drop_runs_disconnect(server: LocalServer, connections_of: Callable[[str], list[str]]) -> None:
    alice = new_user("alice")
    ws = server.socket(server.token(alice))
    assert eventually(lambda: len(connections_of(alice)) == 1)
    ws.socket.shutdown(socket.SHUT_RDWR)  # TCP goes away without a close frame
    assert eventually(lambda: connections_of(alice) == [])
    ws.close()


def test_a_message_over_128_kb_closes_the_socket_with_1009(server: LocalServer) -> None:
    with server.socket(server.token(new_user("alice"))) as ws:
        ws.send("x" * MAX_MESSAGE_BYTES)  # at the limit: delivered (and refused by the app, as it is not JSON)
        assert frames(ws)[0]["type"] == "error"
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_boto3s_client_pushes_reads_and_closes_through_connections(
    server: LocalServer, connections_of: Callable[[str], list[str]]
) -> None:
    alice = new_user("alice")
    key = server.signing_key()
    client = boto3.session.Session().client(
        "apigatewaymanagementapi",
        endpoint_url=server.rest_url,
        region_name=key.region,
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
    )
    with server.socket(server.token(alice)) as ws:
        assert eventually(lambda: len(connections_of(alice)) == 1)
        (connection_id,) = connections_of(alice)

        client.post_to_connection(ConnectionId=connection_id, Data=b'{"type":"hello"}')
        assert ws.recv(timeout=5) == '{"type":"hello"}'
        info = client.get_connection(ConnectionId=connection_id)
        assert info["Identity"]["SourceIp"] == "127.0.0.1"
        assert info["ConnectedAt"].timestamp() <= time.time()

        client.delete_connection(ConnectionId=connection_id)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert eventually(lambda: connections_of(alice) == [])
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=connection_id, Data=b"{}")


def _forge(server: LocalServer, forgery: str, method: str, path: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a ``@connections`` call that API Gateway would refuse, one way or another."""
    key, url = server.signing_key(), server.rest_url + path
    if forgery == "unsigned":
        return body, {}
    if forgery == "garbage":
        now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return body, {"Authorization": "AWS4-HMAC-SHA256 Credential=local, Signature=0", "X-Amz-Date": now}
    if forgery == "signature-only":
        signed = sigv4_headers(key, method, url, body)
        return body, {"Authorization": signed["Authorization"]}  # no X-Amz-Date
    if forgery == "wrong-secret":
        return body, sigv4_headers(SigningKey(key.access_key_id, "not-the-secret"), method, url, body)
    if forgery == "another-key":
        return body, sigv4_headers(SigningKey.generate(), method, url, body)
    if forgery == "the-test-key":
        return body, sigv4_headers(TEST_SIGNING_KEY, method, url, body)
    if forgery == "tampered-body":
        return b'{"type":"forged"}', sigv4_headers(key, method, url, body)
    if forgery == "another-connection":
        return body, sigv4_headers(key, method, server.rest_url + "/@connections/other%3D", body)
    if forgery == "expired":
        return body, sigv4_headers(key, method, url, body, datetime.now(UTC) - timedelta(minutes=20))
    raise AssertionError(forgery)


FORGERIES = [
    "unsigned",
    "garbage",
    "signature-only",
    "wrong-secret",
    "another-key",
    "the-test-key",
    "tampered-body",
    "another-connection",
    "expired",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_connections_refuses_calls_not_signed_with_the_servers_key(
    server: LocalServer, connections_of: Callable[[str], list[str]], forgery: str
) -> None:
    alice = new_user("alice")
    with server.socket(server.token(alice)) as ws:
        assert eventually(lambda: len(connections_of(alice)) == 1)
        (connection_id,) = connections_of(alice)
        path = f"/@connections/{quote(connection_id, safe='')}"
        for method, body in [("POST", b'{"type":"hello"}'), ("DELETE", b""), ("GET", b"")]:
            sent, headers = _forge(server, forgery, method, path, body)
            status, _headers, raw = server.request(method, path, sent, headers)
            assert status == 403, (method, raw)
            assert set(json.loads(raw)) == {"message"}
            if forgery == "unsigned":
                assert json.loads(raw) == {"message": "Missing Authentication Token"}
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # nothing was delivered, and the socket is still open
        assert connections_of(alice) == [connection_id]

        status, _headers, raw = server.signed_request("POST", path, b'{"type":"signed"}')
        assert status == 200, raw
        assert ws.recv(timeout=5) == '{"type":"signed"}'


def test_a_push_from_the_apps_boto3_client_passes_the_signature_check(app_environment: None, tmp_path: Path) -> None:
    env = server_env(
        tmp_path / "data",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        REDIS_KEY_PREFIX=f"chat-local-{uuid.uuid4().hex[:8]}:",
        PUSH_CLIENT="boto3",
    )
    running = start_server(tmp_path / "data", env)
    try:
        alice, bob = new_user("alice"), new_user("bob")
        alice_token, bob_token = running.token(alice), running.token(bob)
        conversation_id = running.direct(alice_token, bob)
        with running.socket(alice_token) as sender, running.socket(bob_token) as receiver:
            frame = {"action": "send-message", "tempMessageId": "t1", "conversationId": conversation_id}
            sender.send(json.dumps({**frame, "content": "through boto3"}))
            assert json.loads(receiver.recv(timeout=5))["content"] == "through boto3"
    finally:
        assert running.stop() == 0, running.output()
    assert "refused" not in running.output()


def test_each_start_signs_with_a_new_key_kept_private(server: LocalServer) -> None:
    key = server.signing_key()
    assert key.access_key_id != TEST_SIGNING_KEY.access_key_id and len(key.secret_access_key) >= 40
    assert (server.data_dir / "aws-credentials").stat().st_mode & 0o777 == 0o600
    assert key.secret_access_key not in server.output()


def _raw_exchange(server: LocalServer, head: bytes, body: Iterable[bytes] = ()) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` on a raw socket while another thread reads the answer; stop sending when the
    server closes. Returns the answer and how many body bytes went out."""
    parts = urlsplit(server.rest_url)
    answer = bytearray()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=20) as sock:

        def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        sent = 0
        try:
            sock.sendall(head)
            for piece in body:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the server closed: what we were sending was refused
        reader.join(timeout=20)
    return bytes(answer), sent


def _parse(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def _request_head(path: str, *fields: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Origin: http://localhost:4200", *fields, "", ""]
    return "\r\n".join(lines).encode()


def test_a_200_mb_chunked_body_is_refused_as_it_streams_without_being_buffered(server: LocalServer) -> None:
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    def chunks(total: int = 200 * 1024 * 1024, size: int = 64 * 1024) -> Iterator[bytes]:
        piece = b"%x\r\n" % size + b"x" * size + b"\r\n"
        for _ in range(total // size):
            yield piece
        yield b"0\r\n\r\n"

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        head = _request_head("/conversation", "Content-Type: application/json", "Transfer-Encoding: chunked")
        answer, sent = _raw_exchange(server, head, chunks())
    finally:
        done.set()
        sampler.join()
    status, headers, body = _parse(answer)
    assert status == 413
    assert body["Code"] == "PayloadTooLarge" and set(body) == {"Code", "Message"}
    assert headers["access-control-allow-origin"] == "http://localhost:4200"
    assert headers["connection"] == "close"
    assert sent < 100 * 1024 * 1024, f"{sent} bytes went out before the server closed"
    assert peak - before < 40 * 1024 * 1024, f"the server's RSS grew by {(peak - before) >> 20} MB"
    assert server.call("GET", "/_local/config", None)[0] == 200  # and it still serves


def test_an_over_long_content_length_is_refused_before_the_body_arrives(server: LocalServer) -> None:
    head = _request_head("/conversation", "Content-Type: application/json", f"Content-Length: {200 * 1024 * 1024}")
    started = time.monotonic()
    answer, _sent = _raw_exchange(server, head)  # no body at all: a server waiting for it would never answer
    status, headers, body = _parse(answer)
    assert (status, body["Code"]) == (413, "PayloadTooLarge")
    assert headers["access-control-allow-origin"] == "http://localhost:4200"
    assert time.monotonic() - started < 5


def test_a_chunked_body_within_the_limit_reaches_its_route(server: LocalServer) -> None:
    parts = urlsplit(server.rest_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        pieces = iter([b'{"user', b'name": "chunky"}'])
        conn.request("POST", "/_local/token", body=pieces, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        assert "idToken" in json.loads(response.read())
    finally:
        conn.close()


def _reset_after(url: str, data: bytes) -> None:
    """Connect, send ``data`` (a request cut short, or whole but never read), then drop with a TCP reset."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)
    try:
        sock.sendall(data)
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def test_clients_that_hang_up_leave_no_tracebacks_in_the_servers_output(server: LocalServer) -> None:
    http_url, ws_url = server.rest_url, server.ws_url.replace("ws://", "http://", 1)
    handshake = (
        b"GET /?Authorization=not-a-token HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    rude = [
        (http_url, b"POST /conversation HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"),  # inside the body
        (http_url, b"POST /_local/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),  # inside a chunk
        (http_url, b"GET /_loc"),  # inside the request line
        (http_url, b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 20),  # answers never read
        (ws_url, b"GET / HTTP/1.1\r\nHost: x\r\n"),  # inside the handshake
        (ws_url, handshake),  # before reading the refusal
    ]
    before = len(server.output())
    for _ in range(5):
        for url, data in rude:
            _reset_after(url, data)
    assert server.call("GET", "/_local/config", None)[0] == 200  # every rude client has been dealt with
    time.sleep(0.3)
    added = server.output()[before:]
    assert not re.search(r"Traceback|Error|Exception|----", added), added


def test_idle_timeout_and_maximum_duration(tmp_path: Path, connections_of: Callable[[str], list[str]]) -> None:
    env = server_env(
        tmp_path / "data",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        REDIS_KEY_PREFIX=f"chat-local-{uuid.uuid4().hex[:8]}:",
        LOCAL_WS_IDLE_TIMEOUT="0.4",
        LOCAL_WS_MAX_DURATION="1.5",
    )
    limited = start_server(tmp_path / "data", env)
    try:
        idle_user, busy_user = new_user("idle"), new_user("busy")
        idle = limited.socket(limited.token(idle_user))
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            idle.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert 0.3 < time.monotonic() - opened < 1.2

        # Opened only now: opened beside the idle one, it idled out too in the instant before its first heartbeat.
        busy = limited.socket(limited.token(busy_user))
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # a heartbeat every 0.2 s keeps it from idling out; the 1.5 s cap still ends it
                busy.send('{"action": "heartbeat"}')
                with pytest.raises(TimeoutError):
                    busy.recv(timeout=0.2)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert 1.3 < time.monotonic() - opened < 3

        registry = RedisRegistry(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=660, prefix=limited.prefix)
        assert eventually(lambda: registry.connections_for([idle_user, busy_user]) == {idle_user: [], busy_user: []})
    finally:
        assert limited.stop() == 0, limited.output()


# -- the process -------------------------------------------------------------------------------------------


def run_briefly(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local.server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_a_second_server_on_the_same_data_is_refused(server: LocalServer) -> None:
    result = run_briefly(
        server_env(server.data_dir, DATABASE_URL=os.environ["DATABASE_URL"], REDIS_URL=os.environ["REDIS_URL"])
    )
    assert result.returncode != 0
    assert "already running" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert server.process.poll() is None  # the first one is untouched
    assert server.call("GET", "/_local/config", None)[0] == 200


def test_a_busy_port_is_reported_without_a_traceback(server: LocalServer, tmp_path: Path) -> None:
    port = str(urlsplit(server.rest_url).port)
    result = run_briefly(
        server_env(
            tmp_path / "data",
            HTTP_PORT=port,
            DATABASE_URL=os.environ["DATABASE_URL"],
            REDIS_URL=os.environ["REDIS_URL"],
        )
    )
    assert result.returncode != 0
    assert f"port {port} (HTTP_PORT) is already in use" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data dir outside pytest's tmp tree: embedded PostgreSQL runs as another user (pgserver, when we are root)
    and needs to traverse its parents, but any pytest session resets ``/tmp/pytest-of-<user>`` to 0700."""
    with tempfile.TemporaryDirectory(prefix="chat-local-server-", ignore_cleanup_errors=True) as parent:
        yield Path(parent) / "data"


@pytest.mark.integration  # the server starts embedded PostgreSQL and Redis of its own
def test_embedded_data_survives_a_restart_and_sigterm_stops_everything(embedded_data_dir: Path) -> None:
    data_dir = embedded_data_dir
    env = server_env(data_dir)  # no DATABASE_URL / REDIS_URL: embedded PostgreSQL and Redis
    first = start_server(data_dir, env)
    alice, bob = new_user("alice"), new_user("bob")
    try:
        token = first.token(alice)
        conversation_id = first.direct(token, bob)
        ws = first.socket(token)
        frame = {"action": "send-message", "tempMessageId": "t1", "conversationId": conversation_id}
        ws.send(json.dumps({**frame, "content": "still here?"}))
        assert json.loads(ws.recv(timeout=5))["content"] == "still here?"

        postgres_pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        match = re.search(r"Redis\s+embedded: (unix://\S+)", first.output())
        assert match, first.output()
        redis_pid = int(redis.Redis.from_url(match.group(1)).info("server")["process_id"])
        stopping = time.monotonic()
    finally:
        assert first.stop() == 0, first.output()
    assert time.monotonic() - stopping < 10
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert eventually(lambda: not is_running(postgres_pid) and not is_running(redis_pid))

    # Same ports: a token names its issuer, http://127.0.0.1:<HTTP_PORT>/_local.
    ports = {"HTTP_PORT": str(urlsplit(first.rest_url).port), "WS_PORT": str(urlsplit(first.ws_url).port)}
    second = start_server(data_dir, {**env, **ports})
    try:
        status, rows = second.call("GET", "/conversations", token)  # minted before the restart
        assert status == 200, rows
        assert [(r["conversationId"], r["latestContent"]) for r in rows] == [(conversation_id, "still here?")]
        status, history = second.call("GET", f"/conversations/{conversation_id}/messages", token)
        assert [m["content"] for m in history] == ["still here?"]
    finally:
        assert second.stop() == 0, second.output()
