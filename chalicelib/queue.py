"""The fan-out queue: one small interface, SQS behind it in AWS, an in-process queue locally.

The app only ever *sends* to the queue and, from the worker, asks for a failed shard to come back sooner;
receiving is the event source mapping's job in AWS (and ``local.queue.LocalQueueWorker``'s locally), which
calls the same Chalice handler with the same SQS-shaped event. ``FANOUT_QUEUE_URL`` picks the implementation:

- ``https://sqs.<region>.amazonaws.com/<account>/<name>``: :class:`SqsQueue` (boto3, in the Lambda runtime);
- ``local:<name>``: the queue a local server or test registered under that name with
  :func:`register_local_queue` (a process-wide table that ``wiring.reset()`` leaves alone, as it would a
  real queue's URL);
- empty: no queue; every fan-out takes the direct path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

# SendMessageBatch takes at most 10 entries and 256 KiB (1 MiB since 2025, not in every region yet) in all.
SQS_BATCH_ENTRIES = 10
SQS_BATCH_BYTES = 256 * 1024


class QueueUnavailable(Exception):
    """The queue refused or did not answer; ``sent`` holds the indices of the bodies it confirmed anyway."""

    def __init__(self, message: str, sent: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.sent = sent


class FanoutQueue(Protocol):
    """What the app needs of a queue."""

    def send(self, bodies: Sequence[str]) -> None:
        """Enqueue every body, or raise ``QueueUnavailable`` naming those that were enqueued all the same."""

    def retry_later(self, receipt_handle: str, delay_s: int) -> None:
        """Make a received message visible again in ``delay_s`` seconds (instead of after the visibility timeout)."""


def batches(bodies: Sequence[str]) -> list[list[str]]:
    """``bodies`` split into SendMessageBatch calls: at most 10 entries and 256 KiB each."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode("utf-8"))
        if current and (len(current) == SQS_BATCH_ENTRIES or size + length > SQS_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    if current:
        out.append(current)
    return out


class SqsQueue:
    """An SQS queue through boto3 (imported on first use; the Lambda runtime ships it)."""

    def __init__(self, queue_url: str, *, region: str, timeout_s: float = 3.0, client: Any = None) -> None:
        """``client`` is a ready boto3 SQS client (tests pass one pointed elsewhere); by default one is built."""
        self._url = queue_url
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=timeout_s, read_timeout=timeout_s, retries={"mode": "standard", "max_attempts": 3}
            )
            client = boto3.session.Session().client("sqs", region_name=region, config=config)
        self._client = client

    def send(self, bodies: Sequence[str]) -> None:
        sent: set[int] = set()
        offset = 0
        for batch in batches(bodies):
            entries = [{"Id": str(offset + index), "MessageBody": body} for index, body in enumerate(batch)]
            offset += len(batch)
            for _attempt in range(2):  # entries SQS refused in a call that succeeded are sent again once
                try:
                    answer = self._client.send_message_batch(QueueUrl=self._url, Entries=entries)
                except Exception as error:  # botocore's ClientError, connection and timeout errors alike
                    raise QueueUnavailable(f"{type(error).__name__}: {error}", frozenset(sent)) from error
                sent.update(int(entry["Id"]) for entry in answer.get("Successful", []))
                failed = {entry["Id"] for entry in answer.get("Failed", [])}
                entries = [entry for entry in entries if entry["Id"] in failed]
                if not entries:
                    break
            if entries:
                raise QueueUnavailable(f"SQS refused {len(entries)} shard(s)", frozenset(sent))

    def retry_later(self, receipt_handle: str, delay_s: int) -> None:
        try:
            self._client.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt_handle, VisibilityTimeout=max(0, min(delay_s, 43_200))
            )
        except Exception as error:
            raise QueueUnavailable(f"{type(error).__name__}: {error}") from error


_local_lock = threading.Lock()
_local_queues: dict[str, FanoutQueue] = {}


def register_local_queue(name: str, queue: FanoutQueue) -> str:
    """Make ``queue`` what ``FANOUT_QUEUE_URL=local:<name>`` means in this process; returns that URL."""
    with _local_lock:
        _local_queues[name] = queue
    return f"local:{name}"


def unregister_local_queue(name: str) -> None:
    with _local_lock:
        _local_queues.pop(name, None)


def local_queue(name: str) -> FanoutQueue:
    with _local_lock:
        queue = _local_queues.get(name)
    if queue is None:
        raise QueueUnavailable(f"no local queue named {name!r} in this process (FANOUT_QUEUE_URL=local:{name})")
    return queue


def queue_for_url(url: str, *, region: str) -> FanoutQueue:
    """The queue ``FANOUT_QUEUE_URL`` names (see the module docstring)."""
    if url.startswith("local:"):
        return local_queue(url.removeprefix("local:"))
    if url.startswith("https://"):
        return SqsQueue(url, region=region)
    raise ValueError(f"FANOUT_QUEUE_URL must be an https:// SQS queue URL or local:<name>, not {url!r}")
