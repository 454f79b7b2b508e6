"""The chat's store of record: named SQL queries over PostgreSQL.

Each method is one statement (two for an idempotent retry or a paged read by
anchor), so nothing is ever half-written. Methods take and return ``model``
records and raise domain errors; SQL and driver rows never leave this module and
``db``, and nothing here knows of HTTP, query strings or wire shapes.

Lost answers: ``Database`` re-runs a statement once on a new connection when the
old one died mid-statement, so a write may meet what its own first attempt
committed. Every write carries an id chosen here (the new conversation's or
message's id, the read time), which tells "my earlier attempt did this" apart
from "someone else did": the former is reported as this request's own outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from chalicelib.db import Database, Row, Transaction, UniqueViolation, parse_timestamptz
from chalicelib.errors import CONVERSATION_NOT_FOUND, Conflict, NotFound
from chalicelib.model import (
    ConversationListQuery,
    ConversationPage,
    ListCursor,
    LockedConversation,
    Member,
    MemberConversation,
    NewConversation,
    ReadReceipt,
    ReadResult,
    Removal,
    ReplySnippet,
    Role,
    SentMessage,
    StoredMessage,
)

# API Gateway closes every WebSocket connection after 2 hours; an older row is a missed $disconnect.
MAX_CONNECTION_AGE_S = 2 * 3600

# Sorts after every real (activity, id) pair: the first page's cursor.
_FIRST_PAGE = ListCursor(datetime.max.replace(tzinfo=UTC), "ffffffff-ffff-ffff-ffff-ffffffffffff")
# The constraints a send and a group creation may meet when their own first attempt committed.
_MESSAGE_KEYS = frozenset({"message_idempotency_key", "message_table_pkey"})
_CONVERSATION_KEY = "conversation_table_pkey"
# Up to this many members, a send's statement also returns them (one round trip for a DM or a
# team); a larger group's members are read by a second statement, apart from the write.
INLINE_MEMBERS = 100


def _message(row: Row) -> StoredMessage:
    """A row of message_with_reply (sql/0009): the message with its reply snippet (queries/messages.sql)."""
    reply = None
    if row["reply_to"] is not None and row["reply_sender_id"] is not None:
        reply = ReplySnippet(str(row["reply_to"]), row["reply_sender_id"], row["reply_content"], row["reply_deleted"])
    return StoredMessage(
        str(row["message_id"]),
        str(row["conversation_id"]),
        row["sender_id"],
        row["temp_message_id"],
        row["content"],
        row["sent_at"],
        int(row["seq"]),
        change_seq=int(row["change_seq"]),
        version=int(row["version"]),
        edited_at=row["edited_at"],
        deleted_at=row["deleted_at"],
        reply_to=reply,
        mentions=tuple(row["mentions"] or ()),
        reactions=_reactions(row["reactions"]),
    )


def _reactions(value: Any) -> dict[str, int]:
    """The counts column (jsonb arrives as text or already decoded, depending on the path)."""
    counts = json.loads(value) if isinstance(value, str) else value
    return {str(emoji): int(count) for emoji, count in (counts or {}).items()}


class ChatRepository:
    def __init__(self, database: Database, *, receipts_max_members: int = 100) -> None:
        """``receipts_max_members``: above this size a read's receipt is not sent to the other members."""
        self._db = database
        self._receipts_max_members = receipts_max_members

    # --- conversations -------------------------------------------------------------

    def create_conversation(self, creator: str, spec: NewConversation) -> tuple[str, bool]:
        """(conversation id, created by this call?) — a direct pair that exists returns its id, and so
        does a group whose ``request_id`` its creator already used."""
        new_id = str(uuid.uuid4())
        if spec.is_group:
            try:
                created = self._db.optional(
                    "create_group_conversation",
                    conversation_id=new_id,
                    title=spec.title,
                    created_by=creator,
                    user_ids=list(spec.members),
                    request_id=spec.request_id,
                )
            except UniqueViolation as error:
                # Only a re-run of this very insert can meet a fresh random id: it is ours.
                if error.constraint != _CONVERSATION_KEY:
                    raise
                return new_id, True
            if created is not None:
                return new_id, True
            earlier = self._db.one("find_requested_group", created_by=creator, request_id=spec.request_id)
            return str(earlier["conversation_id"]), str(earlier["conversation_id"]) == new_id
        low, high = sorted(spec.members)
        created = self._db.optional(
            "create_direct_conversation",
            conversation_id=new_id,
            created_by=creator,
            user_low=low,
            user_high=high,
        )
        if created is not None:
            return new_id, True
        existing = self.find_direct_conversation(low, high)
        if existing is None:  # created and gone again; nothing deletes today
            raise Conflict("The conversation changed; try again")
        return existing, existing == new_id

    def find_direct_conversation(self, user_a: str, user_b: str) -> str | None:
        low, high = sorted((user_a, user_b))
        row = self._db.optional("find_direct_conversation", user_low=low, user_high=high)
        return str(row["conversation_id"]) if row else None

    def member_conversation(
        self, conversation_id: str, user_id: str, *, anchor_message_id: str | None = None
    ) -> MemberConversation:
        """The conversation, if ``user_id`` is in it; NotFound alike for missing and foreign. With
        ``anchor_message_id``, also that message's position in it (``anchor_position``), in the same query."""
        row = self._db.optional(
            "get_member_conversation", conversation_id=conversation_id, user_id=user_id, anchor_id=anchor_message_id
        )
        if row is None:
            raise NotFound(CONVERSATION_NOT_FOUND)
        return MemberConversation(
            str(row["conversation_id"]),
            row["title"],
            row["is_group"],
            row["created_by"],
            row["created_at"],
            int(row["last_seq"]),
            int(row["last_read_seq"]),
            int(row["member_count"]),
            row["role"],
            bool(row["muted"]),
            int(row["anchor_seq"]) if row["anchor_seq"] is not None else None,
        )

    def participants(self, conversation_id: str) -> list[str]:
        return list(self._db.one("list_participants", conversation_id=conversation_id)["user_ids"])

    def members(self, conversation_id: str, *, after_user: str, limit: int) -> list[Member]:
        """A page of members by user id, after ``after_user`` ("" for the first page)."""
        page = self._db.one("members_page", conversation_id=conversation_id, after_user=after_user, limit=limit)
        return [
            Member(
                user_id,
                role,
                parse_timestamptz(joined_at),
                int(last_read_seq),
                last_read_message_id,
                parse_timestamptz(read_at) if last_read_message_id and read_at else None,
            )
            for user_id, role, joined_at, last_read_seq, read_at, last_read_message_id in page["members"]
        ]

    @contextlib.contextmanager
    def change_conversation(self, conversation_id: str, caller: str) -> Iterator[ConversationChange]:
        """One transaction that holds the conversation's row locked: membership, roles, title.

        Concurrent changes of one conversation (and its sends, which update the same row) take
        turns, and each sees the others' results, so no member row is duplicated, no removal lost
        and the count and participantId stay exact. NotFound when the conversation does not exist.
        """
        with self._db.transaction() as tx:
            row = tx.optional("lock_conversation", conversation_id=conversation_id, caller=caller)
            if row is None:
                raise NotFound(CONVERSATION_NOT_FOUND)
            locked = LockedConversation(
                str(row["conversation_id"]),
                row["title"],
                row["is_group"],
                row["created_by"],
                row["created_at"],
                int(row["member_count"]),
                int(row["last_seq"]),
                row["caller_role"],
            )
            yield ConversationChange(tx, locked)

    def set_muted(self, conversation_id: str, user_id: str, muted: bool) -> None:
        if self._db.optional("set_muted", conversation_id=conversation_id, user_id=user_id, muted=muted) is None:
            raise NotFound(CONVERSATION_NOT_FOUND)

    def user_conversations(self, user_id: str, query: ConversationListQuery) -> ConversationPage:
        """A page of the user's conversations, newest activity first, after the query's cursor."""
        after = query.cursor or _FIRST_PAGE
        result = self._db.one(
            "list_user_conversations",
            user_id=user_id,
            cursor_at=after.activity_at,
            cursor_id=after.conversation_id,
            unread_only=query.is_read is False,
            read_only=query.is_read is True,
            limit=query.limit,
        )
        if not result["row_count"]:
            return ConversationPage("[]", 0, None)
        last = ListCursor(result["last_activity_at"], str(result["last_conversation_id"]))
        return ConversationPage(f"[{result['rows_json']}]", result["row_count"], last)

    # --- connections (the durable copy of the registry's connection -> user) -----------

    def save_connection(self, connection_id: str, user_id: str) -> None:
        self._db.execute(
            "save_connection", connection_id=connection_id, user_id=user_id, max_age_s=MAX_CONNECTION_AGE_S
        )

    def connection_user(self, connection_id: str) -> str | None:
        """The user of a connection that may still be open, if it was recorded."""
        row = self._db.optional("connection_user", connection_id=connection_id, max_age_s=MAX_CONNECTION_AGE_S)
        return str(row["user_id"]) if row else None

    def connection_opened_within(self, connection_id: str, seconds: float) -> bool:
        """Whether the connection was recorded less than ``seconds`` ago."""
        row = self._db.optional("connection_opened_within", connection_id=connection_id, seconds=seconds)
        return bool(row and row["recent"])

    def delete_connection(self, connection_id: str) -> None:
        self._db.execute("delete_connection", connection_id=connection_id)

    # --- presence (CONTRACT.md section 8; the state itself is in Redis, chalicelib/signals.py) ---------

    def direct_peers(self, user_id: str) -> list[str]:
        """The other member of each of the user's direct conversations."""
        return [row["user_id"] for row in self._db.run("direct_peers", user_id=user_id)]

    def users_sharing_a_conversation(self, caller: str, user_ids: list[str]) -> set[str]:
        """Those of ``user_ids`` who are in at least one conversation with ``caller``."""
        rows = self._db.run("users_sharing_a_conversation", caller=caller, user_ids=user_ids)
        return {row["user_id"] for row in rows}

    # --- messages --------------------------------------------------------------------

    def check_message_refs(self, conversation_id: str, reply_to: str | None, mentions: list[str]) -> tuple[bool, int]:
        """(whether ``reply_to`` is a message of this conversation, how many of ``mentions`` are members)."""
        row = self._db.one("check_message_refs", conversation_id=conversation_id, reply_to=reply_to, mentions=mentions)
        return bool(row["reply_ok"]), int(row["members_mentioned"])

    def send_message(
        self,
        sender: str,
        conversation_id: str,
        temp_message_id: str,
        content: str,
        *,
        reply_to: str | None = None,
        mentions: tuple[str, ...] = (),
    ) -> SentMessage:
        """Store a message once; a repeated tempMessageId returns the original (in its current state)."""
        message_id = str(uuid.uuid4())
        try:
            row = self._db.optional(
                "send_message",
                message_id=message_id,
                conversation_id=conversation_id,
                sender_id=sender,
                temp_message_id=temp_message_id,
                content=content,
                reply_to=reply_to,
                mentions=list(mentions),
                inline_members=INLINE_MEMBERS,
            )
        except UniqueViolation as error:
            if error.constraint not in _MESSAGE_KEYS:
                raise
            return self._already_sent(sender, conversation_id, temp_message_id, message_id)
        if row is None:
            raise NotFound(CONVERSATION_NOT_FOUND)
        reply = None
        if reply_to is not None and row["reply_sender_id"] is not None:
            reply = ReplySnippet(reply_to, row["reply_sender_id"], row["reply_content"], row["reply_deleted"])
        message = StoredMessage(
            str(row["message_id"]),
            conversation_id,
            sender,
            temp_message_id,
            content,
            row["sent_at"],
            int(row["seq"]),
            change_seq=int(row["change_seq"]),
            reply_to=reply,
            mentions=mentions,
        )
        members = row["participant_ids"]
        member_count = int(row["member_count"])
        return SentMessage(message, None if members is None else list(members), True, member_count)

    def _already_sent(self, sender: str, conversation_id: str, temp_message_id: str, message_id: str) -> SentMessage:
        row = self._db.optional(
            "find_sent_message",
            conversation_id=conversation_id,
            sender_id=sender,
            temp_message_id=temp_message_id,
        )
        if row is None:
            raise Conflict("The message could not be stored; try again")
        message = _message(row)
        if message.message_id == message_id:
            # This request's own first attempt stored it and its answer was lost: nobody has it yet.
            participants = self.participants(conversation_id)
            return SentMessage(message, participants, is_new=True, member_count=len(participants))
        return SentMessage(message, [], is_new=False)

    def mark_read(self, user_id: str, conversation_id: str) -> ReadResult:
        """Move the reader's watermark to the latest message (one row, any unread count)."""
        row = self._db.optional(
            "mark_read",
            conversation_id=conversation_id,
            user_id=user_id,
            read_at=datetime.now(UTC),
            receipts_max_members=self._receipts_max_members,
        )
        if row is None:
            raise NotFound(CONVERSATION_NOT_FOUND)
        receipt = None
        if row["last_read_seq"] is not None and row["last_read_message_id"] is not None:
            receipt = ReadReceipt(str(row["last_read_message_id"]), row["last_read_at"])
        # No members listed: nothing moved, or the group is too large for receipts to its members.
        return ReadResult(list(row["participant_ids"] or ()), receipt)

    def changes_after(self, conversation_id: str, after: int, limit: int) -> list[StoredMessage]:
        """Messages changed after change number ``after``, each once, oldest change first."""
        rows = self._db.run("changes_after", conversation_id=conversation_id, after=after, limit=limit)
        return [_message(row) for row in rows]

    def my_reactions(self, user_id: str, message_ids: list[str]) -> dict[str, list[str]]:
        """The user's own reactions on these messages, by message id."""
        mine: dict[str, list[str]] = {}
        if message_ids:
            for row in self._db.run("my_reactions", user_id=user_id, message_ids=message_ids):
                mine.setdefault(str(row["message_id"]), []).append(row["emoji"])
        return mine

    def messages_between(self, conversation_id: str, low: int, high: int) -> list[StoredMessage]:
        """The messages at positions ``(low, high]``, newest first."""
        if high <= 0:
            return []
        rows = self._db.run("messages_in_seq_range", conversation_id=conversation_id, low=max(low, 0), high=high)
        return [_message(row) for row in rows]


class ConversationChange:
    """The statements of one locked change (``ChatRepository.change_conversation``).

    The chat service decides what is allowed from ``conversation`` and ``roles``; these only do it.
    """

    def __init__(self, tx: Transaction, conversation: LockedConversation) -> None:
        self._tx = tx
        self.conversation = conversation
        self._id = conversation.conversation_id

    def roles(self, user_ids: list[str]) -> dict[str, Role]:
        """The roles of those of ``user_ids`` who are members."""
        rows = self._tx.run("member_roles", conversation_id=self._id, user_ids=user_ids)
        return {row["user_id"]: cast(Role, row["role"]) for row in rows}

    def add(self, user_ids: list[str]) -> list[str]:
        """Add the non-members among ``user_ids``; returns who was added (sorted)."""
        rows = self._tx.run(
            "insert_members", conversation_id=self._id, user_ids=user_ids, last_seq=self.conversation.last_seq
        )
        added = sorted(row["user_id"] for row in rows)
        if added:
            self._tx.execute("recount_members", conversation_id=self._id, delta=len(added))
        return added

    def remove(self, user_id: str) -> Removal:
        """Remove one member; the owner's leaving hands the group to their successor."""
        row = self._tx.optional("delete_member", conversation_id=self._id, user_id=user_id)
        if row is None:
            return Removal(None)
        role = cast(Role, row["role"])
        new_owner = None
        if role == "owner":
            new_owner = self._tx.one("owner_successor", conversation_id=self._id)["user_id"]
            if new_owner is not None:
                self._tx.execute("set_member_role", conversation_id=self._id, user_id=new_owner, role="owner")
        self._tx.execute("recount_members", conversation_id=self._id, delta=-1)
        return Removal(role, new_owner)

    def set_role(self, user_id: str, role: Role) -> bool:
        """Whether ``user_id`` is a member (and now has ``role``)."""
        return self._tx.optional("set_member_role", conversation_id=self._id, user_id=user_id, role=role) is not None

    def rename(self, title: str) -> None:
        self._tx.execute("rename_conversation", conversation_id=self._id, title=title)

    # --- a message's changes (CONTRACT section 7) ---------------------------------------

    def message(self, message_id: str) -> StoredMessage | None:
        """The message of this conversation as it stands, locked for the change; None if there is none."""
        row = self._tx.optional("lock_message", conversation_id=self._id, message_id=message_id)
        return _message(row) if row else None

    def edit(self, message: StoredMessage, content: str) -> StoredMessage:
        row = self._tx.one("edit_message", conversation_id=self._id, message_id=message.message_id, content=content)
        return dataclasses.replace(
            message,
            content=content,
            edited_at=row["edited_at"],
            version=int(row["version"]),
            change_seq=int(row["change_seq"]),
        )

    def delete(self, message: StoredMessage) -> StoredMessage:
        row = self._tx.one("delete_message", conversation_id=self._id, message_id=message.message_id)
        return dataclasses.replace(
            message,
            content="",
            reactions={},
            deleted_at=row["deleted_at"],
            version=int(row["version"]),
            change_seq=int(row["change_seq"]),
        )

    def react(self, message: StoredMessage, user_id: str, emoji: str, add: bool) -> StoredMessage | None:
        """The message after the reaction; None when it changed nothing (a repeated reaction)."""
        row = self._tx.optional(
            "react", conversation_id=self._id, message_id=message.message_id, user_id=user_id, emoji=emoji, add=add
        )
        if row is None:
            return None
        return dataclasses.replace(
            message,
            reactions=_reactions(row["reactions"]),
            version=int(row["version"]),
            change_seq=int(row["change_seq"]),
        )
