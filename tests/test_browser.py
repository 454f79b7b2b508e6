"""The web client (``local/web``) in headless Chromium against the real local server: what a person does in it.

Debian's ``chromium`` driven by the Python ``playwright`` package (``executable_path``: Playwright's own browser
download is not used). Skipped, with the reason, when either is missing, except under ``CI`` (an error there):
``.ci/run`` installs Chromium, so CI always runs them. Every wait is on a ``data-testid`` state (the hooks listed
at the top of ``app.js``), never a sleep.

``UPDATE_SCREENSHOTS=1`` also writes the layout test's screenshots to ``docs/`` (the README shows them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import quote

import pytest
import redis

from chalicelib.registry import RedisRegistry
from tests.conftest import new_user
from tests.local_server import ROOT, LocalServer, session_server

if TYPE_CHECKING:
    from playwright.sync_api import APIResponse, Browser, BrowserContext, Locator, Page, Route, WebSocketRoute


def _unavailable(reason: str) -> NoReturn:
    """Skip the module, except in CI (``CI`` set), which installs Chromium and must never pass without it."""
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the browser tests: {reason}")
    pytest.skip(reason, allow_module_level=True)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""
if not CHROMIUM:
    _unavailable("no Chromium on this machine: `apt-get install -y chromium` (Debian's package) runs these tests")
try:
    import playwright.sync_api as sync_api
except ImportError:
    _unavailable("the Python `playwright` package is missing: `.venv/bin/pip install -r requirements-dev.txt`")
expect = sync_api.expect
expect.set_options(timeout=10_000)

# As root in a container: no sandbox; and nothing that phones home or updates itself during a test.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SOME_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RECONNECTING = re.compile(r"^Reconnecting in \d+ s")


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with session_server(tmp_path_factory.mktemp("browser") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Isolated browser profiles (one per person); a script error on any of their pages fails the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(viewport=options.pop("viewport", DESKTOP), **options)
        context.on("page", lambda page: page.on("pageerror", lambda error: errors.append(str(error))))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert errors == [], errors


# -- what a person does ----------------------------------------------------------------------------------------


def sign_in(server: LocalServer, context: BrowserContext, user: str) -> Page:
    """A new tab, signed in as ``user`` and connected."""
    page = context.new_page()
    page.goto(server.rest_url + "/")
    page.get_by_test_id("username-input").fill(user)
    page.get_by_test_id("sign-in-button").click()
    expect(page.get_by_test_id("current-user")).to_have_text(user)
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
    return page


def conversation_item(page: Page, conversation_id: str) -> Locator:
    return page.locator(f'[data-testid="conversation-item"][data-conversation-id="{conversation_id}"]')


def messages(page: Page) -> Locator:
    return page.get_by_test_id("message")


def message(page: Page, content: str) -> Locator:
    """The message whose text is exactly ``content``."""
    return messages(page).filter(has=page.get_by_test_id("message-content").get_by_text(content, exact=True))


def send(page: Page, content: str) -> None:
    page.get_by_test_id("composer-input").fill(content)
    page.get_by_test_id("composer-input").press("Enter")


def contents(page: Page) -> list[str]:
    return page.get_by_test_id("message-content").all_inner_texts()


def open_conversation_id(page: Page) -> str:
    current = page.locator('[data-testid="conversation-item"][aria-current="true"]')
    expect(current).to_have_count(1)
    return str(current.get_attribute("data-conversation-id"))


# -- the server side -------------------------------------------------------------------------------------------


def stored_contents(server: LocalServer, user: str, conversation_id: str) -> list[str]:
    status, body = server.call(
        "GET", f"/conversations/{conversation_id}/messages?limit=100&order=asc", server.token(user)
    )
    assert status == 200, body
    return [item["content"] for item in body]


def send_as(server: LocalServer, user: str, conversation_id: str, *texts: str) -> None:
    """Send from a plain WebSocket client, each message confirmed by its echo before the next."""
    with server.socket(server.token(user)) as ws:
        for text in texts:
            temp = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "action": "send-message",
                        "tempMessageId": temp,
                        "conversationId": conversation_id,
                        "content": text,
                    }
                )
            )
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame.get("type") == "error":
                    pytest.fail(f"sending {text!r} failed: {frame}")
                if frame.get("tempMessageId") == temp:
                    break


def drop_sockets(server: LocalServer, user: str) -> list[str]:
    """Close every socket of ``user`` from the server side, through the local ``@connections`` DELETE (as the app
    or API Gateway would); returns the connection ids that were open."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        registry = RedisRegistry(client, ttl_seconds=660, prefix=server.prefix)
        connection_ids = registry.connections_for([user])[user]
    finally:
        client.close()
    assert connection_ids, f"{user} has no open socket"
    for connection_id in connection_ids:
        status, _headers, body = server.signed_request("DELETE", f"/@connections/{quote(connection_id, safe='')}")
        assert status == 204, body
    return connection_ids


class SocketGate:
    """The browser context's WebSockets pass through Playwright; while ``down``, new ones are refused before they
    open, as with the network down. Open sockets are left alone (the server drops them).

    Not ``context.set_offline``: Chromium's offline emulation can also hold back what arrives on a socket that is
    already open, so a server-side close may never reach the page.
    """

    def __init__(self, context: BrowserContext) -> None:
        self.down = False
        context.route_web_socket(re.compile(r"^wss?://"), self._route)

    def _route(self, socket: WebSocketRoute) -> None:
        if self.down:
            socket.close(code=1011, reason="network down")
        else:
            socket.connect_to_server()  # a transparent proxy: frames and closes pass both ways


def live_connections(server: LocalServer, user: str) -> list[str]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        return RedisRegistry(client, ttl_seconds=660, prefix=server.prefix).connections_for([user])[user]
    finally:
        client.close()


# -- the tests -------------------------------------------------------------------------------------------------


def test_two_people_chat_live_across_reloads_and_tabs(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    alice = sign_in(server, new_context(), alice_user)
    bob_context = new_context()
    bob = sign_in(server, bob_context, bob_user)
    expect(bob.get_by_text("No conversations yet.")).to_be_visible()

    # Alice starts a direct conversation and writes; it is confirmed by the server's echo.
    alice.get_by_test_id("new-conversation-recipients").fill(bob_user)
    alice.get_by_test_id("new-conversation-create").click()
    expect(alice.get_by_test_id("conversation-title")).to_have_text(bob_user)
    conversation_id = open_conversation_id(alice)
    send(alice, "Hi Bob, lunch today?")
    expect(message(alice, "Hi Bob, lunch today?")).to_have_attribute("data-state", "sent")
    expect(message(alice, "Hi Bob, lunch today?")).to_have_attribute("data-message-id", SOME_UUID)

    # Bob, who has never seen this conversation, gets it live with an unread badge.
    bob_item = conversation_item(bob, conversation_id)
    expect(bob_item.get_by_test_id("unread-badge")).to_have_text("1")
    expect(bob_item.get_by_test_id("conversation-preview")).to_have_text("Hi Bob, lunch today?")
    expect(bob_item.get_by_test_id("conversation-name")).to_have_text(alice_user)
    expect(bob).to_have_title("(1) Chat")

    # Opening it clears the badge, and Alice sees that Bob read her message.
    bob_item.click()
    expect(message(bob, "Hi Bob, lunch today?")).to_have_attribute("data-sender", alice_user)
    expect(bob_item.get_by_test_id("unread-badge")).to_have_count(0)
    expect(bob).to_have_title("Chat")
    expect(message(alice, "Hi Bob, lunch today?").get_by_test_id("read-receipt")).to_have_text("Read")

    # Bob answers; Alice, who has the conversation open, sees it live and reads it at once.
    send(bob, "Sure, 12:30?")
    expect(message(alice, "Sure, 12:30?")).to_have_attribute("data-sender", bob_user)
    expect(conversation_item(alice, conversation_id).get_by_test_id("conversation-preview")).to_have_text(
        "Sure, 12:30?"
    )
    expect(conversation_item(alice, conversation_id)).to_have_attribute("data-unread", "")
    expect(message(bob, "Sure, 12:30?").get_by_test_id("read-receipt")).to_have_text("Read")

    # A reload keeps the user (sessionStorage) and the history (from the server).
    alice.reload()
    expect(alice.get_by_test_id("current-user")).to_have_text(alice_user)
    conversation_item(alice, conversation_id).click()
    expect(messages(alice)).to_have_count(2)
    assert contents(alice) == ["Hi Bob, lunch today?", "Sure, 12:30?"]

    # A second tab of Alice's, on the list only: a message Bob sends appears in both tabs, and since the first
    # tab reads it (the conversation is open there), the second tab's badge clears too.
    alice_tab2 = sign_in(server, alice.context, alice_user)
    send(bob, "I'll book a table")
    expect(message(alice, "I'll book a table")).to_be_visible()
    tab2_item = conversation_item(alice_tab2, conversation_id)
    expect(tab2_item.get_by_test_id("conversation-preview")).to_have_text("I'll book a table")
    expect(tab2_item).to_have_attribute("data-unread", "")

    # What the second tab sends shows up, confirmed, in the first tab and at Bob's.
    tab2_item.click()
    expect(messages(alice_tab2)).to_have_count(3)
    send(alice_tab2, "Perfect, see you there")
    for page in (alice_tab2, alice, bob):
        expect(message(page, "Perfect, see you there")).to_have_attribute("data-state", "sent")
    expected = ["Hi Bob, lunch today?", "Sure, 12:30?", "I'll book a table", "Perfect, see you there"]
    for page in (alice, alice_tab2, bob):
        assert contents(page) == expected
    assert stored_contents(server, alice_user, conversation_id) == expected


def test_a_dropped_socket_reconnects_catches_up_and_retries_without_duplicates(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    send_as(server, bob_user, conversation_id, "Are you there?")
    context = new_context()
    network = SocketGate(context)
    alice = sign_in(server, context, alice_user)
    conversation_item(alice, conversation_id).click()
    expect(message(alice, "Are you there?")).to_be_visible()
    status = alice.get_by_test_id("connection-status")

    # The server closes the socket while the network is down (so the reconnects fail until it is back).
    network.down = True
    dropped = drop_sockets(server, alice_user)
    expect(status).to_have_attribute("data-state", "offline")
    expect(status).to_have_attribute("title", RECONNECTING)

    # Bob writes meanwhile; Alice's own message cannot leave and is marked failed, with a Retry.
    send_as(server, bob_user, conversation_id, "Written while you were away")
    send(alice, "Sent while offline")
    failed = message(alice, "Sent while offline")
    expect(failed).to_have_attribute("data-state", "failed")
    expect(failed.get_by_test_id("retry-button")).to_be_visible()
    temp_id = failed.get_attribute("data-temp-id")

    # Back online: connected again, and the missed message is caught up (`after=`), below the ones already there.
    # The person does not wait out the backoff: clicking the status retries now (while a dial is already under
    # way the button is disabled and the click does nothing; that dial gets through).
    network.down = False
    status.click(force=True)
    expect(status).to_have_attribute("data-state", "online")
    expect(message(alice, "Written while you were away")).to_be_visible()
    assert not set(live_connections(server, alice_user)) & set(dropped)

    # Retry sends under the same tempMessageId: confirmed once, stored once.
    failed.get_by_test_id("retry-button").click()
    expect(failed).to_have_attribute("data-state", "sent")
    assert failed.get_attribute("data-temp-id") == temp_id
    assert contents(alice) == ["Are you there?", "Written while you were away", "Sent while offline"]
    assert stored_contents(server, alice_user, conversation_id) == contents(alice)

    # A drop with the network up is repaired by the backoff alone; live messages flow again afterwards.
    dropped = drop_sockets(server, alice_user)
    deadline = time.monotonic() + 10
    while not (set(live_connections(server, alice_user)) - set(dropped)) and time.monotonic() < deadline:
        alice.wait_for_timeout(50)  # not time.sleep: the sync API runs the socket routing only inside its calls
    assert set(live_connections(server, alice_user)) - set(dropped), "no new socket after the drop"
    expect(status).to_have_attribute("data-state", "online")
    send_as(server, bob_user, conversation_id, "Still there?")
    expect(message(alice, "Still there?")).to_be_visible()
    assert len(contents(alice)) == 4


class EchoCutter:
    """Routes a context's WebSockets so the first echo of ``content`` is lost with its socket (the server has
    stored the message; the client never hears so). With ``drop_resends`` the client's later sends of the same
    content never reach the server either, so only the catch-up over REST can tell the client it was stored."""

    def __init__(self, context: BrowserContext, content: str, *, drop_resends: bool = False) -> None:
        self.content = content
        self.drop_resends = drop_resends
        self.echo_cut = False
        self.resends_dropped = 0
        context.route_web_socket(re.compile(r"^wss?://"), self._route)

    def _route(self, page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()

        def from_page(frame: str | bytes) -> None:
            data = json.loads(frame)
            if self.echo_cut and data.get("action") == "send-message" and data.get("content") == self.content:
                self.resends_dropped += 1
                return
            server_side.send(frame)

        def from_server(frame: str | bytes) -> None:
            data = json.loads(frame)
            if not self.echo_cut and data.get("type") == "new-message" and data.get("content") == self.content:
                self.echo_cut = True
                server_side.close()
                page_side.close(code=1011, reason="connection lost")
                return
            page_side.send(frame)

        if self.drop_resends:
            page_side.on_message(from_page)
        server_side.on_message(from_server)


def test_a_send_whose_echo_is_lost_settles_on_reconnect_as_one_message(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    """The worst moment to lose the socket: the server stored the message but its echo never arrived. After the
    reconnect the client sends it again under the same tempMessageId; the server echoes the stored one."""
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    context = new_context()
    cutter = EchoCutter(context, "Echo lost")
    alice = sign_in(server, context, alice_user)
    bob = sign_in(server, new_context(), bob_user)
    conversation_item(alice, conversation_id).click()
    conversation_item(bob, conversation_id).click()
    expect(alice.get_by_test_id("history-status")).to_have_text("No messages yet — say hello.")

    send(alice, "Echo lost")
    expect(message(bob, "Echo lost")).to_be_visible()  # stored and pushed to Bob; Alice's echo was cut
    expect(message(alice, "Echo lost")).to_have_attribute("data-state", "sent")
    assert cutter.echo_cut
    assert contents(alice) == ["Echo lost"]
    send(alice, "After the reconnect")
    expect(message(bob, "After the reconnect")).to_be_visible()
    assert contents(alice) == contents(bob) == ["Echo lost", "After the reconnect"]
    assert stored_contents(server, alice_user, conversation_id) == ["Echo lost", "After the reconnect"]


def test_history_settles_a_send_whose_echo_and_resend_were_both_lost(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    """Only the catch-up after the reconnect can tell the client that its message was stored: the echo is cut
    and the resend never reaches the server. History carries the message's tempMessageId (for its sender), so
    the pending copy becomes the stored one: one message, sent, never shown twice or failed."""
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    context = new_context()
    cutter = EchoCutter(context, "Stored once", drop_resends=True)
    alice = sign_in(server, context, alice_user)
    conversation_item(alice, conversation_id).click()
    expect(alice.get_by_test_id("history-status")).to_have_text("No messages yet — say hello.")

    send(alice, "Stored once")
    expect(alice.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
    expect(messages(alice)).to_have_count(1)
    expect(message(alice, "Stored once")).to_have_attribute("data-state", "sent")
    assert cutter.echo_cut and cutter.resends_dropped == 1
    alice.wait_for_timeout(500)  # a pending copy left behind would now reappear as "sending" or "failed"
    expect(messages(alice)).to_have_count(1)
    assert stored_contents(server, alice_user, conversation_id) == ["Stored once"]


def test_a_list_response_older_than_a_push_does_not_undo_it(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    """Signing in loads the list twice (at sign-in and when the socket opens). Hold the second response, taken
    before Bob's next message, until that message has arrived live: released late, it must not put the older
    latest message back in the list."""
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    send_as(server, bob_user, conversation_id, "Earlier")
    context = new_context()
    held: list[tuple[Route, APIResponse]] = []
    seen = {"lists": 0}

    def hold_second_list(route: Route) -> None:
        seen["lists"] += 1
        if seen["lists"] == 2:
            held.append((route, route.fetch()))  # answered now, delivered later
        else:
            route.continue_()

    context.route(re.compile(r"/conversations$"), hold_second_list)
    alice = sign_in(server, context, alice_user)
    preview = conversation_item(alice, conversation_id).get_by_test_id("conversation-preview")
    expect(preview).to_have_text("Earlier")
    for _ in range(100):  # the socket's open has asked for the list again: wait until that request is held
        if held:
            break
        alice.wait_for_timeout(50)
    assert len(held) == 1, seen

    send_as(server, bob_user, conversation_id, "Later")
    expect(preview).to_have_text("Later")
    route, stale = held[0]
    route.fulfill(response=stale)
    alice.wait_for_timeout(500)  # the stale list is handled now
    expect(preview).to_have_text("Later")
    expect(conversation_item(alice, conversation_id).get_by_test_id("unread-badge")).to_have_text("2")


def test_scrolling_up_loads_older_pages_in_order(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    seeded = [f"message {n:02d}" for n in range(1, 71)]
    send_as(server, bob_user, conversation_id, *seeded)

    alice = sign_in(server, new_context(), alice_user)
    conversation_item(alice, conversation_id).click()
    expect(message(alice, "message 70")).to_be_visible()
    first_page = messages(alice).count()
    assert first_page < len(seeded), "the newest page alone should not hold the whole history"
    assert contents(alice) == seeded[-first_page:]

    scroller = alice.get_by_test_id("message-scroller")
    history = alice.get_by_test_id("history-status")
    for _ in range(10):  # each scroll to the top asks for one older page
        if history.inner_text() == "Beginning of the conversation":
            break
        shown = messages(alice).count()
        scroller.evaluate("element => { element.scrollTop = 0; }")
        expect(messages(alice)).not_to_have_count(shown)
    expect(history).to_have_text("Beginning of the conversation")
    assert contents(alice) == seeded
    ids = [item.get_attribute("data-message-id") for item in messages(alice).all()]
    assert len(set(ids)) == len(seeded)
    # The view kept its place while pages were added above it: not thrown back to the bottom.
    assert scroller.evaluate("element => element.scrollTop") < scroller.evaluate("element => element.scrollHeight / 2")


@pytest.mark.parametrize(
    ("viewport", "screenshot", "people"),
    [
        (DESKTOP, "screenshot.png", ("maya", "sam", "lee")),
        (PHONE, "screenshot-mobile.png", ("nora", "tom", "ravi")),
    ],
    ids=["laptop", "phone"],
)
def test_layout_fits_a_laptop_and_a_phone(
    server: LocalServer,
    new_context: Callable[..., BrowserContext],
    viewport: dict[str, int],
    screenshot: str,
    people: tuple[str, str, str],
    tmp_path: Path,
) -> None:
    # Readable names (they are in the README's screenshots): each session has a database of its own.
    me, friend, organiser = people
    status, body = server.call(
        "POST",
        "/conversation",
        server.token(organiser),
        {"recipientIdArr": [me, friend], "isGroup": True, "title": "Weekend trip"},
    )
    assert status == 200, body
    group = str(body["conversationId"])
    direct = server.direct(server.token(friend), me)
    send_as(server, organiser, group, "Train tickets are booked for Saturday 9:10")
    send_as(server, friend, direct, "Did you see the design review notes?")
    send_as(server, me, direct, "Yes, reading them now")
    send_as(server, friend, direct, "The notes: https://example.com/design-review/2026/sidebar-and-mobile-layout-notes")
    send_as(server, me, direct, "Agreed on all of it. Let's ship it on Thursday after the demo.")
    send_as(server, friend, direct, "Great, I'll tell the team")

    friend_page = sign_in(server, new_context(), friend)
    conversation_item(friend_page, direct).click()
    expect(message(friend_page, "Great, I'll tell the team")).to_be_visible()  # open: it will read what comes
    page = sign_in(server, new_context(viewport=viewport), me)
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    expect(conversation_item(page, group).get_by_test_id("unread-badge")).to_have_text("1")
    phone = viewport["width"] < 600
    if phone:  # one pane at a time
        expect(page.get_by_test_id("composer-input")).to_be_hidden()
    conversation_item(page, direct).click()
    expect(message(page, "Great, I'll tell the team")).to_be_visible()
    page.get_by_test_id("composer-input").fill("See you at the demo")
    page.get_by_test_id("send-button").click()
    expect(message(page, "See you at the demo").get_by_test_id("read-receipt")).to_have_text("Read")

    # Nothing sticks out sideways, and every message bubble is inside the window.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    for bubble in page.get_by_test_id("message-content").all():
        box = bubble.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    if phone:
        expect(page.get_by_test_id("conversation-list")).to_be_hidden()
        page.get_by_test_id("back-button").click()
        expect(page.get_by_test_id("conversation-list")).to_be_visible()
        conversation_item(page, direct).click()
        expect(message(page, "See you at the demo")).to_be_visible()

    page.get_by_test_id("composer-input").click()
    page.screenshot(path=tmp_path / screenshot)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / screenshot, ROOT / "docs" / screenshot)


# -- groups: members, roles, titles, leaving, and what survives a reload ---------------------------------------


def group_as(server: LocalServer, owner: str, title: str, *others: str) -> str:
    """A group created over REST by ``owner``, with ``others`` in it."""
    status, body = server.call(
        "POST", "/conversation", server.token(owner), {"recipientIdArr": list(others), "isGroup": True, "title": title}
    )
    assert status == 200, body
    return str(body["conversationId"])


def socket_frames(context: BrowserContext, event: Literal["framereceived", "framesent"]) -> list[dict[str, Any]]:
    """Every frame the context's pages receive from the server (``framereceived``) or send to it
    (``framesent``), as JSON, filled in as they pass."""
    frames: list[dict[str, Any]] = []

    def on_socket(socket: sync_api.WebSocket) -> None:
        socket.on(event, lambda payload: frames.append(json.loads(payload)))

    context.on("page", lambda page: page.on("websocket", on_socket))
    return frames


def members_panel(page: Page) -> Locator:
    """The open conversation's members panel, opened if it is closed."""
    panel = page.get_by_test_id("members-panel")
    button = page.get_by_test_id("members-button")
    expect(button).to_be_visible()
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    expect(panel).to_be_visible()
    return panel


def member_row(page: Page, user: str) -> Locator:
    return page.locator(f'[data-testid="member"][data-user-id="{user}"]')


def management_controls(panel: Locator) -> dict[str, int]:
    """How many of each management control the panel shows (visible ones only)."""
    names = [
        "rename-input",
        "add-members-input",
        "make-admin-button",
        "make-member-button",
        "remove-member-button",
        "mute-toggle",
        "leave-button",
    ]
    return {name: panel.get_by_test_id(name).filter(visible=True).count() for name in names}


def test_a_new_group_is_listed_at_once_and_offers_each_member_what_their_role_allows(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user, carol_user = new_user("alice"), new_user("bob"), new_user("carol")
    alice = sign_in(server, new_context(), alice_user)
    bob = sign_in(server, new_context(), bob_user)
    carol = sign_in(server, new_context(), carol_user)
    for page in (bob, carol):
        expect(page.get_by_text("No conversations yet.")).to_be_visible()

    # Alice creates the group in the form; it opens for her with its title in the header.
    alice.get_by_test_id("new-conversation-recipients").fill(f"{bob_user}, {carol_user}")
    alice.get_by_test_id("new-conversation-group").check()
    alice.get_by_test_id("new-conversation-title").fill("Book club")
    alice.get_by_test_id("new-conversation-create").click()
    expect(alice.get_by_test_id("conversation-title")).to_have_text("Book club")
    group = open_conversation_id(alice)
    expect(alice).to_have_url(re.compile(f"#/c/{group}$"))

    # Bob and Carol see it in their lists at once: no reload, no message yet.
    for page in (bob, carol):
        item = conversation_item(page, group)
        expect(item.get_by_test_id("conversation-name")).to_have_text("Book club")
        expect(item.get_by_test_id("conversation-preview")).to_have_text("No messages yet")
        expect(item.get_by_test_id("unread-badge")).to_have_count(0)
    assert messages(bob).count() == 0 and stored_contents(server, alice_user, group) == []

    # The owner is offered everything: rename, add, make admin and remove for each of the others, mute, leave.
    panel = members_panel(alice)
    expect(panel.get_by_test_id("member")).to_have_count(3)
    expect(member_row(alice, alice_user).get_by_test_id("member-role")).to_have_text("Owner")
    expect(member_row(alice, bob_user).get_by_test_id("member-role")).to_have_text("Member")
    assert management_controls(panel) == {
        "rename-input": 1,
        "add-members-input": 1,
        "make-admin-button": 2,
        "make-member-button": 0,
        "remove-member-button": 2,
        "mute-toggle": 1,
        "leave-button": 1,
    }
    expect(member_row(alice, alice_user).get_by_role("button")).to_have_count(0)  # nothing to do to oneself

    # A member is offered only mute and leave.
    conversation_item(bob, group).click()
    bob_panel = members_panel(bob)
    expect(bob_panel.get_by_test_id("member")).to_have_count(3)
    assert management_controls(bob_panel) == {
        "rename-input": 0,
        "add-members-input": 0,
        "make-admin-button": 0,
        "make-member-button": 0,
        "remove-member-button": 0,
        "mute-toggle": 1,
        "leave-button": 1,
    }

    # Made admin, Bob is offered (live) rename, add, and remove for Carol but not for the owner; no roles.
    member_row(alice, bob_user).get_by_test_id("make-admin-button").click()
    expect(member_row(alice, bob_user).get_by_test_id("member-role")).to_have_text("Admin")
    expect(member_row(bob, bob_user).get_by_test_id("member-role")).to_have_text("Admin")
    expect(bob_panel.get_by_test_id("rename-input")).to_be_visible()
    assert management_controls(bob_panel) == {
        "rename-input": 1,
        "add-members-input": 1,
        "make-admin-button": 0,
        "make-member-button": 0,
        "remove-member-button": 1,
        "mute-toggle": 1,
        "leave-button": 1,
    }
    expect(member_row(bob, carol_user).get_by_test_id("remove-member-button")).to_be_visible()
    expect(member_row(bob, alice_user).get_by_role("button")).to_have_count(0)

    # The admin renames it: everyone's list and open header follow live.
    bob_panel.get_by_test_id("rename-input").fill("Book club (May)")
    bob_panel.get_by_test_id("rename-button").click()
    for page in (alice, bob, carol):
        expect(conversation_item(page, group).get_by_test_id("conversation-name")).to_have_text("Book club (May)")
    for page in (alice, bob):
        expect(page.get_by_test_id("conversation-title")).to_have_text("Book club (May)")

    # Back to member: the admin controls go away live.
    member_row(alice, bob_user).get_by_test_id("make-member-button").click()
    expect(member_row(bob, bob_user).get_by_test_id("member-role")).to_have_text("Member")
    expect(bob_panel.get_by_test_id("rename-input")).to_be_hidden()
    expect(bob_panel.get_by_test_id("remove-member-button")).to_have_count(0)

    # Mute is the member's own setting: it shows in their list, and only theirs, and survives a reload.
    bob_panel.get_by_test_id("mute-toggle").check()
    expect(conversation_item(bob, group).get_by_test_id("muted-icon")).to_be_visible()
    bob.reload()
    expect(conversation_item(bob, group).get_by_test_id("muted-icon")).to_be_visible()
    expect(members_panel(bob).get_by_test_id("mute-toggle")).to_be_checked()
    expect(conversation_item(alice, group).get_by_test_id("muted-icon")).to_have_count(0)


def test_an_added_member_sees_the_history_and_one_who_leaves_stops_receiving(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user, carol_user, dave_user = (new_user(name) for name in ("alice", "bob", "carol", "dave"))
    group = group_as(server, alice_user, "Trip planning", bob_user, carol_user)
    direct = server.direct(server.token(alice_user), bob_user)
    alice = sign_in(server, new_context(), alice_user)
    bob_context = new_context()
    bob_frames = socket_frames(bob_context, "framereceived")
    bob = sign_in(server, bob_context, bob_user)
    bob_tab2 = sign_in(server, bob_context, bob_user)  # on the list only: it learns of the leave by push
    carol = sign_in(server, new_context(), carol_user)
    dave = sign_in(server, new_context(), dave_user)
    conversation_item(alice, group).click()
    send(alice, "Flights are booked")
    expect(message(alice, "Flights are booked")).to_have_attribute("data-state", "sent")
    expect(dave.get_by_text("No conversations yet.")).to_be_visible()

    # Alice adds Dave from the members panel: it appears in Dave's list live, with the history before he joined.
    panel = members_panel(alice)
    panel.get_by_test_id("add-members-input").fill(dave_user)
    panel.get_by_test_id("add-members-button").click()
    expect(member_row(alice, dave_user)).to_be_visible()
    expect(panel.get_by_test_id("member")).to_have_count(4)
    dave_item = conversation_item(dave, group)
    expect(dave_item.get_by_test_id("conversation-name")).to_have_text("Trip planning")
    expect(dave_item.get_by_test_id("conversation-preview")).to_have_text(f"{alice_user}: Flights are booked")
    dave_item.click()
    expect(message(dave, "Flights are booked")).to_have_attribute("data-sender", alice_user)
    send(alice, "Welcome, Dave")
    expect(message(dave, "Welcome, Dave")).to_be_visible()

    # Bob, with the group open, leaves it: it closes and leaves his list; the others see him gone.
    conversation_item(bob, group).click()
    expect(message(bob, "Welcome, Dave")).to_be_visible()
    expect(conversation_item(bob_tab2, group)).to_be_visible()
    members_panel(bob).get_by_test_id("leave-button").click()
    for page in (bob, bob_tab2):
        expect(conversation_item(page, group)).to_have_count(0)
    expect(bob.get_by_test_id("message-list")).to_be_hidden()
    expect(bob).not_to_have_url(re.compile("#/c/"))
    expect(member_row(alice, bob_user)).to_have_count(0)
    expect(panel.get_by_test_id("member")).to_have_count(3)

    # Alice's next message reaches Carol and Dave, never Bob: by the time a later direct message to Bob has
    # reached his page, nothing of the group's has (not in his list, not in any frame his sockets got).
    send(alice, "Bob has left us")
    for page in (carol, dave):
        expect(conversation_item(page, group).get_by_test_id("conversation-preview")).to_have_text(
            f"{alice_user}: Bob has left us"
        )
    send_as(server, alice_user, direct, "Are you still coming?")
    expect(conversation_item(bob, direct).get_by_test_id("conversation-preview")).to_have_text("Are you still coming?")
    assert [frame for frame in bob_frames if frame.get("content") == "Bob has left us"] == []
    assert any(frame.get("content") == "Are you still coming?" for frame in bob_frames)
    for page in (bob, bob_tab2):
        expect(conversation_item(page, group)).to_have_count(0)
    bob.reload()
    expect(conversation_item(bob, direct)).to_be_visible()
    expect(conversation_item(bob, group)).to_have_count(0)
    status, _ = server.call("GET", f"/conversations/{group}/messages", server.token(bob_user))
    assert status == 404


def test_a_member_removed_while_looking_at_the_group_is_taken_out_of_it(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user, carol_user = new_user("alice"), new_user("bob"), new_user("carol")
    group = group_as(server, alice_user, "Choir", bob_user, carol_user)
    alice = sign_in(server, new_context(), alice_user)
    carol = sign_in(server, new_context(), carol_user)
    conversation_item(carol, group).click()
    expect(carol.get_by_test_id("conversation-title")).to_have_text("Choir")
    conversation_item(alice, group).click()

    members_panel(alice)
    member_row(alice, carol_user).get_by_test_id("remove-member-button").click()
    expect(member_row(alice, carol_user)).to_have_count(0)
    expect(conversation_item(carol, group)).to_have_count(0)
    expect(carol.get_by_test_id("composer-input")).to_be_hidden()
    expect(carol.get_by_test_id("error-toast")).to_have_text(f"{alice_user} removed you from “Choir”.")
    expect(carol).not_to_have_url(re.compile("#/c/"))

    # Her old link no longer opens it.
    carol.goto(f"{server.rest_url}/#/c/{group}")
    expect(carol.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
    expect(carol.get_by_test_id("error-toast")).to_have_text("That conversation is not available.")
    expect(carol.get_by_test_id("composer-input")).to_be_hidden()
    expect(conversation_item(carol, group)).to_have_count(0)


def test_a_reload_keeps_the_open_conversation_and_its_read_receipts(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user, carol_user = new_user("alice"), new_user("bob"), new_user("carol")
    group = group_as(server, alice_user, "Flat share", bob_user, carol_user)
    send_as(server, carol_user, group, "Who buys milk?")
    alice = sign_in(server, new_context(), alice_user)
    bob = sign_in(server, new_context(), bob_user)
    conversation_item(alice, group).click()
    send(alice, "I will")
    expect(message(alice, "I will")).to_have_attribute("data-state", "sent")

    # Bob reads it (opening the group); Carol has not read Alice's message yet.
    conversation_item(bob, group).click()
    receipt = message(alice, "I will").get_by_test_id("read-receipt")
    expect(receipt).to_have_text(f"Read by {bob_user}")

    # A reload keeps the conversation open (its URL) and the receipts (from the conversation's `reads`).
    expect(alice).to_have_url(re.compile(f"#/c/{group}$"))
    alice.reload()
    expect(alice.get_by_test_id("conversation-title")).to_have_text("Flat share")
    expect(conversation_item(alice, group)).to_have_attribute("aria-current", "true")
    assert contents(alice) == ["Who buys milk?", "I will"]
    expect(receipt).to_have_text(f"Read by {bob_user}")
    expect(message(alice, "Who buys milk?").get_by_test_id("read-receipt")).to_have_count(0)  # not her message

    # Carol reads it later: live as before, and again after the next reload.
    carol = sign_in(server, new_context(), carol_user)
    conversation_item(carol, group).click()
    both = re.compile(f"^Read by ({bob_user}, {carol_user}|{carol_user}, {bob_user})$")
    expect(receipt).to_have_text(both)
    alice.reload()
    expect(alice.get_by_test_id("conversation-title")).to_have_text("Flat share")
    expect(receipt).to_have_text(both)
    expect(messages(alice).get_by_test_id("read-receipt")).to_have_count(1)

    # Back and forward move between the list and the conversation.
    alice.go_back()
    expect(alice.get_by_test_id("composer-input")).to_be_hidden()
    alice.go_forward()
    expect(receipt).to_have_text(both)

    # A direct conversation's receipt ("Read") survives a reload too.
    direct = server.direct(server.token(bob_user), alice_user)
    conversation_item(alice, direct).click()
    send(alice, "Rent is due")
    conversation_item(bob, direct).click()
    expect(message(alice, "Rent is due").get_by_test_id("read-receipt")).to_have_text("Read")
    alice.reload()
    expect(message(alice, "Rent is due").get_by_test_id("read-receipt")).to_have_text("Read")


# -- live signals: typing and presence (issue 15) ---------------------------------------------------------------


def typing_sent(frames: list[dict[str, Any]]) -> list[bool]:
    return [bool(frame["typing"]) for frame in frames if frame.get("action") == "typing"]


def presence_dot(scope: Page | Locator, user: str) -> Locator:
    return scope.locator(f'[data-testid="presence-dot"][data-user-id="{user}"]')


def test_bob_sees_alice_typing_and_then_her_message(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    direct = server.direct(server.token(alice_user), bob_user)
    bob = sign_in(server, new_context(), bob_user)
    conversation_item(bob, direct).click()
    alice_context = new_context()
    alice_frames = socket_frames(alice_context, "framesent")
    alice = sign_in(server, alice_context, alice_user)
    conversation_item(alice, direct).click()
    indicator = bob.get_by_test_id("typing-indicator")
    expect(indicator).to_be_hidden()

    # A burst of keystrokes is one `typing: true` (at most one per 2 s), shown under bob's conversation.
    composer = alice.get_by_test_id("composer-input")
    started = time.monotonic()
    composer.press_sequentially("hello bob")
    expect(indicator).to_have_text(f"{alice_user} is typing…")
    if time.monotonic() - started < 2:
        assert typing_sent(alice_frames) == [True]

    # Her message ends it at once (long before the frame's expiresInMs), and the message is there.
    composer.press("Enter")
    expect(message(bob, "hello bob")).to_be_visible()
    expect(indicator).to_be_hidden(timeout=1500)

    # Typing again shows at once; emptying the composer sends `typing: false`, which hides it.
    composer.press_sequentially("one more")
    expect(indicator).to_have_text(f"{alice_user} is typing…")
    composer.fill("")
    expect(indicator).to_be_hidden(timeout=1500)
    assert typing_sent(alice_frames)[-1] is False
    assert contents(bob) == ["hello bob"]


def test_bob_sees_alice_go_offline_when_her_page_closes_and_online_when_it_reopens(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    direct = server.direct(server.token(alice_user), bob_user)
    alice_context = new_context()
    alice = sign_in(server, alice_context, alice_user)

    # Bob's list and members panel load it from GET /presence: alice is online.
    bob = sign_in(server, new_context(), bob_user)
    item_dot = presence_dot(conversation_item(bob, direct), alice_user)
    expect(item_dot).to_have_attribute("data-online", "true")
    conversation_item(bob, direct).click()
    panel_dot = presence_dot(member_row(bob, alice_user), alice_user)
    members_panel(bob)
    expect(panel_dot).to_have_attribute("data-online", "true")
    expect(presence_dot(bob, bob_user)).to_have_count(0)  # nobody is shown a dot of their own

    # Her only page closes: its $disconnect pushes `presence` offline to bob, both dots follow.
    alice.close()
    expect(item_dot).to_have_attribute("data-online", "false")
    expect(panel_dot).to_have_attribute("data-online", "false")
    expect(item_dot).to_have_attribute("title", re.compile(rf"^{alice_user} is offline"))

    # She opens it again: her first connection pushes `presence` online.
    alice = sign_in(server, alice_context, alice_user)
    expect(item_dot).to_have_attribute("data-online", "true")
    expect(panel_dot).to_have_attribute("data-online", "true")
    expect(item_dot).to_have_attribute("title", f"{alice_user} is online")


# -- messages that live: edit, delete, react, reply, mention, and catching up on them (CONTRACT section 7) -------


def stored_messages(server: LocalServer, user: str, conversation_id: str) -> list[dict[str, Any]]:
    status, body = server.call(
        "GET", f"/conversations/{conversation_id}/messages?limit=100&order=asc", server.token(user)
    )
    assert status == 200, body
    return list(body)


def message_id_of(server: LocalServer, user: str, conversation_id: str, content: str) -> str:
    (found,) = [
        item["messageId"] for item in stored_messages(server, user, conversation_id) if item["content"] == content
    ]
    return str(found)


def by_id(page: Page, message_id: str) -> Locator:
    return page.locator(f'[data-testid="message"][data-message-id="{message_id}"]')


def open_menu(item: Locator) -> Locator:
    """The message's actions menu, opened from its ⋯ button (shown on hover)."""
    item.hover()
    button = item.get_by_test_id("message-menu-button")
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    menu = item.get_by_test_id("message-menu")
    expect(menu).to_be_visible()
    return menu


def menu_actions(menu: Locator) -> list[str]:
    """The actions a menu offers, by test id (the quick emoji counted as one)."""
    names = ["react-option", "reply-button", "edit-button", "delete-button"]
    return [name for name in names if menu.get_by_test_id(name).count() > 0]


def reaction(item: Locator, emoji: str) -> Locator:
    return item.locator(f'[data-testid="reaction"][data-emoji="{emoji}"]')


def change_as(server: LocalServer, user: str, *frames: dict[str, Any]) -> None:
    """Send / edit / delete / react from one plain WebSocket client, each frame confirmed by its push before the
    next (a send by the echo of its tempMessageId)."""
    answers = {
        "send-message": "new-message",
        "edit-message": "message-updated",
        "delete-message": "message-deleted",
        "react": "reactions-updated",
    }
    with server.socket(server.token(user)) as ws:
        for change in frames:
            key = "tempMessageId" if change["action"] == "send-message" else "messageId"
            ws.send(json.dumps(change))
            while True:
                pushed = json.loads(ws.recv(timeout=10))
                if pushed.get("type") == "error":
                    pytest.fail(f"{change} failed: {pushed}")
                if pushed.get("type") == answers[change["action"]] and pushed.get(key) == change[key]:
                    break


class RecordingGate(SocketGate):
    """A ``SocketGate`` that keeps each socket's page side, so a test can hand the page a frame of its own."""

    def __init__(self, context: BrowserContext) -> None:
        self.page_sides: list[WebSocketRoute] = []
        super().__init__(context)

    def _route(self, socket: WebSocketRoute) -> None:
        self.page_sides.append(socket)
        super()._route(socket)


def test_two_people_edit_delete_react_reply_and_mention_live(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    alice_user, bob_user = new_user("alice"), new_user("bob")
    group = group_as(server, alice_user, "Dinner", bob_user, new_user("carol"))
    direct = server.direct(server.token(alice_user), bob_user)
    alice = sign_in(server, new_context(), alice_user)
    bob = sign_in(server, new_context(), bob_user)
    for page in (alice, bob):
        conversation_item(page, group).click()
        expect(page.get_by_test_id("conversation-title")).to_have_text("Dinner")
    send(bob, "Dinner at 7?")
    expect(message(bob, "Dinner at 7?")).to_have_attribute("data-state", "sent")
    question_id = message_id_of(server, bob_user, group, "Dinner at 7?")
    alice_question, bob_question = by_id(alice, question_id), by_id(bob, question_id)
    expect(alice_question).to_be_visible()

    # Each menu offers what the viewer may do: the owner may delete Bob's message but not edit it; Bob both.
    assert menu_actions(open_menu(alice_question)) == ["react-option", "reply-button", "delete-button"]
    assert menu_actions(open_menu(bob_question)) == ["react-option", "reply-button", "edit-button", "delete-button"]
    bob.keyboard.press("Escape")
    expect(bob_question.get_by_test_id("message-menu")).to_have_count(0)

    # Alice reacts: both see the count, only hers is highlighted. Bob adds his and takes it back with the chip.
    open_menu(alice_question).locator('[data-testid="react-option"][data-emoji="👍"]').click()
    for item in (alice_question, bob_question):
        expect(reaction(item, "👍")).to_have_attribute("data-count", "1")
    expect(reaction(alice_question, "👍")).to_have_attribute("aria-pressed", "true")
    expect(reaction(bob_question, "👍")).to_have_attribute("aria-pressed", "false")
    reaction(bob_question, "👍").click()
    for item in (alice_question, bob_question):
        expect(reaction(item, "👍")).to_have_attribute("data-count", "2")
    expect(reaction(bob_question, "👍")).to_have_attribute("aria-pressed", "true")
    reaction(bob_question, "👍").click()
    for item in (alice_question, bob_question):
        expect(reaction(item, "👍")).to_have_attribute("data-count", "1")
    expect(reaction(bob_question, "👍")).to_have_attribute("aria-pressed", "false")

    # Alice replies: the quote shows above her reply at both; clicking it brings the original into view.
    open_menu(alice_question).get_by_test_id("reply-button").click()
    expect(alice.get_by_test_id("composer-context")).to_have_attribute("data-mode", "reply")
    send(alice, "Yes, 7 works")
    expect(alice.get_by_test_id("composer-context")).to_be_hidden()
    for page in (alice, bob):
        quote = message(page, "Yes, 7 works").get_by_test_id("reply-quote")
        expect(quote).to_have_attribute("data-reply-to", question_id)
        expect(quote.get_by_test_id("reply-quote-content")).to_have_text("Dinner at 7?")
    expect(message(alice, "Yes, 7 works").get_by_test_id("reply-quote-sender")).to_have_text(bob_user)
    expect(message(bob, "Yes, 7 works").get_by_test_id("reply-quote-sender")).to_have_text("You")
    message(bob, "Yes, 7 works").get_by_test_id("reply-quote").click()
    expect(bob_question).to_have_class(re.compile(r"\bflash\b"))
    expect(bob_question).to_be_in_viewport()

    # Bob edits his question in the composer: the new text, marked edited, everywhere, and in the quote too.
    open_menu(bob_question).get_by_test_id("edit-button").click()
    expect(bob.get_by_test_id("composer-context")).to_have_attribute("data-mode", "edit")
    expect(bob.get_by_test_id("composer-input")).to_have_value("Dinner at 7?")
    send(bob, "Dinner at 8?")
    # Typing the new text signalled "typing…"; the edit ends it at once (no new message does), not at its expiry.
    expect(alice.get_by_test_id("typing-indicator")).to_be_hidden(timeout=3000)
    for page, item in ((alice, alice_question), (bob, bob_question)):
        expect(item.get_by_test_id("message-content")).to_have_text("Dinner at 8?")
        expect(item.get_by_test_id("message-edited")).to_be_visible()
        expect(message(page, "Yes, 7 works").get_by_test_id("reply-quote-content")).to_have_text("Dinner at 8?")
    assert contents(bob) == ["Dinner at 8?", "Yes, 7 works"]

    # A reload shows the same from REST, Alice's own reaction still highlighted (myReactions).
    alice.reload()
    expect(alice_question.get_by_test_id("message-content")).to_have_text("Dinner at 8?")
    expect(alice_question.get_by_test_id("message-edited")).to_be_visible()
    expect(reaction(alice_question, "👍")).to_have_attribute("aria-pressed", "true")
    expect(message(alice, "Yes, 7 works").get_by_test_id("reply-quote-content")).to_have_text("Dinner at 8?")

    # The owner deletes Bob's question (confirming first): a tombstone at both, its reply says so.
    open_menu(alice_question).get_by_test_id("delete-button").click()
    alice_question.get_by_test_id("delete-confirm-button").click()
    for page, item in ((alice, alice_question), (bob, bob_question)):
        expect(item).to_have_attribute("data-deleted", "true")
        expect(item.get_by_test_id("message-deleted")).to_have_text("Message deleted")
        expect(item.get_by_test_id("message-content")).to_have_count(0)
        expect(item.get_by_test_id("reaction")).to_have_count(0)
        expect(item.get_by_test_id("message-menu-button")).to_have_count(0)  # nothing more to do to it
        expect(message(page, "Yes, 7 works").get_by_test_id("reply-quote-content")).to_have_text("Message deleted")
    # Bob, a member, may not delete Alice's reply; he deletes his own latest message, and both lists say so.
    assert menu_actions(open_menu(message(bob, "Yes, 7 works"))) == ["react-option", "reply-button"]
    bob.keyboard.press("Escape")
    send(bob, "Oops, wrong group")
    expect(message(alice, "Oops, wrong group")).to_be_visible()
    oops = message(bob, "Oops, wrong group")
    open_menu(oops).get_by_test_id("delete-button").click()
    oops.get_by_test_id("delete-confirm-button").click()
    for page in (alice, bob):
        expect(messages(page).filter(has=page.get_by_test_id("message-deleted"))).to_have_count(2)
        expect(conversation_item(page, group).get_by_test_id("conversation-preview")).to_have_text("Message deleted")
    stored = stored_messages(server, alice_user, group)
    assert [(item["content"], bool(item["deletedAt"])) for item in stored] == [
        ("", True),
        ("Yes, 7 works", False),
        ("", True),
    ]

    # A mention of Bob while he looks elsewhere: highlighted in the message, marked in his list until he reads it.
    conversation_item(bob, direct).click()
    expect(bob.get_by_test_id("conversation-title")).to_have_text(alice_user)
    send(alice, f"@{bob_user} bring dessert, and @nobody-else too")
    mentioned = message(alice, f"@{bob_user} bring dessert, and @nobody-else too")
    expect(mentioned.get_by_test_id("mention")).to_have_count(1)  # only members are mentions
    expect(mentioned.get_by_test_id("mention")).to_have_text(f"@{bob_user}")
    bob_item = conversation_item(bob, group)
    expect(bob_item.get_by_test_id("mention-badge")).to_be_visible()
    expect(bob_item.get_by_test_id("unread-badge")).to_have_text("1")
    expect(conversation_item(alice, group).get_by_test_id("mention-badge")).to_have_count(0)
    bob.reload()  # the list's unreadMentionCount says so too
    expect(bob_item.get_by_test_id("mention-badge")).to_be_visible()
    bob_item.click()
    bob_mentioned = messages(bob).filter(has=bob.get_by_test_id("mention"))
    expect(bob_mentioned.get_by_test_id("mention")).to_have_attribute("data-user-id", bob_user)
    expect(bob_mentioned).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(bob_item.get_by_test_id("mention-badge")).to_have_count(0)
    assert stored_messages(server, bob_user, group)[-1]["mentions"] == [bob_user]


def test_a_reconnect_catches_up_edits_deletions_and_reactions_through_the_change_feed(
    server: LocalServer, new_context: Callable[..., BrowserContext]
) -> None:
    """While Alice is offline Bob edits and deletes older messages, reacts, and sends more than a page of new
    ones: after the reconnect her client asks the change feed after the highest changeSeq it had seen, page by
    page, and ends where the server is."""
    alice_user, bob_user = new_user("alice"), new_user("bob")
    conversation_id = server.direct(server.token(bob_user), alice_user)
    send_as(server, bob_user, conversation_id, "Plan A", "Plan B", "Plan C")
    context = new_context()
    network = RecordingGate(context)
    feed_requests: list[str] = []
    context.on("request", lambda request: feed_requests.append(request.url) if "/changes?" in request.url else None)
    alice = sign_in(server, context, alice_user)
    conversation_item(alice, conversation_id).click()
    expect(messages(alice)).to_have_count(3)
    seen_up_to = max(item["changeSeq"] for item in stored_messages(server, alice_user, conversation_id))
    ids = {text: message_id_of(server, bob_user, conversation_id, text) for text in ("Plan A", "Plan B", "Plan C")}
    status = alice.get_by_test_id("connection-status")

    network.down = True
    drop_sockets(server, alice_user)
    expect(status).to_have_attribute("data-state", "offline")
    missed = [f"Missed {n:03d}" for n in range(1, 102)]
    base = {"conversationId": conversation_id}
    change_as(
        server,
        bob_user,
        *({"action": "send-message", **base, "tempMessageId": uuid.uuid4().hex, "content": text} for text in missed),
        {"action": "edit-message", **base, "messageId": ids["Plan A"], "content": "Plan A, revised"},
        {"action": "delete-message", **base, "messageId": ids["Plan B"]},
        {"action": "react", **base, "messageId": ids["Plan C"], "emoji": "🎉", "add": True},
    )
    expect(by_id(alice, ids["Plan A"]).get_by_test_id("message-content")).to_have_text("Plan A")  # not yet
    assert feed_requests == []

    network.down = False
    status.click(force=True)
    expect(status).to_have_attribute("data-state", "online")
    expect(by_id(alice, ids["Plan A"]).get_by_test_id("message-content")).to_have_text("Plan A, revised")
    expect(by_id(alice, ids["Plan A"]).get_by_test_id("message-edited")).to_be_visible()
    expect(by_id(alice, ids["Plan B"])).to_have_attribute("data-deleted", "true")
    expect(reaction(by_id(alice, ids["Plan C"]), "🎉")).to_have_attribute("data-count", "1")
    expect(reaction(by_id(alice, ids["Plan C"]), "🎉")).to_have_attribute("aria-pressed", "false")
    expect(message(alice, "Missed 101")).to_be_visible()
    assert contents(alice) == ["Plan A, revised", "Plan C", *missed]
    expect(conversation_item(alice, conversation_id).get_by_test_id("conversation-preview")).to_have_text("Missed 101")

    # Two pages of the feed, the first after what she had seen; no history page by messageId.
    afters = [int(re.search(r"[?&]after=(\d+)", url).group(1)) for url in feed_requests]  # type: ignore[union-attr]
    assert len(afters) == 2 and afters[0] == seen_up_to, feed_requests
    assert afters[1] > afters[0]
    status_code, feed = server.call(
        "GET", f"/conversations/{conversation_id}/changes?after=0&limit=500", server.token(alice_user)
    )
    assert status_code == 200, feed
    in_order = sorted(feed["changes"], key=lambda item: int(item["position"]))
    shown = [item.get_attribute("data-message-id") for item in messages(alice).all()]
    assert shown == [item["messageId"] for item in in_order]  # every message once, in the server's order

    # Live again: the next edit arrives by push and keeps the reaction counts it does not carry.
    change_as(
        server,
        bob_user,
        {"action": "edit-message", **base, "messageId": ids["Plan C"], "content": "Plan C, final"},
    )
    expect(by_id(alice, ids["Plan C"]).get_by_test_id("message-content")).to_have_text("Plan C, final")
    expect(reaction(by_id(alice, ids["Plan C"]), "🎉")).to_have_attribute("data-count", "1")

    # An older version handed to the page afterwards (a late or replayed push) changes nothing: versions only grow.
    stale = {
        "type": "message-updated",
        "conversationId": conversation_id,
        "messageId": ids["Plan C"],
        "senderId": bob_user,
        "content": "Plan C, stale",
        "sentAt": "2026-01-01T00:00:00.000Z",  # not looked at: the version decides
        "editedAt": None,
        "position": None,
        "version": 1,
        "changeSeq": 1,
    }
    network.page_sides[-1].send(json.dumps(stale))
    change_as(server, bob_user, {"action": "react", **base, "messageId": ids["Plan A"], "emoji": "👍", "add": True})
    expect(reaction(by_id(alice, ids["Plan A"]), "👍")).to_have_attribute("data-count", "1")  # after the stale one
    expect(by_id(alice, ids["Plan C"]).get_by_test_id("message-content")).to_have_text("Plan C, final")
