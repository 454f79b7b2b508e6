"""The dev-only building blocks under ``local/``: embedded servers, identity provider, ``@connections`` API.

Everything runs for real: PostgreSQL and Redis from their wheels, the boto3 client over HTTP, PyJWT decoding.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import jwt
import pg8000.native
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from local.connections_api import (
    MAX_PAYLOAD_BYTES,
    TEST_SIGNING_KEY,
    ConnectionsServer,
    SignatureError,
    SigningKey,
    verify_signature,
)
from local.identity import LocalIdentityProvider, subject_for
from local.recording_sink import Behaviour, RecordingSink
from local.services import EmbeddedServices, postgres_url
from tests.local_server import is_running, sigv4_headers

ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_local"
AUDIENCE = "local-app-client"


# -- embedded services ----------------------------------------------------------------------------------------


def pg_connect(url: str) -> pg8000.native.Connection:
    """Connects the way the app's URL parser does: ``host=`` in the query is a socket directory."""
    parts = urlsplit(url)
    port = parts.port or 5432
    socket_dir = parse_qs(parts.query)["host"][0]
    return pg8000.native.Connection(
        user=unquote(parts.username or "postgres"),
        database=parts.path.lstrip("/") or "postgres",
        unix_sock=f"{socket_dir}/.s.PGSQL.{port}",
    )


@pytest.mark.integration  # starts embedded PostgreSQL and Redis of its own
def test_embedded_services_serve_stop_and_keep_data_across_restarts(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, env={}) as services:
        assert services.started == ["postgres", "redis"]
        assert services.database_url.startswith("postgresql://postgres@/postgres?host=/")
        assert services.redis_url.startswith("unix:///")

        conn = pg_connect(services.database_url)
        conn.run("CREATE TABLE kept (v text)")
        conn.run("INSERT INTO kept VALUES (:v)", v="survives")
        conn.close()

        r = redis.Redis.from_url(services.redis_url)
        r.set("kept", "survives")
        pids = [int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0]), r.info("server")["process_id"]]
        # A client still connected at close (as the app's pool would be) must not keep the server alive.
        assert r.ping()
        socket_dir = Path(parse_qs(urlsplit(services.database_url).query)["host"][0])
        redis_socket = Path(urlsplit(services.redis_url).path)

    assert not (socket_dir / ".s.PGSQL.5432").exists()
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    assert not redis_socket.exists()
    with pytest.raises(redis.ConnectionError):
        r.ping()
    assert [pid for pid in pids if is_running(pid)] == []

    with EmbeddedServices(tmp_path, env={}) as services:
        conn = pg_connect(services.database_url)
        assert conn.run("SELECT v FROM kept") == [["survives"]]
        conn.close()
        assert redis.Redis.from_url(services.redis_url).get("kept") == b"survives"


def test_urls_from_the_environment_win_and_nothing_is_started(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://u@db.example:5432/chat", "REDIS_URL": "redis://cache.example:6379/0"}
    with EmbeddedServices(tmp_path, env=env) as services:
        assert services.database_url == env["DATABASE_URL"]
        assert services.redis_url == env["REDIS_URL"]
        assert services.started == []
    assert list(tmp_path.iterdir()) == []


def test_postgres_url_shapes() -> None:
    assert postgres_url(Path("/run/pg")) == "postgresql://postgres@/postgres?host=/run/pg"
    assert postgres_url(Path("/a b"), 5433) == "postgresql://postgres@:5433/postgres?host=/a%20b"


# -- identity provider ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> LocalIdentityProvider:
    return LocalIdentityProvider(ISSUER, AUDIENCE)


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Verifies as the contract demands: key by ``kid`` from the JWKS, RS256 only, ``iss``/``aud``/``exp``."""
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "token_use"]},
    )
    return claims


def test_jwks_is_shaped_like_cognitos(idp: LocalIdentityProvider) -> None:
    (key,) = idp.jwks()["keys"]
    assert set(key) == {"kty", "kid", "alg", "use", "n", "e"}
    assert (key["kty"], key["alg"], key["use"], key["kid"]) == ("RSA", "RS256", "sig", idp.kid)


def test_minted_id_token_verifies_with_cognitos_claim_set(idp: LocalIdentityProvider) -> None:
    token = idp.mint_id_token("alice")
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": idp.kid, "typ": "JWT"}
    claims = verify(token, dict(idp.jwks()))
    assert claims["cognito:username"] == "alice"
    assert claims["token_use"] == "id"
    assert claims["sub"] == subject_for("alice") == str(uuid.UUID(claims["sub"]))
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["auth_time"] == claims["iat"]
    assert claims["email_verified"] is True
    uuid.UUID(claims["event_id"])
    assert subject_for("bob") != subject_for("alice")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl_seconds": -10}, jwt.ExpiredSignatureError),
        ({"aud": "another-client"}, jwt.InvalidAudienceError),
        ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/other"}, jwt.InvalidIssuerError),
        ({"exp": None}, jwt.MissingRequiredClaimError),
        ({"token_use": None}, jwt.MissingRequiredClaimError),
    ],
)
def test_forged_tokens_fail_verification(
    idp: LocalIdentityProvider, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        verify(idp.mint_id_token("alice", **kwargs), dict(idp.jwks()))


def test_overrides_replace_and_remove_claims(idp: LocalIdentityProvider) -> None:
    token = idp.mint_id_token("alice", token_use="access", **{"cognito:username": None})  # type: ignore[arg-type]
    claims = verify(token, dict(idp.jwks()))
    assert claims["token_use"] == "access"
    assert "cognito:username" not in claims


def test_unknown_kid_and_foreign_key_are_not_verifiable(idp: LocalIdentityProvider) -> None:
    with pytest.raises(KeyError):
        verify(idp.mint_id_token("alice", headers={"kid": "unknown"}), dict(idp.jwks()))
    stranger = LocalIdentityProvider(ISSUER, AUDIENCE, kid=idp.kid)
    with pytest.raises(jwt.InvalidSignatureError):
        verify(stranger.mint_id_token("alice"), dict(idp.jwks()))


def test_persisted_key_keeps_tokens_valid_after_a_restart(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "idp.pem"
    before = LocalIdentityProvider(ISSUER, AUDIENCE, key_path=key_path)
    token = before.mint_id_token("alice")
    assert key_path.stat().st_mode & 0o777 == 0o600

    after = LocalIdentityProvider(ISSUER, AUDIENCE, key_path=key_path)
    assert after.kid == before.kid
    assert verify(token, dict(after.jwks()))["cognito:username"] == "alice"
    assert LocalIdentityProvider(ISSUER, AUDIENCE).kid != before.kid


# -- @connections API -----------------------------------------------------------------------------------------


@pytest.fixture
def fresh_sink() -> Iterator[RecordingSink]:
    """A sink of this test's own (conftest's ``sink`` is session-wide); frees any hanging push at teardown."""
    sink = RecordingSink()
    yield sink
    sink.release()


@pytest.fixture
def api_server(fresh_sink: RecordingSink) -> Iterator[ConnectionsServer]:
    with ConnectionsServer(fresh_sink) as server:
        yield server


def make_client(url: str, **config: Any) -> Any:
    # No retries, so an injected fault reaches the test as the exception the app would see first.
    options: dict[str, Any] = {"retries": {"total_max_attempts": 1}, **config}
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(**options),
    )


def signed(server: ConnectionsServer, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    return sigv4_headers(TEST_SIGNING_KEY, method, server.url + path, body)


@pytest.fixture
def api(api_server: ConnectionsServer) -> Any:
    """A boto3 @connections client on this test's server (conftest's ``client`` is the Chalice test client)."""
    return make_client(api_server.url)


@pytest.mark.parametrize("stage", ["", "/dev"])
def test_post_delivers_raw_bytes_with_or_without_a_stage(
    api_server: ConnectionsServer, fresh_sink: RecordingSink, stage: str
) -> None:
    api = make_client(api_server.url + stage)
    connection_id = "L0SM9cOFvHcCIhw=/x"  # API Gateway ids end in '='; '/' checks the path split
    fresh_sink.open(connection_id)
    api.post_to_connection(ConnectionId=connection_id, Data=b'{"type": "new-message"}')
    api.post_to_connection(ConnectionId=connection_id, Data=json.dumps({"n": 2}).encode())
    assert fresh_sink.frames(connection_id)[0] == b'{"type": "new-message"}'
    assert fresh_sink.json_frames(connection_id) == [{"type": "new-message"}, {"n": 2}]


def test_unknown_or_closed_connection_raises_gone(api: Any, fresh_sink: RecordingSink) -> None:
    with pytest.raises(api.exceptions.GoneException):
        api.post_to_connection(ConnectionId="never-opened", Data=b"{}")
    fresh_sink.open("c1")
    fresh_sink.close("c1")
    with pytest.raises(api.exceptions.GoneException) as info:
        api.post_to_connection(ConnectionId="c1", Data=b"{}")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
    assert fresh_sink.frames("c1") == []


def test_get_connection_and_delete_connection(api: Any, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1", source_ip="203.0.113.9", user_agent="Chrome")
    api.post_to_connection(ConnectionId="c1", Data=b"{}")
    info = api.get_connection(ConnectionId="c1")
    assert info["Identity"] == {"SourceIp": "203.0.113.9", "UserAgent": "Chrome"}
    assert info["ConnectedAt"] <= info["LastActiveAt"]

    reply = api.delete_connection(ConnectionId="c1")
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert fresh_sink.deleted == ["c1"]
    assert not fresh_sink.is_open("c1")
    with pytest.raises(api.exceptions.GoneException):
        api.delete_connection(ConnectionId="c1")
    with pytest.raises(api.exceptions.GoneException):
        api.get_connection(ConnectionId="c1")


def test_get_connection_body_has_iso_timestamps(api_server: ConnectionsServer, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port)
    conn.request("GET", "/@connections/c1", headers=signed(api_server, "GET", "/@connections/c1"))
    body = json.loads(conn.getresponse().read())
    conn.close()
    assert set(body) == {"connectedAt", "identity", "lastActiveAt"}
    assert body["connectedAt"].endswith("Z") and len(body["connectedAt"]) == len("2026-11-28T10:33:11.123Z")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (410, "GoneException"),
        (429, "LimitExceededException"),
        (403, "ForbiddenException"),
        (500, "InternalServerErrorException"),
    ],
)
def test_injected_status_reaches_boto3_as_the_modelled_error(
    api: Any, fresh_sink: RecordingSink, status: int, code: str
) -> None:
    fresh_sink.open("c1")
    fresh_sink.open("c2")
    fresh_sink.inject(Behaviour(status=status), "c1")
    with pytest.raises(ClientError) as info:
        api.post_to_connection(ConnectionId="c1", Data=b"{}")
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    api.post_to_connection(ConnectionId="c2", Data=b"{}")
    assert (fresh_sink.frames("c1"), len(fresh_sink.frames("c2"))) == ([], 1)


def test_fault_limited_to_some_pushes_then_recovers(api: Any, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    fresh_sink.inject(Behaviour(status=500, times=1))
    with pytest.raises(ClientError):
        api.post_to_connection(ConnectionId="c1", Data=b"1")
    api.post_to_connection(ConnectionId="c1", Data=b"2")
    assert fresh_sink.frames("c1") == [b"2"]
    assert fresh_sink.attempts("c1") == 2


def test_payload_over_128_kb_is_rejected(api: Any, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    api.post_to_connection(ConnectionId="c1", Data=b"x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(api.exceptions.PayloadTooLargeException):
        api.post_to_connection(ConnectionId="c1", Data=b"x" * (MAX_PAYLOAD_BYTES + 1))
    assert len(fresh_sink.frames("c1")) == 1


def test_hanging_push_times_out_the_client(api_server: ConnectionsServer, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    fresh_sink.inject(Behaviour(delay=30), "c1")
    api = make_client(api_server.url, read_timeout=0.3, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        api.post_to_connection(ConnectionId="c1", Data=b"{}")
    assert time.monotonic() - started < 5


def test_wait_for_frames(api: Any, fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    fresh_sink.inject(Behaviour(delay=0.05))
    threading.Thread(target=lambda: [api.post_to_connection(ConnectionId="c1", Data=b"1") for _ in range(3)]).start()
    assert fresh_sink.wait_for_frames("c1", 3, timeout=5) == [b"1"] * 3
    with pytest.raises(TimeoutError):
        fresh_sink.wait_for_frames("c1", 4, timeout=0.1)


def test_concurrent_boto3_pushes_overlap_their_delays(api_server: ConnectionsServer, fresh_sink: RecordingSink) -> None:
    api = make_client(api_server.url, max_pool_connections=64)
    ids = [f"c{i}" for i in range(50)]
    for connection_id in ids:
        fresh_sink.open(connection_id)
    fresh_sink.inject(Behaviour(delay=0.02))
    pushes = 200
    started = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda n: api.post_to_connection(ConnectionId=ids[n % 50], Data=b"%d" % n), range(pushes)))
    elapsed = time.perf_counter() - started
    assert fresh_sink.total_frames() == pushes
    assert elapsed < pushes * 0.02 / 2, f"{elapsed:.2f}s: pushes were not served concurrently"


def test_server_serves_1000_delayed_pushes_from_64_keepalive_connections(
    api_server: ConnectionsServer, fresh_sink: RecordingSink
) -> None:
    fresh_sink.open("c1")
    fresh_sink.inject(Behaviour(delay=0.02))
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []

    def push(n: int) -> int:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=10)
            opened.append(local.conn)
        body = b"%d" % n
        local.conn.request(
            "POST", "/prod/@connections/c1", body, signed(api_server, "POST", "/prod/@connections/c1", body)
        )
        response = local.conn.getresponse()
        response.read()
        return int(response.status)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(push, range(1000)))
        elapsed = time.perf_counter() - started
    finally:
        for conn in opened:
            conn.close()
    assert statuses == [200] * 1000
    assert fresh_sink.total_frames() == 1000
    assert elapsed < 5, f"{elapsed:.2f}s for 1000 pushes (20 s if serial)"


def test_stop_ends_keepalive_connections(fresh_sink: RecordingSink) -> None:
    fresh_sink.open("c1")
    api_server = ConnectionsServer(fresh_sink).start()
    api = make_client(api_server.url)
    api.post_to_connection(ConnectionId="c1", Data=b"{}")  # leaves a kept-alive connection open
    started = time.monotonic()
    api_server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(BotoCoreError):  # refused or reset: nothing answers any more
        api.post_to_connection(ConnectionId="c1", Data=b"{}")
    assert len(fresh_sink.frames("c1")) == 1


# -- @connections: signatures ---------------------------------------------------------------------------------


def _message(headers: dict[str, str]) -> Message:
    message = Message()
    for name, value in headers.items():
        message[name] = value
    return message


KEY = SigningKey("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
URL = "http://127.0.0.1:8000"
PATH = "/prod/@connections/abc%3D"
NOW = datetime(2026, 11, 28, 10, 33, 11, tzinfo=UTC)


def _botocore(method: str = "POST", path: str = PATH, body: bytes = b"{}", key: SigningKey = KEY) -> dict[str, str]:
    return {"Host": "127.0.0.1:8000", **sigv4_headers(key, method, URL + path, body, NOW)}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "error_type"),
    [
        ("POST", PATH, _botocore(), b"{}", None),
        ("DELETE", "/@connections/x~y%2Fz", _botocore("DELETE", "/@connections/x~y%2Fz", b""), b"", None),
        ("POST", PATH, {"Host": "127.0.0.1:8000"}, b"{}", "MissingAuthenticationTokenException"),
        ("POST", PATH, {**_botocore(), "Authorization": "AWS4-HMAC-SHA256 x"}, b"{}", "IncompleteSignatureException"),
        (
            "POST",
            PATH,
            {k: v for k, v in _botocore().items() if k != "X-Amz-Date"},
            b"{}",
            "IncompleteSignatureException",
        ),
        (
            "POST",
            PATH,
            _botocore(key=SigningKey("AKIDOTHER", KEY.secret_access_key)),
            b"{}",
            "UnrecognizedClientException",
        ),
        ("POST", PATH, _botocore(key=SigningKey(KEY.access_key_id, "wrong")), b"{}", "InvalidSignatureException"),
        (
            "POST",
            PATH,
            _botocore(key=SigningKey(KEY.access_key_id, KEY.secret_access_key, "eu-west-1")),
            b"{}",
            "InvalidSignatureException",
        ),
        ("POST", PATH, _botocore(body=b"{}"), b'{"forged": 1}', "InvalidSignatureException"),
        ("POST", "/prod/@connections/other%3D", _botocore(), b"{}", "InvalidSignatureException"),
        ("DELETE", PATH, _botocore(), b"{}", "InvalidSignatureException"),
        ("POST", PATH, {**_botocore(), "Host": "evil.example"}, b"{}", "InvalidSignatureException"),
    ],
    ids=[
        "botocore-post",
        "botocore-delete",
        "unsigned",
        "malformed",
        "no-date",
        "unknown-key",
        "wrong-secret",
        "other-region",
        "tampered-body",
        "other-connection",
        "other-method",
        "other-host",
    ],
)
def test_signatures_are_checked_as_api_gateway_checks_them(
    method: str, path: str, headers: dict[str, str], body: bytes, error_type: str | None
) -> None:
    now = NOW.timestamp() + 60
    if error_type is None:
        verify_signature(KEY, method, path, _message(headers), body, now)
        return
    with pytest.raises(SignatureError) as refused:
        verify_signature(KEY, method, path, _message(headers), body, now)
    assert refused.value.error_type == error_type


def test_a_signature_older_or_newer_than_15_minutes_has_expired() -> None:
    headers = _message(_botocore())
    verify_signature(KEY, "POST", PATH, headers, b"{}", NOW.timestamp() + 14 * 60)
    for skew in (-16 * 60, 16 * 60):
        with pytest.raises(SignatureError, match="expired"):
            verify_signature(KEY, "POST", PATH, headers, b"{}", NOW.timestamp() + skew)


@pytest.mark.parametrize("method", ["POST", "DELETE", "GET"])
def test_unsigned_calls_are_refused_and_reach_nothing(
    api_server: ConnectionsServer, fresh_sink: RecordingSink, method: str
) -> None:
    fresh_sink.open("c1")
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=5)
    try:
        conn.request(method, "/@connections/c1", body=b'{"forged": true}' if method == "POST" else None)
        response = conn.getresponse()
        assert response.status == 403
        assert response.getheader("x-amzn-ErrorType") == "MissingAuthenticationTokenException"
        assert json.loads(response.read()) == {"message": "Missing Authentication Token"}
    finally:
        conn.close()
    assert (fresh_sink.attempts("c1"), fresh_sink.deleted, fresh_sink.is_open("c1")) == (0, [], True)


def test_a_client_signing_with_another_key_gets_a_modelled_error(api_server: ConnectionsServer) -> None:
    stranger = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=api_server.url,
        region_name="us-east-1",
        aws_access_key_id=TEST_SIGNING_KEY.access_key_id,
        aws_secret_access_key="not-the-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as refused:
        stranger.post_to_connection(ConnectionId="c1", Data=b"{}")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"


# -- @connections: clients that hang up -------------------------------------------------------------------------


def test_a_client_that_resets_mid_request_is_one_debug_line_and_nothing_on_stderr(
    api_server: ConnectionsServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="local.connections_api")
    for partial in [b'POST /@connections/c1 HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{"par', b"GET /@conn"]:
        sock = socket.create_connection(("127.0.0.1", api_server.port))
        sock.sendall(partial)
        time.sleep(0.1)  # the server is now waiting for the rest
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a FIN
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not [r for r in caplog.records if "went away" in r.getMessage()]:
        time.sleep(0.05)
    gone = [record for record in caplog.records if "went away" in record.getMessage()]
    assert gone, [record.getMessage() for record in caplog.records]
    assert all(record.levelno == logging.DEBUG and record.exc_info is None for record in gone)
    assert all("\n" not in record.getMessage() for record in gone)
    assert capfd.readouterr().err == ""
