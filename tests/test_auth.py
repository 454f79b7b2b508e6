"""ID-token verification for WebSocket $connect, with keys from a JWKS URL or inline JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chalicelib.auth import TokenVerifier, strip_bearer
from chalicelib.config import settings_from_env
from chalicelib.errors import Unauthorized
from local.identity import LocalIdentityProvider

ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AUTH"


class JwksServer:
    """A real HTTP JWKS endpoint whose key set can be rotated; counts fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def verifier_for(**env: str) -> TokenVerifier:
    base = {"COGNITO_USER_POOL_ID": "eu-west-1_AUTH", "COGNITO_APP_CLIENT_ID": "client-a"}
    return TokenVerifier(settings_from_env({**base, **env}))


def test_issuer_is_derived_from_the_pool_id() -> None:
    settings = settings_from_env({"COGNITO_USER_POOL_ID": "eu-west-1_AUTH"})
    assert settings.token_issuer == ISSUER
    assert settings.jwks_url == f"{ISSUER}/.well-known/jwks.json"


def test_keys_are_fetched_once_and_refetched_for_a_rotated_kid(jwks_server: JwksServer) -> None:
    first = LocalIdentityProvider(ISSUER, "client-a")
    jwks_server.document = first.jwks()
    verifier = verifier_for(JWKS_URL=jwks_server.url, JWKS_REFRESH_COOLDOWN_SECONDS="0")
    assert verifier.verify(first.mint_id_token("alice"))["cognito:username"] == "alice"
    assert verifier.verify(first.mint_id_token("bob"))["cognito:username"] == "bob"
    assert jwks_server.fetches == 1

    rotated = LocalIdentityProvider(ISSUER, "client-a")
    jwks_server.document = {"keys": first.jwks()["keys"] + rotated.jwks()["keys"]}
    assert verifier.verify(rotated.mint_id_token("carol"))["cognito:username"] == "carol"
    assert jwks_server.fetches == 2


def test_unknown_kids_do_not_hammer_the_jwks_endpoint(jwks_server: JwksServer) -> None:
    idp = LocalIdentityProvider(ISSUER, "client-a")
    jwks_server.document = idp.jwks()
    verifier = verifier_for(JWKS_URL=jwks_server.url)  # default cooldown
    verifier.verify(idp.mint_id_token("alice"))
    for attempt in range(5):
        with pytest.raises(Unauthorized):
            verifier.verify(idp.mint_id_token("mallory", headers={"kid": f"forged-{attempt}"}))
    assert jwks_server.fetches == 1


def test_token_signed_by_a_key_not_in_the_set_is_refused(jwks_server: JwksServer) -> None:
    trusted, stranger = LocalIdentityProvider(ISSUER, "client-a"), LocalIdentityProvider(ISSUER, "client-a")
    jwks_server.document = trusted.jwks()
    verifier = verifier_for(JWKS_URL=jwks_server.url)
    with pytest.raises(Unauthorized):
        verifier.verify(stranger.mint_id_token("mallory"))


def test_inline_jwks_needs_no_network() -> None:
    idp = LocalIdentityProvider(ISSUER, "client-a")
    verifier = verifier_for(JWKS_JSON=json.dumps(idp.jwks()), JWKS_URL="http://127.0.0.1:9/unreachable")
    assert verifier.verify("Bearer " + idp.mint_id_token("alice"))["cognito:username"] == "alice"


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "client-b"},
        {"iss": ISSUER + "x"},
        {"token_use": "access"},
        {"exp": None},
        {"iat": None},
        {"token_use": None},
    ],
)
def test_claims_are_checked(overrides: dict[str, Any]) -> None:
    idp = LocalIdentityProvider(ISSUER, "client-a")
    verifier = verifier_for(JWKS_JSON=json.dumps(idp.jwks()))
    with pytest.raises(Unauthorized):
        verifier.verify(idp.mint_id_token("alice", **overrides))


def test_unreachable_jwks_is_unauthorized_not_a_crash() -> None:
    idp = LocalIdentityProvider(ISSUER, "client-a")
    with pytest.raises(Unauthorized):
        verifier_for(JWKS_URL="http://127.0.0.1:9/jwks.json").verify(idp.mint_id_token("alice"))


@pytest.mark.parametrize(("header", "token"), [("abc", "abc"), ("Bearer abc", "abc"), ("bearer  abc ", "abc")])
def test_bearer_prefix_is_optional(header: str, token: str) -> None:
    assert strip_bearer(header) == token
