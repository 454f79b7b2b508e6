"""The migration runner: applies each file once, records it, refuses edited history."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest

from chalicelib.config import get_settings, settings_from_env
from chalicelib.db import Database, connection_parameters
from chalicelib.migrations import apply_migrations, discover
from tests.conftest import ROOT, with_database


@pytest.fixture
def empty_database() -> Iterator[Database]:
    url = get_settings().database.url
    assert url
    name = f"chatapi_migrate_{uuid.uuid4().hex[:10]}"
    admin = pg8000.native.Connection(**connection_parameters(settings_from_env({"DATABASE_URL": url}).database, ""))
    admin.run(f'CREATE DATABASE "{name}"')
    database = Database(settings_from_env({"DATABASE_URL": with_database(url, name)}))
    yield database
    database.close()
    admin.run(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_applies_once_and_records_what_it_applied(empty_database: Database) -> None:
    applied = apply_migrations(empty_database, ROOT / "sql")
    assert [m.version for m in applied] == [m.version for m in discover(ROOT / "sql")]
    assert apply_migrations(empty_database, ROOT / "sql") == []
    rows = empty_database.run_sql("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in applied]
    tables = {r["tablename"] for r in empty_database.run_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"conversation_table", "participant_table", "message_table"} <= tables


def test_an_edited_applied_migration_stops_the_run(empty_database: Database, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int);")
    apply_migrations(empty_database, tmp_path)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id bigint);")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        apply_migrations(empty_database, tmp_path)


def test_a_failing_migration_leaves_nothing_behind(empty_database: Database, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(Exception, match="no_such_function"):
        apply_migrations(empty_database, tmp_path)
    tables = {r["tablename"] for r in empty_database.run_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "ok" in tables and "half" not in tables
    versions = [r["version"] for r in empty_database.run_sql("SELECT version FROM schema_migrations")]
    assert versions == [1]


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        discover(tmp_path)
