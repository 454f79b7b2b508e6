"""PostgreSQL access through pg8000's native API.

One ``Database`` per process holds one connection, reused across warm Lambda
invocations (RDS Proxy pools behind it). Every statement the app runs is a
single autocommit statement (data-modifying CTEs do the multi-table writes), so
a connection found dead is re-opened and the statement retried once. A retried
write may meet what its own first attempt committed unseen: the repository tells
that apart by the ids it chose (see its docstring). Migrations do not come here:
they run several statements in one transaction on a connection of their own.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pg8000.native
from pg8000.converters import TIMESTAMPTZ as TIMESTAMPTZ_OID
from pg8000.converters import timestamptz_in as pg8000_timestamptz_in
from pg8000.exceptions import DatabaseError, InterfaceError

from chalicelib.config import DatabaseSettings, Settings
from chalicelib.errors import ServiceUnavailable
from chalicelib.sql import Query, load_queries

log = logging.getLogger(__name__)

Row = dict[str, Any]
UNIQUE_VIOLATION = "23505"
# "cached plan must not change result type", "prepared statement does not exist".
_STALE_STATEMENT = frozenset({"0A000", "26000"})
# The server's own time limits (sql/0006): statement_timeout / lock_timeout cancelled the statement.
_SERVER_TIMEOUT = frozenset({"57014", "55P03"})


def connection_parameters(db: DatabaseSettings, region: str) -> dict[str, Any]:
    """Explicit pg8000 connection keyword arguments for these settings."""
    params: dict[str, Any] = {
        "user": db.user,
        "host": db.host,
        "port": db.port,
        "database": db.name,
        "password": db.password,
        "timeout": db.connect_timeout_s,
        "application_name": "chat-api",
    }
    if db.url:
        url = urlparse(db.url)
        if url.scheme not in {"postgres", "postgresql"}:
            raise ValueError("DATABASE_URL must start with postgresql://")
        query_args = {key: values[-1] for key, values in parse_qs(url.query).items()}
        params.update(
            user=unquote(url.username or "postgres"),
            password=unquote(url.password) if url.password else db.password,
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            database=unquote(url.path.lstrip("/")) or "postgres",
        )
        socket_dir = query_args.get("host", "")
        if socket_dir.startswith("/"):
            params.pop("host")
            params["unix_sock"] = f"{socket_dir}/.s.PGSQL.{url.port or 5432}"
        if query_args.get("sslmode") in {"require", "verify-ca", "verify-full"}:
            params["ssl_context"] = ssl.create_default_context()
    if db.ssl:
        params["ssl_context"] = ssl.create_default_context()
    if db.iam_auth:
        params["password"] = _iam_token(params, region)
        params["ssl_context"] = params.get("ssl_context") or ssl.create_default_context()
    return params


def _iam_token(params: Mapping[str, Any], region: str) -> str:
    """A 15-minute RDS IAM auth token; boto3 is imported only when IAM auth is on."""
    import boto3

    client = boto3.client("rds", region_name=region)
    return str(client.generate_db_auth_token(DBHostname=params["host"], Port=params["port"], DBUsername=params["user"]))


class UniqueViolation(Exception):
    """A statement broke a unique constraint (SQLSTATE 23505).

    Not a client error by itself: the repository knows which constraint a statement may
    meet, and what that means (an idempotent retry, a pair that already exists).
    """

    def __init__(self, constraint: str) -> None:
        super().__init__(f"unique constraint {constraint or '?'} violated")
        self.constraint = constraint


class Queries:
    """Named queries, and the row-shape helpers every runner of them shares."""

    def run(self, name: str, **params: Any) -> list[Row]:
        raise NotImplementedError

    def optional(self, name: str, **params: Any) -> Row | None:
        """The one row the named query returns, or None when it returns none."""
        rows = self.run(name, **params)
        if len(rows) > 1:
            raise ValueError(f"query {name!r} returned {len(rows)} rows where at most one was expected")
        return rows[0] if rows else None

    def one(self, name: str, **params: Any) -> Row:
        """The one row the named query always returns."""
        row = self.optional(name, **params)
        if row is None:
            raise ValueError(f"query {name!r} returned no row where one was expected")
        return row

    def execute(self, name: str, **params: Any) -> None:
        """Run the named query for its effect."""
        self.run(name, **params)


class Database(Queries):
    """A lazily opened pg8000 connection that runs named queries."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: pg8000.native.Connection | None = None
        # pg8000 connections are not thread-safe; the local server shares one per process.
        self._lock = threading.RLock()  # re-entered by a named query run inside a transaction
        # Named prepared statements of the current connection, by SQL text.
        self._prepared: dict[str, Any] = {}

    def _connect(self) -> pg8000.native.Connection:
        params = connection_parameters(self._settings.database, self._settings.aws_region)
        connection = pg8000.native.Connection(**params)
        # pg8000 takes one timeout for connecting and reading; reads get their own, longer than the
        # server's statement_timeout (sql/0006) so that the server cancels a stalled statement first.
        sock = getattr(connection, "_usock", None)
        if sock is not None:
            sock.settimeout(self._settings.database.read_timeout_s)
        connection.register_in_adapter(TIMESTAMPTZ_OID, parse_timestamptz)
        return connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(InterfaceError, OSError):
                    self._connection.close()
                self._connection = None

    def run_sql(self, sql: str, **params: Any) -> list[Row]:
        """Run one statement; re-open a dead connection, and re-run a read (SELECT) once.

        Other raw statements are not re-run: their outcome is unknown when the connection
        died after they were sent. Named queries say whether they are safe to re-run.
        """
        return self._run(sql, params, rerun=sql.lstrip()[:6].upper() == "SELECT")

    def _run(self, sql: str, params: dict[str, Any], *, rerun: bool) -> list[Row]:
        """Run one statement; with ``rerun``, once more on a new connection if the first was lost.

        A statement with parameters runs as a named prepared statement, prepared once per
        connection: PostgreSQL then parses and plans it once instead of on every request
        (planning was most of the cost of the small per-request queries).
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._attempt(sql, params, retry_stale=True)
                except (InterfaceError, OSError) as error:
                    log.warning("database connection lost (%s); reconnecting", type(error).__name__)
                    self._drop_connection()
                    if attempt == 2 or not rerun:
                        raise ServiceUnavailable("The database could not be reached; try again") from error
            raise AssertionError("unreachable")

    def _attempt(self, sql: str, params: dict[str, Any], *, retry_stale: bool) -> list[Row]:
        """One execution on the current connection (opened if needed), its errors in our terms.

        Connection failures (``InterfaceError``, ``OSError``) are left to the caller, which knows
        whether the statement may run again.
        """
        if self._connection is None:
            self._connection = self._connect()
            self._prepared.clear()
        try:
            rows, description = self._execute(self._connection, sql, params)
        except DatabaseError as error:
            code = _sqlstate(error)
            if code == UNIQUE_VIOLATION:
                raise UniqueViolation(_error_field(error, "n")) from error
            if code in _STALE_STATEMENT:
                # A migration changed what a cached statement reads: prepare it again.
                self._prepared.pop(sql, None)
                if retry_stale:
                    return self._attempt(sql, params, retry_stale=False)
                raise ServiceUnavailable("The schema changed under the request; try again") from error
            if code in _SERVER_TIMEOUT:
                log.warning("statement cancelled by the server's time limit (%s)", code)
                raise ServiceUnavailable("The database is busy; try again") from error
            raise
        columns = [column["name"] for column in description or []]
        return [dict(zip(columns, row, strict=True)) for row in rows or []]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Several named queries that commit together or not at all, on one connection.

        For changes that must read what they change under a lock (membership: lock the
        conversation row first, then every later statement sees every earlier commit). Nothing
        in it is re-run: a lost connection rolls the transaction back on the server, or, lost
        during COMMIT, leaves its outcome unknown; either way the caller gets
        ``ServiceUnavailable`` and a client retry must be harmless (the changes that use this are
        idempotent).
        """
        with self._lock:
            try:
                try:
                    self._attempt("BEGIN", {}, retry_stale=False)
                except (InterfaceError, OSError):  # a dead pooled connection: nothing has happened yet
                    self._drop_connection()
                    self._attempt("BEGIN", {}, retry_stale=False)
                try:
                    yield Transaction(self)
                except BaseException:
                    with contextlib.suppress(InterfaceError, OSError, DatabaseError):
                        self._attempt("ROLLBACK", {}, retry_stale=False)
                    raise
                self._attempt("COMMIT", {}, retry_stale=False)
            except (InterfaceError, OSError) as error:
                log.warning("database connection lost in a transaction (%s)", type(error).__name__)
                self._drop_connection()
                raise ServiceUnavailable("The database could not be reached; try again") from error

    def _execute(self, connection: pg8000.native.Connection, sql: str, params: dict[str, Any]) -> tuple[Any, Any]:
        if not params:
            return connection.run(sql), connection.columns
        statement = self._prepared.get(sql)
        if statement is None:
            statement = connection.prepare(sql)
            self._prepared[sql] = statement
        return statement.run(**params), statement.columns

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(InterfaceError, OSError):
                connection.close()

    def run(self, name: str, **params: Any) -> list[Row]:
        """Run the named query from ``chalicelib/queries``; every row it returns.

        A lost connection re-runs it once on a new one only if the query is safe to re-run
        (a read, or a write that says why it is idempotent by construction).
        """
        named: Query = load_queries()[name]
        return self._run(named.sql, params, rerun=named.rerun_safe)


class Transaction(Queries):
    """Named queries inside ``Database.transaction()`` (the database's lock is held throughout)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def run(self, name: str, **params: Any) -> list[Row]:
        return self._database._attempt(load_queries()[name].sql, params, retry_stale=False)


def parse_timestamptz(text: str) -> datetime:
    """PostgreSQL's ISO output (``2026-11-28 10:33:11.123456+00``, or json's ``...T...+00:00``) parsed
    by ``datetime.fromisoformat``.

    pg8000's own parser goes through ``strptime`` at ~20 us a value, which made decoding a 500-row
    conversation list cost more than running its query; ``fromisoformat`` takes under 1 us.
    ``infinity`` and BC dates fall back to pg8000's parser.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        parsed: datetime = pg8000_timestamptz_in(text)
        return parsed


def _error_field(error: DatabaseError, field: str) -> str:
    """A field of PostgreSQL's error response (``C``: SQLSTATE, ``n``: constraint name)."""
    details = error.args[0] if error.args else None
    return str(details.get(field, "")) if isinstance(details, dict) else ""


def _sqlstate(error: DatabaseError) -> str:
    return _error_field(error, "C")
