"""The chat's store of record: named SQL queries over PostgreSQL.

Each method is one statement (two for an idempotent retry or a paged read by
cursor), so nothing is ever half-written. Methods speak in domain terms and
raise domain errors; SQL never leaves this module and ``db``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.db import Database, Row, parse_timestamptz
from chalicelib.errors import CONVERSATION_NOT_FOUND, BadRequest, Conflict, NotFound
from chalicelib.validation import ListCursor, MessagePageQuery, NewConversation
from chalicelib.wire import CONVERSATION_ROW_ACTIVITY, StoredMessage

# API Gateway closes every WebSocket connection after 2 hours; an older row is a missed $disconnect.
MAX_CONNECTION_AGE_S = 2 * 3600

# Sorts after every real (activity, id) pair: the first page's cursor.
_FIRST_PAGE = ListCursor(datetime.max.replace(tzinfo=UTC), "ffffffff-ffff-ffff-ffff-ffffffffffff")


@dataclass(frozen=True)
class SentMessage:
    message: StoredMessage
    participants: list[str]
    # False when this tempMessageId was already stored: the original comes back.
    is_new: bool


@dataclass(frozen=True)
class ReadResult:
    participants: list[str]
    # (last read message id, read time) when the watermark moved; None for a no-op read.
    receipt: tuple[str, datetime] | None


class ChatRepository:
    def __init__(self, database: Database) -> None:
        self._db = database

    # --- conversations -------------------------------------------------------------

    def create_conversation(self, creator: str, spec: NewConversation) -> tuple[str, bool]:
        """(conversation id, created?) — a direct pair that exists returns its id."""
        new_id = str(uuid.uuid4())
        if spec.is_group:
            self._db.run(
                "create_group_conversation",
                conversation_id=new_id,
                title=spec.title,
                created_by=creator,
                user_ids=list(spec.members),
            )
            return new_id, True
        low, high = sorted(spec.members)
        rows = self._db.run(
            "create_direct_conversation",
            conversation_id=new_id,
            created_by=creator,
            user_low=low,
            user_high=high,
        )
        if rows:
            return new_id, True
        existing = self.find_direct_conversation(low, high)
        if existing is None:  # created and gone again; nothing deletes today
            raise Conflict("The conversation changed; try again")
        return existing, False

    def find_direct_conversation(self, user_a: str, user_b: str) -> str | None:
        low, high = sorted((user_a, user_b))
        rows = self._db.run("find_direct_conversation", user_low=low, user_high=high)
        return str(rows[0]["conversation_id"]) if rows else None

    def member_conversation(self, conversation_id: str, user_id: str) -> Row:
        """The conversation, if ``user_id`` is in it; NotFound alike for missing and foreign."""
        rows = self._db.run("get_member_conversation", conversation_id=conversation_id, user_id=user_id)
        if not rows:
            raise NotFound(CONVERSATION_NOT_FOUND)
        return rows[0]

    def participants(self, conversation_id: str) -> list[str]:
        rows = self._db.run("list_participants", conversation_id=conversation_id)
        return [row["user_id"] for row in rows]

    def user_conversations(
        self, user_id: str, *, is_read: bool | None, limit: int, cursor: ListCursor | None
    ) -> list[list[Any]]:
        """A page of rows laid out as ``wire.CONVERSATION_ROW_FIELDS``, newest activity first."""
        after = cursor or _FIRST_PAGE
        page = self._db.run(
            "list_user_conversations",
            user_id=user_id,
            cursor_at=after.activity_at,
            cursor_id=after.conversation_id,
            unread_only=is_read is False,
            read_only=is_read is True,
            limit=limit,
        )[0]["page"]
        rows: list[list[Any]] = page or []  # json_agg of no rows is NULL
        for row in rows:  # json carries the time as text
            row[CONVERSATION_ROW_ACTIVITY] = parse_timestamptz(row[CONVERSATION_ROW_ACTIVITY])
        return rows

    # --- connections (the durable copy of the registry's connection -> user) -----------

    def save_connection(self, connection_id: str, user_id: str) -> None:
        self._db.run("save_connection", connection_id=connection_id, user_id=user_id, max_age_s=MAX_CONNECTION_AGE_S)

    def connection_user(self, connection_id: str) -> str | None:
        """The user of a connection that may still be open, if it was recorded."""
        rows = self._db.run("connection_user", connection_id=connection_id, max_age_s=MAX_CONNECTION_AGE_S)
        return str(rows[0]["user_id"]) if rows else None

    def delete_connection(self, connection_id: str) -> None:
        self._db.run("delete_connection", connection_id=connection_id)

    # --- messages --------------------------------------------------------------------

    def send_message(self, sender: str, conversation_id: str, temp_message_id: str, content: str) -> SentMessage:
        """Store a message once; a repeated tempMessageId returns the original."""
        message_id = str(uuid.uuid4())
        try:
            rows = self._db.run(
                "send_message",
                message_id=message_id,
                conversation_id=conversation_id,
                sender_id=sender,
                temp_message_id=temp_message_id,
                content=content,
            )
        except Conflict:
            return self._already_sent(sender, conversation_id, temp_message_id)
        if not rows:
            raise NotFound(CONVERSATION_NOT_FOUND)
        row = rows[0]
        message = StoredMessage(
            str(row["message_id"]), conversation_id, sender, temp_message_id, content, row["sent_at"], int(row["seq"])
        )
        return SentMessage(message, list(row["participant_ids"]), is_new=True)

    def _already_sent(self, sender: str, conversation_id: str, temp_message_id: str) -> SentMessage:
        rows = self._db.run(
            "find_sent_message",
            conversation_id=conversation_id,
            sender_id=sender,
            temp_message_id=temp_message_id,
        )
        if not rows:
            raise Conflict("The message could not be stored; try again")
        row = rows[0]
        message = StoredMessage(
            str(row["message_id"]),
            conversation_id,
            sender,
            temp_message_id,
            row["content"],
            row["sent_at"],
            int(row["seq"]),
        )
        return SentMessage(message, [], is_new=False)

    def mark_read(self, user_id: str, conversation_id: str) -> ReadResult:
        """Move the reader's watermark to the latest message (one row, any unread count)."""
        rows = self._db.run("mark_read", conversation_id=conversation_id, user_id=user_id)
        if not rows:
            raise NotFound(CONVERSATION_NOT_FOUND)
        row = rows[0]
        receipt = None
        if row["last_read_seq"] is not None and row["last_read_message_id"] is not None:
            receipt = (str(row["last_read_message_id"]), row["last_read_at"])
        return ReadResult(list(row["participant_ids"]), receipt)

    def message_page(self, conversation: Row, page: MessagePageQuery) -> list[Row]:
        """A page of messages, newest first (the caller reorders for ``order=asc``).

        Positions are dense (1..last_seq), so every kind of page is a position range
        found from the conversation row or the anchor message: the same cost at any depth.
        """
        conversation_id = str(conversation["conversation_id"])
        newest = int(conversation["last_seq"])
        if page.before is not None:
            high = self._position(conversation_id, page.before, "before") - 1
            low = high - page.limit
        elif page.after is not None:
            low = self._position(conversation_id, page.after, "after")
            high = low + page.limit
        else:
            high = newest - page.offset
            low = high - page.limit
        if high <= 0:
            return []
        return self._db.run("messages_in_seq_range", conversation_id=conversation_id, low=max(low, 0), high=high)

    def _position(self, conversation_id: str, message_id: str, field: str) -> int:
        rows = self._db.run("message_position", conversation_id=conversation_id, message_id=message_id)
        if not rows:
            raise BadRequest(f"{field} must name a message of this conversation")
        seq: Any = rows[0]["seq"]
        return int(seq)
