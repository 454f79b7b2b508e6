"""Scheduled handlers run on a timer, as EventBridge runs ``@app.schedule`` functions in AWS.

The local server runs ``app.presence_sweep`` this way, with the event EventBridge would send (a
"Scheduled Event"), on its own thread so a slow run never holds a request.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def scheduled_event(rule: str, region: str = "us-east-1") -> dict[str, Any]:
    """The event a scheduled EventBridge rule delivers."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:000000000000:rule/{rule}"],
        "detail": {},
    }


class Timer:
    """Calls ``handler(event, None)`` every ``interval_s`` seconds until stopped; a failing run is logged."""

    def __init__(self, name: str, handler: Callable[[dict[str, Any], Any], Any], interval_s: float) -> None:
        self._name = name
        self._handler = handler
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"schedule-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self) -> Any:
        return self._handler(scheduled_event(self._name), None)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:
                log.exception("scheduled %s failed", self._name)
