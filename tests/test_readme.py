"""The README's two-user walkthrough, run as written against a local server.

The shell blocks are taken from README.md itself, so an edit that breaks them fails here. Only two things are
changed: the ports (the test's server listens on free ones) and the two interactive WebSocket clients, which
are fed what a person would type: bob's stays open, alice's sends the frame that ``echo`` printed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_server import ROOT, LocalServer, session_server

WS_CLIENT = ".venv/bin/python -m websockets"

# Stands in for the two terminals' interactive clients.
FAKE_TERMINALS = f"""
ws_calls=0
ws_client() {{
  ws_calls=$((ws_calls + 1))
  if [ "$ws_calls" -eq 1 ]; then  # terminal 1: bob connects and leaves it open
    sleep 6 | {WS_CLIENT} "$@" > "$WORK/bob.out" 2>&1 &
    sleep 1.5
  else  # terminal 2: alice pastes the frame echo printed, then waits for the push
    {{ tail -n 1 "$WORK/script.out"; sleep 2; }} | {WS_CLIENT} "$@" > "$WORK/alice.out" 2>&1
  fi
}}
"""


def readme_block(after: str) -> str:
    """The first ```sh block that follows the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with session_server(tmp_path_factory.mktemp("readme-server") / "data") as running:
        yield running


def pushes(output: str) -> list[dict[str, object]]:
    return [json.loads(line.split("< ", 1)[1]) for line in output.splitlines() if "< {" in line]


def test_two_user_walkthrough_works_as_written(server: LocalServer, tmp_path: Path) -> None:
    walkthrough = readme_block("**Two users from a shell.**")
    history = readme_block("Leave the client with Ctrl-D")
    assert walkthrough.count(WS_CLIENT) == 2
    rest = server.rest_url.removeprefix("http://")
    script = (walkthrough + history).replace(WS_CLIENT, "ws_client")
    script = script.replace("localhost:8000", rest).replace("ws://127.0.0.1:8001", server.ws_url)
    full = f'set -euo pipefail\nWORK="{tmp_path}"\n{FAKE_TERMINALS}\n{script}\nwait\n'
    with (tmp_path / "script.out").open("w") as out:
        result = subprocess.run(
            ["bash", "-c", full], cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True, timeout=60
        )
    output = (tmp_path / "script.out").read_text()
    assert result.returncode == 0, result.stderr + output

    bob, alice = pushes((tmp_path / "bob.out").read_text()), pushes((tmp_path / "alice.out").read_text())
    # Bob was connected when alice created the conversation: he heard of it first, as the README says.
    assert bob[0]["type"] == "conversation-created" and bob[0]["participants"] == ["alice", "bob"]
    # Then alice came online, her first connection opening (a presence push to her direct peers).
    assert {key: bob[1][key] for key in ("type", "userId", "online")} == {
        "type": "presence",
        "userId": "alice",
        "online": True,
    }
    bob = bob[2:]
    for received in (bob, alice):
        (message,) = [frame for frame in received if frame["type"] == "new-message"]
        assert message["content"] == "hi bob" and message["senderId"] == "alice" and message["tempMessageId"] == "t1"
    assert bob[0]["messageId"] == alice[0]["messageId"]
    # The history request printed the stored message, and the list names the conversation.
    messages, conversations = json_arrays(output)
    assert any(m["messageId"] == bob[0]["messageId"] for m in messages)
    assert any(row["conversationId"] == bob[0]["conversationId"] for row in conversations)


def json_arrays(output: str) -> list[list[dict[str, object]]]:
    """The JSON arrays curl printed (one after another, with no newline between them)."""
    decoder, found, index = json.JSONDecoder(), [], output.find("[")
    while index != -1:
        value, end = decoder.raw_decode(output, index)
        found.append(value)
        index = output.find("[", end)
    return found
