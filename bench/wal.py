"""WAL written by one statement, from ``EXPLAIN (ANALYZE, WAL)``: the statement's own records only.

``pg_current_wal_lsn()`` differences count every session of the server; on a shared one (tests cloning
databases beside the benchmark) they measured several MiB per send of background noise. EXPLAIN's WAL
counters are the executing backend's own, for that statement (its CTEs included), without the commit record.
A full-page image (the first change of a page after a checkpoint) inflates one run by up to 8 KiB a page, so
the figure is the median of many runs, with the median number of images beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

import pg8000.native


@dataclass(frozen=True)
class Wal:
    """Median WAL of ``runs`` executions of one statement."""

    bytes: float
    records: float
    fpi: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return {"bytes": self.bytes, "records": self.records, "fpi": self.fpi, "runs": self.runs}


def statement_wal(conn: pg8000.native.Connection, sql: str, params: Callable[[], dict[str, Any]], runs: int) -> Wal:
    """Run ``sql`` ``runs`` times under EXPLAIN (ANALYZE, WAL) with fresh ``params()``; the medians."""
    counted: list[tuple[int, int, int]] = []
    for _ in range(runs):
        plan = conn.run(f"EXPLAIN (ANALYZE, WAL, FORMAT JSON) {sql}", **params())[0][0][0]["Plan"]
        counted.append((plan.get("WAL Bytes", 0), plan.get("WAL Records", 0), plan.get("WAL FPI", 0)))
    return Wal(median(c[0] for c in counted), median(c[1] for c in counted), median(c[2] for c in counted), runs)
