"""Live signals (issue 15): a ``typing`` frame through the real ``$default`` handler, the SQL it runs, and
``GET /presence`` for 100 users through the service.

``typing`` alternates ``true`` and ``false`` from one member of a 10-member group whose members are online,
so every timed frame pushes (a ``false`` clears the throttle, so the next ``true`` is pushed too): the figure
is the whole path (registry touch, cached members, throttle, the pushes over HTTP to the local
``@connections`` endpoint). Statements are counted at the driver, on the app's own ``Database``, around every
timed frame after the cache's first fill: ``sql_statements`` must be 0.

``presence`` asks about 100 users, half of whom share a conversation with the caller and a quarter of whom
are online: one indexed query, one Redis pipeline.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from bench.context import BenchContext, connect, send_frame
from bench.timing import measure
from chalicelib.wiring import get_database, get_service

GROUP_SIZE = 10
PRESENCE_USERS = 100


def _group(ctx: BenchContext, members: list[str]) -> str:
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": "bench signals"})
    conversation_id = str(get_service().create_conversation(members[0], body)["conversationId"])
    ctx.scratch_conversations.append(conversation_id)
    return conversation_id


class _StatementCounter:
    """Counts the statements the app's ``Database`` sends, by wrapping its one execution method."""

    def __init__(self) -> None:
        self.count = 0
        database: Any = get_database()
        self._database = database
        self._original = database._execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self._original(*args, **kwargs)

        database._execute = counted

    def close(self) -> None:
        self._database._execute = self._original


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """``{"typing": Stats, "typing_sql_statements": int, "presence": Stats}``."""
    members = [ctx.user(f"signals-{index:02d}") for index in range(GROUP_SIZE)]
    conversation_id = _group(ctx, members)
    typer = connect(ctx, members[0])
    for member in members[1:]:
        connect(ctx, member)
    state = {"on": True}

    def typing_frame() -> None:
        send_frame(typer, {"action": "typing", "conversationId": conversation_id, "typing": state["on"]})
        state["on"] = not state["on"]

    typing_frame()  # fills the membership cache: the one query typing ever runs
    counter = _StatementCounter()
    try:
        typing_stats = measure(typing_frame, iterations=ctx.iterations(500), warmup=20)
        statements = counter.count
    finally:
        counter.close()
    log(f"  {'typing frame (9 receivers)':<34} {typing_stats}   SQL statements: {statements}")

    caller = ctx.user("signals-caller")
    asked = [ctx.user(f"signals-p{index:03d}") for index in range(PRESENCE_USERS)]
    shared = asked[: PRESENCE_USERS // 2]
    for start in range(0, len(shared), 25):
        _group(ctx, [caller, *shared[start : start + 25]])
    for user in asked[::4]:
        connect(ctx, user)
    params = {"userIds": ",".join(asked)}
    presence_stats = measure(partial(get_service().presence, caller, params), iterations=ctx.iterations(300), warmup=20)
    log(f"  {f'GET /presence, {PRESENCE_USERS} users':<34} {presence_stats}")
    return {"typing": typing_stats, "typing_sql_statements": statements, "presence": presence_stats}
