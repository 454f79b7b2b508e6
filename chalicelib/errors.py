"""Domain errors: the one place that names what a client can be told went wrong.

Hierarchy::

    ChatError                   base; carries ``code`` (wire name) and ``status``
    ├── BadRequest              400  malformed JSON, missing/invalid field, bad query value or cursor
    │   └── UnknownConnection   400  a frame from a connection neither registry nor database knows
    ├── Unauthorized            401  missing or invalid token
    ├── Forbidden               403  a member lacking the role an action needs
    ├── NotFound                404  missing conversation, or one the caller is not in
    ├── Conflict                409  the store changed under the request; retrying can succeed
    ├── PayloadTooLarge         413  content, body or frame over its limit
    ├── TooManyRequests         429  a rate or connection limit; ``retry_after_s`` says when to retry
    ├── InternalError           500  a fault on our side (never carries details)
    │   └── DeliveryDegraded    500  stored, but live delivery could not reach the other connections
    └── ServiceUnavailable      503  the database timed out or could not be reached; retrying can succeed

Two functions turn these into what a client sees, one per edge: ``rest.error_response``
(``{"Code", "Message"}`` with the status) and ``wire.error_frame`` (an ``error`` frame; a
code the WebSocket contract does not list is sent as ``InternalError``). Messages are
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


class UnknownConnection(BadRequest):
    """A frame from a connection that neither the registry nor the database knows.

    Its user can no longer be known, so the connection is told so and closed: the client
    reconnects with its token and registers again.
    """


class Unauthorized(ChatError):
    code = "Unauthorized"
    status = 401


class Forbidden(ChatError):
    code = "Forbidden"
    status = 403


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

    def __init__(self, message: str = "Something went wrong; try again") -> None:
        super().__init__(message)


class DeliveryDegraded(InternalError):
    """Told to a sender whose message was stored while the registry was unreachable."""

    def __init__(self) -> None:
        super().__init__("Stored, but live delivery is degraded: other connections get it when they reload")


class ServiceUnavailable(ChatError):
    """A dependency failed in a way a retry may heal (frames carry it as ``InternalError``)."""

    code = "ServiceUnavailable"
    status = 503


CONVERSATION_NOT_FOUND = "Conversation not found"
