"""A ``@connections`` endpoint in its own process, standing in for API Gateway's across the network.

``python -m bench.endpoint --delay 0.02`` serves local/connections_api.py's real HTTP server on a free port with
a sink that treats every connection as open and holds each push ``delay`` seconds (AWS's HTTPS round trip). It
prints ``ready <url>`` and serves until its stdin closes. Running it in another process keeps its request
handling off the benchmark's GIL, as the real endpoint is off the Lambda's CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from types import TracebackType

from bench.child_process import stop
from local.connections_api import ConnectionInfo, ConnectionsServer


class OpenSink:
    """Every connection is open; each push waits ``delay`` seconds and is counted."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._lock = threading.Lock()
        self.posts: Counter[str] = Counter()

    def post(self, connection_id: str, data: bytes) -> bool:
        if self._delay:
            time.sleep(self._delay)
        with self._lock:
            self.posts[connection_id] += 1
        return True

    def info(self, connection_id: str) -> ConnectionInfo | None:
        return None

    def delete(self, connection_id: str) -> bool:
        return True


class Endpoint:
    """The endpoint subprocess, as a context manager: ``with Endpoint(0.02) as url: ...``."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.endpoint", "--delay", str(self._delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError(f"@connections endpoint did not start: {line!r}")
        return line[1]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        stop(process, timeout_s=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each push takes")
    args = parser.parse_args()
    with ConnectionsServer(OpenSink(args.delay)) as server:
        print(f"ready {server.url}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
