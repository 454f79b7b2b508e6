"""The migration runner and the schema file.

The runner applies each file once, records it, refuses edited history, and runs on a connection of its own that
it never silently replaces. ``sql/schema.sql`` describes exactly what the migrations build. ``make migrate``
(``local/migrate.py``) says which database it changes and fails in one line.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pg8000.native
import pytest

from chalicelib.config import Settings, settings_from_env
from chalicelib.migrations import (
    APPLICATION_NAME,
    LOCK_KEY,
    SCHEMA_FILE,
    ConnectionLost,
    MigrationError,
    MigrationFailed,
    apply_migrations,
    discover,
)
from chalicelib.sql import query
from local.services import EmbeddedServices
from tests.databases import DatabaseFactory, connect, database_name, whole_list
from tests.local_server import is_running, server_env, start_server

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "sql"


class Scratch:
    """An empty database of this test's own: its URL, the settings that reach it, a way to query it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings: Settings = settings_from_env({"DATABASE_URL": url})
        self._connection: pg8000.native.Connection | None = None

    def run(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        if self._connection is None:
            self._connection = connect(self.url)
        rows = self._connection.run(sql, **params)
        columns = [column["name"] for column in self._connection.columns or []]
        return [dict(zip(columns, row, strict=True)) for row in rows or []]

    def tables(self) -> set[str]:
        return {r["tablename"] for r in self.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def recorded(self) -> list[int]:
        return [r["version"] for r in self.run("SELECT version FROM schema_migrations ORDER BY version")]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@pytest.fixture
def scratch(database_factory: DatabaseFactory) -> Iterator[Callable[[str], Scratch]]:
    """Empty databases, as many as the test asks for; dropped afterwards."""
    made: list[Scratch] = []

    def make(label: str) -> Scratch:
        made.append(Scratch(database_factory.empty(label)))
        return made[-1]

    yield make
    for database in made:
        database.close()
        database_factory.drop(database.url)


@pytest.fixture
def empty_database(scratch: Callable[[str], Scratch]) -> Scratch:
    return scratch("migrate")


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def copy_migrations(directory: Path, *names: str) -> Path:
    return write(directory, {name: (SQL / name).read_text(encoding="utf-8") for name in names})


# -- the runner -------------------------------------------------------------------------------------------------


def test_applies_once_and_records_what_it_applied(empty_database: Scratch) -> None:
    applied = apply_migrations(empty_database.settings, SQL)
    assert [m.version for m in applied] == [m.version for m in discover(SQL)]
    assert apply_migrations(empty_database.settings, SQL) == []
    rows = empty_database.run("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in applied]
    assert {"conversation_table", "participant_table", "message_table"} <= empty_database.tables()


def test_an_edited_applied_migration_stops_the_run(empty_database: Scratch, tmp_path: Path) -> None:
    write(tmp_path, {"0001_first.sql": "CREATE TABLE a (id int);"})
    apply_migrations(empty_database.settings, tmp_path)
    write(tmp_path, {"0001_first.sql": "CREATE TABLE a (id bigint);"})
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(empty_database.settings, tmp_path)


def test_a_failing_migration_leaves_nothing_behind(empty_database: Scratch, tmp_path: Path) -> None:
    write(
        tmp_path,
        {"0001_ok.sql": "CREATE TABLE ok (id int);", "0002_broken.sql": "CREATE TABLE half (id int); SELECT nope();"},
    )
    with pytest.raises(MigrationFailed, match=r"0002_broken failed .*nope.*SQLSTATE 42883") as failed:
        apply_migrations(empty_database.settings, tmp_path)
    assert failed.value.sqlstate == "42883"
    assert "ok" in empty_database.tables() and "half" not in empty_database.tables()
    assert empty_database.recorded() == [1]


def test_badly_named_files_are_refused_and_the_schema_file_is_not_a_migration(tmp_path: Path) -> None:
    assert SCHEMA_FILE not in {f"{m.label}.sql" for m in discover(SQL)}
    assert [m.label for m in discover(write(tmp_path, {SCHEMA_FILE: "CREATE TABLE t ();"}))] == []
    write(tmp_path, {"first.sql": "SELECT 1;"})
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def migration_backend(scratch: Scratch, query_part: str) -> int | None:
    """The pid of the runner's backend on ``scratch`` while it runs a statement containing ``query_part``."""
    observer = connect(scratch.url)
    try:
        rows = observer.run(
            "SELECT pid FROM pg_stat_activity WHERE application_name = :app AND datname = :db"
            " AND state = 'active' AND position(:part in query) > 0",
            app=APPLICATION_NAME,
            db=database_name(scratch.url),
            part=query_part,
        )
        return int(rows[0][0]) if rows else None
    finally:
        observer.close()


def run_in_thread(settings: Settings, directory: Path) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["applied"] = apply_migrations(settings, directory)
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"not within {timeout}s")


def test_a_connection_killed_mid_migration_aborts_the_run_and_a_rerun_completes(
    empty_database: Scratch, tmp_path: Path
) -> None:
    write(
        tmp_path,
        {
            "0001_first.sql": "CREATE TABLE first (id int);",
            "0002_slow.sql": "CREATE TABLE half (id int); SELECT pg_sleep(30);",
            "0003_after.sql": "CREATE TABLE after (id int);",
        },
    )
    thread, outcome = run_in_thread(empty_database.settings, tmp_path)
    pid = wait_for(lambda: migration_backend(empty_database, "pg_sleep(30)"))
    assert empty_database.run("SELECT pg_terminate_backend(:pid) AS killed", pid=pid) == [{"killed": True}]
    thread.join(10)
    assert not thread.is_alive(), "the runner retried or hung instead of stopping"

    error = outcome.get("error")
    assert isinstance(error, ConnectionLost), outcome
    assert "while applying 0002_slow" in str(error) and "nothing was retried" in str(error)
    # The killed file left nothing; the one before it is applied and recorded; nothing ran after it.
    assert empty_database.tables() == {"schema_migrations", "first"}
    assert empty_database.recorded() == [1]
    assert migration_backend(empty_database, "") is None

    # Not applied, so the file may still change: the re-run carries on from 0002 (and the lock was released).
    write(tmp_path, {"0002_slow.sql": "CREATE TABLE half (id int);"})
    assert [m.label for m in apply_migrations(empty_database.settings, tmp_path)] == ["0002_slow", "0003_after"]
    assert empty_database.tables() == {"schema_migrations", "first", "half", "after"}
    assert empty_database.recorded() == [1, 2, 3]


def test_the_advisory_lock_is_taken_on_the_migration_connection(empty_database: Scratch, tmp_path: Path) -> None:
    write(tmp_path, {"0001_first.sql": "CREATE TABLE first (id int);"})
    holder = connect(empty_database.url)
    try:
        holder.run("SELECT pg_advisory_lock(:key)", key=LOCK_KEY)
        thread, outcome = run_in_thread(empty_database.settings, tmp_path)
        # The runner's own backend is the one waiting for the lock, before it has touched anything.
        assert wait_for(lambda: migration_backend(empty_database, "pg_advisory_lock"))
        time.sleep(0.2)
        assert thread.is_alive() and "first" not in empty_database.tables()
        holder.run("SELECT pg_advisory_unlock(:key)", key=LOCK_KEY)
        thread.join(10)
    finally:
        holder.close()
    assert [m.label for m in outcome["applied"]] == ["0001_first"]


def test_a_migration_may_run_longer_than_the_connect_timeout(empty_database: Scratch, tmp_path: Path) -> None:
    write(tmp_path, {"0001_slow.sql": "SELECT pg_sleep(1.5);"})
    settings = settings_from_env({"DATABASE_URL": empty_database.url, "DB_CONNECT_TIMEOUT": "1"})
    assert [m.label for m in apply_migrations(settings, tmp_path)] == ["0001_slow"]


def test_0003_copies_each_conversations_latest_message(empty_database: Scratch, tmp_path: Path) -> None:
    # Data written under 0001-0002 (no latest-message columns yet), then 0003 applied on top of it.
    copy_migrations(tmp_path, "0001_initial.sql", "0002_connections.sql")
    apply_migrations(empty_database.settings, tmp_path)
    busy, empty = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    latest = "00000000-0000-4000-8000-0000000000aa"
    empty_database.run(
        "INSERT INTO conversation_table (conversation_id, is_group, created_by, last_seq, direct_user_low,"
        " direct_user_high) VALUES (CAST(:busy AS uuid), false, 'a', 2, 'a', 'b'),"
        " (CAST(:empty AS uuid), false, 'a', 0, 'a', 'c')",
        busy=busy,
        empty=empty,
    )
    empty_database.run(
        "INSERT INTO message_table (message_id, conversation_id, seq, sender_id, temp_message_id, content)"
        " VALUES (gen_random_uuid(), CAST(:c AS uuid), 1, 'a', 't1', 'first'),"
        " (CAST(:latest AS uuid), CAST(:c AS uuid), 2, 'b', 't2', 'second')",
        c=busy,
        latest=latest,
    )
    copy_migrations(tmp_path, "0003_latest_message.sql")
    apply_migrations(empty_database.settings, tmp_path)
    rows = empty_database.run(
        "SELECT conversation_id::text AS id, latest_message_id::text AS message_id, latest_sender_id, latest_content"
        " FROM conversation_table"
    )
    by_id = {row["id"]: (row["message_id"], row["latest_sender_id"], row["latest_content"]) for row in rows}
    assert by_id == {busy: (latest, "b", "second"), empty: (None, None, None)}


def test_0004_copies_each_members_list_row_onto_its_participant_row(empty_database: Scratch, tmp_path: Path) -> None:
    # Data written under 0001-0003 (the latest message on the conversation row), then 0004 on top of it.
    copy_migrations(tmp_path, "0001_initial.sql", "0002_connections.sql", "0003_latest_message.sql")
    apply_migrations(empty_database.settings, tmp_path)
    direct, group, latest = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    long_chat, long_latest = "00000000-0000-4000-8000-000000000004", "00000000-0000-4000-8000-000000000005"
    empty_database.run(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by, last_seq, direct_user_low,"
        " direct_user_high, latest_message_id, latest_sender_id, latest_content)"
        " VALUES (CAST(:direct AS uuid), '', false, 'a', 7, 'a', 'b', CAST(:latest AS uuid), 'b', 'hi'),"
        " (CAST(:group AS uuid), 'Team', true, 'c', 0, NULL, NULL, NULL, NULL, NULL),"
        " (CAST(:long_chat AS uuid), '', false, 'e', 1, 'e', 'f', CAST(:long_latest AS uuid), 'e', repeat('x', 401))",
        direct=direct,
        group=group,
        latest=latest,
        long_chat=long_chat,
        long_latest=long_latest,
    )
    empty_database.run(
        "INSERT INTO participant_table (conversation_id, user_id, last_read_seq, last_activity_at)"
        " SELECT CAST(c AS uuid), u, r, now() FROM (VALUES (:direct, 'a', 5), (:direct, 'b', 7),"
        " (:group, 'c', 0), (:group, 'a', 0), (:group, 'd', 0), (:long_chat, 'e', 1)) AS v (c, u, r)",
        direct=direct,
        group=group,
        long_chat=long_chat,
    )
    copy_migrations(tmp_path, "0004_inbox.sql")
    apply_migrations(empty_database.settings, tmp_path)
    rows = empty_database.run(
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
    columns = empty_database.run(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversation_table'"
    )
    assert not {r["column_name"] for r in columns} & {"latest_message_id", "latest_sender_id", "latest_content"}


def test_0005_to_0010_move_the_list_row_onto_the_conversation_and_list_the_same(
    empty_database: Scratch, tmp_path: Path
) -> None:
    # Data written under 0001-0004 (each member's list row on its participant row), then 0005 on top of it.
    copy_migrations(tmp_path, "0001_initial.sql", "0002_connections.sql", "0003_latest_message.sql", "0004_inbox.sql")
    apply_migrations(empty_database.settings, tmp_path)
    direct, group, long_chat = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    empty_database.run(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by, last_seq, direct_user_low,"
        " direct_user_high) VALUES (CAST(:direct AS uuid), '', false, 'a', 2, 'a', 'b'),"
        " (CAST(:group AS uuid), 'Team', true, 'c', 0, NULL, NULL),"
        " (CAST(:long_chat AS uuid), '', false, 'e', 1, 'e', 'f')",
        direct=direct,
        group=group,
        long_chat=long_chat,
    )
    empty_database.run(
        "INSERT INTO message_table (message_id, conversation_id, seq, sender_id, temp_message_id, content)"
        " VALUES ('00000000-0000-4000-8000-0000000000a1', CAST(:direct AS uuid), 1, 'a', 't1', 'first'),"
        " ('00000000-0000-4000-8000-0000000000a2', CAST(:direct AS uuid), 2, 'b', 't2', 'latest'),"
        " ('00000000-0000-4000-8000-0000000000a3', CAST(:long_chat AS uuid), 1, 'e', 't1', repeat('x', 401))",
        direct=direct,
        long_chat=long_chat,
    )
    empty_database.run(
        "INSERT INTO participant_table (conversation_id, user_id, last_read_seq, last_activity_at, peer_id)"
        " SELECT CAST(c AS uuid), u, r, now(), p FROM (VALUES (:direct, 'a', 1, 'b'), (:direct, 'b', 2, 'a'),"
        " (:group, 'c', 0, 'a'), (:group, 'a', 0, 'c'), (:group, 'd', 0, 'a'), (:long_chat, 'e', 1, 'f'),"
        " (:long_chat, 'f', 0, 'e')) AS v (c, u, r, p)",
        direct=direct,
        group=group,
        long_chat=long_chat,
    )
    copy_migrations(tmp_path, "0005_constant_cost_send.sql")
    apply_migrations(empty_database.settings, tmp_path)
    rows = empty_database.run(
        "SELECT conversation_id::text AS id, latest_message_id::text AS message_id, latest_sender_id,"
        " latest_content, member_count FROM conversation_table"
    )
    assert {
        r["id"]: (r["message_id"], r["latest_sender_id"], r["latest_content"], r["member_count"]) for r in rows
    } == {
        direct: ("00000000-0000-4000-8000-0000000000a2", "b", "latest", 2),
        group: (None, None, None, 3),
        # Content over 400 characters stays in message_table only.
        long_chat: ("00000000-0000-4000-8000-0000000000a3", "e", None, 2),
    }
    columns = empty_database.run(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'participant_table'"
    )
    assert {r["column_name"] for r in columns} == {
        "conversation_id",
        "user_id",
        "joined_at",
        "last_read_seq",
        "last_read_at",
        "peer_id",
    }
    # 0006 and 0007 on top (roles: the group's creator owns it; the two lowest members on the row), then
    # the app's own list query reads the upgraded rows as it reads new ones.
    copy_migrations(tmp_path, "0006_session_timeouts.sql", "0007_groups.sql", "0008_message_lifecycle.sql")
    apply_migrations(empty_database.settings, tmp_path)
    roles = empty_database.run("SELECT conversation_id::text AS id, user_id, role FROM participant_table")
    assert {(r["id"], r["user_id"]): r["role"] for r in roles if r["role"] != "member"} == {(group, "c"): "owner"}
    lowest = empty_database.run(
        "SELECT conversation_id::text AS id, first_member_id, second_member_id FROM conversation_table"
    )
    assert {r["id"]: (r["first_member_id"], r["second_member_id"]) for r in lowest} == {
        direct: ("a", "b"),
        group: ("a", "c"),
        long_chat: ("e", "f"),
    }
    # 0008: each message's one change so far is its send.
    numbers = empty_database.run("SELECT seq, change_seq FROM message_table")
    assert all(row["seq"] == row["change_seq"] for row in numbers)
    # 0009 and 0010 on top (0010 copies each direct conversation onto its members' rows), then the app's
    # own list query reads the upgraded rows as it reads new ones.
    copy_migrations(tmp_path, "0009_message_with_reply.sql", "0010_list_rows.sql")
    apply_migrations(empty_database.settings, tmp_path)
    copies = empty_database.run(
        "SELECT conversation_id::text AS id, user_id, inbox_last_seq, inbox_fragment IS NOT NULL AS copied"
        " FROM participant_table"
    )
    assert {(r["id"], r["user_id"]): (r["inbox_last_seq"], r["copied"]) for r in copies} == {
        (direct, "a"): (2, True),
        (direct, "b"): (2, True),
        (long_chat, "e"): (1, True),
        (long_chat, "f"): (1, True),
        (group, "a"): (None, False),
        (group, "c"): (None, False),
        (group, "d"): (None, False),
    }

    def listed(user: str) -> dict[str, dict[str, Any]]:
        [row] = empty_database.run(query("list_user_conversations"), **whole_list(user, limit=10))
        return {item["conversationId"]: item for item in json.loads(f"[{row['rows_json']}]")}

    rows_of_a = listed("a")
    shown = ("unreadCount", "isRead", "latestMessageId", "senderId", "latestContent", "participantId", "role")
    assert [rows_of_a[direct][field] for field in shown] == [
        1,
        False,
        "00000000-0000-4000-8000-0000000000a2",
        "b",
        "latest",
        "b",
        "member",
    ]
    assert [rows_of_a[group][field] for field in shown] == [0, True, None, "", "", "c", "member"]
    assert (rows_of_a[group]["title"], rows_of_a[group]["isGroup"], rows_of_a[direct]["changeSeq"]) == ("Team", True, 2)
    # Content over 400 characters is not on the conversation row: the copy has it from message_table.
    assert listed("f")[long_chat]["latestContent"] == "x" * 401


# -- sql/schema.sql ---------------------------------------------------------------------------------------------
#
# Two dumps of each schema: pg_dump's, when a pg_dump sits next to the server (the same version as the server,
# which pg_dump requires: Debian's for the system PostgreSQL, pgserver's bundled one for the embedded one), and
# one from the catalogs, which needs nothing but the connection.

_CATALOG_DUMP = """
SELECT format('relation %s %s', c.relname, c.relkind)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relname <> 'schema_migrations'
UNION ALL
SELECT format('column %s #%s %s %s%s%s%s%s', c.relname,
              lpad((row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::text, 3, '0'), a.attname,
              format_type(a.atttypid, a.atttypmod),
              CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
              ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
              ' COLLATE ' || nullif(co.collname, 'default'),
              ' ' || nullif(a.attidentity::text || a.attgenerated::text, ''))
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relname <> 'schema_migrations'
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('constraint %s %s %s', coalesce(c.relname, t.typname), k.conname, pg_get_constraintdef(k.oid))
FROM pg_constraint k
JOIN pg_namespace n ON n.oid = k.connamespace
LEFT JOIN pg_class c ON c.oid = k.conrelid
LEFT JOIN pg_type t ON t.oid = k.contypid
WHERE n.nspname = 'public' AND c.relname IS DISTINCT FROM 'schema_migrations'
UNION ALL
SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
UNION ALL
SELECT format('view %s %s', viewname, definition) FROM pg_views WHERE schemaname = 'public'
UNION ALL
SELECT format('trigger %s', pg_get_triggerdef(g.oid))
FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT g.tgisinternal
UNION ALL
SELECT format('function %s', pg_get_functiondef(p.oid))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
UNION ALL
SELECT format('type %s %s %s', t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod))
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype IN ('d', 'e', 'r', 'm')
UNION ALL
SELECT format('enum %s #%s %s', t.typname, e.enumsortorder, e.enumlabel)
FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
UNION ALL
SELECT format('sequence %s %s %s %s %s', c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
              s.seqcycle)
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('extension %s', extname) FROM pg_extension WHERE extname <> 'plpgsql'
"""


def catalog_dump(url: str) -> list[str]:
    """The public schema as sorted lines from the catalogs: relations, columns in order (dropped ones left out,
    so their numbering is the one a fresh table would have), constraints, indexes, and the rest."""
    connection = connect(url)
    try:
        return sorted(row[0] for row in connection.run(_CATALOG_DUMP))
    finally:
        connection.close()


def pg_dump_next_to_the_server(url: str) -> Path | None:
    """The server's own ``pg_dump`` (its ``BINDIR``), when it is on this machine."""
    connection = connect(url)
    try:
        rows = connection.run("SELECT setting FROM pg_config WHERE name = 'BINDIR'")
    except pg8000.native.DatabaseError:  # pg_config is readable by superusers only
        rows = []
    finally:
        connection.close()
    candidate = Path(rows[0][0]) / "pg_dump" if rows else None
    return candidate if candidate and os.access(candidate, os.X_OK) else None


EXCLUDED = ("--exclude-table=public.schema_migrations",)


def pg_dump(url: str, binary: Path) -> list[str]:
    """``pg_dump --schema-only`` without what differs between any two dumps (comments, settings, the restrict
    key) and without the runner's bookkeeping table."""
    result = subprocess.run(
        [str(binary), "--schema-only", "--no-owner", "--no-privileges", *EXCLUDED, f"--dbname={url}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    noise = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict ", "\\unrestrict ")
    return [line for line in result.stdout.splitlines() if line.strip() and not line.startswith(noise)]


def dumper(method: str, url: str) -> Callable[[str], list[str]]:
    if method == "catalog":
        return catalog_dump
    binary = pg_dump_next_to_the_server(url)
    if binary is None:
        pytest.skip("no pg_dump next to the server (not on this machine, or not superuser); the catalog dump runs")
    return lambda target: pg_dump(target, binary)


def schema_drift(scratch: Callable[[str], Scratch], method: str, schema_sql: str) -> str:
    """The diff from the migrations' schema to ``schema_sql``'s, as ``method`` dumps them; empty when equal."""
    migrated, from_file = scratch("from_migrations"), scratch("from_schema_sql")
    apply_migrations(migrated.settings, SQL)
    from_file.run(schema_sql)
    from_file.close()
    dump = dumper(method, migrated.url)
    return "\n".join(
        difflib.unified_diff(
            dump(migrated.url), dump(from_file.url), "the migrations (sql/NNNN_*.sql)", "sql/schema.sql", lineterm=""
        )
    )


@pytest.mark.parametrize("method", ["pg_dump", "catalog"])
def test_schema_sql_is_what_the_migrations_build(scratch: Callable[[str], Scratch], method: str) -> None:
    drift = schema_drift(scratch, method, (SQL / SCHEMA_FILE).read_text(encoding="utf-8"))
    if drift:
        pytest.fail(f"sql/schema.sql no longer matches the migrations; update it in the same commit:\n{drift}")


@pytest.mark.parametrize("method", ["pg_dump", "catalog"])
@pytest.mark.parametrize(
    ("change", "old", "new"),
    [
        ("a column's type", "latest_content    text", "latest_content    varchar(400)"),
        (
            "column order",
            "    role              text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),\n    muted             boolean     NOT NULL DEFAULT false,\n",
            "    muted             boolean     NOT NULL DEFAULT false,\n    role              text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),\n",
        ),
        ("a missing index", "CREATE INDEX connection_connected_at_idx ON connection_table (connected_at);", ""),
        ("a default", "last_read_seq     bigint      NOT NULL DEFAULT 0", "last_read_seq     bigint      NOT NULL"),
    ],
)
def test_a_drifted_schema_sql_is_caught(
    scratch: Callable[[str], Scratch], method: str, change: str, old: str, new: str
) -> None:
    text = (SQL / SCHEMA_FILE).read_text(encoding="utf-8")
    assert old in text, change
    drifted = text.replace(old, new, 1)
    assert schema_drift(scratch, method, drifted), f"{change} went unnoticed by the {method} comparison"


# -- make migrate -----------------------------------------------------------------------------------------------


def run_migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local.migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def without_database_settings() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "DATABASE_URL" and not name.startswith("DB_")}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_make_migrate_fails_in_one_line_on_an_unreachable_database() -> None:
    port = closed_port()
    env = {**without_database_settings(), "DATABASE_URL": f"postgresql://chat:s3cr3t-pw@127.0.0.1:{port}/chat"}
    result = run_migrate(env)
    assert result.returncode == 1, result
    assert result.stdout.splitlines() == [f"migrating database chat on 127.0.0.1:{port} as chat"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"make migrate: cannot connect to database chat on 127.0.0.1:{port}")
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_make_migrate_names_the_database_it_changes_and_never_its_password(
    scratch: Callable[[str], Scratch],
) -> None:
    target = scratch("make_migrate")
    parts = urlsplit(target.url)
    with_password = urlunsplit(parts._replace(netloc=parts.netloc.replace("@", ":s3cr3t-pw@", 1)))
    result = run_migrate({**without_database_settings(), "DATABASE_URL": with_password})
    assert result.returncode == 0, result.stderr
    port = parts.port or 5432
    socket_dir = parse_qs(parts.query).get("host", [""])[0]  # the embedded server's socket URL
    where = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else f"{parts.hostname}:{port}"
    first, *rest = result.stdout.splitlines()
    assert first == f"migrating database {database_name(target.url)} on {where} as postgres"
    assert rest == [f"applied {m.label}" for m in discover(SQL)]
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert target.recorded() == [m.version for m in discover(SQL)]


@pytest.fixture
def dev_data_dir() -> Iterator[Path]:
    """Outside pytest's tmp tree, which is 0700: embedded PostgreSQL runs as another user when we are root."""
    with tempfile.TemporaryDirectory(prefix="chat-migrate-", ignore_cleanup_errors=True) as parent:
        yield Path(parent) / "data"


@pytest.mark.slow
def test_make_migrate_without_settings_migrates_the_dev_database_running_or_not(
    dev_data_dir: Path, services: EmbeddedServices
) -> None:
    env = {**without_database_settings(), "LOCAL_DATA_DIR": str(dev_data_dir)}
    # Nothing running: it starts make dev's embedded server on that data, migrates, and stops it again.
    first = run_migrate(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith(f"migrating the dev database of make dev (data in {dev_data_dir})")
    assert [line for line in first.stdout.splitlines() if line.startswith("applied")] == [
        f"applied {m.label}" for m in discover(SQL)
    ]
    assert not (dev_data_dir / "pg" / "postmaster.pid").exists()

    # make dev running on the same data: its server is shared, not started twice, and keeps running after.
    server = start_server(dev_data_dir, server_env(dev_data_dir, REDIS_URL=services.redis_url))
    try:
        postgres_pid = int((dev_data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        again = run_migrate(env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[-1] == "schema is up to date"
        assert is_running(postgres_pid)
        assert server.call("GET", "/_local/config", None)[0] == 200
    finally:
        assert server.stop() == 0, server.output()
    shutil.rmtree(dev_data_dir, ignore_errors=True)
