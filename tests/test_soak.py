"""Load: many real WebSocket clients through the local server, sending while they randomly drop and reconnect.

Each client behaves as the web client does: it sends with a fresh ``tempMessageId``, resends whatever was not
echoed after a reconnect (same ``tempMessageId``), and catches up over REST (``after=<last message>``) after each
reconnect. Afterwards every client's stream is compared with the database: nothing lost, nothing delivered twice
on one connection, one position per message, every send stored exactly once. The server's memory is sampled.

CI runs a short version (default below). ``make soak`` runs the long one: ``SOAK_SECONDS=300
SOAK_CONNECTIONS=200 SOAK_CONVERSATIONS=50``. The figures are printed either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from chalicelib.wiring import get_database
from tests.conftest import new_user
from tests.databases import message_count
from tests.local_server import LocalServer, session_server

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))
CONNECTIONS = int(os.environ.get("SOAK_CONNECTIONS", "40"))
CONVERSATIONS = int(os.environ.get("SOAK_CONVERSATIONS", "10"))
SEND_INTERVAL_S = float(os.environ.get("SOAK_SEND_INTERVAL", "1.0"))  # mean pause between one client's sends
SESSION_S = float(os.environ.get("SOAK_SESSION", "6.0"))  # mean time between a client's random disconnects
MEMORY_GROWTH_LIMIT_MB = float(os.environ.get("SOAK_MEMORY_GROWTH_MB", "100"))


@dataclass
class Client:
    user: str
    token: str
    conversation: str
    known: dict[str, int] = field(default_factory=dict)  # messageId -> position, live or caught up
    pending: dict[str, str] = field(default_factory=dict)  # tempMessageId -> content, not echoed yet
    sent: set[str] = field(default_factory=set)
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    live_frames: int = 0
    duplicates: int = 0
    position_conflicts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    retries: int = 0


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with session_server(tmp_path_factory.mktemp("soak-server")) as running:
        yield running


def _rest_json(server: LocalServer, path: str, token: str) -> Any:
    status, body = server.call("GET", path, token)
    assert status == 200, (path, body)
    return body


def catch_up(server: LocalServer, client: Client) -> None:
    """What a client does after a reconnect: fetch what it missed, from its last contiguous message on."""
    base = f"/conversations/{client.conversation}/messages?limit=100"
    by_position = {position: message_id for message_id, position in client.known.items()}
    contiguous = 0
    while contiguous + 1 in by_position:
        contiguous += 1
    if contiguous == 0:  # nothing yet: page backwards through the whole history
        page = _rest_json(server, base, client.token)
        while page:
            _learn(client, page)
            if len(page) < 100:
                return
            page = _rest_json(server, f"{base}&before={page[-1]['messageId']}", client.token)
        return
    anchor = by_position[contiguous]
    while True:
        page = _rest_json(server, f"{base}&after={anchor}", client.token)
        _learn(client, page)
        if len(page) < 100:
            return
        anchor = page[-1]["messageId"]


def _learn(client: Client, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if client.known.setdefault(message["messageId"], message["position"]) != message["position"]:
            client.position_conflicts += 1


async def _read(ws: ClientConnection, client: Client, seen: set[str], retried: set[str]) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        if frame.get("type") == "error":
            client.errors.append(frame)
            continue
        if frame.get("type") != "new-message" or frame["conversationId"] != client.conversation:
            continue
        client.live_frames += 1
        message_id = frame["messageId"]
        # A resent tempMessageId is echoed once more by design; anything else twice on one socket is a duplicate.
        if message_id in seen and not (frame["senderId"] == client.user and frame["tempMessageId"] in retried):
            client.duplicates += 1
        seen.add(message_id)
        if client.known.setdefault(message_id, frame["position"]) != frame["position"]:
            client.position_conflicts += 1
        if frame["senderId"] == client.user and client.pending.pop(frame["tempMessageId"], None) is not None:
            client.latencies.append(time.monotonic() - client.sent_at[frame["tempMessageId"]])


def _frame(client: Client, temp: str, content: str) -> str:
    return json.dumps(
        {"action": "send-message", "tempMessageId": temp, "conversationId": client.conversation, "content": content}
    )


async def run_client(server: LocalServer, client: Client, stop_at: float, rng: random.Random) -> None:
    url = f"{server.ws_url}?Authorization={quote(client.token)}"
    draining = False
    while True:
        now = time.monotonic()
        if now >= stop_at:
            if draining or not client.pending:
                return
            draining = True  # one last session to resend what was never echoed
        try:
            async with connect(url, open_timeout=20, close_timeout=2, max_size=2**20) as ws:
                seen: set[str] = set()
                retried = set(client.pending)
                reader = asyncio.create_task(_read(ws, client, seen, retried))
                await asyncio.to_thread(catch_up, server, client)
                for temp, content in list(client.pending.items()):
                    client.retries += 1
                    await ws.send(_frame(client, temp, content))
                if draining:
                    for _ in range(100):
                        if not client.pending:
                            break
                        await asyncio.sleep(0.1)
                    reader.cancel()
                    return
                session_end = time.monotonic() + rng.expovariate(1 / SESSION_S)
                while time.monotonic() < min(session_end, stop_at):
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * SEND_INTERVAL_S)
                    temp = uuid.uuid4().hex
                    content = f"{client.user} {len(client.sent)}"
                    client.pending[temp] = content
                    client.sent.add(temp)
                    client.sent_at[temp] = time.monotonic()
                    await ws.send(_frame(client, temp, content))
                await asyncio.sleep(rng.uniform(0, 0.3))  # let some echoes arrive, not all
                if rng.random() < 0.5:
                    ws.transport.abort()  # an abrupt drop: no close frame
                else:
                    await ws.close()
                reader.cancel()
        except (TimeoutError, OSError, WebSocketException):
            pass
        client.reconnects += 1
        await asyncio.sleep(rng.uniform(0, 0.5))


async def sample_memory(pid: int, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    process = psutil.Process(pid)
    started = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - started, process.memory_info().rss / 2**20))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def _wait_until_quiet(conversation_ids: list[str], timeout: float = 60.0) -> None:
    """Frames still queued in the server when the clients stop are handled before anyone is compared."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        stored = message_count(*conversation_ids)
        if stored != last:
            last, stable_since = stored, time.monotonic()
        elif time.monotonic() - stable_since > 2:
            return
        time.sleep(0.25)


def test_soak_loses_and_duplicates_nothing(server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(int(os.environ.get("SOAK_SEED", "5")))
    per_conversation = max(2, CONNECTIONS // CONVERSATIONS)
    clients: list[Client] = []
    for _ in range(CONVERSATIONS):
        users = [new_user("soak") for _ in range(per_conversation)]
        tokens = [server.token(user) for user in users]
        body = {"recipientIdArr": users[1:], "isGroup": True, "title": "soak"}
        status, created = server.call("POST", "/conversation", tokens[0], body)
        assert status == 200, created
        clients += [Client(user, token, created["conversationId"]) for user, token in zip(users, tokens, strict=True)]

    memory: list[tuple[float, float]] = []

    async def main() -> float:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(server.process.pid, memory, stop))
        started = time.monotonic()
        await asyncio.gather(*(run_client(server, c, started + SECONDS, random.Random(rng.random())) for c in clients))
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        return elapsed

    elapsed = asyncio.run(main())
    _wait_until_quiet(sorted({c.conversation for c in clients}))
    for client in clients:  # the final catch-up every client makes
        catch_up(server, client)

    rows = get_database().run_sql(
        "SELECT conversation_id, message_id, seq, sender_id, temp_message_id FROM message_table"
        " WHERE conversation_id = ANY(CAST(:ids AS uuid[]))",
        ids=sorted({c.conversation for c in clients}),
    )
    in_db: dict[str, dict[str, int]] = defaultdict(dict)
    temps: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        in_db[str(row["conversation_id"])][str(row["message_id"])] = int(row["seq"])
        temps[row["sender_id"]].add(row["temp_message_id"])
    lost = sum(len(in_db[c.conversation].keys() - c.known.keys()) for c in clients)
    unknown = sum(len(c.known.keys() - in_db[c.conversation].keys()) for c in clients)
    misplaced = sum(
        sum(1 for m, p in c.known.items() if in_db[c.conversation].get(m, p) != p) + c.position_conflicts
        for c in clients
    )
    dense = all(sorted(positions.values()) == list(range(1, len(positions) + 1)) for positions in in_db.values())
    sends_not_stored = sum(len(c.sent - temps[c.user]) for c in clients)
    stored_not_sent = sum(len(temps[c.user] - c.sent) for c in clients)
    latencies = sorted(latency for c in clients for latency in c.latencies)
    warm = [rss for t, rss in memory if t >= min(5.0, SECONDS / 4)] or [rss for _, rss in memory]
    growth = warm[-1] - warm[0]
    figures: dict[str, Any] = {
        "duration_s": round(elapsed, 1),
        "connections": len(clients),
        "conversations": CONVERSATIONS,
        "messages_stored": len(rows),
        "sends": sum(len(c.sent) for c in clients),
        "resends_after_reconnect": sum(c.retries for c in clients),
        "reconnects": sum(c.reconnects for c in clients),
        "live_frames_received": sum(c.live_frames for c in clients),
        "lost": lost,
        "duplicated_on_a_connection": sum(c.duplicates for c in clients),
        "sends_not_stored": sends_not_stored,
        "stored_twice_or_unsent": stored_not_sent,
        "position_mismatches": misplaced,
        "error_frames": sum(len(c.errors) for c in clients),
        "echo_latency_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "echo_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
        "server_rss_mb_start_end_max": (round(warm[0], 1), round(warm[-1], 1), round(max(warm), 1)),
    }
    with capsys.disabled():
        print("\nsoak:", json.dumps(figures))

    assert len(rows) > 0 and figures["live_frames_received"] > 0
    assert lost == 0 and unknown == 0
    assert figures["duplicated_on_a_connection"] == 0
    assert sends_not_stored == 0 and stored_not_sent == 0
    assert len(rows) == figures["sends"]  # every send stored exactly once, resends included
    assert misplaced == 0 and dense
    assert figures["error_frames"] == 0, [c.errors[:3] for c in clients if c.errors][:3]
    assert growth < MEMORY_GROWTH_LIMIT_MB, memory
