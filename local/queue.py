"""An in-process stand-in for SQS and Lambda's SQS event source mapping, for ``make dev`` and the tests.

Why not an SQS-compatible server from PyPI: moto's server mode brings Flask and werkzeug and a few hundred
megabytes of optional AWS emulations, ElasticMQ needs a JVM, and LocalStack needs Docker; none of them runs the
event source mapping that turns a queue into Lambda invocations, which is the part whose semantics matter here.
This module is small and checked by its own tests (tests/test_local_queue.py) against the rules below.

:class:`LocalQueue` keeps what SQS promises a consumer:

- a received message is invisible for the visibility timeout, then comes back unless it was deleted with the
  receipt handle of its *latest* receive (an older handle deletes nothing);
- every receive increments ``ApproximateReceiveCount``; a message whose count already reached
  ``max_receive_count`` is moved to the dead-letter queue instead of being received again (the redrive policy);
- ``change_visibility`` (``ChangeMessageVisibility``) makes an in-flight message visible sooner or later;
- messages older than the retention period are dropped.

:class:`LocalQueueWorker` is the event source mapping: it receives batches, calls the Chalice handler with an
SQS-shaped event and a Lambda-like context, and then deletes what succeeded. An exception from the handler fails
the whole batch; a ``{"batchItemFailures": [{"itemIdentifier": id}]}`` answer (``ReportBatchItemFailures``)
fails only those; an answer of another shape, or naming an id not in the batch, fails the whole batch, as Lambda
does. Failed messages are not touched: they come back when their visibility timeout ends.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT = "000000000000"


@dataclass
class _Message:
    message_id: str
    body: str
    sent_at: float
    visible_at: float
    receive_count: int = 0
    first_received_at: float | None = None
    receipt_handle: str | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as a receive returned it."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float
    first_received_at: float


class LocalQueue:
    """A thread-safe standard queue with SQS's visibility, receive-count and redrive rules.

    ``clock`` is the time source (seconds; tests may pass a fake one). ``dead_letter`` with
    ``max_receive_count`` is the redrive policy; without a dead-letter queue messages are received forever.
    """

    def __init__(
        self,
        name: str = "fanout",
        *,
        visibility_timeout_s: float = 30.0,
        max_receive_count: int = 5,
        retention_s: float = 3600.0,
        dead_letter: LocalQueue | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receive_count = max_receive_count
        self.retention_s = retention_s
        self.dead_letter = dead_letter
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: dict[str, _Message] = {}  # insertion order is send order
        self._handles: dict[str, str] = {}  # latest receipt handle -> message id

    # -- the producer's side (chalicelib.queue.FanoutQueue) ---------------------------------------------------

    def send(self, bodies: Sequence[str]) -> None:
        for body in bodies:
            self.send_message(body)

    def send_message(self, body: str, *, delay_s: float = 0.0) -> str:
        now = self._clock()
        message = _Message(str(uuid.uuid4()), body, now, now + delay_s)
        with self._changed:
            self._messages[message.message_id] = message
            self._changed.notify_all()
        return message.message_id

    def retry_later(self, receipt_handle: str, delay_s: int) -> None:
        self.change_visibility(receipt_handle, delay_s)

    # -- the consumer's side ----------------------------------------------------------------------------------

    def receive(self, max_messages: int = 10, *, visibility_timeout_s: float | None = None) -> list[ReceivedMessage]:
        """Up to ``max_messages`` visible messages, now invisible for the visibility timeout."""
        timeout = self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        now = self._clock()
        received: list[ReceivedMessage] = []
        redriven: list[_Message] = []
        with self._lock:
            for message in list(self._messages.values()):
                if len(received) >= max_messages:
                    break
                if now - message.sent_at > self.retention_s:
                    self._forget(message)
                    continue
                if message.visible_at > now:
                    continue
                if self.dead_letter is not None and message.receive_count >= self.max_receive_count:
                    self._forget(message)
                    redriven.append(message)
                    continue
                if message.receipt_handle is not None:
                    self._handles.pop(message.receipt_handle, None)
                message.receive_count += 1
                message.first_received_at = message.first_received_at or now
                message.visible_at = now + timeout
                message.receipt_handle = f"{message.message_id}#{uuid.uuid4().hex}"
                self._handles[message.receipt_handle] = message.message_id
                received.append(
                    ReceivedMessage(
                        message.message_id,
                        message.receipt_handle,
                        message.body,
                        message.receive_count,
                        message.sent_at,
                        message.first_received_at,
                    )
                )
        for message in redriven:
            assert self.dead_letter is not None
            self.dead_letter._accept_redriven(message)
        return received

    def delete(self, receipt_handle: str) -> bool:
        """Delete by the latest receipt handle; False (nothing deleted) for an older or unknown one."""
        with self._changed:
            message_id = self._handles.pop(receipt_handle, None)
            if message_id is None:
                return False
            message = self._messages.pop(message_id, None)
            self._changed.notify_all()
            return message is not None

    def change_visibility(self, receipt_handle: str, timeout_s: float) -> bool:
        with self._changed:
            message_id = self._handles.get(receipt_handle)
            message = self._messages.get(message_id) if message_id else None
            if message is None:
                return False
            message.visible_at = self._clock() + max(0.0, timeout_s)
            self._changed.notify_all()
            return True

    # -- inspection -------------------------------------------------------------------------------------------

    def bodies(self) -> list[str]:
        """Every message's body, visible or in flight, in send order."""
        with self._lock:
            return [message.body for message in self._messages.values()]

    def receive_counts(self) -> list[int]:
        with self._lock:
            return [message.receive_count for message in self._messages.values()]

    def __len__(self) -> int:
        """Messages in the queue, visible or in flight (SQS's ApproximateNumberOfMessages + ...NotVisible)."""
        with self._lock:
            return len(self._messages)

    def next_visible_in(self) -> float | None:
        """Seconds until some message is visible (0: one is now), or None when the queue is empty."""
        with self._lock:
            if not self._messages:
                return None
            return max(0.0, min(m.visible_at for m in self._messages.values()) - self._clock())

    def wait_for_messages(self, timeout_s: float) -> None:
        """Block until something is sent or changed, at most ``timeout_s``."""
        with self._changed:
            self._changed.wait(timeout_s)

    # -- internals --------------------------------------------------------------------------------------------

    def _forget(self, message: _Message) -> None:
        del self._messages[message.message_id]
        if message.receipt_handle is not None:
            self._handles.pop(message.receipt_handle, None)

    def _accept_redriven(self, message: _Message) -> None:
        """A message moved here by a source queue's redrive policy keeps its id, body and receive count."""
        moved = _Message(message.message_id, message.body, message.sent_at, self._clock(), message.receive_count)
        with self._changed:
            self._messages[moved.message_id] = moved
            self._changed.notify_all()


def sqs_event(queue: LocalQueue, messages: Sequence[ReceivedMessage]) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping passes to a function."""
    return {
        "Records": [
            {
                "messageId": message.message_id,
                "receiptHandle": message.receipt_handle,
                "body": message.body,
                "attributes": {
                    "ApproximateReceiveCount": str(message.receive_count),
                    "SentTimestamp": str(int(message.sent_at * 1000)),
                    "SenderId": "AIDAEXAMPLELOCAL",
                    "ApproximateFirstReceiveTimestamp": str(int(message.first_received_at * 1000)),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(message.body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue.arn,
                "awsRegion": REGION,
            }
            for message in messages
        ]
    }


class LambdaContext:
    """The parts of Lambda's context object a handler reads."""

    _ids = itertools.count(1)

    def __init__(self, function_name: str, timeout_s: float) -> None:
        self.function_name = function_name
        self.aws_request_id = f"local-{next(self._ids)}"
        self.memory_limit_in_mb = 512
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class BatchResult:
    """What one invocation did: the message ids it was given and those that failed."""

    received: list[str]
    failed: list[str]


class LocalQueueWorker:
    """Lambda's SQS event source mapping with ``ReportBatchItemFailures``, on a thread or stepped by hand."""

    def __init__(
        self,
        queue: LocalQueue,
        handler: Handler,
        *,
        batch_size: int = 10,
        function_name: str = "fanout_worker",
        timeout_s: float = 20.0,
    ) -> None:
        self.queue = queue
        self._handler = handler
        self._batch_size = batch_size
        self._function_name = function_name
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.invocations = 0

    def run_once(self) -> BatchResult | None:
        """Receive one batch and invoke the handler with it; None when nothing was visible."""
        messages = self.queue.receive(self._batch_size)
        if not messages:
            return None
        self.invocations += 1
        ids = [message.message_id for message in messages]
        try:
            answer = self._handler(sqs_event(self.queue, messages), LambdaContext(self._function_name, self._timeout_s))
        except Exception:
            log.exception(
                "%s failed; its %d message(s) come back after the visibility timeout", self._function_name, len(ids)
            )
            return BatchResult(ids, ids)
        failed = _failed_ids(answer, set(ids))
        for message in messages:
            if message.message_id not in failed:
                self.queue.delete(message.receipt_handle)
        return BatchResult(ids, [message_id for message_id in ids if message_id in failed])

    def drain(self, timeout_s: float = 10.0) -> int:
        """Invoke until the queue is empty (failed messages coming back, or moving to the DLQ); returns invocations.

        Raises ``TimeoutError`` when messages are still there after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        count = 0
        while True:
            if self.run_once() is not None:
                count += 1
                continue
            wait = self.queue.next_visible_in()
            if wait is None:
                return count
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"{len(self.queue)} message(s) still in {self.queue.name} after {timeout_s}s")
            self.queue.wait_for_messages(max(0.005, wait))

    def start(self) -> None:
        """Poll on a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"{self._function_name}-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 25.0) -> None:
        self._stop.set()
        with self.queue._changed:
            self.queue._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once() is not None:
                    continue
            except Exception:  # the poller itself must survive anything a handler does
                log.exception("local queue poller")
            wait = self.queue.next_visible_in()
            self.queue.wait_for_messages(1.0 if wait is None else min(1.0, max(0.005, wait)))


def _failed_ids(answer: Any, batch: set[str]) -> set[str]:
    """The ids a handler's answer reports failed; every id when the answer is malformed (Lambda does the same)."""
    if answer is None:
        return set()
    if not isinstance(answer, dict):
        return set(batch)
    failures = answer.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return set(batch)
    failed: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in batch:
            return set(batch)
        failed.add(identifier)
    return failed
