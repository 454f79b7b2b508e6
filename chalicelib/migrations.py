"""Apply the versioned SQL migrations in ``sql/`` (``NNNN_name.sql``), once each.

``python -m chalicelib.migrations [--dir sql]`` uses the app's own database
settings (``DATABASE_URL`` or ``DB_*``). It is safe to run twice and from two
processes at once: an advisory lock serialises runners, each file runs in its
own transaction together with its row in ``schema_migrations``, and a file whose
text changed after it was applied stops the run instead of drifting silently.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from chalicelib.config import get_settings
from chalicelib.db import Database

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "sql"
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every runner.
_LOCK_KEY = 7_301_994_211


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, in version order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match["version"]), match["name"], path.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a version number")
    return migrations


def apply_migrations(database: Database, directory: Path = DEFAULT_DIR) -> list[Migration]:
    """Apply what is not applied yet; return the migrations applied by this call."""
    database.run_sql("SELECT pg_advisory_lock(:key)", key=_LOCK_KEY)
    try:
        database.run_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        applied = {
            row["version"]: row["checksum"]
            for row in database.run_sql("SELECT version, checksum FROM schema_migrations")
        }
        done = []
        for migration in discover(directory):
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            # The file's statements and its bookkeeping row commit together or not at all.
            database.run_sql("BEGIN")
            try:
                database.run_sql(migration.sql)
                database.run_sql(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum)",
                    version=migration.version,
                    name=migration.name,
                    checksum=migration.checksum,
                )
                database.run_sql("COMMIT")
            except BaseException:
                database.run_sql("ROLLBACK")
                raise
            done.append(migration)
        return done
    finally:
        database.run_sql("SELECT pg_advisory_unlock(:key)", key=_LOCK_KEY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="migrations folder")
    args = parser.parse_args(argv)
    database = Database(get_settings())
    try:
        done = apply_migrations(database, args.dir)
    finally:
        database.close()
    for migration in done:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not done:
        print("schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
