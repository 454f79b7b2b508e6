"""Scratch PostgreSQL databases for the tests and the benchmark: one migrated template, cheap clones.

The migrations run once per session, into a template database; each test module (and each test that needs a
database of its own) gets a clone made with ``CREATE DATABASE ... TEMPLATE``, which copies files instead of
replaying the migrations. PostgreSQL refuses to copy a database while anyone is connected to it, so the factory
closes its own connection to the template as soon as the migrations are in, then forbids new connections to it
(``ALLOW_CONNECTIONS false``): nothing can hold the template open while a clone is made.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pg8000.native

from chalicelib.config import settings_from_env
from chalicelib.db import connection_parameters
from chalicelib.migrations import apply_migrations
from chalicelib.wiring import get_database

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "sql"


def whole_list(user_id: str, limit: int) -> dict[str, object]:
    """The parameters of queries/conversations.sql's list_user_conversations for a user's first page, unfiltered
    (the repository's own first-page cursor)."""
    return {
        "user_id": user_id,
        "cursor_at": datetime.max.replace(tzinfo=UTC),
        "cursor_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "unread_only": False,
        "read_only": False,
        "limit": limit,
    }


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def connect(url: str) -> pg8000.native.Connection:
    """A raw pg8000 connection (DDL, COPY, bulk loads) with the app's URL parsing and no socket timeout.

    The app's socket timeout is for requests; creating, cloning and loading a database is not one.
    """
    params = connection_parameters(settings_from_env({"DATABASE_URL": url}).database, "us-east-1")
    params["timeout"] = None
    connection = pg8000.native.Connection(**params)
    # Nor are the database's per-request time limits (sql/0006): lift them for this session alone.
    connection.run("SET statement_timeout = 0")
    connection.run("SET lock_timeout = 0")
    connection.run("SET idle_in_transaction_session_timeout = 0")
    return connection


def migrate(url: str, directory: Path = MIGRATIONS) -> None:
    """Apply the migrations in ``directory`` to the database at ``url`` with the real runner (which opens, and
    closes, a connection of its own)."""
    apply_migrations(settings_from_env({"DATABASE_URL": url}), directory)


def ensure_database(server_url: str, name: str, *, migrated: bool = False) -> str:
    """Create database ``name`` on the server unless it exists (and migrate it when asked); its URL.

    For databases meant to outlive a run (the benchmark's dataset); tests use a :class:`DatabaseFactory`.
    """
    admin = connect(server_url)
    try:
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :name", name=name):
            admin.run(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    url = with_database(server_url, name)
    if migrated:
        migrate(url)
    return url


class DatabaseFactory:
    """Creates databases on one server: clones of a migrated template, or empty ones.

    Names start with ``prefix`` and a label, end with a random suffix, so concurrent runs on one server never
    collide. ``close()`` drops whatever is left, the template included.
    """

    def __init__(self, server_url: str, prefix: str = "chatapi_test") -> None:
        self.server_url = server_url
        self.prefix = prefix
        self._admin: pg8000.native.Connection | None = None
        self._template: str | None = None
        self._created: set[str] = set()

    def _admin_connection(self) -> pg8000.native.Connection:
        if self._admin is None:
            self._admin = connect(self.server_url)
        return self._admin

    def _new_name(self, label: str) -> str:
        label = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:32] or "db"
        return f"{self.prefix}_{label}_{uuid.uuid4().hex[:10]}"

    def _create(self, name: str, template: str | None = None) -> str:
        source = f' TEMPLATE "{template}"' if template else ""
        self._admin_connection().run(f'CREATE DATABASE "{name}"{source}')
        self._created.add(name)
        return with_database(self.server_url, name)

    def template(self) -> str:
        """The migrated template's name; created and migrated on first use."""
        if self._template is None:
            name = self._new_name("template")
            migrate(self._create(name))  # the runner has closed its connection when this returns
            self._admin_connection().run(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            self._template = name
        return self._template

    def migrated(self, label: str) -> str:
        """A new database with every migration applied (a clone of the template); its URL.

        A clone copies the template's files but not its database-level settings (the session time
        limits of sql/0006), so those are copied over as well.
        """
        template = self.template()
        url = self._create(self._new_name(label), template=template)
        admin = self._admin_connection()
        statements = admin.run(
            "SELECT format('ALTER DATABASE %I SET %s = %L', CAST(:clone AS text), split_part(item, '=', 1),"
            "              substr(item, strpos(item, '=') + 1))"
            " FROM pg_db_role_setting s, pg_database d, unnest(s.setconfig) AS item"
            " WHERE d.datname = CAST(:template AS text) AND s.setdatabase = d.oid AND s.setrole = 0",
            clone=database_name(url),
            template=template,
        )
        for (statement,) in statements:
            admin.run(statement)
        return url

    def empty(self, label: str) -> str:
        """A new database with nothing in it (for the migration runner's own tests); its URL."""
        return self._create(self._new_name(label))

    def drop(self, url: str) -> None:
        """Drop a database this factory created, whoever is still connected to it."""
        name = database_name(url)
        self._admin_connection().run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.discard(name)

    @contextmanager
    def database(self, label: str, *, migrated: bool = True) -> Iterator[str]:
        """A new database's URL for the block; dropped afterwards."""
        url = self.migrated(label) if migrated else self.empty(label)
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        for name in sorted(self._created):
            self.drop(with_database(self.server_url, name))
        self._template = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def message_count(*conversation_ids: str) -> int:
    """How many messages the app's database holds in these conversations."""
    rows = get_database().run_sql(
        "SELECT count(*) AS n FROM message_table WHERE conversation_id = ANY(CAST(:ids AS uuid[]))",
        ids=list(conversation_ids),
    )
    return int(rows[0]["n"])
