"""End to end through ``make dev``'s local server: real WebSocket clients, real REST, real pushes.

The server (``python -m local.server``) runs in its own process on free ports, on the benchmark's PostgreSQL
(database ``chatapi_bench_e2e``) and Redis (its own key prefix). 100 users each open one WebSocket; 50 direct
conversations pair them up; every client sends its share of 2,000 messages, one after another, each after
the echo of the previous one (a person typing fast, not a flood). Every message must reach every connection
of its conversation (sender's included) exactly once; delivery latency is receive time minus send time on
the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.timing import percentile

CLIENTS = 100
MESSAGES = 2_000
SKIPPED = "skipped: local server unavailable"


def _post(url: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


class _Server:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local.server"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.http_url = self.ws_url = ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError(f"local server exited ({self._process.poll()})")
            if "ready" in line:
                words = line.split()
                self.http_url = next(w for w in words if w.startswith("http://"))
                self.ws_url = next(w for w in words if w.startswith("ws://"))
                return
        raise RuntimeError("local server did not print ready")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


async def _exchange(http_url: str, ws_url: str) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    run = uuid.uuid4().hex[:6]
    users = [f"e2e-{run}-{index:03d}" for index in range(CLIENTS)]
    tokens = {user: _post(f"{http_url}/_local/token", {"username": user})["idToken"] for user in users}
    pairs = [(users[2 * i], users[2 * i + 1]) for i in range(CLIENTS // 2)]
    conversation_of: dict[str, str] = {}
    for a, b in pairs:
        body = {"recipientIdArr": [b], "isGroup": False, "title": ""}
        conversation = _post(f"{http_url}/conversation", body, tokens[a])["conversationId"]
        conversation_of[a] = conversation_of[b] = conversation
    per_client = MESSAGES // CLIENTS
    sent_at: dict[str, float] = {}
    received: dict[str, list[tuple[str, float]]] = {user: [] for user in users}
    echoes: dict[str, asyncio.Event] = {}

    async def client(user: str, socket: Any) -> None:
        for index in range(per_client):
            temp = f"{user}-{index}"
            echoes[temp] = asyncio.Event()
            frame = {
                "action": "send-message",
                "tempMessageId": temp,
                "conversationId": conversation_of[user],
                "content": f"message {index} from {user}",
            }
            sent_at[temp] = time.perf_counter()
            await socket.send(json.dumps(frame))
            await asyncio.wait_for(echoes[temp].wait(), timeout=30)

    async def listen(user: str, socket: Any, expected: int) -> None:
        while len(received[user]) < expected:
            frame = json.loads(await socket.recv())
            if frame.get("type") == "new-message":
                received[user].append((frame["tempMessageId"], time.perf_counter()))
                if frame["senderId"] == user and frame["tempMessageId"] in echoes:
                    echoes[frame["tempMessageId"]].set()

    sockets = {user: await connect(f"{ws_url}?Authorization={tokens[user]}", max_size=2**20) for user in users}
    try:
        expected_each = 2 * per_client  # both members' messages reach each member's connection
        listeners = [asyncio.create_task(listen(user, sockets[user], expected_each)) for user in users]
        started = time.perf_counter()
        await asyncio.gather(*(client(user, sockets[user]) for user in users))
        with contextlib.suppress(TimeoutError):  # what is missing by then is reported as missing
            await asyncio.wait_for(asyncio.gather(*listeners), timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        for socket in sockets.values():
            await socket.close()

    latencies = [(at - sent_at[temp]) * 1000 for frames in received.values() for temp, at in frames if temp in sent_at]
    counts = [Counter(temp for temp, _ in frames) for frames in received.values()]
    delivered = sum(len(count) for count in counts)
    duplicates = sum(n - 1 for count in counts for n in count.values() if n > 1)
    return {
        "clients": CLIENTS,
        "messages": len(sent_at),
        "expected": len(sent_at) * 2,
        "delivered": delivered,
        "duplicates": duplicates,
        "msgs_per_s": round(len(sent_at) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }


def run(root: Path, database_url: str, redis_url: str, log: Any = print, wait_for_server_s: float = 0.0) -> Any:
    """The e2e figures, or ``SKIPPED`` when there is no local server to run."""
    deadline = time.monotonic() + wait_for_server_s
    while not (root / "local" / "server.py").exists():
        if time.monotonic() >= deadline:
            log(f"  {SKIPPED}")
            return SKIPPED
        time.sleep(5)
    env = {
        **os.environ,
        "HTTP_PORT": "0",
        "WS_PORT": "0",
        "LOCAL_DATA_DIR": str(root / ".data" / "bench-e2e"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"chat-e2e-{uuid.uuid4().hex[:8]}:",
    }
    server = _Server(root, env)
    try:
        server.wait_ready()
        result = asyncio.run(_exchange(server.http_url, server.ws_url))
    finally:
        server.stop()
    log(
        f"  {result['clients']} clients, {result['messages']:,} messages: {result['delivered']:,}/"
        f"{result['expected']:,} delivered, {result['duplicates']} duplicates, {result['msgs_per_s']} msg/s, "
        f"latency p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms"
    )
    return result
