"""Production faults, injected for real: Redis stopped or paused, PostgreSQL restarted, stopped or cutting the
app's connection from the server side, an @connections endpoint answering 410, 429 or 500 or hanging.

Redis and PostgreSQL faults run against private server processes (tests/servers.py) or against the app's own
backend on the shared PostgreSQL (pg_terminate_backend); the shared servers themselves are never signalled.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.migrations import apply_migrations
from chalicelib.wiring import get_database, get_registry
from local.connections_api import ConnectionsServer
from local.identity import LocalIdentityProvider
from local.recording_sink import Behaviour, RecordingSink
from tests.conftest import Rest, Sockets, new_user
from tests.servers import PrivatePostgres, PrivateRedis, failing_trigger

ROOT = Path(__file__).resolve().parent.parent
Configure = Callable[..., None]


def db_rows(sql: str, **params: Any) -> list[dict[str, Any]]:
    return get_database().run_sql(sql, **params)


def stored(conversation_id: str) -> list[dict[str, Any]]:
    return db_rows(
        "SELECT message_id, seq, temp_message_id, content FROM message_table WHERE conversation_id = :c ORDER BY seq",
        c=conversation_id,
    )


def send_frame(conversation_id: str, content: str, temp: str) -> dict[str, Any]:
    return {"action": "send-message", "tempMessageId": temp, "conversationId": conversation_id, "content": content}


# --- Redis unavailable -------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(configure: Configure) -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    configure(REDIS_URL=server.url, REDIS_TIMEOUT_SECONDS="0.3")
    yield server
    server.kill()


def test_rest_keeps_working_with_redis_down(rest: Rest, private_redis: PrivateRedis) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    private_redis.kill()
    conversation_id = rest.direct(alice, bob)
    assert rest.json("GET", "/conversations", alice)[0] == 200
    assert rest.json("GET", f"/conversations/{conversation_id}/messages", bob) == (200, [])


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_send_with_redis_down_stores_reports_degraded_and_recovers(
    rest: Rest, sockets: Sockets, private_redis: PrivateRedis, fault: str
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)

    if fault == "stopped":
        private_redis.kill()
    else:
        private_redis.pause()
    try:
        sockets.send(tab, send_frame(conversation_id, "while redis is down", "t-down"))
    finally:
        if fault == "paused":
            private_redis.resume()

    # Stored, echoed to the sender, and the degraded live delivery reported; the recipient was unreachable.
    assert [row["content"] for row in stored(conversation_id)] == ["while redis is down"]
    echo, notice = sockets.frames(tab)
    assert echo["type"] == "new-message" and echo["tempMessageId"] == "t-down"
    assert notice["type"] == "error" and notice["code"] == "InternalError"
    assert notice["action"] == "send-message" and notice["tempMessageId"] == "t-down"
    assert "stored" in notice["message"].lower() and "degraded" in notice["message"].lower()
    assert sockets.frames(bob_tab) == []

    if fault == "stopped":
        # A restarted Redis has lost every key: each connection re-registers from the database on its next
        # frame (clients send heartbeats), without reconnecting.
        private_redis.start()
        sockets.send(bob_tab, {"action": "heartbeat"})
    after = sockets.message(tab, conversation_id, "redis is back")
    assert sockets.frames_of_type(bob_tab, "new-message") == [after]
    assert sorted(get_registry().connections_for([alice, bob])[bob]) == [bob_tab]
    assert [row["content"] for row in stored(conversation_id)] == ["while redis is down", "redis is back"]


def test_connect_and_read_with_redis_down(rest: Rest, sockets: Sockets, private_redis: PrivateRedis) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    sockets.message(sockets.connect(bob), conversation_id, "unread")
    private_redis.kill()
    tab = sockets.connect(alice)  # accepted: the database knows whose connection it is

    sockets.send(tab, {"action": "read-messages", "conversationId": conversation_id})
    receipt, notice = sockets.frames(tab)
    assert receipt["type"] == "read-messages" and receipt["userId"] == alice and "lastReadMessageId" in receipt
    assert notice["type"] == "error" and notice["code"] == "InternalError" and notice["action"] == "read-messages"
    assert rest.json("GET", "/conversations", alice)[1][0]["unreadCount"] == 0

    private_redis.start()
    sockets.send(tab, {"action": "heartbeat"})
    assert get_registry().connections_for([alice])[alice] == [tab]


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def terminate_app_backends() -> int:
    """Close the app's PostgreSQL sessions from the server side, as a failover or an idle reaper does."""
    admin = Database(get_settings())
    try:
        rows = admin.run_sql(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'chat-api' AND pid <> pg_backend_pid()"
        )
        return int(rows[0]["n"])
    finally:
        admin.close()


def test_connection_closed_by_the_server_between_invocations(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    assert terminate_app_backends() >= 1
    assert rest.json("GET", f"/conversations/{conversation_id}", alice)[0] == 200
    assert terminate_app_backends() >= 1
    echo = sockets.message(tab, conversation_id, "after the cut")
    assert sockets.frames_of_type(bob_tab, "new-message") == [echo]
    assert len(stored(conversation_id)) == 1


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().init()
    from chalicelib.config import settings_from_env

    apply_migrations(settings_from_env({"DATABASE_URL": server.url}), ROOT / "sql")
    yield server
    server.destroy()


def test_postgres_restarted_between_invocations(
    rest: Rest, sockets: Sockets, configure: Configure, private_postgres: PrivatePostgres
) -> None:
    configure(DATABASE_URL=private_postgres.url)
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab = sockets.connect(alice)
    private_postgres.restart()
    assert rest.json("GET", f"/conversations/{conversation_id}", alice)[0] == 200
    private_postgres.restart()
    sockets.message(tab, conversation_id, "after a restart")
    assert [row["content"] for row in stored(conversation_id)] == ["after a restart"]


def test_postgres_down_during_a_send_then_the_retry_stores_once(
    rest: Rest, sockets: Sockets, configure: Configure, private_postgres: PrivatePostgres
) -> None:
    configure(DATABASE_URL=private_postgres.url, DB_CONNECT_TIMEOUT="2")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    private_postgres.stop()
    try:
        sockets.send(tab, send_frame(conversation_id, "during the outage", "t-outage"))
        (error,) = sockets.frames(tab)
        assert error["type"] == "error" and error["code"] == "InternalError"
        # Said plainly since issue 11: the database, not some fault, and a retry can succeed.
        assert (
            error["tempMessageId"] == "t-outage" and error["message"] == "The database could not be reached; try again"
        )
        assert rest.call("GET", "/conversations", alice).status_code == 503
    finally:
        private_postgres.start()
    sockets.send(tab, send_frame(conversation_id, "during the outage", "t-outage"))
    sockets.send(tab, send_frame(conversation_id, "during the outage", "t-outage"))
    assert len(stored(conversation_id)) == 1
    echoes = sockets.frames_of_type(tab, "new-message")
    assert len(echoes) == 2 and echoes[0] == echoes[1]
    assert len(sockets.frames_of_type(bob_tab, "new-message")) == 1


def test_a_failure_inside_a_send_rolls_back_completely(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    sockets.message(tab, conversation_id, "before")
    snapshot_sql = (
        "SELECT c.last_seq, c.last_activity_at, c.latest_message_id, p.user_id, p.last_read_seq, p.last_read_at"
        " FROM conversation_table c JOIN participant_table p USING (conversation_id)"
        " WHERE conversation_id = :c ORDER BY p.user_id"
    )
    before = db_rows(snapshot_sql, c=conversation_id)
    bob_frames = len(sockets.frames(bob_tab))

    # The last step of the send (bumping the participants' rows) fails inside PostgreSQL.
    with failing_trigger(db_rows, "participant_table", f"NEW.conversation_id = '{conversation_id}'", "UPDATE"):
        sockets.send(tab, send_frame(conversation_id, "half-written?", "t-fault"))

    error = sockets.frames(tab)[-1]
    assert error["type"] == "error" and error["code"] == "InternalError" and error["tempMessageId"] == "t-fault"
    assert "injected" not in error["message"] and "participant_table" not in error["message"]
    assert db_rows(snapshot_sql, c=conversation_id) == before
    assert [row["content"] for row in stored(conversation_id)] == ["before"]
    assert len(sockets.frames(bob_tab)) == bob_frames
    # Nothing was half-written, so the retry takes the next position: positions stay dense.
    retried = sockets.message(tab, conversation_id, "half-written?", temp="t-fault")
    assert retried["position"] == 2


# --- pushes --------------------------------------------------------------------------------------------------


@pytest.fixture
def endpoint(configure: Configure, identity: LocalIdentityProvider) -> Iterator[tuple[Sockets, RecordingSink]]:
    """A private @connections endpoint, so hanging pushes can be released without touching other tests."""
    sink = RecordingSink()
    with ConnectionsServer(sink) as server:
        configure(CONNECTIONS_ENDPOINT_URL=server.url)
        yield Sockets(identity, sink), sink
        sink.release()


def test_gone_connection_is_unregistered_alone(rest: Rest, endpoint: tuple[Sockets, RecordingSink]) -> None:
    sockets, sink = endpoint
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, dead, alive, other_tab = (sockets.connect(u) for u in (alice, bob, bob, alice))
    sink.close(dead)  # dropped without a $disconnect
    sockets.message(tab, conversation_id, "first")
    assert sorted(get_registry().connections_for([bob])[bob]) == [alive]
    assert sorted(get_registry().connections_for([alice])[alice]) == sorted([tab, other_tab])
    assert db_rows("SELECT 1 FROM connection_table WHERE connection_id = :c", c=dead) == []
    assert db_rows("SELECT 1 FROM connection_table WHERE connection_id = :c", c=alive) != []
    sockets.message(tab, conversation_id, "second")
    assert sink.attempts(dead) == 1  # the first 410 purged it: never tried again
    assert len(sockets.frames_of_type(alive, "new-message")) == 2


@pytest.mark.parametrize(("status", "times", "delivered"), [(429, 2, True), (500, 2, True), (503, None, False)])
def test_throttled_and_failing_pushes_are_retried_then_given_up(
    rest: Rest, endpoint: tuple[Sockets, RecordingSink], status: int, times: int | None, delivered: bool
) -> None:
    sockets, sink = endpoint
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    sink.inject(Behaviour(status=status, times=times), bob_tab)
    echo = sockets.message(tab, conversation_id, "through the storm")
    # Bounded: the default three attempts, then given up without failing the send.
    assert sink.attempts(bob_tab) == 3
    assert sockets.frames_of_type(bob_tab, "new-message") == ([echo] if delivered else [])
    assert len(stored(conversation_id)) == 1
    assert get_registry().connections_for([bob])[bob] == [bob_tab]  # only a 410 unregisters


def test_a_hanging_endpoint_cannot_stall_a_send_past_the_deadline(
    rest: Rest, configure: Configure, endpoint: tuple[Sockets, RecordingSink]
) -> None:
    sockets, sink = endpoint
    configure(PUSH_DEADLINE_SECONDS="1", PUSH_TIMEOUT_SECONDS="3")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    sink.inject(Behaviour(delay=60), bob_tab)
    started = time.monotonic()
    echo = sockets.message(tab, conversation_id, "do not wait for bob")
    # Three attempts of 3 s each would be 9 s and more; the deadline ends the fan-out after 1 s.
    assert time.monotonic() - started < 5
    assert echo["content"] == "do not wait for bob" and len(stored(conversation_id)) == 1


def test_a_retry_after_a_timeout_stores_exactly_one(
    rest: Rest, configure: Configure, endpoint: tuple[Sockets, RecordingSink]
) -> None:
    sockets, sink = endpoint
    configure(PUSH_DEADLINE_SECONDS="0.5")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    tab, bob_tab = sockets.connect(alice), sockets.connect(bob)
    # The echo to the sender hangs: the client never hears back, times out and sends again.
    sink.inject(Behaviour(delay=60, times=1), tab)
    sockets.send(tab, send_frame(conversation_id, "did it arrive?", "t-timeout"))
    assert sockets.frames(tab) == []
    retried = sockets.message(tab, conversation_id, "did it arrive?", temp="t-timeout")
    (original,) = sockets.frames_of_type(bob_tab, "new-message")
    assert retried == original
    assert [row["temp_message_id"] for row in stored(conversation_id)] == ["t-timeout"]


# --- concurrency and ordering --------------------------------------------------------------------------------


def test_concurrent_senders_get_one_total_order_seen_identically(rest: Rest, sockets: Sockets) -> None:
    users = [new_user(f"u{i}") for i in range(4)]
    conversation_id = rest.group(users[0], users[1:], "race")
    tabs = {user: [sockets.connect(user), sockets.connect(user)] for user in users}
    per_sender = 8
    errors: list[BaseException] = []

    def sender(user: str, tab: str) -> None:
        try:
            for i in range(per_sender):
                sockets.send(tab, send_frame(conversation_id, f"{user} #{i}", f"{tab}-{i}"))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=sender, args=(user, tabs[user][0])) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors

    in_db = stored(conversation_id)
    assert [row["seq"] for row in in_db] == list(range(1, len(users) * per_sender + 1))
    db_order = [str(row["message_id"]) for row in in_db]
    for connection_id in [tab for pair in tabs.values() for tab in pair]:
        received = sockets.frames_of_type(connection_id, "new-message")
        assert len(received) == len(db_order)  # none lost, none duplicated
        by_position = sorted(received, key=lambda frame: frame["position"])
        assert [frame["messageId"] for frame in by_position] == db_order
    # Each sender's own messages keep the order they were sent in.
    for user in users:
        mine = [row["content"] for row in in_db if row["content"].startswith(f"{user} #")]
        assert mine == [f"{user} #{i}" for i in range(per_sender)]
    # REST history carries the same positions.
    page = rest.json("GET", f"/conversations/{conversation_id}/messages?limit=100&order=asc", users[1])[1]
    assert [m["messageId"] for m in page] == db_order and [m["position"] for m in page] == list(range(1, 33))


# --- missed disconnects --------------------------------------------------------------------------------------


def test_connections_without_a_disconnect_expire(
    rest: Rest, sockets: Sockets, sink: RecordingSink, configure: Configure
) -> None:
    configure(CONNECTION_TTL_SECONDS="1")
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    stale = sockets.connect(bob)  # its $disconnect never comes, and it sends nothing more
    time.sleep(2.2)
    tab = sockets.connect(alice)
    sockets.message(tab, conversation_id, "anyone?")
    assert get_registry().connections_for([bob])[bob] == []
    assert sink.attempts(stale) == 0


def test_database_rows_of_connections_older_than_the_gateway_limit_are_ignored_and_purged(
    sockets: Sockets, sink: RecordingSink
) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}="
    db_rows(
        "INSERT INTO connection_table (connection_id, user_id, connected_at)"
        " VALUES (:c, 'mallory', clock_timestamp() - interval '3 hours')",
        c=ghost,
    )
    sink.open(ghost)
    sockets.send(ghost, {"action": "heartbeat"})  # unknown to Redis; its old row does not vouch for it
    (error,) = sockets.frames(ghost)
    assert error["code"] == "BadRequest" and ghost in sink.deleted
    sockets.connect(new_user())
    assert db_rows("SELECT 1 FROM connection_table WHERE connection_id = :c", c=ghost) == []
