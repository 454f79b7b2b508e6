"""A test double for the ``@connections`` API: an in-memory :class:`ConnectionSink` that records every frame.

Tests and benchmarks put it behind :class:`local.connections_api.ConnectionsServer`, so the app's real push
clients talk HTTP to it; :class:`Behaviour` injects the faults AWS can answer with (410, 429, 5xx, a hang).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from local.connections_api import ConnectionInfo, PushRejectedError, iso_timestamp


@dataclass(frozen=True)
class Behaviour:
    """An injected fault for :class:`RecordingSink`.

    ``delay`` seconds pass before the push is handled (0.02 mimics AWS's HTTPS round trip; a large value is a
    hang, cut short by ``RecordingSink.release()``); then ``status``, if set, is returned instead of delivering.
    ``times`` limits how many pushes are affected (``None``: all).
    """

    status: int | None = None
    delay: float = 0.0
    times: int | None = None


@dataclass
class _Connection:
    connected_at: float
    last_active_at: float
    source_ip: str
    user_agent: str


class RecordingSink:
    """A thread-safe in-memory sink: a set of open connections that records every frame posted to them.

    Posts to an id that was never opened, or was closed, answer 410. Faults are injected per connection or
    globally with :meth:`inject`. Frames are recorded only when delivered (status 200).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._released = threading.Event()
        self._open: dict[str, _Connection] = {}
        self._frames: defaultdict[str, list[bytes]] = defaultdict(list)
        self._attempts: defaultdict[str, int] = defaultdict(int)
        self._deleted: list[str] = []
        self._behaviours: dict[str | None, tuple[Behaviour, list[int]]] = {}

    # -- connections ----------------------------------------------------------------------------------------

    def open(self, connection_id: str, *, source_ip: str = "127.0.0.1", user_agent: str = "test") -> None:
        now = time.time()
        with self._lock:
            self._open[connection_id] = _Connection(now, now, source_ip, user_agent)

    def close(self, connection_id: str) -> None:
        with self._lock:
            self._open.pop(connection_id, None)

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            return connection_id in self._open

    # -- faults ---------------------------------------------------------------------------------------------

    def inject(self, behaviour: Behaviour, connection_id: str | None = None) -> None:
        """Apply ``behaviour`` to pushes to ``connection_id``, or to every connection when it is ``None``."""
        with self._lock:
            self._behaviours[connection_id] = (behaviour, [behaviour.times or 0])

    def clear_faults(self) -> None:
        with self._lock:
            self._behaviours.clear()

    def release(self) -> None:
        """Ends every current and future delay at once (e.g. hanging pushes at teardown)."""
        self._released.set()

    def _take_behaviour(self, connection_id: str) -> Behaviour | None:
        for key in (connection_id, None):
            entry = self._behaviours.get(key)
            if entry is None:
                continue
            behaviour, remaining = entry
            if behaviour.times is not None:
                if remaining[0] <= 0:
                    del self._behaviours[key]
                    continue
                remaining[0] -= 1
            return behaviour
        return None

    # -- ConnectionSink -------------------------------------------------------------------------------------

    def post(self, connection_id: str, data: bytes) -> bool:
        with self._lock:
            self._attempts[connection_id] += 1
            behaviour = self._take_behaviour(connection_id)
        if behaviour is not None:
            if behaviour.delay > 0:
                self._released.wait(behaviour.delay)
            if behaviour.status is not None:
                if behaviour.status == 410:
                    return False
                raise PushRejectedError(behaviour.status, "injected fault")
        with self._changed:
            conn = self._open.get(connection_id)
            if conn is None:
                return False
            conn.last_active_at = time.time()
            self._frames[connection_id].append(data)
            self._changed.notify_all()
            return True

    def info(self, connection_id: str) -> ConnectionInfo | None:
        with self._lock:
            conn = self._open.get(connection_id)
            if conn is None:
                return None
            return {
                "connectedAt": iso_timestamp(conn.connected_at),
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
                "lastActiveAt": iso_timestamp(conn.last_active_at),
            }

    def delete(self, connection_id: str) -> bool:
        with self._lock:
            if self._open.pop(connection_id, None) is None:
                return False
            self._deleted.append(connection_id)
            return True

    # -- inspection -----------------------------------------------------------------------------------------

    def frames(self, connection_id: str) -> list[bytes]:
        with self._lock:
            return list(self._frames.get(connection_id, ()))

    def json_frames(self, connection_id: str) -> list[Any]:
        return [json.loads(frame) for frame in self.frames(connection_id)]

    def attempts(self, connection_id: str) -> int:
        """How many posts reached the sink for ``connection_id``, delivered or not (retries included)."""
        with self._lock:
            return self._attempts.get(connection_id, 0)

    @property
    def deleted(self) -> list[str]:
        """Connection ids closed through ``DELETE @connections/{id}``, in order."""
        with self._lock:
            return list(self._deleted)

    def total_frames(self) -> int:
        with self._lock:
            return sum(len(frames) for frames in self._frames.values())

    def wait_for_frames(self, connection_id: str, count: int, timeout: float = 5.0) -> list[bytes]:
        """Blocks until ``connection_id`` has received at least ``count`` frames; raises ``TimeoutError``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._frames.get(connection_id, ())) >= count, timeout):
                got = len(self._frames.get(connection_id, ()))
                raise TimeoutError(f"{connection_id}: {got} of {count} frames after {timeout}s")
            return list(self._frames[connection_id])
