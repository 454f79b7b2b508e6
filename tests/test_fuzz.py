"""Property-based fuzzing of everything a client can send: WebSocket frames, REST bodies, query strings, path ids.

Whatever arrives: no 500 and no ``InternalError``, every reply is a JSON object, nothing invalid is stored, and
the connection stays usable. ``FUZZ_EXAMPLES`` scales the number of examples (default 40 per property, so the
suite stays fast; CI's profile has no per-example deadline since the database sets the pace).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.wiring import get_database
from tests.conftest import Rest, Sockets, new_user

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CID = "<conversation>"  # replaced by the test's real conversation id
FRAME_TYPES = {"new-message", "read-messages", "error"}
ERROR_CODES = {"BadRequest", "NotFound", "PayloadTooLarge", "TooManyRequests"}  # InternalError would be a bug

# API Gateway hands the app valid UTF-8, so raw text has no lone surrogates; JSON escapes may still carry them.
valid_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)
edge_strings = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "\x00",
        "a\x00b",
        "\ud800",
        "\udfff\ud800",
        "\u202e\u2066rtl",
        "\ufeff",
        "e\u0301\u0301\u0301",
        "🙂",
        "👩\u200d👩\u200d👧",
        "null",
        "send-message",
        "' OR 1=1 --",
        "${jndi:ldap://x}",
        "../../etc/passwd",
        "x" * 4000,
        "x" * 4001,
        "💩" * 4001,
        "y" * 70_000,
        str(uuid.UUID(int=0)),
        CID,
    ]
)
strings = st.one_of(valid_text, edge_strings, st.text(max_size=20))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=12,
)
frame_objects = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(["send-message", "read-messages", "heartbeat"]), scalars)},
    optional={
        "tempMessageId": st.one_of(strings, scalars),
        "conversationId": st.one_of(st.just(CID), st.uuids().map(str), scalars),
        "content": st.one_of(strings, scalars, json_values),
        "senderId": strings,
        "messageId": strings,
        "sentAt": strings,
        "extra": json_values,
    },
)
frames = st.one_of(
    valid_text,
    json_values.map(json.dumps),
    frame_objects.map(json.dumps),
    # Unescaped, as browsers send it; API Gateway only delivers valid UTF-8, so no raw lone surrogates.
    frame_objects.map(lambda frame: json.dumps(frame, ensure_ascii=False)).filter(lambda text: _utf8(text)),
)


def substitute(text: str, conversation_id: str) -> str:
    return text.replace(CID, conversation_id)


def messages_of(conversation_id: str) -> dict[str, dict[str, Any]]:
    rows = get_database().run_sql(
        "SELECT message_id, sender_id, content FROM message_table WHERE conversation_id = :c", c=conversation_id
    )
    return {str(row["message_id"]): row for row in rows}


def storable(content: Any) -> bool:
    if not isinstance(content, str) or not content.strip() or len(content) > 4000 or "\x00" in content:
        return False
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture
def world(rest: Rest, sockets: Sockets) -> dict[str, str]:
    """One conversation and connection per test function, shared by all of its examples."""
    alice, bob = new_user("alice"), new_user("bob")
    return {"alice": alice, "conversation": rest.direct(alice, bob), "tab": sockets.connect(alice)}


@FUZZ
@given(raw=frames)
def test_any_websocket_frame_gets_json_answers_and_stores_nothing_invalid(
    sockets: Sockets, world: dict[str, str], raw: str
) -> None:
    alice, conversation_id, tab = world["alice"], world["conversation"], world["tab"]
    before_frames = len(sockets.frames(tab))
    before = messages_of(conversation_id)

    sockets.send(tab, substitute(raw, conversation_id))

    replies = sockets.sink.frames(tab)[before_frames:]
    after = messages_of(conversation_id)
    for data in replies:
        reply = json.loads(data)  # never a non-JSON frame
        assert isinstance(reply, dict) and reply.get("type") in FRAME_TYPES, reply
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES and isinstance(reply["message"], str), reply
        if reply["type"] == "new-message" and reply["messageId"] not in before:
            assert after[reply["messageId"]]["content"] == reply["content"]
    for message_id in after.keys() - before.keys():  # no stored garbage
        assert after[message_id]["sender_id"] == alice and storable(after[message_id]["content"])
    # The connection stays usable: a heartbeat is accepted silently.
    sockets.send(tab, {"action": "heartbeat"})
    assert len(sockets.frames(tab)) == before_frames + len(replies)


def test_the_fuzzed_connection_still_sends(rest: Rest, sockets: Sockets) -> None:
    """After a burst of hostile frames on one connection, it still sends an ordinary message."""
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tab = sockets.connect(alice)
    for raw in ["{", "[]", "\x00", json.dumps({"action": "send-message", "content": "💩" * 4001}), "y" * 70_000]:
        sockets.send(tab, raw)
    assert sockets.message(tab, conversation_id, "still fine")["content"] == "still fine"


def _assert_json_object_or_list(response: Any) -> Any:
    assert response.status_code < 500, response.body
    body = json.loads(response.body)
    if response.status_code >= 400:
        assert isinstance(body, dict) and set(body) == {"Code", "Message"}, body
    return body


bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {},
        optional={
            "recipientIdArr": st.one_of(st.lists(strings, max_size=6), scalars),
            "isGroup": scalars,
            "title": st.one_of(strings, scalars),
            "conversationId": strings,
            "createdBy": strings,
        },
    ).map(json.dumps),
    st.binary(max_size=64),
)


@FUZZ
@given(body=bodies)
def test_any_conversation_body_is_created_validly_or_refused(rest: Rest, body: str | bytes) -> None:
    caller = new_user("caller")
    response = rest.call("POST", "/conversation", caller, body)
    reply = _assert_json_object_or_list(response)
    assert response.status_code in (200, 400, 413)
    if response.status_code != 200:
        return
    conversation = rest.json("GET", f"/conversations/{reply['conversationId']}", caller)[1]
    participants = conversation["participants"]
    assert caller in participants and 2 <= len(participants) <= 100 and len(set(participants)) == len(participants)
    assert all(p and "\x00" not in p and len(p) <= 128 for p in participants)
    if conversation["isGroup"]:
        assert conversation["title"].strip() == conversation["title"] and 0 < len(conversation["title"]) <= 300
    else:
        assert conversation["title"] == "" and len(participants) == 2


query_values = st.one_of(strings, st.integers().map(str), st.sampled_from(["true", "false", "asc", "desc", CID]))
query_params = st.dictionaries(
    st.sampled_from(["isRead", "limit", "cursor", "offset", "order", "before", "after", "junk"]),
    query_values,
    max_size=4,
)


@FUZZ
@given(params=query_params, route=st.sampled_from(["/conversations", "/conversations/{cid}/messages"]))
def test_any_query_string_is_answered_or_refused(
    rest: Rest, world: dict[str, str], params: dict[str, str], route: str
) -> None:
    encodable = {k: substitute(v, world["conversation"]) for k, v in params.items() if _utf8(v)}
    path = route.format(cid=world["conversation"]) + ("?" + urlencode(encodable) if encodable else "")
    response = rest.call("GET", path, world["alice"])
    body = _assert_json_object_or_list(response)
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert isinstance(body, list)


@FUZZ
@given(
    value=strings, route=st.sampled_from(["/conversations/{}", "/conversations/{}/messages", "/conversation/direct/{}"])
)
def test_any_path_id_is_answered_or_refused(rest: Rest, value: str, route: str) -> None:
    if not value or not _utf8(value):
        return
    response = rest.call("GET", route.format(quote(value, safe="")), new_user("caller"))
    _assert_json_object_or_list(response)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
