"""What an outside probe tried (issue 16): deeply nested JSON and cursors the server never issued.

Every case is a clear 400 / ``error`` ``BadRequest`` with nothing stored, never a 500 or an
``InternalError``, whatever the depth or the cursor's content.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.config import get_settings as settings_of_app
from chalicelib.cursors import decode_cursor, encode_cursor
from chalicelib.errors import BadRequest
from chalicelib.model import ListCursor
from chalicelib.validation import MAX_JSON_DEPTH, nesting_depth_exceeds
from tests.conftest import Rest, Sockets, new_user
from tests.databases import message_count

DEPTHS = [MAX_JSON_DEPTH + 1, 1_000, 2_000, 5_000, 20_000, 30_000]


def nested_arrays(depth: int, core: str = "1") -> str:
    return "[" * depth + core + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# --- the depth scan --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("{}", False),
        (nested_arrays(MAX_JSON_DEPTH), False),
        (nested_arrays(MAX_JSON_DEPTH + 1), True),
        (nested_objects(MAX_JSON_DEPTH + 1), True),
        # Brackets inside strings do not nest, escaped quotes do not end a string.
        (json.dumps({"content": "[" * 10_000}), False),
        (json.dumps({"content": '\\"' + "{" * 500}), False),
        ('{"a": "\\\\"}' + "[" * 30, True),
        # Unbalanced closers never go negative into a false "shallow".
        ("]" * 50 + "[" * 21, True),
    ],
)
def test_nesting_scan_counts_levels_outside_strings(text: str, deep: bool) -> None:
    assert nesting_depth_exceeds(text, MAX_JSON_DEPTH) is deep


# --- REST ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["body", "recipients", "objects"])
def test_deeply_nested_rest_bodies_are_400(rest: Rest, depth: int, shape: str) -> None:
    user = new_user()
    bodies = {
        "body": nested_arrays(depth),
        "recipients": '{"isGroup": true, "title": "t", "recipientIdArr": ' + nested_arrays(depth, '"bob"') + "}",
        "objects": nested_objects(depth),
    }
    response = rest.call("POST", "/conversation", user, bodies[shape])
    body = json.loads(response.body)
    if len(bodies[shape]) > settings_of_app().max_request_bytes:  # refused by size before any scan
        assert (response.status_code, body["Code"]) == (413, "PayloadTooLarge")
    else:
        assert response.status_code == 400, response.body
        assert body["Code"] == "BadRequest" and "nests deeper" in body["Message"]
    status, listed = rest.json("GET", "/conversations", user)
    assert (status, listed) == (200, [])


# --- WebSocket -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["bare", "content"])
def test_deeply_nested_frames_get_a_bad_request_error_frame(
    rest: Rest, sockets: Sockets, depth: int, shape: str
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab = sockets.connect(alice)
    frame = (
        nested_arrays(depth)
        if shape == "bare"
        else (
            '{"action": "send-message", "tempMessageId": "deep", "conversationId": "'
            + conversation_id
            + '", "content": '
            + nested_arrays(depth)
            + "}"
        )
    )
    assert len(frame) <= settings_of_app().max_request_bytes  # so it is the depth that is refused
    sockets.send(tab, frame)
    [error] = sockets.frames(tab)
    assert (error["type"], error["code"]) == ("error", "BadRequest"), error
    assert error["action"] is None  # refused unparsed: nothing of it is read, not even its action
    assert message_count(conversation_id) == 0
    # The connection stays usable.
    assert sockets.message(tab, conversation_id, "still here")["content"] == "still here"


# --- cursors ---------------------------------------------------------------------------------

KEY = b"k" * 32


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FOREIGN_CURSORS = [
    # What the probe sent: the old format's JSON with extreme offsets.
    b64(json.dumps(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())]).encode()),
    b64(json.dumps(["9999-12-31T23:59:59-14:00", str(uuid.uuid4())]).encode()),
    b64(("[" * 5000 + "]" * 5000).encode()),
    b64(b"\x00" * 36),
    b64(b"\xff" * 36),
    "",
    "=",
    "not base64 at all!",
    "A" * 48,
    "A" * 10_000,
    "é" * 48,
]


@pytest.mark.parametrize("cursor", FOREIGN_CURSORS, ids=range(len(FOREIGN_CURSORS)))
def test_cursors_the_server_did_not_issue_are_400(rest: Rest, cursor: str) -> None:
    user = new_user()
    rest.direct(user, new_user())
    response = rest.call("GET", f"/conversations?limit=5&cursor={cursor}", user)
    assert response.status_code == 400, response.body
    assert json.loads(response.body)["Code"] == "BadRequest"


def test_an_issued_cursor_pages_only_for_its_own_user(rest: Rest) -> None:
    user, other = new_user(), new_user()
    for _ in range(3):
        rest.direct(user, new_user())
    first = rest.call("GET", "/conversations?limit=2", user)
    cursor = first.headers["X-Next-Cursor"]
    assert rest.call("GET", f"/conversations?limit=2&cursor={cursor}", user).status_code == 200
    assert rest.call("GET", f"/conversations?limit=2&cursor={cursor}", other).status_code == 400
    # One flipped character anywhere is refused.
    for index in (0, len(cursor) // 2, len(cursor) - 1):
        flipped = cursor[:index] + ("A" if cursor[index] != "A" else "B") + cursor[index + 1 :]
        assert rest.call("GET", f"/conversations?limit=2&cursor={flipped}", user).status_code == 400


def test_a_signed_cursor_outside_the_stores_years_is_refused() -> None:
    for moment in (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        token = encode_cursor(ListCursor(moment, str(uuid.uuid4())), "alice", KEY)
        with pytest.raises(BadRequest):
            decode_cursor(token, "alice", KEY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(b64)))
def test_any_cursor_string_is_refused_cleanly(token: Any) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(token, "alice", KEY)


@settings(max_examples=100, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(8999, 1, 1)), st.uuids())
def test_issued_cursors_round_trip(moment: datetime, conversation: uuid.UUID) -> None:
    cursor = ListCursor(moment.replace(tzinfo=UTC), str(conversation))
    assert decode_cursor(encode_cursor(cursor, "alice", KEY), "alice", KEY) == cursor
