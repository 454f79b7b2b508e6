"""The list and send designs compared on the bench dataset with EXPLAIN: ``python -m bench.designs old|new``.

``old`` runs on a dataset still at schema 0004 (an inbox row per member, copied on every send): the list query
and the send statement of commit 82778b4, the send and group creation inside transactions that roll back, so
the dataset is left as it was. ``new`` runs after migration 0005: the list as shipped (each participant row
joined to its conversation by a LATERAL primary-key probe, ordered at read time) and two alternatives on the
same data. Each writes its figures to ``bench/results-0004.json`` / ``bench/designs-0005.json`` for
docs/performance.md. Not part of ``make bench``: the old design needs the old schema.

WAL is counted per statement (``bench.wal``); a rolled-back statement writes the same records as a committed
one, bar the final commit or abort record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pg8000.native

from bench.env import BENCH_DATABASE, ROOT, connect
from bench.timing import percentile
from bench.wal import statement_wal
from tests.databases import with_database

OLD_COMMIT = "82778b4"
FIRST_PAGE: dict[str, Any] = {
    "cursor_at": datetime.max.replace(tzinfo=UTC),
    "cursor_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
}
LIST_ARGS: dict[str, Any] = {**FIRST_PAGE, "unread_only": False, "read_only": False, "limit": 1000}
LIST_RUNS = 200


def _named(text: str, name: str) -> str:
    """The SQL of ``-- name: <name>`` in a queries file's text (up to the next name)."""
    block = text.split(f"-- name: {name}\n", 1)[1].split("\n-- name: ", 1)[0]
    return "\n".join(line for line in block.splitlines() if not line.startswith("--")).strip().rstrip(";")


def old_query(file: str, name: str) -> str:
    text = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:chalicelib/queries/{file}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return _named(text, name)


def new_query(file: str, name: str) -> str:
    return _named((ROOT / "chalicelib" / "queries" / file).read_text(encoding="utf-8"), name)


def explain(conn: pg8000.native.Connection, sql: str, params: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one run: the plan text, execution time and shared buffers touched.

    Runs the statement twice (JSON for the figures, text for the reader), each with ``params()``.
    """
    rows = conn.run(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", **params())
    plan = rows[0][0][0]
    text = conn.run(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", **params())
    top = plan["Plan"]
    return {
        "execution_ms": plan["Execution Time"],
        "planning_ms": plan["Planning Time"],
        "shared_hit": top.get("Shared Hit Blocks", 0),
        "shared_read": top.get("Shared Read Blocks", 0),
        "plan": "\n".join(row[0] for row in text),
    }


def timed(conn: pg8000.native.Connection, sql: str, runs: int, warmup: int = 20, **params: Any) -> dict[str, float]:
    """Client-side p50/p99 of a prepared statement (as the app runs its named queries)."""
    statement = conn.prepare(sql)
    samples = []
    try:
        for index in range(warmup + runs):
            started = time.perf_counter_ns()
            statement.run(**params)
            if index >= warmup:
                samples.append((time.perf_counter_ns() - started) / 1e6)
    finally:
        statement.close()
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99), "runs": runs}


def _listed(result: list[list[Any]]) -> int:
    """How many conversations a list query's one json cell holds: the old query's is an array of rows, the
    shipped one's an array of 14 columns (queries/conversations.sql), so the longer side is the row count."""
    page = result[0][0]
    return max(len(page), len(page[0])) if page else 0


def _heavy_list(conn: pg8000.native.Connection, sql: str, user: str) -> dict[str, Any]:
    listed = _listed(conn.run(sql, user_id=user, **LIST_ARGS))
    if listed != 500:
        raise RuntimeError(f"the heavy user lists {listed} conversations, expected 500")
    return {
        "explain": explain(conn, sql, lambda: {"user_id": user, **LIST_ARGS}),
        **timed(conn, sql, LIST_RUNS, user_id=user, **LIST_ARGS),
    }


def _old_member_rows(conn: pg8000.native.Connection, conversation_id: str, members: list[str]) -> None:
    """A group in the 0004 layout, inserted in the caller's transaction (plain INSERTs, not the O(n^2) one)."""
    conn.run(
        "INSERT INTO conversation_table (conversation_id, title, is_group, created_by) VALUES (:c, 'bench', true, :u)",
        c=conversation_id,
        u=members[0],
    )
    conn.run(
        "INSERT INTO participant_table (conversation_id, user_id, joined_at, last_activity_at, title, is_group,"
        " peer_id) SELECT :c, u, now(), now(), 'bench', true, :peer FROM unnest(CAST(:members AS text[])) AS u",
        c=conversation_id,
        members=members,
        peer=members[1],
    )


def _old_send(
    conn: pg8000.native.Connection, send: str, conversation_id: str, sender: str, runs: int
) -> dict[str, Any]:
    """``runs`` old sends in the caller's open transaction: EXPLAIN of the first, p50 of the rest, own WAL."""

    def params() -> dict[str, Any]:
        return {
            "message_id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "sender_id": sender,
            "temp_message_id": uuid.uuid4().hex,
            "content": "benchmark message: how is the deploy going?",
        }

    plan = explain(conn, send, params)
    statement = conn.prepare(send)
    samples = []
    try:
        for _ in range(runs):
            started = time.perf_counter_ns()
            statement.run(**params())
            samples.append((time.perf_counter_ns() - started) / 1e6)
    finally:
        statement.close()
    wal = statement_wal(conn, send, params, runs=20)
    return {
        "explain": plan,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "runs": runs,
        "wal_bytes_per_send": wal.bytes,
        "wal": wal.as_dict(),
    }


def old(conn: pg8000.native.Connection) -> dict[str, Any]:
    version = conn.run("SELECT max(version) FROM schema_migrations")[0][0]
    if version != 4:
        raise SystemExit(f"the old design needs the dataset at schema 0004; it is at {version:04d}")
    heavy = conn.run("SELECT info->>'heavy_user' FROM bench_dataset WHERE name = 'main'")[0][0]
    results: dict[str, Any] = {"schema": "0004", "commit": OLD_COMMIT, "measured_at": datetime.now(UTC).isoformat()}
    results["list_heavy"] = _heavy_list(conn, old_query("conversations.sql", "list_user_conversations"), heavy)
    print(f"old list heavy: p50 {results['list_heavy']['p50_ms']:.2f} ms", flush=True)

    send = old_query("messages.sql", "send_message")
    largest, size = conn.run(
        "SELECT conversation_id, count(*) FROM participant_table GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
    )[0]
    direct = conn.run(
        "SELECT conversation_id, direct_user_low FROM conversation_table WHERE NOT is_group"
        " ORDER BY conversation_id LIMIT 1"
    )[0]
    cases: list[tuple[str, str, str | None, list[str] | None, int]] = [
        ("direct", str(direct[0]), str(direct[1]), None, 200),
        (f"group_{size}", str(largest), None, None, 200),
    ]
    members = [f"bench-old-{index:05d}" for index in range(10_000)]
    cases += [
        ("group_1k", str(uuid.uuid4()), None, members[:1000], 50),
        ("group_10k", str(uuid.uuid4()), None, members, 20),
    ]
    sends: dict[str, Any] = {}
    for label, conversation_id, sender, new_members, runs in cases:
        conn.run("BEGIN")
        try:
            if new_members is not None:
                _old_member_rows(conn, conversation_id, new_members)
                sender = new_members[0]
            elif sender is None:
                sender = conn.run(
                    "SELECT min(user_id) FROM participant_table WHERE conversation_id = :c", c=conversation_id
                )[0][0]
            assert sender is not None
            sends[label] = _old_send(conn, send, conversation_id, sender, runs)
        finally:
            conn.run("ROLLBACK")
        print(
            f"old send {label}: p50 {sends[label]['p50_ms']:.2f} ms, {sends[label]['wal_bytes_per_send']:.0f} B WAL",
            flush=True,
        )
    results["send"] = sends

    create = old_query("conversations.sql", "create_group_conversation")
    creates: dict[str, Any] = {}
    for label, count, runs in (("members_1k", 1000, 3), ("members_10k", 10_000, 1)):
        samples = []
        for _ in range(runs):
            conn.run("BEGIN")
            try:
                started = time.perf_counter_ns()
                conn.run(
                    create,
                    conversation_id=str(uuid.uuid4()),
                    title="bench",
                    created_by=members[0],
                    user_ids=members[:count],
                )
                samples.append((time.perf_counter_ns() - started) / 1e6)
            finally:
                conn.run("ROLLBACK")
        creates[label] = {"p50_ms": percentile(samples, 50), "runs": runs}
        print(f"old create {label}: {creates[label]['p50_ms']:.0f} ms", flush=True)
    results["create_group"] = creates
    return results


def plain_join(shipped: str) -> str:
    """The shipped list with its LATERAL primary-key probe written as a plain join (the planner's choice)."""
    pattern = re.compile(r"CROSS JOIN LATERAL \(.*?LIMIT 1\s*\) c", re.DOTALL)
    if not pattern.search(shipped):
        raise RuntimeError("the shipped list query has no CROSS JOIN LATERAL (...) c to rewrite")
    return pattern.sub("JOIN conversation_table c ON c.conversation_id = p.conversation_id", shipped)


# Index-only scans of both sides: what the list reads of each row, in the index. Built in a transaction that
# rolls back. They cost the writes: every send changes last_seq/last_activity_at/latest_* (no more HOT
# update of the conversation row) and every read changes last_read_seq (no more HOT update of a participant).
NOT_LISTED = {
    "participant_table": {"user_id", "joined_at", "last_read_at"},
    "conversation_table": {
        "conversation_id",
        "created_by",
        "created_at",
        "direct_user_low",
        "direct_user_high",
        "create_request_id",
        "member_count",
    },
}


def covering_indexes(conn: pg8000.native.Connection) -> list[str]:
    """participant (user_id) and conversation (conversation_id) indexes INCLUDE-ing what the list reads."""
    statements = []
    for table, key in (("participant_table", "user_id"), ("conversation_table", "conversation_id")):
        columns = [
            row[0]
            for row in conn.run(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = :t ORDER BY ordinal_position",
                t=table,
            )
            if row[0] not in NOT_LISTED[table]
        ]
        statements.append(f"CREATE INDEX bench_{table}_cover ON {table} ({key}) INCLUDE ({', '.join(columns)})")
    return statements


def _inbox_table(conn: pg8000.native.Connection) -> str:
    """The 0004 layout rebuilt from today's rows (in the caller's transaction): the old list's query on it."""
    has_peer = conn.run(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'participant_table' AND column_name = 'peer_id'"
    )
    peer = (
        "p.peer_id"
        if has_peer
        else ("CASE WHEN c.first_member_id = p.user_id THEN c.second_member_id ELSE c.first_member_id END")
    )
    conn.run(
        "CREATE TABLE bench_inbox AS SELECT p.conversation_id, p.user_id, p.last_read_seq, c.last_activity_at,"  # noqa: S608
        f" c.title, c.is_group, {peer} AS peer_id, c.last_seq AS latest_seq, c.latest_message_id,"
        " c.latest_sender_id, c.latest_content"
        # In the primary key's order, as the real table's rows lie: a user's rows are scattered over its pages.
        " FROM participant_table p JOIN conversation_table c USING (conversation_id)"
        " ORDER BY p.conversation_id, p.user_id"
    )
    conn.run("CREATE INDEX ON bench_inbox (user_id, last_activity_at DESC, conversation_id DESC)")
    conn.run("ANALYZE bench_inbox")
    return old_query("conversations.sql", "list_user_conversations").replace("participant_table", "bench_inbox")


def _interleaved(
    conn: pg8000.native.Connection, variants: dict[str, str], user: str, rounds: int = 5
) -> dict[str, dict[str, Any]]:
    """EXPLAIN each variant, then time them in alternating rounds, so that a busy moment of the machine lands
    on all of them alike."""
    results: dict[str, dict[str, Any]] = {
        name: {"explain": explain(conn, sql, lambda: {"user_id": user, **LIST_ARGS})} for name, sql in variants.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    statements = {name: conn.prepare(sql) for name, sql in variants.items()}
    try:
        for name, statement in statements.items():
            if _listed(statement.run(user_id=user, **LIST_ARGS)) != 500:
                raise RuntimeError(f"{name}: the heavy user does not list 500 conversations")
            for _ in range(20):
                statement.run(user_id=user, **LIST_ARGS)
        for _ in range(rounds):
            for name, statement in statements.items():
                for _ in range(LIST_RUNS // rounds):
                    started = time.perf_counter_ns()
                    statement.run(user_id=user, **LIST_ARGS)
                    samples[name].append((time.perf_counter_ns() - started) / 1e6)
    finally:
        for statement in statements.values():
            statement.close()
    for name, taken in samples.items():
        results[name].update(p50_ms=percentile(taken, 50), p99_ms=percentile(taken, 99), runs=len(taken))
    return results


def new(conn: pg8000.native.Connection) -> dict[str, Any]:
    version = conn.run("SELECT max(version) FROM schema_migrations")[0][0]
    if version < 5:
        raise SystemExit(f"the new design needs schema 0005 or later; the dataset is at {version:04d}")
    heavy = conn.run("SELECT info->>'heavy_user' FROM bench_dataset WHERE name = 'main'")[0][0]
    shipped = new_query("conversations.sql", "list_user_conversations")
    results: dict[str, Any] = {
        "schema": f"{version:04d}",
        "measured_at": datetime.now(UTC).isoformat(),
        "load_before": os.getloadavg()[0],
    }
    conn.run("BEGIN")
    try:
        inbox = _inbox_table(conn)
        variants = {"lateral (shipped)": shipped, "plain join": plain_join(shipped), "inbox rows (0004 layout)": inbox}
        results.update(_interleaved(conn, variants, heavy))
    finally:
        conn.run("ROLLBACK")
    conn.run("BEGIN")
    try:
        for ddl in covering_indexes(conn):
            conn.run(ddl)
        conn.run("ANALYZE participant_table")
        conn.run("ANALYZE conversation_table")
        results.update(_interleaved(conn, {"lateral + covering indexes": shipped}, heavy))
    finally:
        conn.run("ROLLBACK")
    results["load_after"] = os.getloadavg()[0]
    for name, figures in results.items():
        if isinstance(figures, dict):
            print(
                f"{name}: p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, EXPLAIN"
                f" {figures['explain']['execution_ms']:.2f} ms, {figures['explain']['shared_hit']} buffers",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.designs", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("design", choices=("old", "new"))
    args = parser.parse_args(argv)
    server = os.environ.get("DATABASE_URL")
    if not server:
        raise SystemExit("DATABASE_URL names the server that holds the benchmark database")
    conn = connect(with_database(server, BENCH_DATABASE))
    try:
        results = old(conn) if args.design == "old" else new(conn)
    finally:
        conn.close()
    output = ROOT / "bench" / ("results-0004.json" if args.design == "old" else "designs-0005.json")
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
