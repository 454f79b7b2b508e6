"""Groups people can run (CONTRACT.md sections 5 and 6, issue 14): members, roles, titles, mute, read state.

Every route and push, success and failure; the authorization matrix over the caller's role (owner, admin,
member, outsider, a user nobody has heard of); races of adds and removes; paging of members.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.repository import ChatRepository
from chalicelib.service import ChatService
from chalicelib.wiring import get_database
from tests.conftest import Rest, Sockets, new_user

Configure = Callable[..., None]


def frames(sockets: Sockets, connection_id: str, frame_type: str) -> list[dict[str, Any]]:
    return sockets.frames_of_type(connection_id, frame_type)


def participants(rest: Rest, conversation_id: str, user: str) -> list[str]:
    status, body = rest.json("GET", f"/conversations/{conversation_id}/participants", user)
    assert status == 200, body
    return sorted(body)


def list_row(rest: Rest, user: str, conversation_id: str) -> dict[str, Any] | None:
    rows = [row for row in rest.json("GET", "/conversations", user)[1] if row["conversationId"] == conversation_id]
    return rows[0] if rows else None


class Team:
    """A group of owner, admin and member, plus an outsider, each with a live connection."""

    def __init__(self, rest: Rest, sockets: Sockets) -> None:
        self.rest, self.sockets = rest, sockets
        self.owner, self.admin, self.member = new_user("owner"), new_user("admin"), new_user("member")
        self.outsider = new_user("outsider")
        self.id = rest.group(self.owner, [self.admin, self.member], "Team")
        status, _ = rest.json(
            "PATCH", f"/conversations/{self.id}/participants/{self.admin}", self.owner, {"role": "admin"}
        )
        assert status == 200
        self.tabs = {user: sockets.connect(user) for user in (self.owner, self.admin, self.member, self.outsider)}

    def user(self, who: str) -> str:
        return {
            "owner": self.owner,
            "admin": self.admin,
            "member": self.member,
            "outsider": self.outsider,
            "unknown": new_user("nobody"),
        }[who]


@pytest.fixture
def team(rest: Rest, sockets: Sockets) -> Team:
    return Team(rest, sockets)


# --- section 5: conversations appear at once ---------------------------------------------------------


def test_a_new_group_is_pushed_to_every_member_and_listed_before_any_message(rest: Rest, sockets: Sockets) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    tabs = {user: [sockets.connect(user), sockets.connect(user)] for user in (alice, bob, carol)}
    conversation_id = rest.group(alice, [bob, carol], "Launch")
    for user, connections in tabs.items():
        for tab in connections:
            [created] = frames(sockets, tab, "conversation-created")
            assert created["conversationId"] == conversation_id and created["title"] == "Launch"
            assert created["isGroup"] is True and created["createdBy"] == alice
            assert sorted(created["participants"]) == sorted([alice, bob, carol]) and created["createdAt"]
        row = list_row(rest, user, conversation_id)
        assert (
            row is not None and row["latestContent"] == "" and row["role"] == ("owner" if user == alice else "member")
        )


def test_a_direct_conversation_is_pushed_once_and_a_get_or_create_pushes_nothing(rest: Rest, sockets: Sockets) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    a, b = sockets.connect(alice), sockets.connect(bob)
    conversation_id = rest.direct(alice, bob)
    assert rest.direct(bob, alice) == conversation_id
    for tab in (a, b):
        [created] = frames(sockets, tab, "conversation-created")
        assert (created["conversationId"], created["isGroup"], created["title"]) == (conversation_id, False, "")


# --- adding -------------------------------------------------------------------------------------------------


def test_an_added_member_sees_the_history_starts_read_and_gets_the_next_message(team: Team) -> None:
    rest, sockets = team.rest, team.sockets
    sockets.message(team.tabs[team.member], team.id, "before dave")
    dave = new_user("dave")
    dave_tab = sockets.connect(dave)
    status, body = rest.json(
        "POST", f"/conversations/{team.id}/participants", team.admin, {"userIds": [dave, team.member, dave]}
    )
    assert (status, body) == (200, {"added": [dave]})
    for user in (team.owner, team.admin, team.member, dave):
        [update] = frames(sockets, team.tabs.get(user, dave_tab), "participants-updated")
        assert update["added"] == [dave] and update["removed"] == [] and update["by"] == team.admin
        assert sorted(update["participants"]) == sorted([team.owner, team.admin, team.member, dave])
    assert frames(sockets, team.tabs[team.outsider], "participants-updated") == []
    row = list_row(rest, dave, team.id)
    assert row is not None and row["unreadCount"] == 0 and row["isRead"] is True and row["role"] == "member"
    history = rest.json("GET", f"/conversations/{team.id}/messages", dave)[1]
    assert [m["content"] for m in history] == ["before dave"]
    sent = sockets.message(team.tabs[team.owner], team.id, "welcome")
    assert [f["messageId"] for f in frames(sockets, dave_tab, "new-message")] == [sent["messageId"]]
    # Repeating the request changes nothing and pushes nothing.
    assert rest.json("POST", f"/conversations/{team.id}/participants", team.admin, {"userIds": [dave]}) == (
        200,
        {"added": []},
    )
    assert len(frames(sockets, dave_tab, "participants-updated")) == 1


def test_adds_respect_the_participant_cap(team: Team, configure: Configure) -> None:
    configure(MAX_PARTICIPANTS="4")
    path = f"/conversations/{team.id}/participants"
    status, body = team.rest.json("POST", path, team.owner, {"userIds": [new_user(), new_user()]})
    assert (status, body["Code"]) == (400, "BadRequest")
    assert team.rest.json("POST", path, team.owner, {"userIds": [new_user()]})[0] == 200
    assert len(participants(team.rest, team.id, team.owner)) == 4


@pytest.mark.parametrize(
    "body",
    [
        None,
        "not json",
        [],
        {},
        {"userIds": []},
        {"userIds": "bob"},
        {"userIds": [""]},
        {"userIds": [7]},
        {"userIds": ["a\x00b"]},
        {"userIds": ["x" * 129]},
    ],
)
def test_bad_add_bodies_are_400_and_add_nothing(team: Team, body: Any) -> None:
    payload = body if isinstance(body, str) or body is None else json.dumps(body)
    response = team.rest.call("POST", f"/conversations/{team.id}/participants", team.owner, payload or "")
    assert response.status_code == 400, response.body
    assert len(participants(team.rest, team.id, team.owner)) == 3


# --- removing and leaving -----------------------------------------------------------------------------------


def test_a_removed_member_gets_404s_no_pushes_and_loses_the_conversation_but_their_messages_stay(team: Team) -> None:
    rest, sockets = team.rest, team.sockets
    said = sockets.message(team.tabs[team.member], team.id, "mine")
    status, body = rest.json("DELETE", f"/conversations/{team.id}/participants/{team.member}", team.admin)
    assert (status, body) == (200, {"removed": [team.member]})
    [update] = frames(sockets, team.tabs[team.member], "participants-updated")
    assert update["removed"] == [team.member] and team.member not in update["participants"]
    for route in ("", "/messages", "/participants", "/members"):
        assert rest.call("GET", f"/conversations/{team.id}{route}", team.member).status_code == 404
    assert list_row(rest, team.member, team.id) is None
    sockets.message(team.tabs[team.owner], team.id, "after")
    assert [f["content"] for f in frames(sockets, team.tabs[team.member], "new-message")] == ["mine"]
    sockets.send(
        team.tabs[team.member],
        json.dumps({"action": "send-message", "tempMessageId": "t", "conversationId": team.id, "content": "let me in"}),
    )
    assert frames(sockets, team.tabs[team.member], "error")[-1]["code"] == "NotFound"
    history = rest.json("GET", f"/conversations/{team.id}/messages?order=asc", team.owner)[1]
    assert history[0]["messageId"] == said["messageId"]
    # Removing a non-member is a no-op.
    assert rest.json("DELETE", f"/conversations/{team.id}/participants/{team.member}", team.admin) == (
        200,
        {"removed": []},
    )


def test_the_owner_leaving_hands_over_to_the_admin_who_joined_first_else_the_first_member(
    rest: Rest, sockets: Sockets
) -> None:
    owner, first, second, third = new_user("o"), new_user("first"), new_user("second"), new_user("third")
    conversation_id = rest.group(owner, [first, second], "Heirs")
    rest.json("POST", f"/conversations/{conversation_id}/participants", owner, {"userIds": [third]})
    rest.json("PATCH", f"/conversations/{conversation_id}/participants/{third}", owner, {"role": "admin"})
    tab = sockets.connect(first)
    # The admin inherits although members joined before them.
    assert rest.json("DELETE", f"/conversations/{conversation_id}/participants/{owner}", owner)[0] == 200
    update = frames(sockets, tab, "participants-updated")[-1]
    assert update["removed"] == [owner] and update["roles"] == {third: "owner"}
    roles = {m["userId"]: m["role"] for m in rest.json("GET", f"/conversations/{conversation_id}", first)[1]["members"]}
    assert roles == {first: "member", second: "member", third: "owner"}
    # No admin left: the member who joined first; ties of the same instant break by user id.
    rest.json("DELETE", f"/conversations/{conversation_id}/participants/{third}", third)
    roles = {m["userId"]: m["role"] for m in rest.json("GET", f"/conversations/{conversation_id}", first)[1]["members"]}
    assert roles == {min(first, second): "owner", max(first, second): "member"}


def test_the_last_member_leaving_leaves_an_empty_group(rest: Rest) -> None:
    a, b, c = new_user("a"), new_user("b"), new_user("c")
    conversation_id = rest.group(a, [b, c], "Bye")
    for user in (a, b, c):
        assert rest.json("DELETE", f"/conversations/{conversation_id}/participants/{user}", user)[0] == 200
    count = get_database().run_sql(
        "SELECT member_count FROM conversation_table WHERE conversation_id = CAST(:c AS uuid)", c=conversation_id
    )
    assert count[0]["member_count"] == 0


# --- roles, title, settings -----------------------------------------------------------------------------------


def test_roles_title_and_mute(team: Team) -> None:
    rest, sockets = team.rest, team.sockets
    status, body = rest.json(
        "PATCH", f"/conversations/{team.id}/participants/{team.member}", team.owner, {"role": "admin"}
    )
    assert (status, body) == (200, {"userId": team.member, "role": "admin"})
    assert frames(sockets, team.tabs[team.member], "participants-updated")[-1]["roles"] == {team.member: "admin"}
    status, body = rest.json("PATCH", f"/conversations/{team.id}", team.member, {"title": "  Renamed  "})
    assert status == 200 and body["title"] == "Renamed" and body["conversationId"] == team.id
    for user in (team.owner, team.admin, team.member):
        [update] = frames(sockets, team.tabs[user], "conversation-updated")
        assert update == {
            "type": "conversation-updated",
            "conversationId": team.id,
            "title": "Renamed",
            "by": team.member,
        }
        assert list_row(rest, user, team.id)["title"] == "Renamed"  # type: ignore[index]
    assert rest.json("PUT", f"/conversations/{team.id}/settings", team.member, {"muted": True}) == (
        200,
        {"muted": True},
    )
    assert list_row(rest, team.member, team.id)["muted"] is True  # type: ignore[index]
    assert list_row(rest, team.owner, team.id)["muted"] is False  # type: ignore[index]
    # Repeats change nothing and push nothing.
    rest.json("PATCH", f"/conversations/{team.id}", team.member, {"title": "Renamed"})
    assert len(frames(sockets, team.tabs[team.owner], "conversation-updated")) == 1


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("POST", "/participants", {"userIds": ["x"]}),
        ("DELETE", "/participants/{other}", None),
        ("PATCH", "/participants/{other}", {"role": "admin"}),
        ("PATCH", "", {"title": "t"}),
        ("PUT", "/settings", {"muted": True}),
    ],
)
def test_direct_conversations_refuse_group_routes(rest: Rest, method: str, route: str, body: Any) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    conversation_id = rest.direct(alice, bob)
    response = rest.call(method, f"/conversations/{conversation_id}{route.format(other=bob)}", alice, body)
    assert response.status_code == 400, response.body
    assert participants(rest, conversation_id, alice) == sorted([alice, bob])


# The role matrix: (action, who) -> expected status. "target" is the member unless the action says otherwise.
MATRIX = {
    "add": {"owner": 200, "admin": 200, "member": 403, "outsider": 404, "unknown": 404},
    "remove-member": {"owner": 200, "admin": 200, "member": 200, "outsider": 404, "unknown": 404},
    "remove-admin": {"owner": 200, "admin": 200, "member": 403, "outsider": 404, "unknown": 404},
    "remove-owner": {"owner": 200, "admin": 403, "member": 403, "outsider": 404, "unknown": 404},
    "set-role": {"owner": 200, "admin": 403, "member": 403, "outsider": 404, "unknown": 404},
    "rename": {"owner": 200, "admin": 200, "member": 403, "outsider": 404, "unknown": 404},
    "mute": {"owner": 200, "admin": 200, "member": 200, "outsider": 404, "unknown": 404},
}
CASES = [(action, who, status) for action, row in MATRIX.items() for who, status in row.items()]


@pytest.mark.parametrize(("action", "who", "expected"), CASES)
def test_authorization_matrix(team: Team, action: str, who: str, expected: int) -> None:
    caller = team.user(who)
    base = f"/conversations/{team.id}"
    target = {"remove-admin": team.admin, "remove-owner": team.owner}.get(action, team.member)
    if action == "remove-member" and who == "member":
        target = caller  # a member may only remove themselves
    calls = {
        "add": ("POST", f"{base}/participants", {"userIds": [new_user()]}),
        "remove-member": ("DELETE", f"{base}/participants/{target}", None),
        "remove-admin": ("DELETE", f"{base}/participants/{target}", None),
        "remove-owner": ("DELETE", f"{base}/participants/{target}", None),
        "set-role": ("PATCH", f"{base}/participants/{team.member}", {"role": "admin"}),
        "rename": ("PATCH", base, {"title": "New"}),
        "mute": ("PUT", f"{base}/settings", {"muted": True}),
    }
    method, path, body = calls[action]
    before = participants(team.rest, team.id, team.owner) if team.owner != caller or action != "remove-owner" else None
    response = team.rest.call(method, path, caller, body)
    assert response.status_code == expected, (action, who, response.body)
    error = json.loads(response.body)
    if expected == 403:
        assert error["Code"] == "Forbidden"
        assert participants(team.rest, team.id, team.owner) == before
    if expected == 404:
        unknown = team.rest.call(method, path.replace(team.id, str(uuid.uuid4())), caller, body)
        assert (unknown.status_code, unknown.body) == (404, response.body)  # nothing to tell them apart


def test_role_and_title_bodies_are_checked(team: Team) -> None:
    path = f"/conversations/{team.id}/participants/{team.member}"
    for body in ({}, {"role": "owner"}, {"role": "Admin"}, {"role": None}):
        assert team.rest.call("PATCH", path, team.owner, body).status_code == 400
    assert (
        team.rest.call(
            "PATCH", f"/conversations/{team.id}/participants/{team.owner}", team.owner, {"role": "member"}
        ).status_code
        == 400
    )
    assert (
        team.rest.call(
            "PATCH", f"/conversations/{team.id}/participants/{new_user()}", team.owner, {"role": "admin"}
        ).status_code
        == 404
    )
    titles: list[dict[str, Any]] = [{}, {"title": ""}, {"title": "   "}, {"title": 5}, {"title": "x" * 301}]
    for body in titles:
        assert team.rest.call("PATCH", f"/conversations/{team.id}", team.owner, body).status_code == 400
    settings: list[dict[str, Any]] = [{}, {"muted": "yes"}, {"muted": None}]
    for body in settings:
        assert team.rest.call("PUT", f"/conversations/{team.id}/settings", team.owner, body).status_code == 400


# --- read state after a reload, and paging -----------------------------------------------------------


def test_get_conversation_carries_members_and_reads(team: Team) -> None:
    rest, sockets = team.rest, team.sockets
    sent = sockets.message(team.tabs[team.owner], team.id, "read me")
    sockets.send(team.tabs[team.admin], json.dumps({"action": "read-messages", "conversationId": team.id}))
    status, body = rest.json("GET", f"/conversations/{team.id}", team.member)
    assert status == 200
    assert {m["userId"]: m["role"] for m in body["members"]} == {
        team.owner: "owner",
        team.admin: "admin",
        team.member: "member",
    }
    assert all(m["joinedAt"].endswith("Z") for m in body["members"])
    reads = {r["userId"]: r for r in body["reads"]}
    assert reads[team.admin]["lastReadMessageId"] == sent["messageId"] and reads[team.admin]["lastReadPosition"] == 1
    assert reads[team.admin]["readAt"].endswith("Z")
    assert reads[team.owner]["lastReadMessageId"] == sent["messageId"]  # own messages count as read
    assert reads[team.member] == {
        "userId": team.member,
        "lastReadMessageId": None,
        "lastReadPosition": None,
        "readAt": None,
    }
    assert "membersNextCursor" not in body


def test_members_page_with_opaque_cursors(rest: Rest, configure: Configure) -> None:
    configure(MAX_PARTICIPANTS="300")
    owner = new_user("owner")
    others = [f"{owner}-{index:03d}" for index in range(249)]
    conversation_id = rest.group(owner, others, "Big")
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        response = rest.call("GET", f"/conversations/{conversation_id}/members{query}", owner)
        assert response.status_code == 200
        page = json.loads(response.body)
        seen += [member["userId"] for member in page]
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert seen == sorted([owner, *others])
    first = rest.call("GET", f"/conversations/{conversation_id}/members?limit=10", owner)
    cursor = first.headers["X-Next-Cursor"]
    assert rest.call("GET", f"/conversations/{conversation_id}/members?cursor={cursor}", others[0]).status_code == 400
    assert rest.call("GET", f"/conversations/{conversation_id}/members?cursor=abc", owner).status_code == 400
    for limit in ("0", "1001", "x"):
        assert rest.call("GET", f"/conversations/{conversation_id}/members?limit={limit}", owner).status_code == 400


# --- concurrency -----------------------------------------------------------------------------------------


def test_concurrent_adds_and_removes_of_one_user_end_consistent(rest: Rest) -> None:
    owner, a, b = new_user("owner"), new_user("a"), new_user("b")
    conversation_id = rest.group(owner, [a, b], "Race")
    dave = new_user("dave")
    errors: list[BaseException] = []

    def race() -> None:
        # A service of its own on a database connection of its own, as another Lambda would have
        # (chalice's test client shares one current_request, so it cannot run requests concurrently).
        database = Database(get_settings())
        service = ChatService(
            get_settings(),
            ChatRepository(database),
            registry=wiring.get_registry,
            pusher=wiring.get_pusher,
            verifier=wiring.get_verifier,
        )
        try:
            for _ in range(5):
                service.add_participants(owner, conversation_id, json.dumps({"userIds": [dave]}))
                service.remove_participant(owner, conversation_id, dave)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            database.close()

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = get_database().run_sql(
        "SELECT (SELECT count(*) FROM participant_table WHERE conversation_id = CAST(:c AS uuid)) AS members,"
        " (SELECT member_count FROM conversation_table WHERE conversation_id = CAST(:c AS uuid)) AS counted,"
        " (SELECT count(*) FROM participant_table WHERE conversation_id = CAST(:c AS uuid) AND role = 'owner')"
        " AS owners",
        c=conversation_id,
    )[0]
    assert rows["members"] == rows["counted"] and rows["members"] in (3, 4) and rows["owners"] == 1
