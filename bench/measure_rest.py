"""REST reads: the conversation list and message pages, ours and the baseline's.

Both sides are measured at the same level: the chat service's method that the route calls (validation, SQL,
JSON shaping), without Chalice's routing, whose overhead is the same for both designs and, in the local test
client, larger than the query being measured. Ours returns the list already encoded as the response's JSON
text (the list query writes it, sql/0010); the baseline returns Python objects that the route would still have
to encode, so the list's comparison leaves the baseline that step ahead.
"""

from __future__ import annotations

import json
from typing import Any

from bench.baseline import NaiveChat
from bench.context import BenchContext
from bench.timing import Stats, measure
from chalicelib.wiring import get_service

DEEP_OFFSET = 150_000
PAGE = 50


def run(ctx: BenchContext, naive: NaiveChat, log: Any = print) -> dict[str, Stats]:
    service = get_service()
    info = ctx.info
    results: dict[str, Stats] = {}

    def timed(name: str, operation: Any, iterations: int, warmup: int) -> Stats:
        stats = measure(operation, iterations=ctx.iterations(iterations), warmup=warmup)
        log(f"  {name:<34} {stats}")
        results[name] = stats
        return stats

    heavy_rows = json.loads(service.list_conversations(info.heavy_user, {}).body)
    if len(heavy_rows) != 500:
        raise RuntimeError(f"the heavy user lists {len(heavy_rows)} conversations, expected 500")
    if len(naive.list_conversations(info.heavy_user)) != 500:
        raise RuntimeError("the baseline lists a different number of conversations for the heavy user")
    timed("list heavy", lambda: service.list_conversations(info.heavy_user, {}), 200, 20)
    timed("list typical", lambda: service.list_conversations(info.typical_user, {}), 300, 20)
    timed("baseline list heavy", lambda: naive.list_conversations(info.heavy_user), 20, 2)
    timed("baseline list typical", lambda: naive.list_conversations(info.typical_user), 100, 5)

    reader, deep = info.deep_reader, info.deep_conversation_id
    newest = {"limit": str(PAGE)}
    deep_offset = {"offset": str(DEEP_OFFSET), "limit": str(PAGE)}
    by_offset = service.conversation_messages(reader, deep, deep_offset)
    # The message just newer than the offset page: "before" it is the very same page.
    anchor = service.conversation_messages(reader, deep, {"offset": str(DEEP_OFFSET - 1), "limit": "1"})[0]
    deep_cursor = {"before": anchor["messageId"], "limit": str(PAGE)}
    by_cursor = service.conversation_messages(reader, deep, deep_cursor)
    by_baseline = naive.conversation_messages(reader, deep, DEEP_OFFSET, PAGE)
    if [m["messageId"] for m in by_cursor] != [m["messageId"] for m in by_offset] or len(by_offset) != PAGE:
        raise RuntimeError("the deep cursor page differs from the deep offset page")
    if [m["messageId"] for m in by_baseline] != [m["messageId"] for m in by_offset]:
        log("  note: the baseline's deep page (by send time) differs from ours (by position)")

    timed("page newest", lambda: service.conversation_messages(reader, deep, newest), 300, 20)
    timed("page deep cursor", lambda: service.conversation_messages(reader, deep, deep_cursor), 300, 20)
    timed("page deep offset", lambda: service.conversation_messages(reader, deep, deep_offset), 300, 20)
    timed("baseline page deep offset", lambda: naive.conversation_messages(reader, deep, DEEP_OFFSET, PAGE), 30, 3)
    return results
