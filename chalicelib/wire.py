"""The JSON shapes of the wire contract, and the pushes a chat event causes.

Everything here is pure: ``model`` records in, dicts out. The chat service decides *what*
happened; these functions decide what each client sees, so the fan-out rules
(sender's own connections included, each connection once, read receipts only
when the watermark moved) are tested without any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.errors import ChatError, InternalError
from chalicelib.model import Member, MemberConversation, ReadReceipt, StoredMessage

JSONObject = dict[str, Any]
# The codes an ``error`` frame may carry (CONTRACT.md sections 2 and 5-8).
FRAME_ERROR_CODES = frozenset({"BadRequest", "NotFound", "PayloadTooLarge", "TooManyRequests", "Forbidden"})


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a trailing Z: 2026-11-28T10:33:11.123Z.

    Spelled out with ``%`` formatting: about three times faster than ``strftime`` here, and a page
    of 1,000 members formats 2,000 of these. Milliseconds are truncated, not rounded. The list's
    times are formatted by the database the same way (sql/0010's ``wire_time``; tests/test_rest.py
    holds the two together).
    """
    utc = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 - measured faster than an f-string
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond // 1000,
    )


@dataclass(frozen=True)
class Push:
    """One frame to deliver to one connection."""

    connection_id: str
    frame: JSONObject


# --- REST bodies -----------------------------------------------------------------------


def message_body(message: StoredMessage, caller: str, my_reactions: Sequence[str] = ()) -> JSONObject:
    """One message of a history page or the change feed, in its current state.

    Extension: the caller's own messages carry their ``tempMessageId``, so a client that lost a
    send's echo and reloads history can settle its pending copy by that id instead of showing
    the stored message beside it. Other people's ids are not shown. ``myReactions`` are the
    caller's own reactions on it.
    """
    body: JSONObject = {
        "messageId": message.message_id,
        "conversationId": message.conversation_id,
        "senderId": message.sender_id,
        "content": message.content,
        "sentAt": iso(message.sent_at),
    }
    if message.position is not None:
        body["position"] = message.position
    if message.sender_id == caller and message.temp_message_id:
        body["tempMessageId"] = message.temp_message_id
    if message.change_seq is not None:
        body.update(_lifecycle(message))
        body["myReactions"] = [] if message.deleted else list(my_reactions)
    return body


def _lifecycle(message: StoredMessage) -> JSONObject:
    """CONTRACT section 7's fields of a message: version, change number, edit/deletion, reply, mentions."""
    reply = message.reply_to
    return {
        "version": message.version,
        "changeSeq": message.change_seq,
        "editedAt": iso(message.edited_at) if message.edited_at else None,
        "deletedAt": iso(message.deleted_at) if message.deleted_at else None,
        "reactions": {} if message.deleted else dict(message.reactions),
        # A tombstone shows no reply snippet; a reply to a deleted message shows the original as deleted.
        "replyTo": (
            {
                "messageId": reply.message_id,
                "senderId": reply.sender_id,
                "content": "" if reply.deleted else reply.content,
                "deleted": reply.deleted,
            }
            if reply is not None and not message.deleted
            else None
        ),
        "mentions": list(message.mentions),
    }


# The fields of a GET /conversations row. The database writes these rows (the list query and
# sql/0010's list_row_part: the list is returned as the JSON text it builds, never decoded here):
# a conversation without messages has latestContent "" and senderId "", reads as read, and its sentAt
# is its creation time; sentAt is formatted as iso() does; participantId is "" when nobody else is in.
CONVERSATION_ROW_FIELDS = (
    "conversationId",
    "title",
    "isGroup",
    "sentAt",
    "latestContent",
    "senderId",
    "isRead",
    "participantId",
    "unreadCount",
    "latestMessageId",
    "muted",
    "role",
    "unreadMentionCount",
    "latestDeleted",
    "changeSeq",
)


def conversation_body(
    conversation: MemberConversation,
    participants: Sequence[str],
    caller: str,
    members: Sequence[Member] = (),
    members_next_cursor: str | None = None,
) -> JSONObject:
    """GET /conversations/{id}; ``members`` and ``reads`` list ``members`` (a first page for a large group,
    then ``membersNextCursor`` says where GET /conversations/{id}/members goes on)."""
    others = [user for user in participants if user != caller]
    body: JSONObject = {
        "conversationId": conversation.conversation_id,
        "title": conversation.title,
        "isGroup": conversation.is_group,
        "participantId": others[0] if others else "",
        "createdBy": conversation.created_by,
        "createdAt": iso(conversation.created_at),
        "participants": list(participants),
        "members": [member_body(member) for member in members],
        "reads": [read_body(member) for member in members],
    }
    if members_next_cursor is not None:
        body["membersNextCursor"] = members_next_cursor
    return body


def member_body(member: Member) -> JSONObject:
    return {"userId": member.user_id, "role": member.role, "joinedAt": iso(member.joined_at)}


def read_body(member: Member) -> JSONObject:
    """Where a member's read watermark stands; ``null``s while they have read nothing."""
    has_read = member.last_read_message_id is not None
    return {
        "userId": member.user_id,
        "lastReadMessageId": member.last_read_message_id,
        "lastReadPosition": member.last_read_position if has_read else None,
        "readAt": iso(member.read_at) if member.read_at is not None else None,
    }


def member_page_body(member: Member) -> JSONObject:
    """One item of GET /conversations/{id}/members: the member and their read state together."""
    return {**member_body(member), **read_body(member)}


# --- WebSocket frames ------------------------------------------------------------------


def new_message_frame(message: StoredMessage) -> JSONObject:
    """Extension: ``position`` orders concurrent messages the same way for every connection."""
    frame: JSONObject = {
        "type": "new-message",
        "messageId": message.message_id,
        "tempMessageId": message.temp_message_id,
        "conversationId": message.conversation_id,
        "senderId": message.sender_id,
        "content": message.content,
        "sentAt": iso(message.sent_at),
    }
    if message.position is not None:
        frame["position"] = message.position
    if message.change_seq is not None:
        frame.update(_lifecycle(message))
    return frame


def message_updated_frame(message: StoredMessage) -> JSONObject:
    """An edit (CONTRACT section 7): the message's new content with its version and change number."""
    return {
        "type": "message-updated",
        "conversationId": message.conversation_id,
        "messageId": message.message_id,
        "senderId": message.sender_id,
        "content": message.content,
        "sentAt": iso(message.sent_at),
        "editedAt": iso(message.edited_at) if message.edited_at else None,
        "position": message.position,
        "version": message.version,
        "changeSeq": message.change_seq,
    }


def message_deleted_frame(message: StoredMessage) -> JSONObject:
    return {
        "type": "message-deleted",
        "conversationId": message.conversation_id,
        "messageId": message.message_id,
        "deletedAt": iso(message.deleted_at) if message.deleted_at else None,
        "position": message.position,
        "version": message.version,
        "changeSeq": message.change_seq,
    }


def reactions_updated_frame(message: StoredMessage, user_id: str, emoji: str, add: bool) -> JSONObject:
    return {
        "type": "reactions-updated",
        "conversationId": message.conversation_id,
        "messageId": message.message_id,
        "userId": user_id,
        "emoji": emoji,
        "add": add,
        "reactions": dict(message.reactions),
        "version": message.version,
        "changeSeq": message.change_seq,
    }


def read_messages_frame(conversation_id: str, reader: str, receipt: ReadReceipt | None = None) -> JSONObject:
    frame: JSONObject = {"type": "read-messages", "conversationId": conversation_id, "userId": reader}
    if receipt is not None:
        frame["lastReadMessageId"] = receipt.last_read_message_id
        frame["readAt"] = iso(receipt.read_at)
    return frame


def conversation_created_frame(
    conversation_id: str,
    title: str,
    is_group: bool,
    created_by: str,
    created_at: datetime,
    participants: Sequence[str] | None,
) -> JSONObject:
    """CONTRACT section 5; ``participants`` is null for a group too large to list in a frame."""
    return {
        "type": "conversation-created",
        "conversationId": conversation_id,
        "title": title,
        "isGroup": is_group,
        "createdBy": created_by,
        "createdAt": iso(created_at),
        "participants": list(participants) if participants is not None else None,
    }


def participants_updated_frame(
    conversation_id: str,
    by: str,
    *,
    added: Sequence[str] = (),
    removed: Sequence[str] = (),
    roles: Mapping[str, str] | None = None,
    participants: Sequence[str] | None,
) -> JSONObject:
    """CONTRACT section 6: who joined, who left, whose role changed, and who is in it now."""
    return {
        "type": "participants-updated",
        "conversationId": conversation_id,
        "added": list(added),
        "removed": list(removed),
        "roles": dict(roles or {}),
        "by": by,
        "participants": list(participants) if participants is not None else None,
    }


def conversation_updated_frame(conversation_id: str, title: str, by: str) -> JSONObject:
    return {"type": "conversation-updated", "conversationId": conversation_id, "title": title, "by": by}


def error_frame(error: ChatError, action: str | None, temp_message_id: str | None = None) -> JSONObject:
    """The ``error`` frame for a domain error: the one place errors become WebSocket frames.

    A code the WebSocket contract does not list (a REST-only status such as ``Conflict``) is sent
    as ``InternalError``; messages are written for clients, so they go out as they are.
    """
    if error.code not in FRAME_ERROR_CODES and not isinstance(error, InternalError):
        error = InternalError(error.message)
    frame: JSONObject = {"type": "error", "code": error.code, "message": error.message, "action": action}
    if temp_message_id is not None:
        frame["tempMessageId"] = temp_message_id
    return frame


# --- Fan-out ---------------------------------------------------------------------------


def _each_once(connection_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(connection_ids))


def connections_of(users: Iterable[str], connections_by_user: Mapping[str, Sequence[str]]) -> list[str]:
    """Every connection of these users, each once, in a stable order."""
    return _each_once(conn for user in users for conn in connections_by_user.get(user, ()))


def plan_new_message(
    message: StoredMessage,
    participants: Iterable[str],
    connections_by_user: Mapping[str, Sequence[str]],
) -> list[Push]:
    """A fresh message goes to every connection of every participant, sender's included."""
    frame = new_message_frame(message)
    return [Push(conn, frame) for conn in connections_of(participants, connections_by_user)]


def plan_echo(message: StoredMessage, sending_connection: str) -> list[Push]:
    """A retried send is answered on the retrying connection only: the others already have it."""
    return [Push(sending_connection, new_message_frame(message))]


def plan_read(
    conversation_id: str,
    reader: str,
    participants: Iterable[str],
    connections_by_user: Mapping[str, Sequence[str]],
    reading_connection: str,
    receipt: ReadReceipt | None,
) -> list[Push]:
    """Who hears about a read.

    ``receipt`` is where the watermark stands when the read advanced it:
    then every connection of the reader (to clear badges in other tabs) and of the
    other participants (read receipts) is told. A read that moved nothing is only
    acknowledged to the connection that sent it, so repeated reads stay cheap.
    """
    if receipt is None:
        return [Push(reading_connection, read_messages_frame(conversation_id, reader))]
    frame = read_messages_frame(conversation_id, reader, receipt)
    others = [user for user in participants if user != reader]
    targets = connections_of([reader, *others], connections_by_user)
    return [Push(conn, frame) for conn in _each_once([*targets, reading_connection])]


# --- Live signals (CONTRACT.md section 8) ---------------------------------------------


def typing_frame(conversation_id: str, user_id: str, typing: bool, expires_in_ms: int) -> JSONObject:
    """To the other members: show ``user_id`` typing for ``expiresInMs`` (or until their next message)."""
    return {
        "type": "typing",
        "conversationId": conversation_id,
        "userId": user_id,
        "typing": typing,
        "expiresInMs": expires_in_ms,
    }


def presence_body(user_id: str, online: bool, last_active_at: datetime | None) -> JSONObject:
    """One item of GET /presence; ``lastActiveAt`` is to the minute, null for a user never seen (or not shown)."""
    return {"userId": user_id, "online": online, "lastActiveAt": iso(last_active_at) if last_active_at else None}


def presence_frame(user_id: str, online: bool, last_active_at: datetime | None) -> JSONObject:
    """To a user's direct-conversation peers when their first connection opens or their last one ends."""
    return {"type": "presence", **presence_body(user_id, online, last_active_at)}
