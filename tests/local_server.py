"""The local server (``python -m local.server``) as a subprocess, for the tests that drive it with real clients.

Shared by ``test_local_server`` (REST, sockets, @connections) and ``test_browser`` (the web client in Chromium).
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from websockets.sync.client import ClientConnection, connect

from local.connections_api import SigningKey
from local.identity import LocalIdentityProvider

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready: REST (http://\S+)\s+WebSocket (ws://\S+)")
CLIENT_ID = "local-client"
# What the app_environment fixture sets for in-process tests; a server gets only what we pass it.
# CONNECT_GRACE_SECONDS too: in-process tests set it to 0, but a server's gateway answers 410 while $connect runs,
# as API Gateway does, so with no grace a push in that instant forgets a connection that is just opening.
_SESSION_ONLY = {
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "JWKS_JSON",
    "CONNECTIONS_ENDPOINT_URL",
    "CONNECT_GRACE_SECONDS",
}


@dataclass
class LocalServer:
    """One ``python -m local.server`` process and what it printed."""

    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    prefix: str
    rest_url: str = ""
    ws_url: str = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> LocalServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.output())
            if match:
                self.rest_url, self.ws_url = match.group(1), match.group(2)
                return self
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"the server was not ready after {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    # -- clients ------------------------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; the path is sent exactly as given."""
        parts = urlsplit(self.rest_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            payload = (
                body if isinstance(body, bytes) or body is None else body if isinstance(body, str) else json.dumps(body)
            )
            if isinstance(payload, str):
                payload = payload.encode("utf-8")  # http.client would send a str as Latin-1
            conn.request(method, path, body=payload, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        status, _headers, raw = self.request(method, path, body, headers)
        return status, json.loads(raw) if raw else None

    def token(self, username: str) -> str:
        status, body = self.call("POST", "/_local/token", None, {"username": username})
        assert status == 200, body
        return str(body["idToken"])

    def direct(self, token: str, other: str) -> str:
        status, body = self.call("POST", "/conversation", token, {"recipientIdArr": [other], "isGroup": False})
        assert status == 200, body
        return str(body["conversationId"])

    def signing_key(self) -> SigningKey:
        """The key this run of the server accepts ``@connections`` signatures from (new at each start)."""
        credentials = configparser.ConfigParser()
        credentials.read(self.data_dir / "aws-credentials")
        return SigningKey(credentials["default"]["aws_access_key_id"], credentials["default"]["aws_secret_access_key"])

    def signed_request(
        self, method: str, path: str, body: bytes = b"", key: SigningKey | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One ``@connections`` call signed as botocore signs it, by ``key`` (the server's own by default)."""
        headers = sigv4_headers(key or self.signing_key(), method, self.rest_url + path, body)
        return self.request(method, path, body, headers)

    def socket(self, token: str) -> ClientConnection:
        return connect(f"{self.ws_url}?Authorization={token}", open_timeout=10, close_timeout=2)

    def identity(self, **kwargs: Any) -> LocalIdentityProvider:
        """A token minter for this server's issuer (``key_path=`` its own key, or a fresh key to forge with)."""
        return LocalIdentityProvider(f"{self.rest_url}/_local", CLIENT_ID, **kwargs)

    def own_key(self) -> LocalIdentityProvider:
        return self.identity(key_path=self.data_dir / "local-identity-key.pem")


def sigv4_headers(
    key: SigningKey, method: str, url: str, body: bytes, moment: datetime | None = None
) -> dict[str, str]:
    """The ``Authorization`` and ``X-Amz-Date`` headers botocore's ``SigV4Auth`` adds, signed now or at ``moment``."""
    request = AWSRequest(method=method, url=url, data=body)
    auth = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "execute-api", key.region)
    if moment is None:
        auth.add_auth(request)
    else:  # add_auth always signs at the current time
        request.context["timestamp"] = moment.strftime("%Y%m%dT%H%M%SZ")
        auth._modify_request_before_signing(request)  # type: ignore[attr-defined]  # private: not in the stubs
        signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        auth._inject_signature_to_request(request, signature)  # type: ignore[attr-defined]
    return dict(request.headers.items())


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it, but it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def server_env(data_dir: Path, **values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _SESSION_ONLY}
    env.update(HTTP_PORT="0", WS_PORT="0", LOCAL_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.update(values)
    return env


def start_server(data_dir: Path, env: dict[str, str]) -> LocalServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:  # a file, not a pipe: an unread pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "local.server"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return LocalServer(process, log_path, data_dir, env.get("REDIS_KEY_PREFIX", "chat:")).wait_ready()


@contextmanager
def session_server(data_dir: Path) -> Iterator[LocalServer]:
    """A server on the module's PostgreSQL database and Redis (what the ``app_environment`` fixture, which the
    caller requests, put in ``os.environ``), with its own data dir and registry prefix; stopped cleanly afterwards."""
    env = server_env(
        data_dir,
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        REDIS_KEY_PREFIX=f"chat-local-{uuid.uuid4().hex[:8]}:",
    )
    running = start_server(data_dir, env)
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()
