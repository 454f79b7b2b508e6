"""Who gets in, and what an outsider can learn or change.

- Token attacks, one table for both doors: the WebSocket ``$connect`` handler (the app verifies the token) and
  the REST API behind the local server's Cognito-strict authorizer (API Gateway's job in AWS).
- Object-level authorization: every conversation-scoped REST route and WebSocket action, for a member, an
  outsider, an unknown id and a malformed id.
- Nothing secret in logs or replies: tokens are redacted from every log record; errors carry no SQL, paths or
  stack traces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.logs import REDACTED, redact
from chalicelib.wiring import get_database, get_registry
from local.identity import LocalIdentityProvider
from tests.conftest import Rest, Sockets, new_user
from tests.local_server import LocalServer, session_server
from tests.servers import failing_trigger

# --- token attacks -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_pem(idp: LocalIdentityProvider) -> bytes:
    private = serialization.load_pem_private_key(idp.private_key_pem(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256_with_public_key(idp: LocalIdentityProvider, user: str) -> str:
    """The classic key-confusion forgery: HMAC-signed with the RSA public key, which anyone can fetch."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.kid}).encode())
    payload = _b64(json.dumps(idp.claims(user)).encode())
    signature = hmac.new(_public_pem(idp), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _tampered(idp: LocalIdentityProvider, user: str) -> str:
    """A genuine token for someone else, its payload rewritten to name ``user``; the signature is kept."""
    header, _payload, signature = idp.mint_id_token(new_user("mallory")).split(".")
    return f"{header}.{_b64(json.dumps(idp.claims(user)).encode())}.{signature}"


def _other_key(idp: LocalIdentityProvider, user: str) -> str:
    """Signed by another local key under the trusted key's own ``kid``: only the signature check catches it."""
    return LocalIdentityProvider(idp.issuer, idp.audience, kid=idp.kid).mint_id_token(user)


HOUR = 3600
Forge = Callable[[LocalIdentityProvider, str], "str | None"]
FORGERIES: dict[str, Forge] = {
    "missing": lambda idp, user: None,
    "empty": lambda idp, user: "",
    "malformed": lambda idp, user: "not.a.jwt",
    "not base64": lambda idp, user: "eyJ!!!.eyJ???.sig",
    "expired": lambda idp, user: idp.mint_id_token(user, ttl_seconds=-60),
    "not yet valid": lambda idp, user: idp.mint_id_token(user, nbf=int(time.time()) + HOUR),
    "issued in the future": lambda idp, user: idp.mint_id_token(
        user, iat=int(time.time()) + HOUR, exp=int(time.time()) + 2 * HOUR
    ),
    "wrong issuer": lambda idp, user: idp.mint_id_token(user, iss="https://cognito-idp.evil.example/pool"),
    "wrong audience": lambda idp, user: idp.mint_id_token(user, aud="another-app-client"),
    "access token": lambda idp, user: idp.mint_id_token(user, token_use="access"),
    "alg none": lambda idp, user: jwt.encode(
        idp.claims(user),
        None,  # type: ignore[arg-type]  # alg none signs with no key; the stubs do not allow for it
        algorithm="none",
        headers={"kid": idp.kid},
    ),
    "HS256 with the public key": _hs256_with_public_key,
    "unknown kid": lambda idp, user: idp.mint_id_token(user, headers={"kid": "rotated-away"}),
    "no kid": lambda idp, user: jwt.encode(
        idp.claims(user),
        cast(rsa.RSAPrivateKey, serialization.load_pem_private_key(idp.private_key_pem(), None)),
        algorithm="RS256",
    ),
    "tampered payload": _tampered,
    "another local key": _other_key,
    "no username": lambda idp, user: idp.mint_id_token(user, **{"cognito:username": None}),  # type: ignore[arg-type]
    "no expiry": lambda idp, user: idp.mint_id_token(user, exp=None),
}


def connection_rows(connection_id: str) -> list[dict[str, Any]]:
    return get_database().run_sql("SELECT user_id FROM connection_table WHERE connection_id = :c", c=connection_id)


@pytest.mark.parametrize("attack", FORGERIES)
def test_websocket_connect_refuses_forged_tokens(
    sockets: Sockets, identity: LocalIdentityProvider, attack: str
) -> None:
    victim = new_user("victim")
    connection_id, response = sockets.connect_raw(FORGERIES[attack](identity, victim))
    assert response["statusCode"] in (401, 403)
    assert "Traceback" not in json.dumps(response)
    # Nothing registered anywhere: no handler will ever act for this connection with an identity.
    assert get_registry().connections_for([victim])[victim] == []
    assert get_registry().touch(connection_id) is None
    assert connection_rows(connection_id) == []
    sockets.sink.open(connection_id)
    sockets.send(connection_id, {"action": "heartbeat"})
    (error,) = sockets.frames(connection_id)
    assert error["type"] == "error" and connection_id in sockets.sink.deleted


def test_websocket_connect_accepts_the_genuine_token(sockets: Sockets, identity: LocalIdentityProvider) -> None:
    """The control for the table above: the same path with an honest token gets in."""
    user = new_user("alice")
    connection_id, response = sockets.connect_raw(identity.mint_id_token(user))
    assert response["statusCode"] == 200
    assert get_registry().touch(connection_id) == user and connection_rows(connection_id) == [{"user_id": user}]


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with session_server(tmp_path_factory.mktemp("security-server")) as running:
        yield running


REST_ROUTES = [
    ("POST", "/conversation"),
    ("GET", "/conversation/direct/{other}"),
    ("GET", "/conversations"),
    ("GET", "/conversations/{cid}"),
    ("GET", "/conversations/{cid}/messages"),
    ("GET", "/conversations/{cid}/participants"),
]


@pytest.mark.parametrize("attack", [None, *FORGERIES])
def test_rest_refuses_forged_tokens_before_any_handler(server: LocalServer, attack: str | None) -> None:
    victim, other = new_user("victim"), new_user("bob")
    honest = server.token(victim)
    conversation_id = server.direct(honest, other)
    header = honest if attack is None else FORGERIES[attack](server.own_key(), victim)
    for method, template in REST_ROUTES:
        path = template.format(other=other, cid=conversation_id)
        body = {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "forged"}
        status, reply = server.call(method, path, header, body if method == "POST" else None)
        if attack is None:  # the control: the same requests with the genuine token succeed
            assert status == 200, (path, reply)
        else:
            assert (status, reply) == (401, {"Code": "Unauthorized", "Message": "Unauthorized"}), (attack, path)
    groups = get_database().run_sql(
        "SELECT count(*) AS n FROM conversation_table WHERE created_by = :u AND is_group", u=victim
    )
    assert groups[0]["n"] == (1 if attack is None else 0)


# --- object-level authorization ------------------------------------------------------------------------------


WHO = ["member", "outsider", "unknown id", "malformed id"]
NOT_FOUND = {"Code": "NotFound", "Message": "Conversation not found"}


def _target(who: str, member: str, outsider: str, conversation_id: str) -> tuple[str, str]:
    return {
        "member": (member, conversation_id),
        "outsider": (outsider, conversation_id),
        "unknown id": (member, str(uuid.uuid4())),
        "malformed id": (member, "not-a-uuid"),
    }[who]


@pytest.mark.parametrize(
    "route",
    [
        "/conversations/{id}",
        "/conversations/{id}/participants",
        "/conversations/{id}/messages",
        "/conversations/{id}/messages?limit=5&order=asc",
        "/conversations/{id}/messages?before={message}",
        "/conversations/{id}/messages?after={message}",
    ],
)
@pytest.mark.parametrize("who", WHO)
def test_rest_authorization_matrix(rest: Rest, sockets: Sockets, route: str, who: str) -> None:
    alice, bob, mallory = new_user("alice"), new_user("bob"), new_user("mallory")
    conversation_id = rest.direct(alice, bob)
    message = sockets.message(sockets.connect(bob), conversation_id, "secret")["messageId"]
    caller, target = _target(who, alice, mallory, conversation_id)
    response = rest.call("GET", route.format(id=target, message=message), caller)
    body = json.loads(response.body)
    expected = {"member": 200, "outsider": 404, "unknown id": 404, "malformed id": 400}[who]
    assert response.status_code == expected, body
    if who in ("outsider", "unknown id"):
        # Outsiders learn nothing: byte for byte the answer for a conversation that does not exist.
        assert body == NOT_FOUND
        unknown = rest.call("GET", route.format(id=uuid.uuid4(), message=message), caller)
        assert unknown.body == response.body


def _snapshot(conversation_id: str) -> list[dict[str, Any]]:
    return get_database().run_sql(
        "SELECT c.last_seq, c.last_activity_at, c.latest_message_id, p.user_id, p.last_read_seq, p.last_read_at,"
        " (SELECT count(*) FROM message_table m WHERE m.conversation_id = :c) AS n"
        " FROM conversation_table c JOIN participant_table p USING (conversation_id)"
        " WHERE conversation_id = :c ORDER BY p.user_id",
        c=conversation_id,
    )


@pytest.mark.parametrize("action", ["send-message", "read-messages"])
@pytest.mark.parametrize("who", WHO)
def test_websocket_authorization_matrix(rest: Rest, sockets: Sockets, action: str, who: str) -> None:
    alice, bob, mallory = new_user("alice"), new_user("bob"), new_user("mallory")
    conversation_id = rest.direct(alice, bob)
    alice_tab, bob_tab, mallory_tab = sockets.connect(alice), sockets.connect(bob), sockets.connect(mallory)
    sockets.message(bob_tab, conversation_id, "unread by alice")
    before = _snapshot(conversation_id)
    frames_before = {tab: len(sockets.frames(tab)) for tab in (alice_tab, bob_tab)}

    caller, target = _target(who, alice, mallory, conversation_id)
    tab = alice_tab if caller == alice else mallory_tab
    frame: dict[str, Any] = {"action": action, "conversationId": target}
    if action == "send-message":
        frame |= {"tempMessageId": "probe", "content": "let me in"}
    sockets.send(tab, frame)

    if who == "member":
        assert _snapshot(conversation_id) != before
        assert len(sockets.frames(bob_tab)) > frames_before[bob_tab]
        return
    error = sockets.frames(tab)[-1]
    assert error["type"] == "error" and error["action"] == action
    if who == "malformed id":
        assert error["code"] == "BadRequest"
    else:
        assert (error["code"], error["message"]) == ("NotFound", NOT_FOUND["Message"])
    # An outsider changes nothing and nobody hears of it.
    assert _snapshot(conversation_id) == before
    assert len(sockets.frames(bob_tab)) == frames_before[bob_tab]
    assert len(sockets.frames(alice_tab)) == frames_before[alice_tab] + (1 if tab == alice_tab else 0)


# --- nothing secret in logs or replies -----------------------------------------------------------------------


TOKEN = "eyJraWQiOiJhYmMiLCJhbGciOiJSUzI1NiJ9.eyJjb2duaXRvOnVzZXJuYW1lIjoiYWxpY2UifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"GET /?Authorization={TOKEN} HTTP/1.1", "GET /?Authorization="),
        (f"wss://abc.execute-api.us-east-1.amazonaws.com/prod?Authorization={TOKEN}&x=1", "&x=1"),
        (json.dumps({"queryStringParameters": {"Authorization": TOKEN}}), '"queryStringParameters"'),
        (str({"headers": {"Authorization": f"Bearer {TOKEN}"}}), "'headers'"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer "),
        (f"Authorization=not-even-a-jwt-{uuid.uuid4().hex}", "Authorization="),
        (f"decode failed for {TOKEN}", "decode failed for "),
    ],
)
def test_redaction_removes_tokens_and_keeps_the_rest(text: str, kept: str) -> None:
    scrubbed = redact(text)
    assert TOKEN not in scrubbed and "not-even-a-jwt" not in scrubbed
    assert REDACTED in scrubbed and kept in scrubbed


def test_no_log_record_of_the_process_carries_a_token(
    sockets: Sockets, identity: LocalIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [identity.mint_id_token(new_user("alice")), FORGERIES["tampered payload"](identity, "bob") or ""]
    caplog.set_level(logging.DEBUG)
    for token in tokens:
        connection_id, _ = sockets.connect_raw(token)
        sockets.sink.open(connection_id)
        sockets.send(connection_id, {"action": "heartbeat"})
        event = sockets.event("$connect", connection_id, query={"Authorization": token})
        # What a debugging line or a failing library would write: the event, a URL, a traceback.
        logging.getLogger("some.library").info("handling %s", event)
        logging.getLogger("urllib3").debug("GET wss://example/?Authorization=%s", token)
        try:
            raise ValueError(f"could not decode {token}")
        except ValueError:
            logging.getLogger("app").exception("connect failed")
    logged = caplog.text + "".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    for token in tokens:
        assert token not in logged
        assert token.split(".")[1] not in logged  # not even the claims
    assert REDACTED in logged and "connect failed" in logged and "ValueError" in logged


def _leaks(text: str) -> list[str]:
    markers = ["Traceback", 'File "', "/work/", ".py", "SELECT", "INSERT", "UPDATE ", "participant_table", "SQLSTATE"]
    markers += ["pg8000", "psycopg", "injected fault", "redis."]
    return [marker for marker in markers if marker in text]


def test_a_database_fault_reaches_clients_without_internals(rest: Rest, sockets: Sockets) -> None:
    alice = new_user("alice")
    title = f"boom-{uuid.uuid4().hex[:8]}"
    with failing_trigger(get_database().run_sql, "conversation_table", f"NEW.title = '{title}'"):
        response = rest.call(
            "POST",
            "/conversation",
            alice,
            {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": title},
        )
    assert response.status_code == 500
    assert set(json.loads(response.body)) == {"Code", "Message"} and not _leaks(response.body.decode())
    assert response.headers.get("Access-Control-Allow-Origin")

    # The same kind of fault on the WebSocket side.
    conversation_id = rest.direct(alice, new_user("bob"))
    tab = sockets.connect(alice)
    with failing_trigger(get_database().run_sql, "message_table", f"NEW.conversation_id = '{conversation_id}'"):
        sockets.send(
            tab, {"action": "send-message", "tempMessageId": "t", "conversationId": conversation_id, "content": "x"}
        )
    (frame,) = sockets.frames(tab)
    assert frame["code"] == "InternalError" and not _leaks(json.dumps(frame))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/conversations/not-a-uuid", None),
        ("GET", "/conversations?cursor=' OR 1=1 --", None),
        ("GET", "/conversations/{cid}/messages?before=../../etc/passwd", None),
        ("POST", "/conversation", "{'recipientIdArr': SELECT"),
        ("POST", "/conversation", {"recipientIdArr": ["a\x00b"], "isGroup": False}),
    ],
)
def test_client_errors_carry_no_internals(rest: Rest, method: str, path: str, body: Any) -> None:
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    response = rest.call(method, path.format(cid=conversation_id), alice, body)
    assert response.status_code == 400
    assert set(json.loads(response.body)) == {"Code", "Message"} and not _leaks(response.body.decode())


def test_the_app_does_not_run_in_debug_mode() -> None:
    """Chalice's debug mode would put stack traces into 500 bodies."""
    import app as chat_app

    assert chat_app.app.debug is False
    assert not Path(chat_app.__file__).read_text().count("debug=True")
