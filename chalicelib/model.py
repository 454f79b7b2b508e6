"""The records the chat service and the repository exchange.

Every value that crosses between ``service`` and ``repository`` is one of these:
the repository takes and returns nothing else (no driver rows, no wire dicts), and
``wire`` renders them for clients. They are plain immutable data with the little
pure logic that belongs to them (which position range a page covers), so they can
be built and checked without any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplySnippet:
    """What a reply shows of the message it answers, as that message stands now."""

    message_id: str
    sender_id: str
    # At most 200 characters; "" once the original is deleted.
    content: str
    deleted: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored, whatever path produced it (new send, idempotent retry, history page, change)."""

    message_id: str
    conversation_id: str
    sender_id: str
    temp_message_id: str
    content: str
    sent_at: datetime
    # The message's place in its conversation (1, 2, 3, ...): one total order for every reader.
    position: int | None = None
    # The conversation's change number of this message's latest change (sql/0008); None when unknown.
    change_seq: int | None = None
    # 1 when sent, + 1 per edit, deletion or reaction change.
    version: int = 1
    edited_at: datetime | None = None
    # A tombstone: content is "" and reactions are gone.
    deleted_at: datetime | None = None
    reply_to: ReplySnippet | None = None
    mentions: tuple[str, ...] = ()
    reactions: Mapping[str, int] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class SentMessage:
    """The outcome of a send."""

    message: StoredMessage
    # Everyone to fan the message out to (empty when it is not new); None when the send did not read them
    # (a conversation over repository.INLINE_MEMBERS: read apart from the write, if the fan-out needs them).
    participants: list[str] | None
    # False for a client's retry of a send stored earlier: only the retrying connection is answered.
    # True also when this very request stored it on an attempt whose answer was lost (a dropped
    # database connection): nobody has been told about it yet.
    is_new: bool
    # The conversation's size when the message was stored.
    member_count: int = 0


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    """Where a reader's watermark now stands, when a read moved it."""

    last_read_message_id: str
    read_at: datetime


@dataclass(frozen=True, slots=True)
class ReadResult:
    # Who hears the receipt: every member, or nobody listed when the read moved nothing or the
    # group is larger than RECEIPTS_MAX_MEMBERS (then only the reader's own connections hear it).
    participants: list[str]
    # None for a read that moved nothing (everything was already read).
    receipt: ReadReceipt | None


# --- conversations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewConversation:
    """A validated POST /conversation."""

    is_group: bool
    title: str
    # Everyone in it, the caller included, each once.
    members: tuple[str, ...]
    # The client's optional requestId for a group: a retry with the same one returns the same group.
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class MemberConversation:
    """A conversation as seen by one of its members."""

    conversation_id: str
    title: str
    is_group: bool
    created_by: str
    created_at: datetime
    # The newest message's position (0 while empty): positions are dense, 1..last_seq.
    last_seq: int
    last_read_seq: int
    member_count: int = 0
    # The caller's own membership: 'owner', 'admin' or 'member' (direct conversations: 'member').
    role: str = "member"
    muted: bool = False
    # The position of the message the request named (a message page's before/after), when it is one of
    # this conversation's; None otherwise or when it named none.
    anchor_position: int | None = None


Role = Literal["owner", "admin", "member"]


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a conversation, with where their read watermark stands."""

    user_id: str
    role: Role
    joined_at: datetime
    # 0, with None for the message and time, while they have read nothing.
    last_read_position: int
    last_read_message_id: str | None
    read_at: datetime | None


@dataclass(frozen=True, slots=True)
class LockedConversation:
    """A conversation whose row a membership or title change holds locked, as its caller sees it."""

    conversation_id: str
    title: str
    is_group: bool
    created_by: str
    created_at: datetime
    member_count: int
    last_seq: int
    # None: the caller is not a member.
    caller_role: Role | None


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing one member did."""

    # The role they had; None when they were not a member (nothing changed).
    role: Role | None
    # Who became owner because the owner left, if anyone.
    new_owner: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """A page of a user's conversation list, newest activity first, already encoded as the response body.

    The list query writes each row's JSON (``list_user_conversations``, sql/0010): Python passes it on.
    """

    # The JSON array of GET /conversations rows.
    body: str
    row_count: int
    # Where the next page resumes: after the last row's exact activity time (sentAt is rounded down to
    # milliseconds) and id. None for an empty page.
    last: ListCursor | None


# --- queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Where the next page of a conversation list resumes: after (activity time, conversation id)."""

    activity_at: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class ConversationListQuery:
    # None: every conversation; True/False: only read / only unread ones.
    is_read: bool | None
    limit: int
    # Whether the client pages (limit or cursor given): only then is a next cursor issued.
    paged: bool
    cursor: ListCursor | None


@dataclass(frozen=True, slots=True)
class MessagePageQuery:
    offset: int
    limit: int
    order: Literal["asc", "desc"]
    before: str | None
    after: str | None
    # Whether the client named an order; an "after" page without one reads oldest first.
    order_given: bool = False

    @property
    def oldest_first(self) -> bool:
        return self.order == "asc" or (self.after is not None and not self.order_given)

    def position_range(self, last_seq: int, anchor: int | None) -> tuple[int, int]:
        """The positions ``(low, high]`` this page covers.

        Positions are dense (1..last_seq), so every kind of page is a range found from the
        conversation's newest position or the anchor message's: the same cost at any depth.
        ``anchor`` is the position of the ``before``/``after`` message.
        """
        if self.before is not None:
            assert anchor is not None
            high = anchor - 1
            return max(high - self.limit, 0), high
        if self.after is not None:
            assert anchor is not None
            return anchor, anchor + self.limit
        high = last_seq - self.offset
        return max(high - self.limit, 0), high
