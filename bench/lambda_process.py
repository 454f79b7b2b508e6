"""The fan-out worker Lambda in a process of its own: one execution environment, invoked over a pipe.

In AWS each batch of the fan-out queue is an invocation of ``fanout_worker`` in its own execution environment
(up to app.py's ``maximum_concurrency`` of them at once): its own interpreter, GIL, push thread pool, Redis
and database connections. Five pollers calling ``app.fanout_worker`` in the benchmark's process shared all of
those instead. :class:`LambdaProcess` is a handler for ``local.queue.LocalQueueWorker`` that runs the
invocation in a child process (``python -m bench.lambda_process``), which imported ``app`` once and stays warm
across invocations, as an execution environment does; it serves one invocation at a time.

The child has the parent's environment (the same settings, database and Redis), and the same
``FANOUT_QUEUE_URL=local:<name>``: there it names a stand-in queue that records what the worker asks of it,
``retry_later`` (its ``ChangeMessageVisibility``) and ``send`` (an expansion's shards), which the parent then
applies to the real local queue. Each line on the pipe is JSON: ``{"event", "timeout_s"}`` in,
``{"answer", "retries", "sent"}`` (or ``{"error"}``) out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from bench.child_process import stop
from chalicelib.queue import register_local_queue
from local.queue import LambdaContext, LocalQueue


class LambdaProcess:
    """A warm ``fanout_worker`` execution environment; call it as the handler of one ``LocalQueueWorker``."""

    def __init__(self, queue: LocalQueue) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> Any:
        with self._lock:
            process = self._process
            assert process is not None and process.stdin is not None and process.stdout is not None
            request = {"event": event, "timeout_s": context.get_remaining_time_in_millis() / 1000}
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        if not line:
            raise RuntimeError("the fan-out worker process died")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fanout_worker raised {reply['error']}")
        self._queue.send(reply["sent"])
        for handle, delay in reply["retries"]:
            self._queue.retry_later(handle, delay)
        return reply["answer"]

    def cpu_s(self) -> float | None:
        """CPU seconds the process has used (user and system, from /proc; None where there is none)."""
        if self._process is None:
            return None
        try:
            with open(f"/proc/{self._process.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> LambdaProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.lambda_process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError("the fan-out worker process did not start")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        stop(process, timeout_s=30)


class _RecordedQueue:
    """The child's fan-out queue: what the worker sends and asks back, for the parent to apply."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, int]] = []
        self.sent: list[str] = []

    def send(self, bodies: Sequence[str]) -> None:
        self.sent.extend(bodies)

    def retry_later(self, receipt_handle: str, delay_s: int) -> None:
        self.retries.append((receipt_handle, delay_s))


def main() -> None:
    # The pipe is the real stdout; anything else the app prints goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import app as chat_app

    url = os.environ.get("FANOUT_QUEUE_URL", "")
    queue = _RecordedQueue()
    if url.startswith("local:"):
        register_local_queue(url.removeprefix("local:"), queue)
    print("ready", file=channel, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        queue.retries.clear()
        queue.sent.clear()
        try:
            answer = chat_app.fanout_worker(request["event"], LambdaContext("fanout_worker", request["timeout_s"]))
            reply: dict[str, Any] = {"answer": answer, "retries": queue.retries, "sent": queue.sent}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), file=channel, flush=True)


if __name__ == "__main__":
    main()
