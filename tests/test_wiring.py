"""The factories build each collaborator once per process, however many threads ask at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.db import Database


@pytest.fixture
def fresh_wiring() -> Iterator[None]:
    wiring.reset()
    yield
    wiring.reset()


def test_concurrent_first_calls_build_one_database(fresh_wiring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Database] = []
    original = Database.__init__

    def slow_init(self: Database, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)  # widen the window two unlocked first calls would both fall into
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(Database, "__init__", slow_init)
    results: list[Database] = []
    threads = [threading.Thread(target=lambda: results.append(wiring.get_database())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and all(result is built[0] for result in results)
