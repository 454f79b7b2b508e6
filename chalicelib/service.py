"""The chat service: every function of the product, independent of Chalice.

REST methods take the caller's user id (from the authorizer's claims) and
return JSON-ready values. WebSocket methods take a connection id and a raw
frame, and answer through pushes; a bad frame or a fault is answered with an
``error`` frame to the offending connection only, and nothing is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chalicelib.auth import TokenVerifier
from chalicelib.config import Settings
from chalicelib.errors import BadRequest, ChatError
from chalicelib.push import Pusher, PushReport
from chalicelib.registry import ConnectionRegistry
from chalicelib.repository import ChatRepository
from chalicelib.validation import (
    FrameError,
    Heartbeat,
    ListCursor,
    ReadMessages,
    SendMessage,
    frame_context,
    parse_conversation_list_query,
    parse_frame,
    parse_json_object,
    parse_message_page_query,
    parse_new_conversation,
    parse_user_id,
    parse_uuid,
)
from chalicelib.wire import (
    JSONObject,
    Push,
    conversation_body,
    conversation_row_body,
    error_frame,
    message_body,
    plan_echo,
    plan_new_message,
    plan_read,
)

log = logging.getLogger(__name__)


class UnknownConnection(BadRequest):
    """A frame from a connection the registry does not know."""


@dataclass(frozen=True)
class Page:
    """A list body and the cursor of the next page, if there is one."""

    items: list[JSONObject]
    next_cursor: str | None = None


class ChatService:
    def __init__(
        self,
        settings: Settings,
        repository: ChatRepository,
        registry: Callable[[], ConnectionRegistry],
        pusher: Callable[[str], Pusher],
        verifier: Callable[[], TokenVerifier],
    ) -> None:
        """Collaborators that a REST Lambda never uses come as factories, so it never builds them."""
        self._settings = settings
        self._repo = repository
        self._registry = registry
        self._pusher = pusher
        self._verifier = verifier

    # --- REST ------------------------------------------------------------------------

    def create_conversation(self, caller: str, raw_body: str | bytes | None) -> JSONObject:
        spec = parse_new_conversation(parse_json_object(raw_body), caller, self._settings)
        conversation_id, _created = self._repo.create_conversation(caller, spec)
        return {"conversationId": conversation_id}

    def direct_conversation(self, caller: str, other: str) -> JSONObject | None:
        other = parse_user_id(other, "userId")
        if other == caller:
            raise BadRequest("userId must be someone other than the caller")
        conversation_id = self._repo.find_direct_conversation(caller, other)
        return {"conversationId": conversation_id} if conversation_id else None

    def list_conversations(self, caller: str, params: Mapping[str, str]) -> Page:
        query = parse_conversation_list_query(params)
        rows = self._repo.user_conversations(caller, is_read=query.is_read, limit=query.limit, cursor=query.cursor)
        next_cursor = None
        if query.paged and len(rows) == query.limit:
            last = rows[-1]
            next_cursor = ListCursor(last["last_activity_at"], str(last["conversation_id"])).encode()
        return Page([conversation_row_body(row) for row in rows], next_cursor)

    def get_conversation(self, caller: str, conversation_id: str) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        row = self._repo.member_conversation(conversation_id, caller)
        return conversation_body(row, self._repo.participants(conversation_id), caller)

    def conversation_messages(self, caller: str, conversation_id: str, params: Mapping[str, str]) -> list[JSONObject]:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        page = parse_message_page_query(params)
        row = self._repo.member_conversation(conversation_id, caller)
        rows = self._repo.message_page(row, page)
        # Rows come newest first; "after" pages and order=asc read oldest first.
        if page.order == "asc" or (page.after is not None and "order" not in params):
            rows.reverse()
        return [message_body(row) for row in rows]

    def conversation_participants(self, caller: str, conversation_id: str) -> list[str]:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        self._repo.member_conversation(conversation_id, caller)
        return self._repo.participants(conversation_id)

    # --- WebSocket -------------------------------------------------------------------

    def connect(self, connection_id: str, token: str | None) -> str:
        """Register a connection for the token's user; raises ``Unauthorized``."""
        claims = self._verifier().verify(token)
        user: str = claims["cognito:username"]
        self._registry().register(connection_id, user)
        return user

    def disconnect(self, connection_id: str) -> None:
        self._registry().unregister(connection_id)

    def handle_frame(self, connection_id: str, body: str | None, endpoint: str) -> PushReport:
        """Route one client frame; every problem becomes an ``error`` frame to its sender."""
        pusher = self._pusher(endpoint)
        try:
            return pusher.push_all(self._pushes_for_frame(connection_id, body))
        except UnknownConnection as error:
            # The registry lost it (expired or flushed): we no longer know whose it is. Say so
            # and close it, so the client reconnects with its token and registers again.
            report = pusher.push_all(
                [Push(connection_id, error_frame(error.code, error.message, *frame_context(body)))]
            )
            pusher.close(connection_id)
            return report
        except ChatError as error:
            action, temp = (
                (error.action, error.temp_message_id) if isinstance(error, FrameError) else frame_context(body)
            )
            frame = error_frame(error.code, error.message, action, temp)
        except Exception:
            log.exception("frame handling failed")
            action, temp = frame_context(body)
            frame = error_frame("InternalError", "Something went wrong; try again", action, temp)
        return pusher.push_all([Push(connection_id, frame)])

    def _pushes_for_frame(self, connection_id: str, body: str | None) -> list[Push]:
        user = self._registry().touch(connection_id)
        if user is None:
            raise UnknownConnection("This connection is no longer registered; reconnect")
        frame = parse_frame(body, self._settings)
        if isinstance(frame, Heartbeat):
            return []
        if isinstance(frame, SendMessage):
            sent = self._repo.send_message(user, frame.conversation_id, frame.temp_message_id, frame.content)
            if not sent.is_new:
                return plan_echo(sent.message, connection_id)
            connections = self._registry().connections_for(sent.participants)
            return plan_new_message(sent.message, sent.participants, connections)
        assert isinstance(frame, ReadMessages)
        read = self._repo.mark_read(user, frame.conversation_id)
        if read.receipt is None:
            return plan_read(frame.conversation_id, user, [], {}, connection_id, None)
        connections = self._registry().connections_for(read.participants)
        return plan_read(frame.conversation_id, user, read.participants, connections, connection_id, read.receipt)
