"""Large groups (issue 11): creating 1,000- and 10,000-member groups, sending into them, reading in them, and the
WAL one send writes at 2, 100 and 10,000 members.

The groups are made for the run through the app's own ``create_conversation`` (so ``MAX_PARTICIPANTS`` and
``MAX_REQUEST_BYTES`` are raised in the app's environment for this phase) and deleted with the run's other
scratch conversations, so the dataset's invariants hold afterwards. A tenth of the members are online with one
connection each (``ONLINE_EVERY``): a send into the 10,000-member group pushes to 1,000 connections.

Two figures per send: the SQL path (the repository's ``send_message`` statement alone, through the app's
``Database``) and the whole handler (``app.message`` with an API Gateway event: registry, SQL, the member list
of a large group, pushes over HTTP to the local ``@connections`` endpoint), and that handler again with a
fan-out queue configured, as deployed, where the 10,000-member send is queued whole.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.context import BenchContext, connect, send_frame
from bench.measure_ws import _send
from bench.phase import settings
from bench.timing import Stats, measure
from bench.wal import Wal, statement_wal
from chalicelib.db import Database
from chalicelib.fanout import Expansion, parse_queued
from chalicelib.queue import register_local_queue, unregister_local_queue
from chalicelib.repository import INLINE_MEMBERS
from chalicelib.sql import query
from chalicelib.wiring import connections_endpoint, get_database, get_service
from local.queue import LocalQueue

SIZES = {"1k": 1_000, "10k": 10_000}
ONLINE_EVERY = 10  # every tenth member holds one connection: 10% online
WAL_RUNS = 50
CONTENT = "benchmark message: how is the deploy going?"


def _group(ctx: BenchContext, members: list[str]) -> str:
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": f"bench {len(members)}"})
    conversation_id = str(get_service().create_conversation(members[0], body)["conversationId"])
    ctx.scratch_conversations.append(conversation_id)
    return conversation_id


def _send_params(conversation_id: str, sender: str) -> Callable[[], dict[str, Any]]:
    def params() -> dict[str, Any]:
        return {
            "message_id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "sender_id": sender,
            "temp_message_id": uuid.uuid4().hex,
            "content": CONTENT,
            "reply_to": None,
            "mentions": [],
            "inline_members": INLINE_MEMBERS,
        }

    return params


def _sql_send(database: Database, params: Callable[[], dict[str, Any]]) -> None:
    database.one("send_message", **params())


def _frame_send(connection_id: str, conversation_id: str) -> None:
    send_frame(connection_id, _send(conversation_id))


def _wal(ctx: BenchContext, label: str, conversation_id: str, sender: str, log: Any) -> Wal:
    """The WAL of one committed send, its triggers included (bench/wal.py; median of WAL_RUNS)."""
    runs = ctx.iterations(WAL_RUNS)
    wal = statement_wal(ctx.admin, query("send_message"), _send_params(conversation_id, sender), runs)
    records = f"{wal.records_bytes:,.0f} B" if wal.records_bytes is not None else "none"
    log(
        f"  {f'WAL per send, {label}':<34} {wal.bytes:,.0f} B with its triggers and commit; {records} in runs"
        f" without a full-page image (the statement alone {wal.statement_bytes:,.0f} B, {wal.records:g} records,"
        f" {wal.fpi:g} full-page images; medians of {runs})"
    )
    return wal


def _queued_send(
    ctx: BenchContext, sender_connection: str, conversation_id: str, direct_connection: str, direct: str, log: Any
) -> tuple[Stats, Stats]:
    """The whole handler with a fan-out queue, as deployed: above FANOUT_EXPAND_MEMBERS (2,000) it answers the
    sender's connections and queues the fan-out as one expansion (chalicelib/fanout.py). Nothing drains this
    queue: what is timed is the sending handler alone; the queued phase times the rest.

    Timed in alternating rounds with a direct send (its recipient online), so that the ratio the target is
    about compares two figures of the same moments rather than of two phases minutes apart."""
    queue = LocalQueue(f"bench-groups-{ctx.run_id}")
    queued: list[float] = []
    beside: list[float] = []
    rounds = 5
    each = max(1, ctx.iterations(100) // rounds)
    with settings({"FANOUT_QUEUE_URL": register_local_queue(queue.name, queue)}):
        try:
            for round_ in range(rounds):
                warmup = 5 if round_ == 0 else 0
                beside += measure(
                    partial(_frame_send, direct_connection, direct), iterations=each, warmup=warmup
                ).samples
                queued += measure(
                    partial(_frame_send, sender_connection, conversation_id), iterations=each, warmup=warmup
                ).samples
            if len(queue) != len(queued) + 5 or not all(
                isinstance(parse_queued(body), Expansion) for body in queue.bodies()
            ):
                raise RuntimeError("a send to the 10,000-member group did not queue one expansion")
        finally:
            unregister_local_queue(queue.name)
    stats, direct_stats = Stats(queued), Stats(beside)
    log(f"  {'send-message, 10,000 members, queued':<34} {stats} (one expansion queued per send)")
    log(f"  {'send-message, direct, same rounds':<34} {direct_stats}")
    return stats, direct_stats


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """Every figure of this phase by name (Stats for latencies, numbers for counts and bytes)."""
    with settings({"MAX_PARTICIPANTS": "10000", "MAX_REQUEST_BYTES": "1000000"}):
        return _measure(ctx, log)


def _measure(ctx: BenchContext, log: Any) -> dict[str, Any]:
    service, database = get_service(), get_database()
    results: dict[str, Any] = {}
    members = [ctx.user(f"m{index:05d}") for index in range(max(SIZES.values()))]

    for label, size in SIZES.items():
        iterations = ctx.iterations(5 if size <= 1000 else 3)
        stats = measure(partial(_group, ctx, members[:size]), iterations=iterations, warmup=1)
        log(f"  {f'create group, {size:,} members':<34} {stats}")
        results[f"create {label}"] = stats
    groups = {label: _group(ctx, members[:size]) for label, size in SIZES.items()}
    group_100 = _group(ctx, members[:100])
    body = json.dumps({"recipientIdArr": [ctx.user("dm-b")], "isGroup": False, "title": ""})
    direct = str(service.create_conversation(ctx.user("dm-a"), body)["conversationId"])
    ctx.scratch_conversations.append(direct)

    # SQL path: the send statement alone, as the repository runs it.
    sender = members[0]
    for label, conversation_id, user in (
        ("direct", direct, ctx.user("dm-a")),
        ("1k", groups["1k"], sender),
        ("10k", groups["10k"], sender),
    ):
        params = _send_params(conversation_id, user)
        stats = measure(
            partial(_sql_send, database, params),
            iterations=ctx.iterations(300),
            warmup=30,
        )
        log(f"  {f'send SQL, {label}':<34} {stats}")
        results[f"send sql {label}"] = stats

    # The whole handler, 10% of the members online.
    online = members[::ONLINE_EVERY]
    connections = {user: connect(ctx, user) for user in online}
    results["online members 10k"] = len(online)
    for label, size in SIZES.items():
        expected = len(members[:size:ONLINE_EVERY])
        report = service.handle_frame(
            connections[sender], json.dumps(_send(groups[label])), connections_endpoint("", "")
        )
        if len(report.delivered) != expected or report.failed:
            raise RuntimeError(f"a send to the {label} group reached {len(report.delivered)} of {expected}")
        results[f"pushes {label}"] = len(report.delivered)
        iterations = ctx.iterations(100 if size <= 1000 else 40)
        stats = measure(
            partial(_frame_send, connections[sender], groups[label]),
            iterations=iterations,
            warmup=5,
        )
        log(f"  {f'send-message, {size:,} members ({expected:,} online)':<34} {stats}")
        results[f"send {label}"] = stats
    dm_connections = {user: connect(ctx, user) for user in (ctx.user("dm-a"), ctx.user("dm-b"))}
    results["send 10k queued"], results["send direct beside queued"] = _queued_send(
        ctx, connections[sender], groups["10k"], dm_connections[ctx.user("dm-a")], direct, log
    )

    # A read in the 10,000-member group: above RECEIPTS_MAX_MEMBERS only the reader's own connections hear it.
    reader = online[1]
    reader_connection = connections[reader]
    connect(ctx, reader)  # the reader's second device
    read = {"action": "read-messages", "conversationId": groups["10k"]}

    def one_unread() -> None:
        ctx.admin.run(
            "UPDATE participant_table p SET last_read_seq = c.last_seq - 1 FROM conversation_table c"
            " WHERE c.conversation_id = p.conversation_id AND p.conversation_id = :c AND p.user_id = :u",
            c=groups["10k"],
            u=reader,
        )

    one_unread()
    report = service.handle_frame(reader_connection, json.dumps(read), connections_endpoint("", ""))
    results["read pushes 10k"] = len(report.delivered)
    stats = measure(
        lambda: send_frame(reader_connection, read), setup=one_unread, iterations=ctx.iterations(200), warmup=20
    )
    log(f"  {'read-messages, 10,000 members':<34} {stats} ({len(report.delivered)} pushes per read)")
    results["read 10k"] = stats

    # WAL of one committed send, its triggers included (bench/wal.py).
    results["wal direct"] = _wal(ctx, "direct", direct, ctx.user("dm-a"), log)
    results["wal 100"] = _wal(ctx, "100 members", group_100, sender, log)
    results["wal 10k"] = _wal(ctx, "10,000 members", groups["10k"], sender, log)
    return results
