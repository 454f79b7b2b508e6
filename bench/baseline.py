"""The naive design, side by side with ours: its schema, its load, and its handlers.

The schema (``baseline_schema.sql``) lives in the ``baseline`` schema of the benchmark database and is filled
from the very rows ``bench.seed`` loaded (``INSERT ... SELECT`` in the server: no data passes through Python),
including the full read-state table, one row per message per participant. Its handlers reuse everything of ours
that is not the design under test (validation, the Redis registry, the ``@connections`` client, the JSON shapes)
and differ where the naive design differs: its SQL, and pushes sent one after another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg8000.native

from chalicelib.config import Settings
from chalicelib.db import Database
from chalicelib.errors import NotFound
from chalicelib.model import ReadReceipt, StoredMessage
from chalicelib.push import ConnectionsClient
from chalicelib.registry import ConnectionRegistry
from chalicelib.sql import parse_queries
from chalicelib.validation import ReadMessages, SendMessage, parse_frame, parse_frame_object
from chalicelib.wire import JSONObject, Push, iso, message_body, plan_new_message, plan_read

HERE = Path(__file__).resolve().parent
QUERIES = parse_queries((HERE / "baseline.sql").read_text(encoding="utf-8"))


def sql(name: str) -> str:
    return QUERIES[name].sql


def ensure_baseline(conn: pg8000.native.Connection, params: dict[str, Any], log: Callable[[str], None]) -> float:
    """Build and fill the ``baseline`` schema unless it was built for these dataset parameters; seconds spent."""
    started = time.perf_counter()
    rows = conn.run("SELECT params FROM bench_dataset WHERE name = 'baseline'")
    if rows and rows[0][0] == params:
        return time.perf_counter() - started
    log("baseline: building the naive schema from the seeded data ...")
    conn.run("DROP SCHEMA IF EXISTS baseline CASCADE")
    conn.run("DELETE FROM bench_dataset WHERE name = 'baseline'")
    conn.run("SET synchronous_commit = off")
    conn.run("SET maintenance_work_mem = '512MB'")
    conn.run((HERE / "baseline_schema.sql").read_text(encoding="utf-8"))
    conn.run(sql("baseline_fill"))
    log(f"baseline: filled in {time.perf_counter() - started:.1f}s; indexing ...")
    conn.run(sql("baseline_index"))
    for table in ("conversation", "participant", "message", "message_read"):
        conn.run(f"VACUUM (ANALYZE) baseline.{table}")
    read_rows = conn.run("SELECT count(*) FROM baseline.message_read")[0][0]
    conn.run(
        "INSERT INTO bench_dataset (name, params, info)"
        " VALUES ('baseline', CAST(:params AS jsonb), CAST(:info AS jsonb))",
        params=json.dumps(params),
        info=json.dumps({"read_rows": read_rows}),
    )
    seconds = time.perf_counter() - started
    log(f"baseline: {read_rows:,} read-state rows; built in {seconds:.1f}s")
    return seconds


def _message(row: dict[str, Any]) -> StoredMessage:
    """A history row of the naive schema as the record our wire shapes render."""
    return StoredMessage(
        str(row["message_id"]),
        str(row["conversation_id"]),
        row["sender_id"],
        row.get("temp_message_id") or "",
        row["content"],
        row["sent_at"],
        int(row["seq"]) if row.get("seq") is not None else None,
    )


def list_row_body(row: dict[str, Any]) -> JSONObject:
    """The naive list's row in the contract's shape (it has no unread count to offer)."""
    has_message = row["latest_message_id"] is not None
    return {
        "conversationId": str(row["conversation_id"]),
        "title": row["title"],
        "isGroup": row["is_group"],
        "sentAt": iso(row["latest_sent_at"] if has_message else row["created_at"]),
        "latestContent": row["latest_content"] if has_message else "",
        "senderId": row["latest_sender_id"] if has_message else "",
        "isRead": bool(row["is_read"]),
        "participantId": row["participant_id"] or "",
    }


class NaiveChat:
    """The naive design's handlers, with our validation, registry, push client and JSON shapes."""

    def __init__(
        self, settings: Settings, database: Database, registry: ConnectionRegistry, client: ConnectionsClient
    ) -> None:
        self._settings = settings
        self._db = database
        self._registry = registry
        self._client = client

    # --- REST --------------------------------------------------------------------------

    def list_conversations(self, caller: str) -> list[JSONObject]:
        return [list_row_body(row) for row in self._db.run_sql(sql("baseline_list_conversations"), user_id=caller)]

    def conversation_messages(self, caller: str, conversation_id: str, offset: int, limit: int) -> list[JSONObject]:
        if not self._db.run_sql(sql("baseline_is_member"), user_id=caller, conversation_id=conversation_id):
            raise NotFound("Conversation not found")
        rows = self._db.run_sql(
            sql("baseline_message_page"), conversation_id=conversation_id, offset=offset, limit=limit
        )
        return [message_body(_message(row), caller) for row in rows]

    # --- WebSocket ---------------------------------------------------------------------

    def handle_frame(self, connection_id: str, body: str) -> int:
        """Handle a send-message or read-messages frame; pushes go one after another. Returns pushes sent."""
        user = self._registry.touch(connection_id)
        if user is None:
            raise NotFound("unknown connection")
        frame = parse_frame(parse_frame_object(body, self._settings), self._settings)
        pushes: list[Push]
        if isinstance(frame, SendMessage):
            rows = self._db.run_sql(
                sql("baseline_send_message"),
                message_id=str(uuid.uuid4()),
                conversation_id=frame.conversation_id,
                sender_id=user,
                temp_message_id=frame.temp_message_id,
                content=frame.content,
            )
            if not rows:
                raise NotFound("Conversation not found")
            row = rows[0]
            message = StoredMessage(
                str(row["message_id"]),
                frame.conversation_id,
                user,
                frame.temp_message_id,
                frame.content,
                row["sent_at"],
            )
            participants = list(row["participant_ids"])
            pushes = plan_new_message(message, participants, self._registry.connections_for(participants))
        elif isinstance(frame, ReadMessages):
            row = self._db.run_sql(sql("baseline_mark_read"), conversation_id=frame.conversation_id, user_id=user)[0]
            participants = list(row["participant_ids"])
            if user not in participants:
                raise NotFound("Conversation not found")
            receipt = ReadReceipt("", datetime_now()) if row["marked"] else None
            connections = self._registry.connections_for(participants) if receipt else {}
            pushes = plan_read(frame.conversation_id, user, participants, connections, connection_id, receipt)
        else:
            return 0
        for push in pushes:
            self._client.post(push.connection_id, json.dumps(push.frame, separators=(",", ":")).encode())
        return len(pushes)


def datetime_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
