"""Messages that live (issue 13): edit-message, delete-message and react beside send-message, and the change feed
150,000 changes deep beside its newest page.

The frames go through the app's real ``$default`` handler (``app.message`` with API-Gateway-shaped events, as
bench/measure_ws.py does) in a scratch direct conversation whose two members hold one connection each; the
endpoint answers at once. The four frames are timed in alternating rounds. Each round sends messages, then
edits the newest of them (new content each time), then reacts on it (adding and removing one emoji in turn:
both are changes), then deletes messages (each one sent, untimed, just before). Every timed frame changes the
message, so each is a locked change, a list-row update and two pushes.

The change feed is ``ChatService.conversation_changes`` (what ``GET /conversations/{id}/changes`` calls) on the
dataset's deepest conversation (200,000 messages, each its own change): ``after`` = the newest changeSeq less
150,000, and the newest page, both 50 changes.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from bench.context import BenchContext, connect, send_frame
from bench.measure_ws import _send
from bench.phase import interleaved
from chalicelib.sql import query
from chalicelib.wiring import connections_endpoint, get_service

DEEP = 150_000
PAGE = 50
EMOJI = "\N{THUMBS UP SIGN}"


def _newest_message(ctx: BenchContext, conversation_id: str) -> str:
    rows = ctx.admin.run(
        "SELECT CAST(message_id AS text) FROM message_table WHERE conversation_id = :c ORDER BY seq DESC LIMIT 1",
        c=conversation_id,
    )
    return str(rows[0][0])


def frames(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """send, edit, delete and react through app.message, interleaved."""
    service = get_service()
    alice, bob = ctx.user("life-a"), ctx.user("life-b")
    body = json.dumps({"recipientIdArr": [bob], "isGroup": False, "title": ""})
    conversation_id = str(service.create_conversation(alice, body)["conversationId"])
    ctx.scratch_conversations.append(conversation_id)
    sender, _receiver = connect(ctx, alice), connect(ctx, bob)
    endpoint = connections_endpoint("", "")
    counter = itertools.count()
    state: dict[str, Any] = {"target": None, "add": True, "victim": None}

    def change(action: str, **fields: Any) -> dict[str, Any]:
        return {"action": action, "conversationId": conversation_id, "tempMessageId": uuid.uuid4().hex, **fields}

    def edit() -> None:
        send_frame(sender, change("edit-message", messageId=state["target"], content=f"edited {next(counter)}"))

    def react() -> None:
        send_frame(sender, change("react", messageId=state["target"], emoji=EMOJI, add=state["add"]))
        state["add"] = not state["add"]

    def pick_target() -> None:
        if state["target"] is None:
            state["target"] = _newest_message(ctx, conversation_id)

    def send() -> None:
        send_frame(sender, _send(conversation_id))
        state["target"] = None  # the next edit and reaction are on the newest message

    def new_victim() -> None:
        send_frame(sender, _send(conversation_id))
        state["victim"] = _newest_message(ctx, conversation_id)

    def delete() -> None:
        send_frame(sender, change("delete-message", messageId=state["victim"]))

    # Each frame reaches both connections once (an error frame would reach the sender alone).
    send()
    pick_target()
    for frame in (
        change("edit-message", messageId=state["target"], content="checked edit"),
        change("react", messageId=state["target"], emoji=EMOJI, add=True),
        change("react", messageId=state["target"], emoji=EMOJI, add=False),
    ):
        report = service.handle_frame(sender, json.dumps(frame), endpoint)
        if len(report.delivered) != 2 or report.failed:
            raise RuntimeError(f"{frame['action']} did not reach both connections: {report}")
    new_victim()
    report = service.handle_frame(sender, json.dumps(change("delete-message", messageId=state["victim"])), endpoint)
    if len(report.delivered) != 2 or report.failed:
        raise RuntimeError(f"delete-message did not reach both connections: {report}")

    stats = interleaved(
        {
            "send": (send, None),
            "edit": (edit, pick_target),
            "react": (react, pick_target),
            "delete": (delete, new_victim),
        },
        rounds=ctx.iterations(10),
        per_round=40,
        warmup=20,
    )
    versions = ctx.admin.run(
        "SELECT count(*) FILTER (WHERE deleted_at IS NOT NULL), max(version) FROM message_table"
        " WHERE conversation_id = :c",
        c=conversation_id,
    )[0]
    deleted = len(stats["delete"].samples) + 20 + 1  # the timed ones, the warm-up and the checked one
    if int(versions[0]) != deleted:
        raise RuntimeError(f"{versions[0]} messages deleted, expected {deleted}")
    for name, label in (("send", "send-message"), ("edit", "edit-message"), ("delete", "delete-message")):
        log(f"  {label:<34} {stats[name]}")
    log(f"  {'react':<34} {stats['react']}")
    return dict(stats)


def changes(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """The change feed's newest page and its page 150,000 changes deep, interleaved, with both plans."""
    service = get_service()
    info = ctx.info
    conversation_id, reader = info.deep_conversation_id, info.deep_reader
    newest_seq = int(
        ctx.admin.run("SELECT last_change_seq FROM conversation_table WHERE conversation_id = :c", c=conversation_id)[
            0
        ][0]
    )
    if newest_seq < DEEP + PAGE:
        raise RuntimeError(f"the deepest conversation has {newest_seq} changes, fewer than {DEEP + PAGE}")
    deep = {"after": str(newest_seq - DEEP), "limit": str(PAGE)}
    newest = {"after": str(newest_seq - PAGE), "limit": str(PAGE)}
    for params in (deep, newest):
        page = service.conversation_changes(reader, conversation_id, params)["changes"]
        if len(page) != PAGE:
            raise RuntimeError(f"a change page after {params['after']} holds {len(page)} changes")
    stats = interleaved(
        {
            "changes newest": (lambda: service.conversation_changes(reader, conversation_id, newest), None),
            "changes deep": (lambda: service.conversation_changes(reader, conversation_id, deep), None),
        },
        rounds=ctx.iterations(10),
        per_round=30,
        warmup=20,
    )
    log(f"  {'changes, newest page of 50':<34} {stats['changes newest']}")
    log(f"  {f'changes, {DEEP:,} deep, 50':<34} {stats['changes deep']} (after={deep['after']} of {newest_seq:,})")
    results: dict[str, Any] = dict(stats)
    results["changes depth"] = DEEP
    results["changes conversation length"] = newest_seq
    for label, params in (("newest", newest), ("deep", deep)):
        plan = ctx.admin.run(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query("changes_after"),
            conversation_id=conversation_id,
            after=int(params["after"]),
            limit=PAGE,
        )
        results[f"changes plan {label}"] = "\n".join(str(row[0]) for row in plan)
    return results


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    return {**frames(ctx, log), **changes(ctx, log)}
