"""Turn untrusted request input into typed values (``model`` records, frames), or raise ``BadRequest``.

JSON is depth-checked by a linear scan before it is parsed, so no input makes the parser or
anything after it recurse deeply. Strings that PostgreSQL cannot store (NUL) or that are not valid UTF-8 (lone
surrogates, which JSON allows) are refused here, so bad input becomes a 400 or
an ``error`` frame rather than a database fault.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from chalicelib.config import Settings
from chalicelib.errors import BadRequest, PayloadTooLarge
from chalicelib.model import ConversationListQuery, ListCursor, MessagePageQuery, NewConversation

MAX_USER_ID_CHARS = 128
MAX_TEMP_ID_CHARS = 64
MAX_LIST_LIMIT = 200
LIST_LIMIT_WITHOUT_PAGING = 1000
MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 20
# No body or frame of the contract nests deeper than 3; anything past this is refused unparsed.
MAX_JSON_DEPTH = 20


def parse_uuid(value: Any, field: str) -> str:
    """A canonical lower-case UUID string."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"{field} must be a UUID") from None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: str, field: str) -> str:
    if "\x00" in value:
        raise BadRequest(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{field} must be valid Unicode text") from None
    return value


def parse_user_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    if len(value) > MAX_USER_ID_CHARS:
        raise BadRequest(f"{field} must be at most {MAX_USER_ID_CHARS} characters")
    if any(ord(char) < 32 for char in value):
        raise BadRequest(f"{field} must not contain control characters")
    return _storable(value, field)


def parse_json_object(
    raw: str | bytes | None, max_bytes: int | None = None, *, what: str = "Request body"
) -> dict[str, Any]:
    """A body (or frame) as a JSON object; one over ``max_bytes`` is refused before it is parsed."""
    if raw is None or raw in ("", b""):
        raise BadRequest(f"{what} must be a JSON object")
    if max_bytes is not None and _size(raw) > max_bytes:
        raise PayloadTooLarge(f"{what} must be at most {max_bytes} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None
    if nesting_depth_exceeds(text, MAX_JSON_DEPTH):
        raise BadRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text)
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def _size(raw: str | bytes) -> int:
    return len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))


# A JSON string (escapes included), and the characters that open or close a level.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` levels at any point.

    A linear scan over the brackets outside strings, run before ``json.loads``: the parser
    recurses once per level (20,000 levels raise ``RecursionError``), and everything that walks
    the parsed value afterwards would too. Malformed text is left for the parser to refuse.
    """
    depth = 0
    for bracket in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        elif depth:  # a stray closer is the parser's to refuse; it must not hide later openers
            depth -= 1
    return False


# --- POST /conversation ----------------------------------------------------------------


def parse_new_conversation(body: Mapping[str, Any], caller: str, settings: Settings) -> NewConversation:
    recipients = body.get("recipientIdArr")
    is_group = body.get("isGroup")
    title = body.get("title", "")
    if not isinstance(recipients, list):
        raise BadRequest("recipientIdArr must be an array of user ids")
    if not isinstance(is_group, bool):
        raise BadRequest("isGroup must be true or false")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise BadRequest("title must be a string")
    others = list(dict.fromkeys(parse_user_id(user, "recipientIdArr[]") for user in recipients))
    if not is_group:
        if len(others) != 1:
            raise BadRequest("A direct conversation needs exactly one recipient")
        if others[0] == caller:
            raise BadRequest("A direct conversation needs a recipient other than the caller")
        return NewConversation(False, "", (caller, others[0]))
    others = [user for user in others if user != caller]
    if len(others) < 2:
        raise BadRequest("A group needs at least two recipients besides the caller")
    if len(others) + 1 > settings.max_participants:
        raise BadRequest(f"A conversation has at most {settings.max_participants} participants")
    title = parse_group_title(title, settings)
    request_id = body.get("requestId")
    if request_id is not None:
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_TEMP_ID_CHARS or not request_id.strip():
            raise BadRequest(f"requestId must be a string of 1 to {MAX_TEMP_ID_CHARS} characters")
        request_id = _storable(request_id, "requestId")
    return NewConversation(True, title, (caller, *others), request_id)


def parse_group_title(value: Any, settings: Settings) -> str:
    """A group's title: non-empty once trimmed, at most MAX_TITLE_CHARS characters."""
    if not isinstance(value, str):
        raise BadRequest("title must be a string")
    title = _storable(value.strip(), "title")
    if not title:
        raise BadRequest("A group needs a non-empty title")
    if len(title) > settings.max_title_chars:
        raise BadRequest(f"title must be at most {settings.max_title_chars} characters")
    return title


# --- Group management (CONTRACT.md section 6) -------------------------------------------

ASSIGNABLE_ROLES = ("admin", "member")


def parse_added_members(body: Mapping[str, Any], settings: Settings) -> list[str]:
    """``{"userIds": [..]}``: 1 to MAX_PARTICIPANTS user ids, each once, in the order given."""
    users = body.get("userIds")
    if not isinstance(users, list) or not users:
        raise BadRequest("userIds must be a non-empty array of user ids")
    if len(users) > settings.max_participants:
        raise BadRequest(f"A conversation has at most {settings.max_participants} participants")
    return list(dict.fromkeys(parse_user_id(user, "userIds[]") for user in users))


def parse_role(body: Mapping[str, Any]) -> Literal["admin", "member"]:
    role = body.get("role")
    if role == "admin":
        return "admin"
    if role == "member":
        return "member"
    raise BadRequest(f"role must be one of {', '.join(ASSIGNABLE_ROLES)}")


def parse_title_change(body: Mapping[str, Any], settings: Settings) -> str:
    if "title" not in body:
        raise BadRequest("title is required")
    return parse_group_title(body["title"], settings)


def parse_settings_change(body: Mapping[str, Any]) -> bool:
    muted = body.get("muted")
    if not isinstance(muted, bool):
        raise BadRequest("muted must be true or false")
    return muted


# --- Query strings ---------------------------------------------------------------------


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bound}")
    return value


def parse_conversation_list_query(
    params: Mapping[str, str], decode_cursor: Callable[[str], ListCursor]
) -> ConversationListQuery:
    """The list's query string; ``decode_cursor`` checks a cursor is one the server issued."""
    raw_is_read = params.get("isRead")
    if raw_is_read is None:
        is_read = None
    elif raw_is_read in ("true", "false"):
        is_read = raw_is_read == "true"
    else:
        raise BadRequest("isRead must be true or false")
    paged = "limit" in params or "cursor" in params
    limit = _int_param(params, "limit", LIST_LIMIT_WITHOUT_PAGING, 1, MAX_LIST_LIMIT)
    if paged and "limit" not in params:
        limit = MAX_LIST_LIMIT // 4
    cursor = decode_cursor(params["cursor"]) if "cursor" in params else None
    return ConversationListQuery(is_read, limit, paged, cursor)


@dataclass(frozen=True)
class MembersQuery:
    limit: int
    # The raw cursor, checked by the caller (it knows the key and the conversation).
    cursor: str | None


MAX_MEMBERS_PAGE = 1000
DEFAULT_MEMBERS_PAGE = 100


def parse_members_query(params: Mapping[str, str], default_limit: int = DEFAULT_MEMBERS_PAGE) -> MembersQuery:
    return MembersQuery(_int_param(params, "limit", default_limit, 1, MAX_MEMBERS_PAGE), params.get("cursor"))


MAX_PRESENCE_USERS = 100


def parse_presence_query(params: Mapping[str, str]) -> list[str]:
    """GET /presence's ``userIds=a,b,...``: 1 to MAX_PRESENCE_USERS user ids, each once, in the order given."""
    raw = params.get("userIds", "")
    users = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not users:
        raise BadRequest("userIds must list at least one user id")
    if len(users) > MAX_PRESENCE_USERS:
        raise BadRequest(f"userIds must list at most {MAX_PRESENCE_USERS} user ids")
    return [parse_user_id(user, "userIds[]") for user in users]


def parse_message_page_query(params: Mapping[str, str]) -> MessagePageQuery:
    offset = _int_param(params, "offset", 0, 0, None)
    limit = _int_param(params, "limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    before = parse_uuid(params["before"], "before") if "before" in params else None
    after = parse_uuid(params["after"], "after") if "after" in params else None
    if sum(value is not None for value in (before, after)) + ("offset" in params) > 1:
        raise BadRequest("Use only one of offset, before and after")
    return MessagePageQuery(offset, limit, "asc" if order == "asc" else "desc", before, after, "order" in params)


# --- WebSocket frames ------------------------------------------------------------------


MAX_MENTIONS = 50
MAX_EMOJI_CHARS = 32


@dataclass(frozen=True)
class SendMessage:
    temp_message_id: str
    conversation_id: str
    content: str
    # Extension (CONTRACT section 7): the message this one answers, and the members it names.
    reply_to: str | None = None
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadMessages:
    conversation_id: str


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class EditMessage:
    conversation_id: str
    message_id: str
    content: str


@dataclass(frozen=True)
class DeleteMessage:
    conversation_id: str
    message_id: str


@dataclass(frozen=True)
class React:
    conversation_id: str
    message_id: str
    emoji: str
    add: bool


@dataclass(frozen=True)
class Typing:
    """A live signal (CONTRACT section 8): handled on Redis alone, never stored."""

    conversation_id: str
    typing: bool


Frame = SendMessage | ReadMessages | Heartbeat | EditMessage | DeleteMessage | React | Typing
# Frames that change messages: they are charged to the sender's send bucket and fanned out.
MessageChange = EditMessage | DeleteMessage | React
ACTIONS = ("send-message", "read-messages", "heartbeat", "edit-message", "delete-message", "react", "typing")


@dataclass(frozen=True)
class FrameContext:
    """What an error reply echoes from the frame it answers, so the client can match the two."""

    action: str | None = None
    temp_message_id: str | None = None


def parse_frame_object(body: str | None, settings: Settings) -> dict[str, Any]:
    """A frame's JSON object: ``BadRequest`` / ``PayloadTooLarge`` before anything else is read."""
    return parse_json_object(body, settings.max_request_bytes, what="Frame")


def frame_context(frame: Mapping[str, Any]) -> FrameContext:
    """The frame's action and tempMessageId, where they can be echoed back."""
    # Echoed back in an error frame, so only what can be sent as UTF-8 (no lone surrogates from \ud800 escapes).
    action = frame.get("action")
    label = action[:64] if isinstance(action, str) and action and _encodable(action[:64]) else None
    temp = frame.get("tempMessageId")
    temp_ok = isinstance(temp, str) and 0 < len(temp) <= MAX_TEMP_ID_CHARS and _encodable(temp)
    return FrameContext(label, temp if temp_ok else None)


# Past API Gateway's 128 KB frame limit nothing is worth parsing, even to label an error.
_CONTEXT_LIMIT = 256 * 1024


def refused_frame_context(body: str | None) -> FrameContext:
    """Best-effort context of a frame refused before parsing (over the size limit), to label the error."""
    if body is None or len(body) > _CONTEXT_LIMIT or nesting_depth_exceeds(body, MAX_JSON_DEPTH):
        return FrameContext()
    try:
        frame = json.loads(body)
    except ValueError:
        return FrameContext()
    return frame_context(frame) if isinstance(frame, dict) else FrameContext()


def parse_frame(frame: Mapping[str, Any], settings: Settings) -> Frame:
    """The typed frame; ``BadRequest`` / ``PayloadTooLarge`` naming the field at fault."""
    action = frame.get("action")
    parser = _FRAME_PARSERS.get(action) if isinstance(action, str) else None
    if parser is not None:
        return parser(frame, settings)
    if not isinstance(action, str):
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
    raise BadRequest(f"Unknown action; expected one of {', '.join(ACTIONS)}")


def _content(frame: Mapping[str, Any], settings: Settings) -> str:
    """Message content, as for a send and an edit alike."""
    content = frame.get("content")
    if not isinstance(content, str) or not content.strip():
        raise BadRequest("content must contain at least one non-whitespace character")
    if len(content) > settings.max_message_chars:
        raise PayloadTooLarge(f"content must be at most {settings.max_message_chars} characters")
    return _storable(content, "content")


def _send(frame: Mapping[str, Any], settings: Settings) -> SendMessage:
    temp = frame.get("tempMessageId")
    if not isinstance(temp, str) or not temp.strip() or len(temp) > MAX_TEMP_ID_CHARS:
        raise BadRequest(f"tempMessageId must be a string of 1 to {MAX_TEMP_ID_CHARS} characters")
    conversation_id = parse_uuid(frame.get("conversationId"), "conversationId")
    content = _content(frame, settings)
    reply_to = frame.get("replyTo")
    mentions = frame.get("mentions")
    if mentions is None:
        mentions = []
    if not isinstance(mentions, list) or len(mentions) > MAX_MENTIONS:
        raise BadRequest(f"mentions must be an array of at most {MAX_MENTIONS} user ids")
    return SendMessage(
        _storable(temp, "tempMessageId"),
        conversation_id,
        content,
        parse_uuid(reply_to, "replyTo") if reply_to is not None else None,
        tuple(dict.fromkeys(parse_user_id(user, "mentions[]") for user in mentions)),
    )


def _message_ids(frame: Mapping[str, Any]) -> tuple[str, str]:
    return parse_uuid(frame.get("conversationId"), "conversationId"), parse_uuid(frame.get("messageId"), "messageId")


def _edit(frame: Mapping[str, Any], settings: Settings) -> EditMessage:
    return EditMessage(*_message_ids(frame), _content(frame, settings))


def _delete(frame: Mapping[str, Any], settings: Settings) -> DeleteMessage:
    return DeleteMessage(*_message_ids(frame))


def _react(frame: Mapping[str, Any], settings: Settings) -> React:
    conversation_id, message_id = _message_ids(frame)
    emoji = frame.get("emoji")
    if (
        not isinstance(emoji, str)
        or not 0 < len(emoji) <= MAX_EMOJI_CHARS
        or any(char.isspace() or ord(char) < 32 for char in emoji)
    ):
        raise BadRequest(f"emoji must be 1 to {MAX_EMOJI_CHARS} characters without whitespace")
    add = frame.get("add")
    if not isinstance(add, bool):
        raise BadRequest("add must be true or false")
    return React(conversation_id, message_id, _storable(emoji, "emoji"), add)


_FRAME_PARSERS: dict[str, Callable[[Mapping[str, Any], Settings], Frame]] = {
    "heartbeat": lambda frame, settings: Heartbeat(),
    "read-messages": lambda frame, settings: ReadMessages(parse_uuid(frame.get("conversationId"), "conversationId")),
    "send-message": _send,
    "edit-message": _edit,
    "delete-message": _delete,
    "react": _react,
    "typing": lambda frame, settings: _typing(frame),
}


def _typing(frame: Mapping[str, Any]) -> Typing:
    conversation_id = parse_uuid(frame.get("conversationId"), "conversationId")
    typing = frame.get("typing")
    if not isinstance(typing, bool):
        raise BadRequest("typing must be true or false")
    return Typing(conversation_id, typing)


# --- GET /conversations/{id}/changes ------------------------------------------------------

MAX_CHANGES_PAGE = 500
DEFAULT_CHANGES_PAGE = 100


@dataclass(frozen=True)
class ChangesQuery:
    after: int
    limit: int


def parse_changes_query(params: Mapping[str, str]) -> ChangesQuery:
    if "after" not in params:
        raise BadRequest("after is required: the highest changeSeq the client has seen (0 for everything)")
    return ChangesQuery(
        _int_param(params, "after", 0, 0, 2**62),
        _int_param(params, "limit", DEFAULT_CHANGES_PAGE, 1, MAX_CHANGES_PAGE),
    )
