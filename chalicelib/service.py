"""The chat service: every function of the product, independent of Chalice.

REST methods take the caller's user id (from the authorizer's claims) and
return JSON-ready values. WebSocket methods take a connection id and a raw
frame, and answer through pushes; a bad frame or a fault is answered with an
``error`` frame to the offending connection only, and nothing is stored.

Degraded mode: Redis is the registry fan-out reads, PostgreSQL keeps a durable
copy of which user each connection belongs to (``connection_table``). When
Redis is unreachable a frame's sender is found there, the message is stored,
and the sender gets its ``new-message`` echo plus an ``error`` frame saying
live delivery is degraded (recipients' connections cannot be looked up). When
Redis answers but no longer knows a connection (expired, or Redis lost its
data), the database row re-registers it: a frame is proof the socket is open.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib import roles
from chalicelib.config import Settings
from chalicelib.cursors import (
    cursor_key,
    decode_cursor,
    decode_member_cursor,
    encode_cursor,
    encode_member_cursor,
)
from chalicelib.errors import (
    CONVERSATION_NOT_FOUND,
    BadRequest,
    ChatError,
    DeliveryDegraded,
    InternalError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    UnknownConnection,
)
from chalicelib.limits import CREATE_CONVERSATION, REST_REQUEST, REST_WRITE
from chalicelib.model import StoredMessage
from chalicelib.push import Pusher, PushReport
from chalicelib.registry import ConnectionRegistry, RegistryUnavailable
from chalicelib.repository import ChatRepository
from chalicelib.validation import (
    MAX_MEMBERS_PAGE,
    DeleteMessage,
    EditMessage,
    Frame,
    FrameContext,
    Heartbeat,
    MessageChange,
    React,
    ReadMessages,
    SendMessage,
    Typing,
    frame_context,
    parse_added_members,
    parse_changes_query,
    parse_conversation_list_query,
    parse_frame,
    parse_frame_object,
    parse_json_object,
    parse_members_query,
    parse_message_page_query,
    parse_new_conversation,
    parse_presence_query,
    parse_role,
    parse_settings_change,
    parse_title_change,
    parse_user_id,
    parse_uuid,
    refused_frame_context,
)
from chalicelib.wire import (
    JSONObject,
    Push,
    connections_of,
    conversation_body,
    conversation_created_frame,
    conversation_updated_frame,
    error_frame,
    member_page_body,
    message_body,
    message_deleted_frame,
    message_updated_frame,
    new_message_frame,
    participants_updated_frame,
    plan_echo,
    plan_read,
    presence_body,
    presence_frame,
    reactions_updated_frame,
    typing_frame,
)

if TYPE_CHECKING:
    # PyJWT and cryptography cost a REST cold start ~80 ms and only $connect uses them.
    from chalicelib.auth import TokenVerifier
    from chalicelib.fanout import FanoutDispatcher
    from chalicelib.limits import RateLimiter
    from chalicelib.signals import LiveSignals

log = logging.getLogger(__name__)

# CONTRACT section 7: at most this many distinct emoji on one message.
MAX_DISTINCT_EMOJI = 20

# A frame lists a conversation's participants only up to this many (about 40 KB of ids, under API
# Gateway's 128 KB frame limit); above, ``participants`` is null and clients page the members over REST.
FRAME_PARTICIPANTS_MAX = 1000


def _listable(members: Sequence[str]) -> list[str] | None:
    return list(members) if len(members) <= FRAME_PARTICIPANTS_MAX else None


@dataclass(frozen=True)
class Page:
    """A list body and the cursor of the next page, if there is one."""

    items: list[JSONObject]
    next_cursor: str | None = None


@dataclass(frozen=True)
class EncodedPage:
    """A list body already encoded as JSON text, and the cursor of the next page, if there is one."""

    body: str
    next_cursor: str | None = None


class ChatService:
    def __init__(
        self,
        settings: Settings,
        repository: ChatRepository,
        registry: Callable[[], ConnectionRegistry],
        pusher: Callable[[str], Pusher],
        verifier: Callable[[], TokenVerifier],
        limiter: Callable[[], RateLimiter] | None = None,
        fanout: FanoutDispatcher | None = None,
        signals: Callable[[], LiveSignals] | None = None,
        signal_pusher: Callable[[str], Pusher] | None = None,
    ) -> None:
        """Collaborators that a REST Lambda never uses come as factories, so it never builds them.

        ``limiter`` holds the per-user REST buckets; without one REST calls are not rate limited.
        ``signals`` is typing and presence state (chalicelib/signals.py), pushed through ``signal_pusher``
        (the budget sheds them first); without it there are no typing or presence pushes.
        """
        self._settings = settings
        self._repo = repository
        self._registry = registry
        self._pusher = pusher
        self._verifier = verifier
        self._limiter = limiter
        self._fanout = fanout  # None: every new message is pushed directly (chalicelib/fanout.py)
        self._signals = signals
        self._signal_pusher = signal_pusher or pusher
        self._cursor_key = cursor_key(
            settings.cursor_secret, f"{settings.cognito_user_pool_id}/{settings.cognito_app_client_id}"
        )

    # --- REST ------------------------------------------------------------------------

    def admit(self, caller: str, *, write: bool) -> None:
        """Charge the caller's REST buckets: every call, and writes once more; raises ``TooManyRequests``."""
        settings = self._settings
        self._take(caller, REST_REQUEST, settings.rest_rate_per_minute, settings.rest_burst)
        if write:
            self._take(caller, REST_WRITE, settings.rest_write_rate_per_minute, settings.rest_write_burst)

    def _take(self, caller: str, bucket: str, rate_per_minute: float, burst: int) -> None:
        if self._limiter is None or rate_per_minute <= 0:
            return  # no Redis round trip, nor even an import, for a limit that is off
        try:
            self._limiter().take(caller, bucket, rate_per_s=rate_per_minute / 60, burst=burst)
        except RegistryUnavailable as error:
            # Fail open: API Gateway's stage throttling still stands in front of every route.
            log.warning("rate limiter unavailable (%s); %s served unmetered", error, bucket)

    def create_conversation(self, caller: str, raw_body: str | bytes | None) -> JSONObject:
        settings = self._settings
        self._take(
            caller,
            CREATE_CONVERSATION,
            settings.create_conversation_rate_per_minute,
            settings.create_conversation_burst,
        )
        body = self._body(raw_body)
        spec = parse_new_conversation(body, caller, self._settings)
        conversation_id, created = self._repo.create_conversation(caller, spec)
        if created:  # a get-or-create that found the pair, or a repeated requestId, pushes nothing
            self._announce_created(conversation_id, caller, spec.members)
        return {"conversationId": conversation_id}

    def direct_conversation(self, caller: str, other: str) -> JSONObject | None:
        other = parse_user_id(other, "userId")
        if other == caller:
            raise BadRequest("userId must be someone other than the caller")
        conversation_id = self._repo.find_direct_conversation(caller, other)
        return {"conversationId": conversation_id} if conversation_id else None

    def list_conversations(self, caller: str, params: Mapping[str, str]) -> EncodedPage:
        """GET /conversations: the body as the list query wrote it (its rows' fields: wire.py)."""
        query = parse_conversation_list_query(params, lambda token: decode_cursor(token, caller, self._cursor_key))
        page = self._repo.user_conversations(caller, query)
        next_cursor = None
        if query.paged and page.last is not None and page.row_count == query.limit:
            next_cursor = encode_cursor(page.last, caller, self._cursor_key)
        return EncodedPage(page.body, next_cursor)

    def get_conversation(self, caller: str, conversation_id: str) -> JSONObject:
        """The conversation with its members and read positions: all of them up to MAX_MEMBERS_PAGE,
        else the first page and ``membersNextCursor`` for GET /conversations/{id}/members."""
        conversation_id = parse_uuid(conversation_id, "conversationId")
        conversation = self._repo.member_conversation(conversation_id, caller)
        members = self._repo.members(conversation_id, after_user="", limit=MAX_MEMBERS_PAGE)
        next_cursor = None
        if conversation.member_count > len(members) and members:
            next_cursor = encode_member_cursor(conversation_id, members[-1].user_id, caller, self._cursor_key)
        participants = self._repo.participants(conversation_id)
        return conversation_body(conversation, participants, caller, members, next_cursor)

    def conversation_messages(self, caller: str, conversation_id: str, params: Mapping[str, str]) -> list[JSONObject]:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        page = parse_message_page_query(params)
        anchor_id = page.before or page.after  # at most one of them (parse_message_page_query)
        conversation = self._repo.member_conversation(conversation_id, caller, anchor_message_id=anchor_id)
        if anchor_id is not None and conversation.anchor_position is None:
            field = "before" if page.before is not None else "after"
            raise BadRequest(f"{field} must name a message of this conversation")
        low, high = page.position_range(conversation.last_seq, conversation.anchor_position)
        messages = self._repo.messages_between(conversation_id, low, high)  # newest first
        if page.oldest_first:
            messages.reverse()
        return self._message_bodies(messages, caller)

    def conversation_changes(self, caller: str, conversation_id: str, params: Mapping[str, str]) -> JSONObject:
        """Every message changed after ``after`` (new, edited, deleted, reactions), each once, in its current
        state, oldest change first; ``next`` is the changeSeq to ask after next."""
        conversation_id = parse_uuid(conversation_id, "conversationId")
        query = parse_changes_query(params)
        self._repo.member_conversation(conversation_id, caller)
        changes = self._repo.changes_after(conversation_id, query.after, query.limit)
        next_after = changes[-1].change_seq if changes and changes[-1].change_seq is not None else query.after
        return {"changes": self._message_bodies(changes, caller), "next": next_after}

    def _message_bodies(self, messages: list[StoredMessage], caller: str) -> list[JSONObject]:
        """Messages as REST shows them, each with the caller's own reactions (one query, only when any has some)."""
        reacted = [message.message_id for message in messages if message.reactions]
        mine = self._repo.my_reactions(caller, reacted) if reacted else {}
        return [message_body(message, caller, mine.get(message.message_id, ())) for message in messages]

    def conversation_participants(self, caller: str, conversation_id: str) -> list[str]:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        self._repo.member_conversation(conversation_id, caller)
        return self._repo.participants(conversation_id)

    def conversation_members(self, caller: str, conversation_id: str, params: Mapping[str, str]) -> Page:
        """A page of members with their roles and read positions (large groups page; small ones fit one)."""
        conversation_id = parse_uuid(conversation_id, "conversationId")
        query = parse_members_query(params)
        self._repo.member_conversation(conversation_id, caller)
        after = ""
        if query.cursor is not None:
            after = decode_member_cursor(query.cursor, conversation_id, caller, self._cursor_key)
        members = self._repo.members(conversation_id, after_user=after, limit=query.limit)
        next_cursor = None
        if len(members) == query.limit:
            next_cursor = encode_member_cursor(conversation_id, members[-1].user_id, caller, self._cursor_key)
        return Page([member_page_body(member) for member in members], next_cursor)

    # --- groups: members, roles, title, settings (CONTRACT.md sections 5 and 6) ----------
    #
    # Each change runs in one transaction holding the conversation's row (ChatRepository.
    # change_conversation); chalicelib/roles.py decides inside it who may do what. Pushes go out
    # after the commit, and only when something changed, so repeating a request changes nothing.

    def add_participants(self, caller: str, conversation_id: str, raw_body: str | bytes | None) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        users = parse_added_members(self._body(raw_body), self._settings)
        with self._repo.change_conversation(conversation_id, caller) as change:
            roles.may_add(change.conversation)
            members_already = change.roles(users)
            fresh = [user for user in users if user not in members_already]
            if change.conversation.member_count + len(fresh) > self._settings.max_participants:
                raise BadRequest(f"A conversation has at most {self._settings.max_participants} participants")
            added = change.add(fresh) if fresh else []
        if added:
            self._announce_members(conversation_id, caller, change.conversation.member_count + len(added), added=added)
        return {"added": added}

    def remove_participant(self, caller: str, conversation_id: str, user_id: str) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        user_id = parse_user_id(user_id, "userId")
        with self._repo.change_conversation(conversation_id, caller) as change:
            target_role = change.roles([user_id]).get(user_id)
            roles.may_remove(change.conversation, caller, user_id, target_role)
            removal = change.remove(user_id) if target_role is not None else None
        if removal is None or removal.role is None:
            return {"removed": []}
        handed_over = {removal.new_owner: "owner"} if removal.new_owner else {}
        # The removed member hears of it too (and of nothing after).
        self._announce_members(
            conversation_id,
            caller,
            change.conversation.member_count - 1,
            removed=[user_id],
            changed_roles=handed_over,
            also=[user_id],
        )
        return {"removed": [user_id]}

    def set_participant_role(
        self, caller: str, conversation_id: str, user_id: str, raw_body: str | bytes | None
    ) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        user_id = parse_user_id(user_id, "userId")
        role = parse_role(self._body(raw_body))
        with self._repo.change_conversation(conversation_id, caller) as change:
            target_role = change.roles([user_id]).get(user_id)
            roles.may_set_role(change.conversation, caller, user_id, target_role)
            changed = target_role != role and change.set_role(user_id, role)
        if changed:
            self._announce_members(
                conversation_id, caller, change.conversation.member_count, changed_roles={user_id: role}
            )
        return {"userId": user_id, "role": role}

    def rename_conversation(self, caller: str, conversation_id: str, raw_body: str | bytes | None) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        title = parse_title_change(self._body(raw_body), self._settings)
        with self._repo.change_conversation(conversation_id, caller) as change:
            roles.may_rename(change.conversation)
            changed = title != change.conversation.title
            if changed:
                change.rename(title)
        if changed:
            frame = conversation_updated_frame(conversation_id, title, caller)
            self._publish_to_members(frame, conversation_id, change.conversation.member_count, None)
        return self.get_conversation(caller, conversation_id)

    def update_settings(self, caller: str, conversation_id: str, raw_body: str | bytes | None) -> JSONObject:
        conversation_id = parse_uuid(conversation_id, "conversationId")
        muted = parse_settings_change(self._body(raw_body))
        conversation = self._repo.member_conversation(conversation_id, caller)
        if not conversation.is_group:
            raise BadRequest("A direct conversation has no settings to change")
        self._repo.set_muted(conversation_id, caller, muted)
        return {"muted": muted}

    def _body(self, raw_body: str | bytes | None) -> dict[str, Any]:
        return parse_json_object(raw_body, self._settings.max_request_bytes)

    def _announce_members(
        self,
        conversation_id: str,
        by: str,
        member_count: int,
        *,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
        changed_roles: Mapping[str, str] | None = None,
        also: Sequence[str] = (),
    ) -> None:
        """``participants-updated`` to every member after the change (``member_count`` of them), and to
        ``also`` (those just removed). The members are read only for a frame that lists them."""
        self._forget_typing_members(conversation_id)  # before any push: removed members stop signalling now
        members = self._repo.participants(conversation_id) if member_count <= FRAME_PARTICIPANTS_MAX else None
        frame = participants_updated_frame(
            conversation_id,
            by,
            added=added,
            removed=removed,
            roles=changed_roles,
            participants=None if members is None else _listable(members),
        )
        self._publish_to_members(frame, conversation_id, member_count, members, also=also)

    def _announce_created(self, conversation_id: str, caller: str, members: Sequence[str]) -> None:
        conversation = self._repo.member_conversation(conversation_id, caller)
        frame = conversation_created_frame(
            conversation_id,
            conversation.title,
            conversation.is_group,
            conversation.created_by,
            conversation.created_at,
            _listable(members),
        )
        self._publish_to_members(frame, conversation_id, len(members), list(members))

    def _publish_to_members(
        self,
        frame: JSONObject,
        conversation_id: str,
        member_count: int,
        members: list[str] | None,
        also: Sequence[str] = (),
    ) -> None:
        """``frame`` to every member's connections (``members`` None: read them if needed), and to ``also``'s.

        A conversation of more than FANOUT_EXPAND_MEMBERS is queued whole, as a message is: the request
        looks up nobody's connections but ``also``'s, which are pushed from here (they are members no more).
        """
        endpoint = self._settings.connections_endpoint_url
        if endpoint and self._fanout is not None and self._fanout.expands(member_count):
            delivery = f"{frame['type']}:{uuid.uuid4()}"  # each announcement is its own delivery
            if self._fanout.queue_whole(frame, conversation_id, delivery, member_count, endpoint):
                if also:
                    self._publish(frame, also)
                return
        if members is None:
            members = self._repo.participants(conversation_id)
        self._publish(frame, [*members, *also])

    def _publish(self, frame: JSONObject, users: Sequence[str]) -> PushReport:
        """One frame to every connection of these users, from a REST call (no event names the endpoint).

        Best effort, like every push: the change is committed already. Without a configured
        ``CONNECTIONS_ENDPOINT_URL`` or a reachable registry nothing is pushed, and clients see
        the change on their next read.
        """
        endpoint = self._settings.connections_endpoint_url
        if not endpoint:
            log.warning("CONNECTIONS_ENDPOINT_URL is not set; %s not pushed", frame["type"])
            return PushReport()
        connections = self._connections_or_none(list(users))
        if connections is None:
            return PushReport()
        pushes = [Push(connection_id, frame) for connection_id in connections_of(users, connections)]
        return self._pusher(endpoint).push_all(pushes)

    # --- WebSocket -------------------------------------------------------------------

    def connect(self, connection_id: str, token: str | None, endpoint: str | None = None) -> str:
        """Record a connection for the token's user; raises ``Unauthorized``, or ``TooManyRequests`` past
        MAX_CONNECTIONS_PER_USER.

        A user already at the cap is refused on one registry read, before anything is written (a connect
        storm costs no SQL). Otherwise the database row is written first, so that a push meeting 410
        while ``$connect`` is still running finds it young and keeps it (``gone``), and so that with Redis
        down the connection is still accepted, its frames served in degraded mode.
        """
        claims = self._verifier().verify(token)
        user: str = claims["cognito:username"]
        with contextlib.suppress(RegistryUnavailable):  # register() below says so, and degrades
            self._registry().check_capacity(user)
        self._repo.save_connection(connection_id, user)
        try:
            self._registry().register(connection_id, user)
        except TooManyRequests:
            # Lost the race for the last slot: refused (429), and its durable copy goes with it.
            self._repo.delete_connection(connection_id)
            raise
        except RegistryUnavailable as error:
            log.warning("registry unavailable at $connect (%s); connection kept in the database only", error)
            return user
        self._presence_changed(user, online=True, endpoint=endpoint)
        return user

    def disconnect(self, connection_id: str, endpoint: str | None = None) -> None:
        """Forget a connection in both places ($disconnect, or a 410 from a push).

        With ``endpoint`` ($disconnect) a user's last connection going pushes ``presence`` offline at once;
        without (a 410 met mid-push) the user is left for the next presence sweep to settle.
        """
        user = None
        try:
            user = self._registry().unregister(connection_id)
        except RegistryUnavailable as error:  # its registry entries expire on their own
            log.warning("registry unavailable at $disconnect (%s)", error)
        self._repo.delete_connection(connection_id)
        if user is not None:
            self._presence_changed(user, online=False, endpoint=endpoint)

    def gone(self, connection_id: str) -> None:
        """A push met 410 Gone: forget the connection, unless it opened moments ago.

        API Gateway answers 410 for a connection whose ``$connect`` has not returned yet, and the registry
        already lists it then (a peer's presence push, a message fanned out at that instant): forgetting it
        would leave an open socket nobody pushes to. A connection younger than CONNECT_GRACE_SECONDS is
        kept; a dead one among those expires with its registry entries.
        """
        grace = self._settings.connect_grace_s
        if grace > 0 and self._repo.connection_opened_within(connection_id, grace):
            log.info("push met 410 for a connection still opening; kept")
            return
        self.disconnect(connection_id)

    def handle_frame(self, connection_id: str, body: str | None, endpoint: str) -> PushReport:
        """Route one client frame; every problem becomes an ``error`` frame to its sender."""
        pusher = self._pusher(endpoint)
        context = FrameContext()
        try:
            frame: Frame | None = None
            bad_frame: ChatError | None = None
            try:
                frame_object = parse_frame_object(body, self._settings)
                context = frame_context(frame_object)
                frame = parse_frame(frame_object, self._settings)
            except PayloadTooLarge as error:  # perhaps refused unparsed: label it if it can be read at all
                bad_frame = error
                context = context if context.action else refused_frame_context(body)
            except ChatError as error:
                bad_frame = error
            if isinstance(frame, Typing):  # Redis only, never SQL, through the pusher that sheds first
                return self._signal_pusher(endpoint).push_all(self._typing_pushes(connection_id, frame))
            # Identify first: a frame from an unknown connection is told to reconnect whatever it holds.
            # Sends and message changes fan out to every member: both spend the sender's send bucket.
            user, degraded = self._identify(connection_id, send=isinstance(frame, SendMessage | MessageChange))
            if bad_frame is not None:
                raise bad_frame
            assert frame is not None
            pushes = self._pushes_for_frame(connection_id, user, degraded, frame, context, endpoint)
        except UnknownConnection as error:
            # We no longer know whose it is. Say so and close it, so the client reconnects with its
            # token and registers again.
            report = pusher.push_all([Push(connection_id, error_frame(error, context.action, context.temp_message_id))])
            pusher.close(connection_id)
            return report
        except ChatError as error:
            pushes = [Push(connection_id, error_frame(error, context.action, context.temp_message_id))]
        except Exception:
            log.exception("frame handling failed")
            pushes = [Push(connection_id, error_frame(InternalError(), context.action, context.temp_message_id))]
        return pusher.push_all(pushes)

    def _identify(self, connection_id: str, *, send: bool) -> tuple[str, bool]:
        """(user, degraded): the connection's user, its expiry refreshed and, for a send, its rate charged."""
        try:
            user = self._registry().touch(connection_id, send=send)
            if user is not None:
                return user, False
        except RegistryUnavailable as error:
            log.warning("registry unavailable (%s); sender looked up in the database", error)
            user = self._repo.connection_user(connection_id)
            if user is None:
                raise UnknownConnection("This connection is no longer registered; reconnect") from None
            return user, True  # no rate limit without Redis: fail open, the store still protects itself
        user = self._repo.connection_user(connection_id)
        if user is None:
            raise UnknownConnection("This connection is no longer registered; reconnect")
        self._registry().register(connection_id, user)
        if send:
            self._registry().touch(connection_id, send=True)
        return user, False

    def _pushes_for_frame(
        self, connection_id: str, user: str, degraded: bool, frame: Frame, context: FrameContext, endpoint: str
    ) -> list[Push]:
        if isinstance(frame, Heartbeat):
            return []
        if isinstance(frame, EditMessage | DeleteMessage | React):
            return self._change_message(connection_id, user, degraded, frame, context, endpoint)
        if isinstance(frame, SendMessage):
            if frame.reply_to is not None or frame.mentions:
                self._check_message_refs(user, frame)
            sent = self._repo.send_message(
                user,
                frame.conversation_id,
                frame.temp_message_id,
                frame.content,
                reply_to=frame.reply_to,
                mentions=frame.mentions,
            )
            if not sent.is_new:
                return plan_echo(sent.message, connection_id)
            self._message_ends_typing(user, frame.conversation_id)
            message = sent.message
            return self._fan_out(
                new_message_frame(message),
                message.message_id,
                user,
                sent.member_count,
                sent.participants,
                degraded,
                connection_id,
                context,
                endpoint,
            )
        assert isinstance(frame, ReadMessages)
        read = self._repo.mark_read(user, frame.conversation_id)
        if read.receipt is None:
            return plan_read(frame.conversation_id, user, [], {}, connection_id, None)
        # A large group's members learn read positions over REST; the reader's own tabs still hear it.
        hearers = read.participants or [user]
        connections = None if degraded else self._connections_or_none(hearers)
        if connections is None:
            own = plan_read(frame.conversation_id, user, [], {}, connection_id, read.receipt)
            return [*own, Push(connection_id, error_frame(DeliveryDegraded(), context.action, context.temp_message_id))]
        return plan_read(frame.conversation_id, user, hearers, connections, connection_id, read.receipt)

    def _check_message_refs(self, user: str, frame: SendMessage) -> None:
        """A reply names a message of the conversation, mentions name its members; else nothing is stored."""
        self._repo.member_conversation(frame.conversation_id, user)  # outsiders learn nothing from the refs
        reply_ok, members_mentioned = self._repo.check_message_refs(
            frame.conversation_id, frame.reply_to, list(frame.mentions)
        )
        if not reply_ok:
            raise BadRequest("replyTo must name a message of this conversation")
        if members_mentioned != len(frame.mentions):
            raise BadRequest("mentions must name members of this conversation")

    def _change_message(
        self,
        connection_id: str,
        user: str,
        degraded: bool,
        frame: EditMessage | DeleteMessage | React,
        context: FrameContext,
        endpoint: str,
    ) -> list[Push]:
        """An edit, deletion or reaction (CONTRACT section 7), under the conversation's lock.

        Each change takes the conversation's next change number and the message's next version, so
        every connection that applies the highest version shows the same state. A change that
        changes nothing (the same content, a second deletion, a repeated reaction) is acknowledged to
        the requesting connection only, with the message's current state.
        """
        with self._repo.change_conversation(frame.conversation_id, user) as change:
            roles.member(change.conversation)
            member_count = change.conversation.member_count
            message = change.message(frame.message_id)
            if message is None:
                raise BadRequest("messageId must name a message of this conversation")
            changed: StoredMessage | None = None
            if isinstance(frame, EditMessage):
                roles.may_edit(change.conversation, user, message.sender_id)
                if message.deleted:
                    raise BadRequest("A deleted message cannot be edited")
                if frame.content != message.content:
                    changed = change.edit(message, frame.content)
            elif isinstance(frame, DeleteMessage):
                roles.may_delete(change.conversation, user, message.sender_id)
                if not message.deleted:
                    changed = change.delete(message)
            else:
                if message.deleted:
                    raise BadRequest("A deleted message cannot be reacted to")
                if frame.add and frame.emoji not in message.reactions and len(message.reactions) >= MAX_DISTINCT_EMOJI:
                    raise BadRequest(f"A message has at most {MAX_DISTINCT_EMOJI} distinct emoji")
                changed = change.react(message, user, frame.emoji, frame.add)
        shown = changed or message
        if isinstance(frame, EditMessage):
            update = message_updated_frame(shown)
        elif isinstance(frame, DeleteMessage):
            update = message_deleted_frame(shown)
        else:
            update = reactions_updated_frame(shown, user, frame.emoji, frame.add)
        if changed is None:
            return [Push(connection_id, update)]
        delivery = f"{shown.message_id}:{shown.change_seq}"
        return self._fan_out(
            update,
            delivery,
            user,
            member_count,
            None,
            degraded,
            connection_id,
            context,
            endpoint,
        )

    def _fan_out(
        self,
        frame: JSONObject,
        delivery_id: str,
        sender: str,
        member_count: int,
        participants: list[str] | None,
        degraded: bool,
        connection_id: str,
        context: FrameContext,
        endpoint: str,
    ) -> list[Push]:
        """A message's frame (new, edited, deleted, reactions) to every connection of every member.

        Directly, or the sender's own now and the rest through the queue (``FanoutDispatcher``;
        ``delivery_id`` names the delivery for its exactly-once claims). A conversation of more than
        FANOUT_EXPAND_MEMBERS is queued whole, as one expansion, before anyone's connections are looked
        up but the sender's. ``participants`` None: not read yet, and read only on the paths that need
        them. With the registry out of reach only the sending connection is answered, with a notice that
        live delivery is degraded.
        """
        conversation_id = str(frame["conversationId"])
        if not degraded and self._fanout is not None and self._fanout.expands(member_count):
            own = self._connections_or_none([sender])
            if own is not None:
                expanded = self._fanout.plan_expansion(
                    frame, conversation_id, delivery_id, sender, member_count, own, connection_id, endpoint
                )
                if expanded is not None:
                    return expanded
        connections = None
        if not degraded:
            if participants is None:
                participants = self._repo.participants(conversation_id)
            connections = self._connections_or_none(participants)
        if participants is None or connections is None:
            notice = error_frame(DeliveryDegraded(), context.action, context.temp_message_id)
            return [Push(connection_id, frame), Push(connection_id, notice)]
        if self._fanout is not None:
            return self._fanout.plan_frame(
                frame, conversation_id, delivery_id, sender, participants, connections, connection_id, endpoint
            )
        return [Push(target, frame) for target in connections_of(participants, connections)]

    def _connections_or_none(self, users: list[str]) -> dict[str, list[str]] | None:
        try:
            return self._registry().connections_for(users)
        except RegistryUnavailable as error:
            log.warning("registry unavailable for fan-out (%s); only the sender is answered", error)
            return None

    # --- live signals: typing and presence (CONTRACT.md section 8, chalicelib/signals.py) ----------

    def _typing_pushes(self, connection_id: str, frame: Typing) -> list[Push]:
        """``typing`` to the other members' connections, from Redis alone (no SQL but the cache's first fill).

        A frame from a connection the registry does not know, or while Redis is unreachable, is dropped
        silently: typing is worth no database lookup, and the connection's next heartbeat or message runs
        the usual recovery.
        """
        if self._signals is None:
            return []
        try:
            user = self._registry().touch(connection_id)
            if user is None:
                return []
            signals = self._signals()
            conversation_id = frame.conversation_id
            audience = signals.typing_audience(
                conversation_id,
                user,
                self._settings.typing_max_members,
                lambda: self._repo.participants(conversation_id),
            )
            if audience is None:
                raise NotFound(CONVERSATION_NOT_FOUND)
            if audience.others is None:  # over TYPING_MAX_MEMBERS: acknowledged by silence
                return []
            if frame.typing:
                pushed = signals.start_typing(user, conversation_id)
            else:
                pushed = signals.stop_typing(user, conversation_id)
            if not pushed or not audience.others:
                return []
            connections = self._registry().connections_for(audience.others)
        except RegistryUnavailable as error:
            log.info("typing dropped: registry unavailable (%s)", error)
            return []
        from chalicelib.signals import TYPING_EXPIRES_MS

        update = typing_frame(conversation_id, user, frame.typing, TYPING_EXPIRES_MS)
        return [Push(conn, update) for conn in connections_of(audience.others, connections)]

    def _message_ends_typing(self, user: str, conversation_id: str) -> None:
        """Receivers stop showing a typer on their message; the server forgets its typing state too."""
        if self._signals is None:
            return
        with contextlib.suppress(RegistryUnavailable):  # the typing keys expire within seconds anyway
            self._signals().message_sent(user, conversation_id)

    def _forget_typing_members(self, conversation_id: str) -> None:
        if self._signals is None:
            return
        try:
            self._signals().forget_members(conversation_id)
        except RegistryUnavailable as error:
            # The cache's TTL (TYPING_MEMBERS_TTL_SECONDS) ends it; with Redis unreachable nobody types anyway.
            log.warning("typing membership cache not invalidated (%s)", error)

    def presence(self, caller: str, params: Mapping[str, str]) -> list[JSONObject]:
        """GET /presence: online and last activity of users who share a conversation with the caller.

        Anyone else reads as never seen (offline, ``lastActiveAt`` null). The caller always sees themself.
        """
        users = parse_presence_query(params)
        visible = self._repo.users_sharing_a_conversation(caller, users) | {caller}
        if self._signals is None:
            raise ServiceUnavailable("Presence is not available")
        try:
            found = {item.user_id: item for item in self._signals().presence([u for u in users if u in visible])}
        except RegistryUnavailable as error:
            log.warning("registry unavailable for presence (%s)", error)
            raise ServiceUnavailable("Presence is not available right now; try again") from None
        bodies = []
        for user in users:  # anyone not shown reads exactly as a user never seen
            item = found.get(user)
            online, last_active = (item.online, item.last_active_at) if item else (False, None)
            bodies.append(presence_body(user, online, last_active))
        return bodies

    def _presence_changed(self, user: str, *, online: bool, endpoint: str | None) -> None:
        """After a register or an unregister: push ``presence`` if this was the user's first or last connection."""
        if self._signals is None:
            return
        try:
            signals = self._signals()
            if online:
                changed = signals.came_online(user)
            elif endpoint is None:
                signals.check_soon(user)  # a 410 inside a push: no nested pushes here, the sweep decides
                return
            else:
                changed = signals.went_offline(user)
        except RegistryUnavailable as error:
            log.warning("presence not tracked (%s)", error)
            return
        if changed:
            self._announce_presence(user, online, endpoint)

    def _announce_presence(self, user: str, online: bool, endpoint: str | None) -> PushReport:
        """``presence`` to every connection of the user's direct-conversation peers (one indexed query)."""
        endpoint = endpoint or self._settings.connections_endpoint_url
        if not endpoint:
            log.warning("CONNECTIONS_ENDPOINT_URL is not set; presence not pushed")
            return PushReport()
        peers = self._repo.direct_peers(user)
        if not peers or self._signals is None:
            return PushReport()
        try:
            last_active = self._signals().last_active(user)
            connections = self._registry().connections_for(peers)
        except RegistryUnavailable as error:
            log.warning("presence not pushed (%s)", error)
            return PushReport()
        update = presence_frame(user, online, last_active)
        return self._signal_pusher(endpoint).push_all(
            [Push(conn, update) for conn in connections_of(peers, connections)]
        )

    def sweep_presence(self) -> int:
        """The scheduled sweep: users whose last connection expired unannounced go offline; how many did.

        Each due user is one Redis script; each who went offline costs one SQL query (their direct peers).
        At most PRESENCE_SWEEP_MAX_USERS users per run; the rest stay due for the next one.
        """
        if self._signals is None:
            return 0
        if not self._settings.connections_endpoint_url:
            log.warning("CONNECTIONS_ENDPOINT_URL is not set; presence sweep skipped")
            return 0
        signals = self._signals()
        settled = offline = 0
        try:
            while settled < self._settings.presence_sweep_max_users:
                due = signals.due(min(200, self._settings.presence_sweep_max_users - settled))
                if not due:
                    break
                for item in due:
                    settled += 1
                    if signals.settle(item):
                        offline += 1
                        self._announce_presence(item.user_id, False, None)
        except RegistryUnavailable as error:
            log.warning("presence sweep stopped: registry unavailable (%s)", error)
        return offline
