"""One user floods, another sends (issue 16): the victim's echo time alone and during the flood.

The flooder runs a connect storm (threads opening connections past MAX_CONNECTIONS_PER_USER, closing some)
and a multi-connection burst (a thread per open connection sending as fast as it can), with the product's
default limits: 10 messages/s per user with bursts of 20, 10 connections per user. Meanwhile the victim, in
a direct conversation of their own, sends one message at a time through the same handlers and the same
process (one database connection shared by every thread, as in ``make dev``; in AWS each Lambda instance
has its own, so this is the harder case), and each send's time to its pushes is recorded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.context import BenchContext, connect, ws_event
from bench.phase import settings
from bench.timing import Stats
from chalicelib.config import get_settings
from chalicelib.wiring import connections_endpoint, get_service

DEFAULT_LIMITS = {"SEND_RATE_PER_SECOND": "10", "SEND_BURST": "20", "MAX_CONNECTIONS_PER_USER": "10"}
STORM_THREADS = 4
FLOOD_SECONDS = 5.0
PACE_S = 0.15


@contextmanager
def default_limits() -> Iterator[None]:
    """The product's own per-user limits for this phase (the benchmark otherwise lifts them), the settings read
    at once on the way in and out."""
    with settings(DEFAULT_LIMITS):
        get_settings()
        yield
    get_settings()


def _send(conversation_id: str) -> str:
    return json.dumps(
        {"action": "send-message", "tempMessageId": uuid.uuid4().hex, "conversationId": conversation_id, "content": "x"}
    )


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    import app as chat_app

    with default_limits():
        service = get_service()
        endpoint = connections_endpoint("", "")
        victim, friend, flooder, target = (ctx.user(label) for label in ("victim", "friend", "flooder", "target"))

        def direct(a: str, b: str) -> str:
            body = json.dumps({"recipientIdArr": [b], "isGroup": False, "title": ""})
            conversation_id = str(service.create_conversation(a, body)["conversationId"])
            ctx.scratch_conversations.append(conversation_id)
            return conversation_id

        victim_chat, flood_chat = direct(victim, friend), direct(flooder, target)
        victim_connection = connect(ctx, victim)
        connect(ctx, friend)
        flood_connections = [connect(ctx, flooder) for _ in range(10)]

        def echo_ms() -> float:
            started = time.perf_counter()
            report = service.handle_frame(victim_connection, _send(victim_chat), endpoint)
            if len(report.delivered) != 2:
                raise RuntimeError(f"the victim's send did not reach both connections: {report}")
            return (time.perf_counter() - started) * 1000

        def paced_echo_ms() -> float:
            elapsed = echo_ms()
            time.sleep(PACE_S)  # a person's pace, well under their own 10/s: the victim is never limited
            return elapsed

        for _ in range(3):
            paced_echo_ms()
        quiet = Stats([paced_echo_ms() for _ in range(ctx.iterations(40))])

        stop = threading.Event()
        counts = {"connects": 0, "connects_refused": 0, "sends": 0}
        lock = threading.Lock()

        def storm() -> None:
            token = ctx.identity.mint_id_token(flooder)
            while not stop.is_set():
                connection_id = f"bench-{ctx.run_id}-storm-{uuid.uuid4().hex[:10]}="
                response = chat_app.connect(ws_event("$connect", connection_id, token=token), None)
                with lock:
                    counts["connects"] += 1
                    counts["connects_refused"] += response["statusCode"] == 429
                if response["statusCode"] == 200:
                    chat_app.disconnect(ws_event("$disconnect", connection_id), None)

        def burst(connection_id: str) -> None:
            while not stop.is_set():
                service.handle_frame(connection_id, _send(flood_chat), endpoint)
                with lock:
                    counts["sends"] += 1

        threads = [threading.Thread(target=storm) for _ in range(STORM_THREADS)]
        threads += [threading.Thread(target=burst, args=(connection_id,)) for connection_id in flood_connections]
        for thread in threads:
            thread.start()
        flood: list[float] = []
        deadline = time.monotonic() + FLOOD_SECONDS
        try:
            while time.monotonic() < deadline:
                flood.append(paced_echo_ms())
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        stored = int(
            ctx.admin.run("SELECT last_seq FROM conversation_table WHERE conversation_id = :c", c=flood_chat)[0][0]
        )
    figures = {
        "victim_quiet": quiet,
        "victim_flood": Stats(flood),
        "flood_sends": counts["sends"],
        "flood_stored": stored,
        "flood_seconds": FLOOD_SECONDS,
        "connects": counts["connects"],
        "connects_refused": counts["connects_refused"],
    }
    log(
        f"abuse: victim echo alone {quiet}; during the flood {figures['victim_flood']}; the flooder sent "
        f"{counts['sends']} frames from 10 connections in {FLOOD_SECONDS:.0f} s, {stored} stored; "
        f"{counts['connects']} connects tried, {counts['connects_refused']} refused (429)"
    )
    return figures
