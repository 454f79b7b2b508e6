"""Groups people run (issue 14): adding 100 members to a 10,000-member group, removing one, and
``GET /conversations/{id}`` (members with their read positions) for 10 and for 10,000 members.

Measured at the service's level (``ChatService``, what the routes call), as bench/measure_rest.py does. The
groups are made for the run through the app's own ``create_conversation`` (``MAX_PARTICIPANTS`` and
``MAX_REQUEST_BYTES`` raised for this phase, as bench/measure_groups.py does) and deleted with the run's other
scratch conversations, so the dataset's invariants hold afterwards.

Each round adds 100 new users (one timed ``add_participants``) and then removes those 100 one by one (each
removal timed), so the group stays between 10,000 and 10,100 members. No member of the group holds a
connection: every change still looks up all members' connections in Redis for its ``participants-updated``
push, but pushes nothing. Then a few rounds with a fan-out queue configured, where that push is queued whole.
"""

from __future__ import annotations

import json
from typing import Any

from bench.context import BenchContext
from bench.phase import interleaved, settings
from bench.timing import Stats, measure
from chalicelib.fanout import Expansion, parse_queued
from chalicelib.queue import register_local_queue, unregister_local_queue
from chalicelib.service import ChatService
from chalicelib.wiring import get_service
from local.queue import LocalQueue

BIG = 10_000
SMALL = 10
ADDED = 100
ROUNDS = 12
QUEUED_ROUNDS = 3


def _group(ctx: BenchContext, members: list[str]) -> str:
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": f"members {len(members)}"})
    conversation_id = str(get_service().create_conversation(members[0], body)["conversationId"])
    ctx.scratch_conversations.append(conversation_id)
    return conversation_id


def _round(service: ChatService, owner: str, group: str, added: list[str]) -> tuple[float, list[float]]:
    """One timed add of ``added``, then each of them removed again (each timed): (add ms, removal ms)."""
    body = json.dumps({"userIds": added})
    answers: list[Any] = []
    add = measure(lambda: answers.append(service.add_participants(owner, group, body)), iterations=1, warmup=0)
    if answers[0]["added"] != added:
        raise RuntimeError(f"add_participants added {len(answers[0]['added'])} of {len(added)}")
    queue = list(added)

    def remove_next() -> None:
        user = queue.pop()
        if service.remove_participant(owner, group, user)["removed"] != [user]:
            raise RuntimeError(f"remove_participant did not remove {user}")

    removed = measure(remove_next, iterations=len(added), warmup=0)
    return add.samples[0], removed.samples


def _queued_rounds(ctx: BenchContext, owner: str, group: str, log: Any) -> dict[str, Stats]:
    """The same rounds with a fan-out queue configured, as deployed: above FANOUT_EXPAND_MEMBERS the
    ``participants-updated`` push is queued whole (one expansion, not drained here) instead of looking up
    10,000 members' connections in the request."""
    queue = LocalQueue(f"bench-members-{ctx.run_id}")
    adds: list[float] = []
    removes: list[float] = []
    with settings({"FANOUT_QUEUE_URL": register_local_queue(queue.name, queue)}):
        try:
            service = get_service()
            for index in range(ctx.iterations(QUEUED_ROUNDS) + 1):
                added = [ctx.user(f"qadd{index:03d}-{n:03d}") for n in range(ADDED)]
                add_ms, remove_ms = _round(service, owner, group, added)
                if index:
                    adds.append(add_ms)
                    removes.extend(remove_ms)
            if not all(isinstance(parse_queued(body), Expansion) for body in queue.bodies()):
                raise RuntimeError("a membership change was not queued as one expansion")
        finally:
            unregister_local_queue(queue.name)
    results = {"add 100 queued": Stats(adds), "remove queued": Stats(removes)}
    log(f"  {f'add {ADDED} members to {BIG:,}, queued':<34} {results['add 100 queued']}")
    log(f"  {f'remove one member of {BIG:,}, queued':<34} {results['remove queued']}")
    return results


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    """Stats by name: ``add 100``, ``remove``, ``get 10``, ``get 10k``; and the members each GET returned."""
    with settings({"MAX_PARTICIPANTS": str(BIG + ADDED), "MAX_REQUEST_BYTES": "1000000"}):
        service = get_service()
        members = [ctx.user(f"g{index:05d}") for index in range(BIG)]
        owner = members[0]
        big = _group(ctx, members)
        small = _group(ctx, members[:SMALL])

        adds: list[float] = []
        removes: list[float] = []
        for index in range(ctx.iterations(ROUNDS) + 1):  # the first round warms up
            add_ms, remove_ms = _round(service, owner, big, [ctx.user(f"add{index:03d}-{n:03d}") for n in range(ADDED)])
            if index:
                adds.append(add_ms)
                removes.extend(remove_ms)
        results: dict[str, Any] = {"add 100": Stats(adds), "remove": Stats(removes)}
        log(f"  {f'add {ADDED} members to {BIG:,}':<34} {results['add 100']}")
        log(f"  {f'remove one member of {BIG:,}':<34} {results['remove']}")
        results.update(_queued_rounds(ctx, owner, big, log))

        shown = {
            label: service.get_conversation(owner, conversation_id)
            for label, conversation_id in (("10", small), ("10k", big))
        }
        for label, body in shown.items():
            results[f"get {label} members shown"] = len(body.get("members") or [])
            results[f"get {label} has next cursor"] = bool(body.get("membersNextCursor"))
        timed = interleaved(
            {
                "get 10": (lambda: service.get_conversation(owner, small), None),
                "get 10k": (lambda: service.get_conversation(owner, big), None),
            },
            rounds=ctx.iterations(10),
            per_round=20,
            warmup=5,
        )
        results.update(timed)
        for label, size in (("10", SMALL), ("10k", BIG)):
            log(
                f"  {f'GET conversation, {size:,} members':<34} {timed[f'get {label}']}"
                f" ({results[f'get {label} members shown']:,} members in the body"
                f"{', and membersNextCursor' if results[f'get {label} has next cursor'] else ''})"
            )
    return results
