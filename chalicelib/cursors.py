"""Opaque, tamper-evident cursors for the conversation list and a conversation's members.

A cursor is what the server handed out in ``X-Next-Cursor``, and nothing else is
accepted: 36 bytes, URL-safe base64 without padding::

    activity time   8 bytes   microseconds since 1970-01-01 UTC, signed big-endian
    conversation   16 bytes   the UUID's bytes
    tag            12 bytes   HMAC-SHA256(key, user id, the 24 bytes above), truncated

The tag binds a cursor to the user it was issued to and to the server's key
(``CURSOR_SECRET``), so a client cannot make one up or edit one, and one user's cursor
is refused for another. Decoding is a fixed-size unpack: no parser, no recursion, no
date arithmetic on client input before the tag has been checked, and the time is range
checked after it. Anything else is ``BadRequest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta

from chalicelib.errors import BadRequest
from chalicelib.model import ListCursor

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAYLOAD = struct.Struct(">q16s")
_TAG_BYTES = 12
_SIZE = _PAYLOAD.size + _TAG_BYTES
# Any activity time the store can hold lies in these years; a cursor outside them was not ours.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
INVALID = "cursor is not valid"


def _tag(key: bytes, user_id: str, payload: bytes) -> bytes:
    message = user_id.encode("utf-8", "surrogatepass") + b"\x00" + payload
    return hmac.new(key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def encode_cursor(cursor: ListCursor, user_id: str, key: bytes) -> str:
    micros = (cursor.activity_at - _EPOCH) // timedelta(microseconds=1)
    payload = _PAYLOAD.pack(micros, uuid.UUID(cursor.conversation_id).bytes)
    return base64.urlsafe_b64encode(payload + _tag(key, user_id, payload)).decode("ascii").rstrip("=")


def decode_cursor(token: str, user_id: str, key: bytes) -> ListCursor:
    """The cursor this server issued to ``user_id``; ``BadRequest`` for anything else."""
    # 36 bytes are 48 base64 characters; check before decoding so a huge value costs nothing.
    if len(token) != 48 or not token.isascii():
        raise BadRequest(INVALID)
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        raise BadRequest(INVALID) from None
    payload, tag = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if len(raw) != _SIZE or not hmac.compare_digest(tag, _tag(key, user_id, payload)):
        raise BadRequest(INVALID)
    micros, conversation = _PAYLOAD.unpack(payload)
    try:
        activity_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise BadRequest(INVALID) from None
    if not _EARLIEST <= activity_at < _LATEST:
        raise BadRequest(INVALID)
    return ListCursor(activity_at, str(uuid.UUID(bytes=conversation)))


# Member cursors: "m", the conversation's 16 bytes, then the last user id listed (UTF-8, at most 512 bytes),
# tagged like list cursors. Bound to the conversation as well as the caller.
_MEMBER_KIND = b"m"
_MAX_MEMBER_TOKEN = 4 * (1 + 16 + 512 + _TAG_BYTES) // 3 + 4


def encode_member_cursor(conversation_id: str, after_user: str, user_id: str, key: bytes) -> str:
    payload = _MEMBER_KIND + uuid.UUID(conversation_id).bytes + after_user.encode("utf-8")
    return base64.urlsafe_b64encode(payload + _tag(key, user_id, payload)).decode("ascii").rstrip("=")


def decode_member_cursor(token: str, conversation_id: str, user_id: str, key: bytes) -> str:
    """The user id a members page resumes after; ``BadRequest`` for a cursor this server did not issue
    to this user for this conversation."""
    if not 0 < len(token) <= _MAX_MEMBER_TOKEN or not token.isascii():
        raise BadRequest(INVALID)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(INVALID) from None
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if len(raw) <= 17 + _TAG_BYTES or not hmac.compare_digest(tag, _tag(key, user_id, payload)):
        raise BadRequest(INVALID)
    if payload[:1] != _MEMBER_KIND or payload[1:17] != uuid.UUID(conversation_id).bytes:
        raise BadRequest(INVALID)
    try:
        return payload[17:].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(INVALID) from None


def cursor_key(secret: str, fallback_context: str) -> bytes:
    """The MAC key: ``CURSOR_SECRET`` when set.

    Without one the key is derived from ``fallback_context`` (the stage's pool and client ids),
    which is not secret: corrupted, truncated or edited cursors are still refused, but someone who
    knows the derivation could mint one (all it could do is start a list at another position;
    a list shows only the caller's own conversations). Deployed stages should set the secret.
    """
    material = secret or f"chat-api list cursor\x00{fallback_context}"
    return hashlib.sha256(material.encode("utf-8")).digest()
