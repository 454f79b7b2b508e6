"""A ``@connections`` endpoint in its own process that records when each connection was pushed, and can fail some.

``python -m bench.recording_endpoint --delay 0.02`` serves ``POST`` / ``DELETE`` / ``GET
[/{stage}]/@connections/{id}`` over HTTP/1.1 keep-alive, treats every connection as open and holds each push
``delay`` seconds (AWS's round trip) before answering. It prints ``ready <url>``, then answers one JSON line per
command line on stdin:

- ``reset``: forget every recorded push and fault;
- ``fail <times> <connection id>...``: answer the next ``times`` pushes to each of these 503;
- ``progress``: ``{"connections", "pushes", "failed", "last_at"}``, small enough to poll;
- ``stats``: ``{"connections", "pushes", "max_per_connection", "failed", "first_at", "last_at", "counts",
  "times"}``: epoch seconds of the first and last delivered push (or null), and per connection its pushes and
  the time of its first; ``cpu_s``, the CPU seconds this process has used.

**Why not local/connections_api.py's server.** API Gateway's endpoint runs on AWS's machines, not the Lambda's;
here it shares two cores with the app. The dev server's ``http.server`` endpoint (a thread per connection, the
``email`` package parsing every request's head, a full SigV4 check, a sleeping thread per held push) cost about
0.5 ms of CPU per push, as much as the app's side, so the benchmark measured the endpoint. This one is a single
asyncio loop: a push is parsed with a few ``find`` calls and held with the loop's timer, not a thread.

**What it checks.** Every request must carry a SigV4 ``authorization`` header (403 otherwise). The signature
itself is verified with local/connections_api.py's ``verify_signature`` (the dev server's check, against
``TEST_SIGNING_KEY``, the key the benchmark configures the app with) on the first request of each TCP
connection and on one in ``VERIFY_EVERY`` after that: a client signing wrongly is refused within a few pushes,
at a fiftieth of the cost of checking them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from bench.child_process import stop
from local.connections_api import ERROR_TYPES, TEST_SIGNING_KEY, SignatureError, verify_signature

VERIFY_EVERY = 50
_MAX_HEAD_BYTES = 65536
_PATH = re.compile(r"^(?:/[^/?]+)*/@connections/(?P<id>[^/?]+)$")
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 410: "Gone", 503: "Service Unavailable"}


class Headers:
    """A request's fields by lowercased name, with the two lookups ``verify_signature`` makes of a ``Message``."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: list[str]) -> list[str]:
        return self._fields.get(name.lower(), default)


class Recorder:
    """What the endpoint saw; touched on the loop's thread only."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.posts: Counter[str] = Counter()
        self.times: dict[str, float] = {}
        self.faults: Counter[str] = Counter()
        self.failed = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def fail(self, times: int, connection_ids: list[str]) -> None:
        for connection_id in connection_ids:
            self.faults[connection_id] = times

    def post(self, connection_id: str) -> bool:
        """Record one push that has been held its delay; False when a fault says to answer 503 instead."""
        if self.faults[connection_id] > 0:
            self.faults[connection_id] -= 1
            self.failed += 1
            return False
        now = time.time()
        self.posts[connection_id] += 1
        self.times.setdefault(connection_id, now)
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        return True

    def progress(self) -> dict[str, Any]:
        return {
            "connections": len(self.posts),
            "pushes": sum(self.posts.values()),
            "failed": self.failed,
            "last_at": self.last_at,
        }

    def stats(self) -> dict[str, Any]:
        return {
            **self.progress(),
            "max_per_connection": max(self.posts.values(), default=0),
            "first_at": self.first_at,
            "counts": dict(self.posts),
            "times": dict(self.times),
            "cpu_s": time.process_time(),
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests are answered one at a time, in order (the client never pipelines)."""

    def __init__(self, recorder: Recorder, delay: float) -> None:
        self._recorder = recorder
        self._delay = delay
        self._buffer = bytearray()
        self._busy = False
        self._requests = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                self._close()
            return
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        fields: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
        length = int((fields.get("content-length") or ["0"])[0])
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        self._busy = True
        self._requests += 1
        self._handle(method, target, Headers(fields), body)

    def _handle(self, method: str, target: str, headers: Headers, body: bytes) -> None:
        match = _PATH.match(target.partition("?")[0])
        if match is None:
            self._reply(400, "BadRequestException", "no such route")
            return
        if not (headers.get("authorization") or "").startswith("AWS4-HMAC-SHA256 "):
            self._reply(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
            return
        if self._requests % VERIFY_EVERY == 1 or VERIFY_EVERY == 1:
            try:
                verify_signature(TEST_SIGNING_KEY, method, target, headers, body, time.time())  # type: ignore[arg-type]
            except SignatureError as error:
                self._reply(403, error.error_type, error.message)
                return
        connection_id = unquote(match["id"])
        if method == "POST":
            asyncio.get_running_loop().call_later(self._delay, self._held, connection_id)
        elif method == "DELETE":
            self._reply(204)
        else:  # GET: no connection here has an identity to describe
            self._reply(410, ERROR_TYPES[410], "Gone")

    def _held(self, connection_id: str) -> None:
        if self._recorder.post(connection_id):
            self._reply(200)
        else:
            self._reply(503, "Http503Exception", "injected fault")

    def _reply(self, status: int, error_type: str | None = None, message: str = "") -> None:
        body = json.dumps({"message": message}).encode() if error_type else b""
        head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\ncontent-type: application/json\r\n"
        if error_type:
            head += f"x-amzn-ErrorType: {error_type}\r\n"
        if status != 204:
            head += f"content-length: {len(body)}\r\n"
        if self._transport is not None:
            self._transport.write(head.encode() + b"\r\n" + body)
        self._busy = False
        if self._buffer:
            self._next()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


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

    def progress(self) -> dict[str, Any]:
        return self._command("progress")

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
        stop(process, timeout_s=10)


def _commands(loop: asyncio.AbstractEventLoop, recorder: Recorder, done: asyncio.Future[None]) -> None:
    """Read commands from stdin on this thread; run each on the loop's thread, which owns the recorder."""

    def run(words: list[str]) -> dict[str, Any]:
        if words[0] == "reset":
            recorder.reset()
            return {"ok": True}
        if words[0] == "fail":
            recorder.fail(int(words[1]), words[2:])
            return {"ok": True}
        if words[0] == "progress":
            return recorder.progress()
        return recorder.stats()

    async def on_loop(words: list[str]) -> dict[str, Any]:
        return run(words)

    try:
        for line in sys.stdin:
            words = line.split()
            if words:
                answer = asyncio.run_coroutine_threadsafe(on_loop(words), loop).result()
                print(json.dumps(answer), flush=True)
    finally:

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        loop.call_soon_threadsafe(finish)


async def serve(delay: float) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    server = await loop.create_server(lambda: _Connection(recorder, delay), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    done: asyncio.Future[None] = loop.create_future()
    print(f"ready http://127.0.0.1:{port}", flush=True)
    threading.Thread(target=_commands, args=(loop, recorder, done), daemon=True).start()
    async with server:
        await done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each push takes")
    args = parser.parse_args()
    asyncio.run(serve(args.delay))


if __name__ == "__main__":
    main()
