"""Apply the versioned SQL migrations in ``sql/`` (``NNNN_name.sql``), once each.

``python -m chalicelib.migrations [--dir sql]`` uses the app's own database
settings (``DATABASE_URL`` or ``DB_*``); ``make migrate`` runs it through
``local/migrate.py``, which picks the dev database when nothing is configured.
It is safe to run twice and from two processes at once: an advisory lock
serialises runners, each file runs in its own transaction together with its row
in ``schema_migrations``, and a file whose text changed after it was applied
stops the run instead of drifting silently.

The runner has a connection of its own, not the app's ``Database``: that one
re-opens a lost connection and retries the statement, which is right for the
app's single autocommit statements and wrong here, where a retry would run the
rest of a file on a new session, outside its transaction and without the lock.
A lost connection aborts the run instead (``ConnectionLost``). The server rolls
back the file it was in, so the database holds exactly the files recorded in
``schema_migrations``, and running again carries on from there.

``sql/schema.sql`` is not a migration: it is the schema those files build,
written out for readers, and is skipped here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from chalicelib.config import Settings, get_settings
from chalicelib.db import connection_parameters

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "sql"
#: The current schema for readers (kept equal to the migrations by tests/test_migrations.py); never applied.
SCHEMA_FILE = "schema.sql"
APPLICATION_NAME = "chat-api migrations"
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every runner.
LOCK_KEY = 7_301_994_211
# SQLSTATE classes that mean the session is gone: 08 connection exception, 57P0x the server ending it
# (pg_terminate_backend, shutdown, crash).
_SESSION_ENDED = re.compile(r"^(08...|57P0.)$")


class MigrationError(RuntimeError):
    """The run stopped; what was committed before stays applied and recorded."""


class ConnectionLost(MigrationError):
    """The connection dropped mid-run. Nothing was retried; the file in progress was rolled back."""


class Unreachable(MigrationError):
    """No connection could be opened (nothing was changed)."""


class MigrationFailed(MigrationError):
    """A file's statement failed; that file was rolled back. ``sqlstate`` is the server's error code."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, in version order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        if path.name == SCHEMA_FILE:
            continue
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match["version"]), match["name"], path.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a version number")
    return migrations


def migration_parameters(settings: Settings) -> dict[str, Any]:
    """pg8000 keyword arguments for the runner's connection: the app's, under the runner's own name."""
    return {**connection_parameters(settings.database, settings.aws_region), "application_name": APPLICATION_NAME}


def describe(params: dict[str, Any]) -> str:
    """Which database ``params`` reach, for people: name, server and user, never the password."""
    where = params["unix_sock"] if "unix_sock" in params else f"{params['host']}:{params['port']}"
    return f"database {params['database']} on {where} as {params['user']}"


def connect(params: dict[str, Any]) -> pg8000.native.Connection:
    """Open the runner's connection; ``Unreachable`` says why in one line."""
    try:
        connection = pg8000.native.Connection(**params)
    except (InterfaceError, OSError, DatabaseError) as error:
        raise Unreachable(f"cannot connect to {describe(params)}: {_reason(error)}") from error
    # The timeout bounded connecting and logging in; a migration's statements may run for minutes.
    # (pg8000 applies its one timeout to every socket read and offers no public way to lift it.)
    connection._usock.settimeout(None)
    # The database's session limits (sql/0006) are for requests. A migration may run for minutes, but
    # must not queue an ALTER behind a long lock wait while every request queues behind it in turn.
    connection.run("SET statement_timeout = 0")
    connection.run("SET idle_in_transaction_session_timeout = 0")
    connection.run("SET lock_timeout = '15s'")
    return connection


def apply_migrations(settings: Settings, directory: Path = DEFAULT_DIR) -> list[Migration]:
    """Apply what is not applied yet to ``settings.database``; return the migrations applied by this call.

    Raises ``Unreachable`` when no connection opens, ``ConnectionLost`` when it drops mid-run,
    ``MigrationFailed`` when a file's statement fails, and ``MigrationError`` for an edited applied file.
    """
    params = migration_parameters(settings)
    connection = connect(params)
    try:
        return _apply(connection, discover(directory), describe(params))
    finally:
        with contextlib.suppress(InterfaceError, OSError, DatabaseError):
            connection.close()


def _apply(connection: pg8000.native.Connection, migrations: list[Migration], target: str) -> list[Migration]:
    def lost(error: Exception, doing: str) -> ConnectionLost:
        return ConnectionLost(
            f"lost the connection to {target} {doing} ({_reason(error)}); nothing was retried "
            "and the file in progress was rolled back: run the migrations again"
        )

    current = "before the first migration"
    try:
        connection.run("SELECT pg_advisory_lock(:key)", key=LOCK_KEY)
        connection.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        applied = dict(connection.run("SELECT version, checksum FROM schema_migrations"))
    except (InterfaceError, OSError) as error:
        raise lost(error, current) from error
    except DatabaseError as error:
        if _session_ended(error):
            raise lost(error, current) from error
        raise
    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.label} changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        current = f"while applying {migration.label}"
        # The file's statements and its bookkeeping row commit together or not at all.
        try:
            connection.run("BEGIN")
            connection.run(migration.sql)
            connection.run(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum)",
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
            )
            connection.run("COMMIT")
        except (InterfaceError, OSError) as error:
            # Lost at COMMIT, the file may have committed; then it is recorded too, and the next run skips it.
            raise lost(error, current) from error
        except DatabaseError as error:
            if _session_ended(error):
                raise lost(error, current) from error
            try:
                connection.run("ROLLBACK")
            except (InterfaceError, OSError, DatabaseError) as rollback_error:
                raise lost(rollback_error, current) from error
            code = _sqlstate(error)
            raise MigrationFailed(
                f"{migration.label} failed and was rolled back: {_reason(error)} (SQLSTATE {code})", code
            ) from error
        done.append(migration)
    with contextlib.suppress(InterfaceError, OSError, DatabaseError):
        # Closing the session would release it too; unlocking first frees waiting runners sooner.
        connection.run("SELECT pg_advisory_unlock(:key)", key=LOCK_KEY)
    return done


def _sqlstate(error: DatabaseError) -> str:
    details = error.args[0] if error.args else None
    return str(details.get("C", "")) if isinstance(details, dict) else ""


def _session_ended(error: DatabaseError) -> bool:
    return bool(_SESSION_ENDED.match(_sqlstate(error)))


def _reason(error: BaseException) -> str:
    """One line from a pg8000 or socket error: the server's message, or the socket error under it."""
    details = error.args[0] if error.args else None
    if isinstance(details, dict) and details.get("M"):
        return str(details["M"])
    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError):  # refused, unreachable, timed out
        return cause.strerror.lower() if cause.strerror else str(cause) or type(cause).__name__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def main(argv: list[str] | None = None, settings: Settings | None = None, *, prog: str = "migrate") -> int:
    """The command line: say which database, migrate it, report each file; a failure is one line on stderr."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="migrations folder")
    args = parser.parse_args(argv)
    settings = settings or get_settings()
    try:
        print(f"migrating {describe(migration_parameters(settings))}", flush=True)
        done = apply_migrations(settings, args.dir)
    except (MigrationError, DatabaseError, ValueError) as error:
        # DatabaseError: the lock or bookkeeping statements themselves failed (permissions, say).
        message = _reason(error) if isinstance(error, DatabaseError) else str(error)
        print(f"{prog}: {message}", file=sys.stderr)
        return 1
    for migration in done:
        print(f"applied {migration.label}")
    if not done:
        print("schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m chalicelib.migrations"))
