"""Limits that hold per user, however many connections or Lambdas they use (issue 16).

- The send rate is one bucket per user: 20 connections of one user, sending at once, get the burst in all.
- A user holds at most MAX_CONNECTIONS_PER_USER live connections: a $connect beyond it is refused with 429
  and registers nothing; closing one frees a slot at once.
- REST calls and writes of one user draw from per-user buckets: 429 with Retry-After past them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable

from chalicelib.wiring import get_database, get_registry
from local.identity import LocalIdentityProvider
from tests.conftest import Rest, Sockets, new_user
from tests.databases import message_count

Configure = Callable[..., None]


def send(conversation_id: str, content: str) -> str:
    return json.dumps(
        {
            "action": "send-message",
            "tempMessageId": uuid.uuid4().hex,
            "conversationId": conversation_id,
            "content": content,
        }
    )


def test_twenty_connections_of_one_user_share_one_send_bucket(
    rest: Rest, sockets: Sockets, configure: Configure
) -> None:
    configure(SEND_RATE_PER_SECOND="0.001", SEND_BURST="10", MAX_CONNECTIONS_PER_USER="50")
    alice = new_user("alice")
    conversation_id = rest.direct(alice, new_user())
    tabs = [sockets.connect(alice) for _ in range(20)]

    def burst(tab: str) -> None:
        for _ in range(5):
            sockets.send(tab, send(conversation_id, "x"))

    threads = [threading.Thread(target=burst, args=(tab,)) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert message_count(conversation_id) == 10  # the burst, not 20 x 10
    refused = [f for tab in tabs for f in sockets.frames_of_type(tab, "error")]
    assert len(refused) == 90 and {f["code"] for f in refused} == {"TooManyRequests"}


def test_a_connect_past_the_per_user_cap_is_refused_and_registers_nothing(
    sockets: Sockets, configure: Configure, identity: LocalIdentityProvider
) -> None:
    configure(MAX_CONNECTIONS_PER_USER="3")
    alice = new_user("alice")
    tabs = [sockets.connect(alice) for _ in range(3)]
    connection_id, response = sockets.connect_raw(identity.mint_id_token(alice))
    assert response["statusCode"] == 429, response
    assert "Too many open connections" in response["body"]
    assert sorted(get_registry().connections_for([alice])[alice]) == sorted(tabs)
    rows = get_database().run_sql(
        "SELECT count(*) AS n FROM connection_table WHERE connection_id = :c", c=connection_id
    )
    assert rows[0]["n"] == 0
    # Another user is not affected; a closed tab frees a slot at once.
    sockets.connect(new_user("bob"))
    sockets.disconnect(tabs[0])
    assert sockets.connect_raw(identity.mint_id_token(alice))[1]["statusCode"] == 200


def test_rest_writes_past_the_users_bucket_are_429_with_retry_after(rest: Rest, configure: Configure) -> None:
    configure(CREATE_CONVERSATION_RATE_PER_MINUTE="1", CREATE_CONVERSATION_BURST="3")
    alice = new_user("alice")
    statuses = []
    for _ in range(5):
        response = rest.call(
            "POST", "/conversation", alice, {"recipientIdArr": [new_user(), new_user()], "isGroup": True, "title": "g"}
        )
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    body = json.loads(response.body)
    assert body["Code"] == "TooManyRequests"
    assert int(response.headers["Retry-After"]) >= 1
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    # Reads are not writes; another user has buckets of their own.
    assert rest.call("GET", "/conversations", alice).status_code == 200
    assert (
        rest.call("POST", "/conversation", new_user(), {"recipientIdArr": [alice], "isGroup": False}).status_code == 200
    )


def test_every_rest_call_draws_from_the_users_request_bucket(rest: Rest, configure: Configure) -> None:
    configure(REST_RATE_PER_MINUTE="1", REST_BURST="4")
    alice = new_user("alice")
    statuses = [rest.call("GET", "/conversations", alice).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert rest.call("GET", "/conversations", new_user()).status_code == 200


def test_rest_limits_fail_open_when_redis_is_unreachable(rest: Rest, configure: Configure) -> None:
    configure(REDIS_URL="redis://127.0.0.1:9/0", REDIS_TIMEOUT_SECONDS="0.2", REST_BURST="1")
    alice = new_user("alice")
    assert [rest.call("GET", "/conversations", alice).status_code for _ in range(3)] == [200, 200, 200]
