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


def test_0003_copies_each_conversations_latest_message(empty_database: Database, tmp_path: Path) -> None:
    # Data written under 0001-0002 (no latest-message columns yet), then 0003 applied on top of it.
    for migration in ("0001_initial.sql", "0002_connections.sql"):
        (tmp_path / migration).write_text((ROOT / "sql" / migration).read_text(encoding="utf-8"))
    apply_migrations(empty_database, tmp_path)
    busy, empty = str(uuid.uuid4()), str(uuid.uuid4())
    empty_database.run_sql(
        "INSERT INTO conversation_table (conversation_id, is_group, created_by, last_seq, direct_user_low,"
        " direct_user_high) VALUES (:busy, false, 'a', 2, 'a', 'b'), (:empty, false, 'a', 0, 'a', 'c')",
        busy=busy,
        empty=empty,
    )
    empty_database.run_sql(
        "INSERT INTO message_table (message_id, conversation_id, seq, sender_id, temp_message_id, content)"
        " VALUES (gen_random_uuid(), :c, 1, 'a', 't1', 'first'), (:latest, :c, 2, 'b', 't2', 'second')",
        c=busy,
        latest=(latest := str(uuid.uuid4())),
    )
    (tmp_path / "0003_latest_message.sql").write_text(
        (ROOT / "sql" / "0003_latest_message.sql").read_text(encoding="utf-8")
    )
    apply_migrations(empty_database, tmp_path)
    rows = empty_database.run_sql(
        "SELECT conversation_id::text AS id, latest_message_id::text AS message_id, latest_sender_id, latest_content"
        " FROM conversation_table"
    )
    by_id = {row["id"]: (row["message_id"], row["latest_sender_id"], row["latest_content"]) for row in rows}
    assert by_id == {busy: (latest, "b", "second"), empty: (None, None, None)}


def test_0004_copies_each_members_list_row_onto_its_participant_row(empty_database: Database, tmp_path: Path) -> None:
    # Data written under 0001-0003 (the latest message on the conversation row), then 0004 on top of it.
    for migration in ("0001_initial.sql", "0002_connections.sql", "0003_latest_message.sql"):
        (tmp_path / migration).write_text((ROOT / "sql" / migration).read_text(encoding="utf-8"))
    apply_migrations(empty_database, tmp_path)
    direct, group, latest = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    long_chat, long_latest = str(uuid.uuid4()), str(uuid.uuid4())
    empty_database.run_sql(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by, last_seq, direct_user_low,"
        " direct_user_high, latest_message_id, latest_sender_id, latest_content)"
        " VALUES (:direct, '', false, 'a', 7, 'a', 'b', :latest, 'b', 'hi'),"
        " (:group, 'Team', true, 'c', 0, NULL, NULL, NULL, NULL, NULL),"
        " (:long_chat, '', false, 'e', 1, 'e', 'f', :long_latest, 'e', repeat('x', 401))",
        direct=direct,
        group=group,
        latest=latest,
        long_chat=long_chat,
        long_latest=long_latest,
    )
    empty_database.run_sql(
        "INSERT INTO participant_table (conversation_id, user_id, last_read_seq, last_activity_at)"
        " VALUES (:direct, 'a', 5, now()), (:direct, 'b', 7, now()),"
        " (:group, 'c', 0, now()), (:group, 'a', 0, now()), (:group, 'd', 0, now()), (:long_chat, 'e', 1, now())",
        direct=direct,
        group=group,
        long_chat=long_chat,
    )
    (tmp_path / "0004_inbox.sql").write_text((ROOT / "sql" / "0004_inbox.sql").read_text(encoding="utf-8"))
    apply_migrations(empty_database, tmp_path)
    rows = empty_database.run_sql(
        "SELECT conversation_id::text AS id, user_id, title, is_group, peer_id, latest_seq,"
        " latest_message_id::text AS message_id, latest_sender_id, latest_content FROM participant_table"
    )
    copied = {
        (r["id"], r["user_id"]): (
            r["title"],
            r["is_group"],
            r["peer_id"],
            r["latest_seq"],
            r["message_id"],
            r["latest_sender_id"],
            r["latest_content"],
        )
        for r in rows
    }
    assert copied == {
        (direct, "a"): ("", False, "b", 7, latest, "b", "hi"),
        (direct, "b"): ("", False, "a", 7, latest, "b", "hi"),
        (group, "a"): ("Team", True, "c", 0, None, None, None),
        (group, "c"): ("Team", True, "a", 0, None, None, None),
        (group, "d"): ("Team", True, "a", 0, None, None, None),
        # Content over 400 characters stays in message_table only.
        (long_chat, "e"): ("", False, "f", 1, long_latest, "e", None),
    }
    columns = empty_database.run_sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversation_table'"
    )
    assert not {r["column_name"] for r in columns} & {"latest_message_id", "latest_sender_id", "latest_content"}
