"""WAL written by one statement: its transaction's, from the WAL insert position around it, median of many runs.

Two measures per run. ``EXPLAIN (ANALYZE, WAL)`` counts the executing backend's own records for the
statement (its CTEs included), but not those of its AFTER triggers, which run at the end of the statement
(sql/0010's copy of a direct conversation onto both members' rows is one). ``pg_current_wal_insert_lsn()``
read just before and just after, in the same session, counts everything the server wrote in between: the
statement, its triggers and its commit record, and whatever other sessions wrote at that moment. On a shared
server (tests cloning databases beside the benchmark) that noise once measured several MiB per send, so the
figure is the median of many runs, which a busy moment in a few of them does not move.

A full-page image (the first change of a page after a checkpoint) adds up to 8 KiB to a run. A send inserts into
a random leaf of the messages' primary key (a uuid), so after a checkpoint most sends write one, until the
leaves have all been touched: whether the median run has one depends on when the last checkpoint was, not on
the design (a send to 100 members measured 8,928 and 1,512 B in two runs). So ``records_bytes`` is given too:
the median of the runs whose statement wrote no full-page image (EXPLAIN counts them), which is what the send's
own records weigh, its triggers' included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

import pg8000.native


@dataclass(frozen=True)
class Wal:
    """Medians of ``runs`` executions of one statement."""

    # Everything between the two insert positions: the statement, its triggers, its commit.
    bytes: float
    # The same, over the runs whose statement wrote no full-page image (None if every run wrote one).
    records_bytes: float | None
    # The statement's own records and bytes (EXPLAIN), without its triggers and commit.
    statement_bytes: float
    records: float
    fpi: float
    runs: int

    def as_dict(self) -> dict[str, float | None]:
        return {
            "bytes": self.bytes,
            "records_bytes": self.records_bytes,
            "statement_bytes": self.statement_bytes,
            "records": self.records,
            "fpi": self.fpi,
            "runs": self.runs,
        }


def statement_wal(conn: pg8000.native.Connection, sql: str, params: Callable[[], dict[str, Any]], runs: int) -> Wal:
    """Run ``sql`` ``runs`` times (each committed on its own) under EXPLAIN (ANALYZE, WAL) with fresh
    ``params()``, reading the WAL insert position around each; the medians."""
    counted: list[tuple[int, int, int, int]] = []
    for _ in range(runs):
        before = conn.run("SELECT CAST(pg_current_wal_insert_lsn() AS text)")[0][0]
        plan = conn.run(f"EXPLAIN (ANALYZE, WAL, FORMAT JSON) {sql}", **params())[0][0][0]["Plan"]
        moved = conn.run("SELECT pg_current_wal_insert_lsn() - CAST(:b AS pg_lsn)", b=before)[0][0]
        counted.append((int(moved), plan.get("WAL Bytes", 0), plan.get("WAL Records", 0), plan.get("WAL FPI", 0)))
    moved, statement, records, fpi = (median(c[i] for c in counted) for i in range(4))
    without_images = [c[0] for c in counted if c[3] == 0]
    return Wal(moved, median(without_images) if without_images else None, statement, records, fpi, runs)
