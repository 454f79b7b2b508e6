"""A ``@connections`` endpoint in its own process that records when each connection was pushed, and can fail some.

``python -m bench.recording_endpoint --delay 0.02`` serves local/connections_api.py's real HTTP server with a sink
that treats every connection as open and holds each push ``delay`` seconds (as bench/endpoint.py does). It
prints ``ready <url>``, then answers one JSON line per command line on stdin:

- ``reset``: forget every recorded push and fault;
- ``fail <times> <connection id>...``: answer the next ``times`` pushes to each of these 503;
- ``stats``: ``{"connections", "pushes", "max_per_connection", "failed", "first_at", "last_at", "counts",
  "times"}``: epoch seconds of the first and last delivered push (or null), and per connection its pushes and
  the time of its first; ``cpu_s``, the CPU seconds this process has used.

A separate process keeps its request handling off the benchmark's GIL, as the real endpoint is off the Lambda's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

from local.connections_api import ConnectionInfo, ConnectionsServer, PushRejectedError


class TimedSink:
    """Every connection is open; each push waits ``delay`` seconds, then fails if told to, else is recorded."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.posts: Counter[str] = Counter()
            self.times: dict[str, float] = {}
            self.faults: Counter[str] = Counter()
            self.failed = 0
            self.first_at: float | None = None
            self.last_at: float | None = None

    def fail(self, times: int, connection_ids: list[str]) -> None:
        with self._lock:
            for connection_id in connection_ids:
                self.faults[connection_id] = times

    def post(self, connection_id: str, data: bytes) -> bool:
        if self._delay:
            time.sleep(self._delay)
        with self._lock:
            if self.faults[connection_id] > 0:
                self.faults[connection_id] -= 1
                self.failed += 1
                raise PushRejectedError(503, "injected fault")
            now = time.time()
            self.posts[connection_id] += 1
            self.times.setdefault(connection_id, now)
            self.first_at = now if self.first_at is None else min(self.first_at, now)
            self.last_at = now if self.last_at is None else max(self.last_at, now)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connections": len(self.posts),
                "pushes": sum(self.posts.values()),
                "max_per_connection": max(self.posts.values(), default=0),
                "failed": self.failed,
                "first_at": self.first_at,
                "last_at": self.last_at,
                "counts": dict(self.posts),
                "times": dict(self.times),
                "cpu_s": time.process_time(),
            }

    def info(self, connection_id: str) -> ConnectionInfo | None:
        return None

    def delete(self, connection_id: str) -> bool:
        return True


class RecordingEndpoint:
    """The endpoint subprocess: ``with RecordingEndpoint(0.02) as endpoint: endpoint.url, endpoint.stats()``."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def _command(self, line: str) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()
        answer: dict[str, Any] = json.loads(process.stdout.readline())
        return answer

    def reset(self) -> None:
        self._command("reset")

    def fail(self, times: int, connection_ids: list[str]) -> None:
        self._command(" ".join(["fail", str(times), *connection_ids]))

    def stats(self) -> dict[str, Any]:
        return self._command("stats")

    def __enter__(self) -> RecordingEndpoint:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.recording_endpoint", "--delay", str(self._delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError(f"@connections endpoint did not start: {line!r}")
        self.url = line[1]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each push takes")
    args = parser.parse_args()
    sink = TimedSink(args.delay)
    with ConnectionsServer(sink) as server:
        print(f"ready {server.url}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "reset":
                sink.reset()
                answer: dict[str, Any] = {"ok": True}
            elif words[0] == "fail":
                sink.fail(int(words[1]), words[2:])
                answer = {"ok": True}
            else:
                answer = sink.stats()
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
