"""A write whose answer was lost (issue 17): stored by a first attempt, found again by the re-run.

Reproduced for real on the shared PostgreSQL: a second session holds the row the write needs, the app's
connection times out waiting (a 1 s socket timeout), ``Database`` reconnects and re-runs the statement, and
the lock is released while both attempts wait. The first attempt then commits, unseen by the app, and the
re-run meets its write. The message must still reach every connection of every member exactly once, and
the read receipt every member's connections.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.native
import pytest

from chalicelib.config import get_settings
from chalicelib.db import connection_parameters
from tests.conftest import Rest, Sockets, new_user
from tests.databases import message_count

TIMEOUT_S = 1.0


@pytest.fixture
def short_timeout(configure: Callable[..., None]) -> None:
    configure(DB_READ_TIMEOUT=str(TIMEOUT_S))


@pytest.fixture
def holder() -> Iterator[pg8000.native.Connection]:
    """A second session of the app's database that can hold row locks."""
    connection = pg8000.native.Connection(**connection_parameters(get_settings().database, "us-east-1"))
    yield connection
    connection.close()


def while_locked(
    holder: pg8000.native.Connection, lock_sql: str, params: dict[str, Any], act: Callable[[], None]
) -> None:
    """Run ``act`` in a thread while ``holder`` locks a row, and release it once the app has timed out once."""
    holder.run("BEGIN")
    holder.run(lock_sql, **params)
    worker = threading.Thread(target=act)
    worker.start()
    time.sleep(TIMEOUT_S * 1.8)  # the first attempt timed out; the re-run is queued behind it on the lock
    holder.run("COMMIT")
    worker.join(timeout=30)
    assert not worker.is_alive()


def frames(sockets: Sockets, connection_id: str, frame_type: str) -> list[dict[str, Any]]:
    return sockets.frames_of_type(connection_id, frame_type)


def test_a_send_stored_by_a_lost_attempt_reaches_every_connection_once(
    rest: Rest,
    sockets: Sockets,
    short_timeout: None,
    holder: pg8000.native.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tabs = {"a1": sockets.connect(alice), "a2": sockets.connect(alice), "b1": sockets.connect(bob)}
    tabs["b2"] = sockets.connect(bob)
    temp = uuid.uuid4().hex
    frame = {"action": "send-message", "tempMessageId": temp, "conversationId": conversation_id, "content": "hi"}

    with caplog.at_level(logging.WARNING, logger="chalicelib.db"):
        while_locked(
            holder,
            "SELECT 1 FROM conversation_table WHERE conversation_id = CAST(:c AS uuid) FOR UPDATE",
            {"c": conversation_id},
            lambda: sockets.send(tabs["a1"], json.dumps(frame)),
        )
    assert any("connection lost" in record.getMessage() for record in caplog.records), "no attempt was lost"

    assert message_count(conversation_id) == 1
    for name, connection_id in tabs.items():
        received = [f for f in frames(sockets, connection_id, "new-message") if f["tempMessageId"] == temp]
        assert len(received) == 1, (name, sockets.frames(connection_id))
    assert not frames(sockets, tabs["a1"], "error")
    # A client's own retry later is still only an echo to the retrying connection.
    sockets.send(tabs["a2"], json.dumps(frame))
    assert len(frames(sockets, tabs["a2"], "new-message")) == 2
    assert len(frames(sockets, tabs["b1"], "new-message")) == 1


def test_a_read_stored_by_a_lost_attempt_still_pushes_its_receipt(
    rest: Rest,
    sockets: Sockets,
    short_timeout: None,
    holder: pg8000.native.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    a1, b1, b2 = sockets.connect(alice), sockets.connect(bob), sockets.connect(bob)
    sent = sockets.message(a1, conversation_id, "read me")
    read = {"action": "read-messages", "conversationId": conversation_id}

    with caplog.at_level(logging.WARNING, logger="chalicelib.db"):
        while_locked(
            holder,
            "SELECT 1 FROM participant_table WHERE conversation_id = CAST(:c AS uuid) AND user_id = :u FOR UPDATE",
            {"c": conversation_id, "u": bob},
            lambda: sockets.send(b1, json.dumps(read)),
        )
    assert any("connection lost" in record.getMessage() for record in caplog.records), "no attempt was lost"

    for connection_id in (a1, b1, b2):
        receipts = [f for f in frames(sockets, connection_id, "read-messages") if f.get("lastReadMessageId")]
        assert [f["lastReadMessageId"] for f in receipts] == [sent["messageId"]], sockets.frames(connection_id)
    # Reading again moves nothing: acknowledged to that connection only, no new receipt anywhere.
    sockets.send(b2, json.dumps(read))
    assert len([f for f in frames(sockets, a1, "read-messages") if f.get("lastReadMessageId")]) == 1
