"""Live signals (issue 15): typing frames through ``app.message``, how many SQL statements a burst of them runs,
and ``GET /presence`` for 100 users.

Typing: a scratch group of 10 members, each holding one connection. One member's frames alternate
``typing: true`` and ``typing: false``: each ``true`` opens the 2 s throttle and each ``false`` (after a pushed
``true``) closes it, so every timed frame pushes to the other 9 members' connections. A second figure times
repeated ``true`` frames inside the throttle window (answered with no push). The statements are counted at the
app's own ``Database`` (its ``_execute`` calls, as tests/test_typing.py counts them) on the wired instance;
the first frame fills the Redis membership cache (one query) and is left out.

Presence: ``ChatService.presence`` (what the route calls) for 100 users who share a 101-member scratch group
with the caller, all of them online (one connection each): one SQL query (who shares a conversation with the
caller) and one Redis pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from bench.context import BenchContext, connect, send_frame
from bench.phase import interleaved, settings
from chalicelib import wiring
from chalicelib.db import Database

TYPING_MEMBERS = 10
PRESENCE_USERS = 100


class StatementCounter:
    """Counts the statements the app's ``Database`` sends, by wrapping its ``_execute`` on the wired instance
    (the one the service holds); the phase's ``wiring.reset()`` drops that instance afterwards."""

    def __init__(self) -> None:
        self.statements = 0

    def install(self, database: Database) -> None:
        execute = database._execute

        def counted(connection: Any, sql: str, params: dict[str, Any]) -> tuple[Any, Any]:
            self.statements += 1
            return execute(connection, sql, params)

        setattr(database, "_execute", counted)  # noqa: B010  (an instance attribute over the method)


def _group(ctx: BenchContext, members: list[str]) -> str:
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": f"signals {len(members)}"})
    conversation_id = str(wiring.get_service().create_conversation(members[0], body)["conversationId"])
    ctx.scratch_conversations.append(conversation_id)
    return conversation_id


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    counter = StatementCounter()
    with settings({"MAX_PARTICIPANTS": "1000"}):
        counter.install(wiring.get_database())
        service = wiring.get_service()
        members = [ctx.user(f"typer{index:02d}") for index in range(TYPING_MEMBERS)]
        group = _group(ctx, members)
        connections = [connect(ctx, member) for member in members]
        typer = connections[0]
        state = {"typing": True}

        def frame(typing: bool) -> dict[str, Any]:
            return {"action": "typing", "conversationId": group, "typing": typing}

        def alternate() -> None:
            send_frame(typer, frame(state["typing"]))
            state["typing"] = not state["typing"]

        def stop() -> None:  # before each throttled frame: one pushed true is showing, the gate is shut
            if state["typing"]:
                send_frame(typer, frame(True))
                state["typing"] = False

        endpoint = wiring.connections_endpoint("", "")
        first = service.handle_frame(typer, json.dumps(frame(True)), endpoint)  # fills the membership cache
        second = service.handle_frame(typer, json.dumps(frame(False)), endpoint)
        if len(first.delivered) != TYPING_MEMBERS - 1 or len(second.delivered) != TYPING_MEMBERS - 1:
            raise RuntimeError(f"typing reached {len(first.delivered)} and {len(second.delivered)} connections")
        before = counter.statements
        stats = interleaved(
            {
                "typing": (alternate, None),
                "typing throttled": (lambda: send_frame(typer, frame(True)), stop),
            },
            rounds=ctx.iterations(10),
            per_round=50,
            warmup=10,
        )
        frames = sum(len(s.samples) for s in stats.values()) + 20
        results["typing sql"] = counter.statements - before
        results["typing frames"] = frames
        results.update(stats)
        log(f"  {f'typing frame ({TYPING_MEMBERS - 1} pushes)':<34} {stats['typing']}")
        log(f"  {'typing frame, throttled (no push)':<34} {stats['typing throttled']}")
        log(f"  {'SQL statements in the typing burst':<34} {results['typing sql']} in {frames:,} frames")

        caller = ctx.user("presence-caller")
        watched = [ctx.user(f"seen{index:03d}") for index in range(PRESENCE_USERS)]
        _group(ctx, [caller, *watched])
        for user in watched:
            connect(ctx, user)
        params = {"userIds": ",".join(watched)}
        shown = service.presence(caller, params)
        online = sum(1 for item in shown if item.get("online"))
        if len(shown) != PRESENCE_USERS or online != PRESENCE_USERS:
            raise RuntimeError(f"presence shows {online} of {len(shown)} users online")
        before = counter.statements
        presence = interleaved(
            {"presence": (lambda: service.presence(caller, params), None)},
            rounds=1,
            per_round=ctx.iterations(300),
            warmup=20,
        )["presence"]
        results["presence"] = presence
        results["presence sql per call"] = (counter.statements - before) / (len(presence.samples) + 20)
        log(f"  {f'GET /presence, {PRESENCE_USERS} users online':<34} {presence}")
    return results
