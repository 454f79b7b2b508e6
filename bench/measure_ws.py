"""WebSocket handlers: send-message, the 1,000-connection fan-out, and read-messages, ours and the baseline's.

Ours is the app's real ``$default`` handler (``app.message``) fed API-Gateway-shaped events: registry lookup in
Redis, the SQL, and the pushes over HTTP to a ``@connections`` endpoint running in another process. The baseline
runs the naive SQL with the same registry and push client, pushing one after another.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from bench.baseline import NaiveChat
from bench.context import BenchContext, connect, send_frame
from bench.timing import Stats, measure
from chalicelib.wiring import connections_endpoint, get_service

FANOUT_MEMBERS = 50
FANOUT_CONNECTIONS_EACH = 20


def _copy_to_baseline(ctx: BenchContext, conversation_id: str) -> None:
    """Give the baseline the same scratch conversation (it starts without messages)."""
    ctx.admin.run(
        "INSERT INTO baseline.conversation (conversation_id, title, is_group, created_by, created_at)"
        " SELECT conversation_id, title, is_group, created_by, created_at FROM conversation_table"
        " WHERE conversation_id = :id",
        id=conversation_id,
    )
    ctx.admin.run(
        "INSERT INTO baseline.participant (user_id, conversation_id, joined_at)"
        " SELECT user_id, conversation_id, joined_at FROM participant_table WHERE conversation_id = :id",
        id=conversation_id,
    )


def _send(conversation_id: str) -> dict[str, Any]:
    return {
        "action": "send-message",
        "tempMessageId": uuid.uuid4().hex,
        "conversationId": conversation_id,
        "content": "benchmark message: how is the deploy going?",
    }


def send_message(ctx: BenchContext, naive: NaiveChat, log: Any = print) -> dict[str, Stats]:
    """A direct conversation whose two members hold one connection each; the endpoint answers at once."""
    service = get_service()
    alice, bob = ctx.user("alice"), ctx.user("bob")
    conversation_id = service.create_conversation(
        alice, json.dumps({"recipientIdArr": [bob], "isGroup": False, "title": ""})
    )["conversationId"]
    ctx.scratch_conversations.append(conversation_id)
    _copy_to_baseline(ctx, conversation_id)
    sender, _receiver = connect(ctx, alice), connect(ctx, bob)

    report = service.handle_frame(sender, json.dumps(_send(conversation_id)), connections_endpoint("", ""))
    if len(report.delivered) != 2 or report.failed:
        raise RuntimeError(f"send-message did not reach both connections: {report}")
    ours = measure(lambda: send_frame(sender, _send(conversation_id)), iterations=ctx.iterations(500), warmup=50)
    log(f"  {'send-message':<34} {ours}")
    base = measure(
        lambda: naive.handle_frame(sender, json.dumps(_send(conversation_id))),
        iterations=ctx.iterations(300),
        warmup=30,
    )
    log(f"  {'baseline send-message':<34} {base}")
    return {"send": ours, "baseline send": base}


def fanout(ctx: BenchContext, log: Any = print) -> tuple[Stats, int]:
    """One message to a group whose members hold 1,000 connections; returns (stats, pushes per message)."""
    service = get_service()
    members = [ctx.user(f"fan{index:02d}") for index in range(FANOUT_MEMBERS)]
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": "fan-out"})
    conversation_id = service.create_conversation(members[0], body)["conversationId"]
    ctx.scratch_conversations.append(conversation_id)
    connections = {member: [connect(ctx, member) for _ in range(FANOUT_CONNECTIONS_EACH)] for member in members}
    sender = connections[members[0]][0]

    report = service.handle_frame(sender, json.dumps(_send(conversation_id)), connections_endpoint("", ""))
    expected = FANOUT_MEMBERS * FANOUT_CONNECTIONS_EACH
    if len(report.delivered) != expected or report.failed or report.gone:
        raise RuntimeError(
            f"fan-out delivered {len(report.delivered)} of {expected} "
            f"(failed {len(report.failed)}, gone {len(report.gone)})"
        )
    stats = measure(lambda: send_frame(sender, _send(conversation_id)), iterations=ctx.iterations(20), warmup=2)
    log(f"  {'fan-out to 1,000 connections':<34} {stats}")
    return stats, len(report.delivered)


def read_messages(ctx: BenchContext, naive: NaiveChat, log: Any = print) -> dict[str, Stats]:
    """The deep conversation's reader marks 1 and 10,000 messages read; both members hold one connection."""
    info = ctx.info
    conversation_id, reader = info.deep_conversation_id, info.deep_reader
    reader_connection = connect(ctx, reader)
    connect(ctx, info.deep_writer)
    read = {"action": "read-messages", "conversationId": conversation_id}
    original = ctx.admin.run(
        "SELECT last_read_seq, last_read_at FROM participant_table WHERE conversation_id = :c AND user_id = :u",
        c=conversation_id,
        u=reader,
    )[0]

    def unread(count: int) -> Any:
        def reset() -> None:
            ctx.admin.run(
                "UPDATE participant_table p SET last_read_seq = c.last_seq - :n FROM conversation_table c"
                " WHERE c.conversation_id = p.conversation_id AND p.conversation_id = :c AND p.user_id = :u",
                n=count,
                c=conversation_id,
                u=reader,
            )

        return reset

    results: dict[str, Stats] = {}
    try:
        for count, iterations in ((1, 300), (10_000, 300)):
            stats = measure(
                lambda: send_frame(reader_connection, read),
                setup=unread(count),
                iterations=ctx.iterations(iterations),
                warmup=20,
            )
            log(f"  {f'read-messages, {count:,} unread':<34} {stats}")
            results[f"read {count}"] = stats
    finally:
        ctx.admin.run(
            "UPDATE participant_table SET last_read_seq = :s, last_read_at = :a"
            " WHERE conversation_id = :c AND user_id = :u",
            s=original[0],
            a=original[1],
            c=conversation_id,
            u=reader,
        )

    from bench.baseline import sql

    def baseline_reset() -> None:
        ctx.admin.run(sql("baseline_unread_reset"), user_id=reader, conversation_id=conversation_id, count=10_000)

    stats = measure(
        lambda: naive.handle_frame(reader_connection, json.dumps(read)),
        setup=baseline_reset,
        iterations=ctx.iterations(20),
        warmup=2,
    )
    log(f"  {'baseline read-messages, 10,000 unread':<34} {stats}")
    results["baseline read 10000"] = stats
    return results
