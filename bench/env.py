"""Where the benchmark runs: its own database on the configured (or embedded) server, and the app's environment.

The dataset lives in a dedicated database (``chatapi_bench``) created on the server ``DATABASE_URL`` names, or on
an embedded PostgreSQL under ``.data/bench`` when it is unset, so it survives between runs and never mixes with
the test suite's databases. Redis keys get a per-run prefix. Creating and migrating it goes through the same
helpers as the tests' scratch databases (``tests/databases.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pg8000.native

from chalicelib.config import settings_from_env
from chalicelib.db import Database
from local.environment import app_configured
from tests.databases import connect as _raw_connect
from tests.databases import ensure_database

__all__ = [
    "BENCH_DATABASE",
    "CLIENT_ID",
    "ISSUER",
    "ROOT",
    "app_environment",
    "connect",
    "database_for",
    "ensure_bench_database",
    "ensure_database",
]

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "chatapi_bench"
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_BENCH"
CLIENT_ID = "bench-app-client"


# The database's own defaults (sql/0006: statement_timeout 4 s, lock_timeout 2 s, idle in transaction 15 s)
# are for request paths; seeding, COPY, index builds, VACUUM and the baseline build run longer.
_MAINTENANCE_LIMITS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def connect(url: str) -> pg8000.native.Connection:
    """A raw connection for bulk and maintenance work: no socket timeout and no server-side time limits."""
    connection = _raw_connect(url)
    for setting in _MAINTENANCE_LIMITS:
        connection.run(f"SET {setting} = 0")
    return connection


def database_for(url: str, timeout_s: float = 5.0) -> Database:
    """The app's ``Database`` (what the handlers use) on ``url``; its socket timeout is ``timeout_s``."""
    return Database(settings_from_env({"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": str(timeout_s)}))


def ensure_bench_database(server_url: str) -> str:
    """Create ``chatapi_bench`` on the server if missing, apply the migrations, return its URL."""
    return ensure_database(server_url, BENCH_DATABASE, migrated=True)


@contextmanager
def app_environment(database_url: str, redis_url: str, jwks: Mapping[str, object], endpoint_url: str) -> Iterator[str]:
    """Configure the app as a deployed stage is configured (its environment), as tests/conftest.py does.

    Yields the Redis key prefix of this run.
    """
    prefix = f"chat-bench-{uuid.uuid4().hex[:8]}:"
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "COGNITO_USER_POOL_ID": "us-east-1_BENCH",
        "COGNITO_APP_CLIENT_ID": CLIENT_ID,
        "JWKS_JSON": json.dumps(jwks),
        "CONNECTIONS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "MAX_PARTICIPANTS": "100",
    }
    with app_configured(values):
        yield prefix
