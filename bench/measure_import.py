"""Cold start: what a fresh interpreter spends importing and building what each kind of Lambda touches.

Each sample is a new ``python`` process (nothing cached in ``sys.modules``; ``.pyc`` files warm, as in a
deployed package) that times, with ``perf_counter`` around the work and interpreter start-up excluded:

- REST: ``import app`` and ``wiring.get_service()`` (the database handle; connecting is network, not import);
- WebSocket: the same plus the registry, the push client and the token verifier a ``$connect``/``$default``
  handler builds on first use;
- ``import boto3`` alone, for scale.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import json, os, sys, time
started = time.perf_counter()
kind = sys.argv[1]
if kind == "boto3":
    import boto3
else:
    import app
    from chalicelib import wiring
    wiring.get_service()
    if kind == "websocket":
        wiring.get_registry()
        wiring.get_verifier()
        wiring.get_pusher(wiring.connections_endpoint("abc.execute-api.us-east-1.amazonaws.com", "prod"))
elapsed = (time.perf_counter() - started) * 1000
heavy = sorted(m for m in ("boto3", "botocore", "redis", "jwt", "cryptography", "urllib3") if m in sys.modules)
print(json.dumps({"ms": elapsed, "loaded": heavy}))
"""

_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "COGNITO_USER_POOL_ID": "us-east-1_BENCH",
    "COGNITO_APP_CLIENT_ID": "bench",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def probe(kind: str, jwks_json: str) -> dict[str, object]:
    env = {**os.environ, **_ENV, "JWKS_JSON": jwks_json}
    env.pop("CONNECTIONS_ENDPOINT_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, kind], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def run(jwks_json: str, samples: int = 9, log: object = print) -> dict[str, object]:
    """Median milliseconds per kind over ``samples`` fresh processes (one unrecorded run first warms .pyc)."""
    results: dict[str, object] = {}
    for kind in ("rest", "websocket", "boto3"):
        probe(kind, jwks_json)
        runs = [probe(kind, jwks_json) for _ in range(samples)]
        median = statistics.median(float(str(r["ms"])) for r in runs)
        results[f"{kind}_ms"] = median
        results[f"{kind}_loaded"] = runs[0]["loaded"]
        if callable(log):
            log(
                f"  {'cold import, ' + kind:<34} median {median:.0f} ms of {samples}; "
                f"heavy modules: {runs[0]['loaded']}"
            )
    return results
