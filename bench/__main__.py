"""``python -m bench`` (``make bench``): seed or reuse the dataset, measure every hot path beside the naive
baseline, write ``bench/results.json`` and ``bench/chart.png``, print the table.

``DATABASE_URL`` / ``REDIS_URL`` name the servers; without them embedded ones run under ``.data/bench``.
``--quick`` takes a tenth of the samples (a smoke run); ``--only rest,ws,...`` runs some phases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import (
    measure_abuse,
    measure_e2e,
    measure_fanout_queue,
    measure_groups,
    measure_import,
    measure_lifecycle,
    measure_members,
    measure_registry_cluster,
    measure_rest,
    measure_signals,
    measure_ws,
    report,
)
from bench.baseline import NaiveChat, ensure_baseline
from bench.context import BenchContext, cleanup
from bench.dataset import Params
from bench.endpoint import Endpoint
from bench.env import (
    BENCH_DATABASE,
    CLIENT_ID,
    ISSUER,
    ROOT,
    app_environment,
    connect,
    database_for,
    ensure_bench_database,
    ensure_database,
)
from bench.push_client import connections_client
from bench.seed import ensure_dataset
from chalicelib import wiring
from chalicelib.config import get_settings
from local.identity import LocalIdentityProvider
from local.services import EmbeddedServices

PHASES = (
    "rest",
    "ws",
    "groups",
    "members",
    "lifecycle",
    "signals",
    "fanout",
    "queued",
    "cluster",
    "abuse",
    "import",
    "e2e",
)
FANOUT_PUSH_DELAY_S = 0.02


def log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a tenth of the samples (smoke run)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {', '.join(PHASES)}")
    parser.add_argument(
        "--wait-for-server", type=float, default=0.0, help="seconds to wait for local/server.py to appear"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    phases = set(args.only.split(","))
    started = time.perf_counter()
    stats: dict[str, Any] = {}

    with EmbeddedServices(ROOT / ".data" / "bench") as services:
        log(f"servers: {', '.join(services.started) or 'from DATABASE_URL / REDIS_URL'}")
        database_url = ensure_bench_database(services.database_url)
        admin = connect(database_url)
        params = Params()
        info = ensure_dataset(admin, params, log)
        log(
            f"dataset: {info.users:,} users, {info.conversations:,} conversations, {info.messages:,} messages "
            f"({'seeded' if info.seeded else 'reused'} in {info.seconds:.1f}s)"
        )
        ensure_baseline(admin, params.as_dict(), log)
        identity = LocalIdentityProvider(ISSUER, CLIENT_ID)
        jwks = identity.jwks()

        with (
            Endpoint(0.0) as instant_url,
            app_environment(database_url, services.redis_url, jwks, instant_url) as prefix,
        ):
            # Scale knobs a deployment would set too: no send-rate limit at benchmark rates (the limiter's
            # Redis work still runs), and the 20 ms endpoint below needs no longer deadline than the default.
            os.environ.update({"SEND_RATE_PER_SECOND": "1000000", "SEND_BURST": "1000000"})
            # Likewise the per-user REST buckets, and no connection cap (the fan-out opens 20 per member).
            unlimited = {name: "100000000" for name in ("REST_RATE_PER_MINUTE", "REST_BURST", "REST_WRITE_BURST")}
            unlimited |= {"CREATE_CONVERSATION_RATE_PER_MINUTE": "100000000", "CREATE_CONVERSATION_BURST": "100000000"}
            os.environ.update(unlimited | {"MAX_CONNECTIONS_PER_USER": "0"})
            wiring.reset()
            ctx = BenchContext(info, admin, database_url, identity, prefix, quick=args.quick)
            # The naive design's slow statements would hit the app's 5 s socket timeout under load,
            # and a retried UPDATE then deadlocks with the abandoned one; give it room instead.
            naive_db = database_for(database_url, timeout_s=120)
            naive = NaiveChat(get_settings(), naive_db, wiring.get_registry(), connections_client(instant_url))
            try:
                if "rest" in phases:
                    log("REST reads (service methods; ours vs baseline):")
                    stats.update(measure_rest.run(ctx, naive, log))
                if "ws" in phases:
                    log("WebSocket handlers (app.message with API Gateway events; ours vs baseline):")
                    stats.update(measure_ws.send_message(ctx, naive, log))
                    stats.update(measure_ws.read_messages(ctx, naive, log))
                if "groups" in phases:
                    log("large groups (create, send: SQL alone and app.message, read, WAL per send):")
                    stats["groups"] = measure_groups.run(ctx, log)
                if "members" in phases:
                    log("group members (service methods: add, remove, GET /conversations/{id}):")
                    stats["members"] = measure_members.run(ctx, log)
                if "lifecycle" in phases:
                    log("message lifecycle (app.message: send, edit, delete, react; the change feed):")
                    stats["lifecycle"] = measure_lifecycle.run(ctx, log)
                if "signals" in phases:
                    log("live signals (app.message typing frames, GET /presence):")
                    stats["signals"] = measure_signals.run(ctx, log)
                if "fanout" in phases:
                    with Endpoint(FANOUT_PUSH_DELAY_S) as slow_url:
                        os.environ["CONNECTIONS_ENDPOINT_URL"] = slow_url
                        wiring.reset()
                        log(f"fan-out (endpoint waits {FANOUT_PUSH_DELAY_S * 1000:.0f} ms per push):")
                        stats["fanout"], stats["fanout pushes"] = measure_ws.fanout(ctx, log)
                        os.environ["CONNECTIONS_ENDPOINT_URL"] = instant_url
                        wiring.reset()
                if "queued" in phases:
                    log("queued fan-out (local queue, app.fanout_worker, 20 ms endpoint, the default push budget):")
                    stats["queued"] = measure_fanout_queue.run(ctx, log)
                if "abuse" in phases:
                    log("abuse (one user floods: a connect storm and a 10-connection burst; another sends):")
                    stats["abuse"] = measure_abuse.run(ctx, log)
                if "cluster" in phases:
                    log("registry on a 3-master Redis Cluster beside standalone Redis:")
                    stats["cluster"] = measure_registry_cluster.run(ctx, log)
            finally:
                cleanup(ctx)
                naive_db.close()
        if "import" in phases:
            log("cold import (fresh interpreters):")
            stats["import"] = measure_import.run(json.dumps(jwks), log=log)
        if "e2e" in phases:
            log("end to end through the local server (make dev):")
            e2e_url = ensure_database(services.database_url, f"{BENCH_DATABASE}_e2e")
            stats["e2e"] = measure_e2e.run(
                ROOT, e2e_url, services.redis_url, log=log, wait_for_server_s=args.wait_for_server
            )
        admin.close()

    results = report.results(info, stats, FANOUT_PUSH_DELAY_S * 1000)
    previous = json.loads(args.output.read_text()) if args.output.exists() else None
    results = report.merge(previous, results, phases)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    chart = args.output.with_name("chart.png")
    if report.chart(results, chart):
        log(f"\nwrote {args.output} and {chart}")
    else:
        log(f"\nwrote {args.output} (matplotlib missing: no chart)")
    log(f"make bench took {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
