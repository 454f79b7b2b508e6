"""A local identity provider standing in for Cognito.

It signs RS256 ID tokens with the claim set Cognito issues, and publishes the public key as a JWKS, so the app
verifies local tokens with exactly the code path it uses for Cognito tokens. The key can be persisted to a PEM
file so tokens minted before a restart of the local server stay valid after it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

# Fixed namespace so a username always maps to the same ``sub``, across restarts and machines.
_SUB_NAMESPACE = uuid.UUID("6f0a3c1e-2b4d-5e6f-8a9b-0c1d2e3f4a5b")


def _load_or_create_key(key_path: Path | None) -> rsa.RSAPrivateKey:
    if key_path is not None and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path} does not hold an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_path is not None:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written 0600 and renamed into place, so a crash never leaves a half-written key behind.
        tmp = key_path.with_name(key_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        tmp.replace(key_path)
    return key


def _thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: a ``kid`` that is stable for a given key, so a persisted key keeps its ``kid``."""
    canonical = json.dumps({k: public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def subject_for(username: str) -> str:
    """The stable ``sub`` claim for ``username`` (Cognito's ``sub`` is a UUID that never changes)."""
    return str(uuid.uuid5(_SUB_NAMESPACE, username))


class LocalIdentityProvider:
    """Mints Cognito-shaped ID tokens for any username, signed by a local RSA key.

    ``issuer`` and ``audience`` must be what the app is configured to accept as the pool's issuer and the app
    client id. Pass ``key_path`` to keep the key (and hence every minted token) valid across restarts.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        key_path: Path | None = None,
        kid: str | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._private_key = _load_or_create_key(key_path)
        self._public_jwk: dict[str, Any] = dict(RSAAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True))
        self.kid = kid if kid is not None else _thumbprint(self._public_jwk)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set, shaped like Cognito's ``/.well-known/jwks.json``."""
        key = {
            "alg": "RS256",
            "e": str(self._public_jwk["e"]),
            "kid": self.kid,
            "kty": "RSA",
            "n": str(self._public_jwk["n"]),
            "use": "sig",
        }
        return {"keys": [key]}

    def private_key_pem(self) -> bytes:
        """The signing key as PEM, for tests that forge tokens with it (e.g. under another ``kid``)."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def claims(self, username: str, *, ttl_seconds: int = 3600, **overrides: object) -> dict[str, object]:
        """The ID-token claim set for ``username``; ``overrides`` replace claims, and a ``None`` value removes one."""
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": subject_for(username),
            "email_verified": True,
            "iss": self.issuer,
            "cognito:username": username,
            "origin_jti": str(uuid.uuid4()),
            "aud": self.audience,
            "event_id": str(uuid.uuid4()),
            "token_use": "id",
            "auth_time": now,
            "exp": now + ttl_seconds,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint_id_token(
        self,
        username: str,
        *,
        ttl_seconds: int = 3600,
        headers: Mapping[str, object] | None = None,
        **overrides: object,
    ) -> str:
        """An RS256 ID token for ``username`` with the ``kid`` header set.

        ``overrides`` replace claims (``None`` removes one) and ``headers`` adds or replaces JOSE header fields, so
        tests can forge expired, wrong-audience, access (``token_use="access"``) or unknown-``kid`` tokens. A
        negative ``ttl_seconds`` gives an already expired token.
        """
        header: dict[str, Any] = {"kid": self.kid}
        if headers:
            header.update(headers)
        return jwt.encode(
            self.claims(username, ttl_seconds=ttl_seconds, **overrides),
            self._private_key,
            algorithm="RS256",
            headers=header,
        )
