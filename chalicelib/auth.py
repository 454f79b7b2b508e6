"""Verify Cognito ID tokens (and the local issuer's, which mimics them).

REST routes are checked by API Gateway's Cognito authorizer; the WebSocket
``$connect`` route has no such authorizer in Chalice, so its query-string
token is verified here: RS256 only, a known ``kid``, ``iss``, ``aud`` (the app
client id), ``token_use == "id"``, ``exp``/``iat`` and the username claim.

Keys come either from the pool's JWKS URL (PyJWKClient caches them and refetches
when a token names an unknown ``kid``, which is how key rotation shows up, at
most once per cooldown)
or from inline JWKS JSON, for Lambdas in a VPC without a route to Cognito.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import jwt

from chalicelib.config import Settings
from chalicelib.errors import Unauthorized

USERNAME_CLAIM = "cognito:username"
_REQUIRED = ["exp", "iat", "iss", "aud", "token_use", USERNAME_CLAIM]


def strip_bearer(header_value: str) -> str:
    """Clients send the raw token; ``Bearer <token>`` is accepted too."""
    value = header_value.strip()
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    return value


class TokenVerifier:
    """Checks ID tokens against one issuer, audience and key set."""

    def __init__(self, settings: Settings) -> None:
        self._issuer = settings.token_issuer
        self._audience = settings.cognito_app_client_id
        self._lock = threading.Lock()
        self._inline_keys: jwt.PyJWKSet | None = None
        self._client: jwt.PyJWKClient | None = None
        if settings.jwks_json:
            self._inline_keys = jwt.PyJWKSet.from_dict(json.loads(settings.jwks_json))
        else:
            self._client = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=3600,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_cooldown_s,
            )

    def _signing_key(self, kid: str) -> Any:
        if self._inline_keys is not None:
            for key in self._inline_keys.keys:
                if key.key_id == kid:
                    return key.key
            raise Unauthorized("Unknown signing key")
        assert self._client is not None
        with self._lock:
            return self._client.get_signing_key(kid).key

    def verify(self, token: str | None) -> dict[str, Any]:
        """The token's claims; raises ``Unauthorized`` for anything not a valid ID token."""
        if not token:
            raise Unauthorized("Missing token")
        raw = strip_bearer(token)
        try:
            header = jwt.get_unverified_header(raw)
            kid = header.get("kid")
            if header.get("alg") != "RS256" or not isinstance(kid, str):
                raise Unauthorized("Invalid token")
            claims: dict[str, Any] = jwt.decode(
                raw,
                self._signing_key(kid),
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED},
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError):
            raise Unauthorized("Invalid token") from None
        username = claims.get(USERNAME_CLAIM)
        if claims.get("token_use") != "id" or not isinstance(username, str) or not username:
            raise Unauthorized("Invalid token")
        return claims
