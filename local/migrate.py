"""``python -m local.migrate`` (what ``make migrate`` runs): apply ``sql/`` to the database you mean.

With ``DATABASE_URL`` or any ``DB_*`` location variable set, that database, exactly as the app would reach it.
With none, the dev database ``make dev`` uses: the embedded PostgreSQL under ``LOCAL_DATA_DIR`` (``.data/dev``),
not ``postgres@127.0.0.1:5432``, which is only the settings' fallback for a deployed stage. The embedded server
is shared if ``make dev`` runs it already (pgserver counts handles across processes, and ``make dev``'s lock is on
its own ``server.lock``, which this never takes), else started for the run and stopped after it.

It prints which database it is about to change first, and any failure as one line on stderr, exit code 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from chalicelib import migrations
from chalicelib.config import settings_from_env

ROOT = Path(__file__).resolve().parent.parent
PROG = "make migrate"
#: Variables that say where PostgreSQL is; any one of them means the user chose a database.
LOCATION_VARIABLES = ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER")


def configured(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip() for name in LOCATION_VARIABLES)


def dev_data_dir(env: Mapping[str, str]) -> Path:
    """The data folder ``make dev`` uses (as ``local.server.options_from_env`` reads it)."""
    return Path(env.get("LOCAL_DATA_DIR") or ROOT / ".data" / "dev").resolve()


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    if configured(environ):
        return migrations.main(argv, settings_from_env(environ), prog=PROG)
    from local.services import start_postgres

    data_dir = dev_data_dir(environ)
    print(f"migrating the dev database of make dev (data in {data_dir}); set DATABASE_URL for another", flush=True)
    try:
        postgres = start_postgres(data_dir, {})
    except Exception as error:  # pgserver raises plain exceptions; the user still gets one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{PROG}: cannot start the embedded PostgreSQL in {data_dir}: {reason}", file=sys.stderr)
        return 1
    with postgres:
        return migrations.main(argv, settings_from_env({**environ, "DATABASE_URL": postgres.url}), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
