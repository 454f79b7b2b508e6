"""Domain errors, the one place that names what can go wrong for a client.

Hierarchy::

    ChatError                 base; carries ``code`` (wire name) and ``status``
    ├── BadRequest            400  malformed JSON, missing/invalid field, bad query value
    ├── Unauthorized          401  missing or invalid token
    ├── NotFound              404  missing conversation, or one the caller is not in
    ├── Conflict              409  a uniqueness rule held (mapped from SQLSTATE 23505)
    ├── PayloadTooLarge       413  content or frame over its limit
    ├── TooManyRequests       429  rate limit
    └── InternalError         500  a fault on our side (never carries details)

The edges (``app.py`` for REST, the chat service for WebSocket frames) turn
these into ``{"Code", "Message"}`` bodies and ``error`` frames. Messages are
written for clients: never SQL, tokens or stack traces.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error a client may be told about."""

    code = "InternalError"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ChatError):
    code = "BadRequest"
    status = 400


class Unauthorized(ChatError):
    code = "Unauthorized"
    status = 401


class NotFound(ChatError):
    code = "NotFound"
    status = 404


class Conflict(ChatError):
    code = "Conflict"
    status = 409


class PayloadTooLarge(ChatError):
    code = "PayloadTooLarge"
    status = 413


class TooManyRequests(ChatError):
    """A limit was reached; ``retry_after_s`` says when trying again can succeed (REST: ``Retry-After``)."""

    code = "TooManyRequests"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InternalError(ChatError):
    code = "InternalError"
    status = 500


CONVERSATION_NOT_FOUND = "Conversation not found"
