"""Named SQL queries loaded from ``chalicelib/queries/*.sql``.

Each query in a file starts with a header in the aiosql style::

    -- name: get_conversation
    -- Fetch one conversation the caller belongs to.
    SELECT ...

A write that may be re-run after a lost connection says why in its description
(``Safe to re-run: ...``); any other write fails instead, since its outcome is
unknown (``Database.run``).

Queries take ``:named`` parameters, which ``pg8000.native`` binds itself, so
loading them is all this module does (aiosql would add a dependency to the
Lambda package for these thirty lines).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

QUERY_DIR = Path(__file__).parent / "queries"
_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: str

    @property
    def rerun_safe(self) -> bool:
        """Whether running it twice does what running it once does: a read, or a write whose
        description says why it is idempotent ("Safe to re-run: ...")."""
        return self.sql.lstrip()[:6].upper() == "SELECT" or "Safe to re-run:" in self.description


def parse_queries(text: str) -> dict[str, Query]:
    """Split a file's text into its named queries."""
    queries: dict[str, Query] = {}
    headers = list(_HEADER.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body_lines = text[header.end() : end].strip().splitlines()
        description_lines = []
        while body_lines and body_lines[0].startswith("--"):
            description_lines.append(body_lines.pop(0).lstrip("-").strip())
        sql = "\n".join(body_lines).strip().rstrip(";")
        name = header.group("name")
        if not description_lines or not sql:
            raise ValueError(f"query {name!r} needs a one-line description and a body")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = Query(name, " ".join(description_lines), sql)
    return queries


@functools.lru_cache(maxsize=1)
def load_queries(directory: Path = QUERY_DIR) -> dict[str, Query]:
    """Every named query under ``directory``, by name."""
    queries: dict[str, Query] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, query in parse_queries(path.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            queries[name] = query
    return queries


def query(name: str) -> str:
    """The SQL text of the named query."""
    return load_queries()[name].sql
