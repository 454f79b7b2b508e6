"""The local queue keeps the SQS rules the fan-out relies on, and its worker keeps the event source mapping's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.app import SQSEvent

from chalicelib.queue import SQS_BATCH_BYTES, batches
from local.queue import LocalQueue, LocalQueueWorker, sqs_event


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def queues(clock: Clock, *, max_receive_count: int = 3) -> tuple[LocalQueue, LocalQueue]:
    dead = LocalQueue("fanout-dlq", clock=clock)
    return LocalQueue(
        "fanout", visibility_timeout_s=30, max_receive_count=max_receive_count, dead_letter=dead, clock=clock
    ), dead


def test_a_received_message_is_invisible_until_its_visibility_timeout_ends(clock: Clock) -> None:
    queue, _ = queues(clock)
    queue.send(["a"])
    [first] = queue.receive()
    assert first.body == "a" and first.receive_count == 1
    assert queue.receive() == []
    clock.now += 29.9
    assert queue.receive() == []
    clock.now += 0.2
    [again] = queue.receive()
    assert (again.message_id, again.receive_count) == (first.message_id, 2)
    assert again.receipt_handle != first.receipt_handle


def test_only_the_latest_receipt_handle_deletes(clock: Clock) -> None:
    queue, _ = queues(clock)
    queue.send(["a"])
    [first] = queue.receive()
    clock.now += 31
    [second] = queue.receive()
    assert queue.delete(first.receipt_handle) is False
    assert len(queue) == 1
    assert queue.delete(second.receipt_handle) is True
    assert len(queue) == 0


def test_change_visibility_brings_a_message_back_sooner(clock: Clock) -> None:
    queue, _ = queues(clock)
    queue.send(["a"])
    [first] = queue.receive()
    assert queue.change_visibility(first.receipt_handle, 2)
    clock.now += 2
    assert [m.body for m in queue.receive()] == ["a"]


def test_after_max_receive_count_receives_a_message_moves_to_the_dead_letter_queue(clock: Clock) -> None:
    queue, dead = queues(clock, max_receive_count=3)
    queue.send(["poison"])
    for expected in (1, 2, 3):
        assert [m.receive_count for m in queue.receive()] == [expected]
        clock.now += 31
    assert queue.receive() == []  # the fourth receive moved it instead
    assert len(queue) == 0
    assert dead.bodies() == ["poison"] and dead.receive_counts() == [3]


def test_messages_older_than_the_retention_period_are_dropped(clock: Clock) -> None:
    queue = LocalQueue("q", retention_s=60, clock=clock)
    queue.send(["old"])
    clock.now += 61
    assert queue.receive() == [] and len(queue) == 0


def test_the_event_is_what_chalice_reads_as_an_sqs_event(clock: Clock) -> None:
    queue, _ = queues(clock)
    queue.send(['{"x": 1}'])
    event = sqs_event(queue, queue.receive())
    [record] = list(SQSEvent(event, None))
    raw = record.to_dict()
    assert json.loads(record.body) == {"x": 1} and record.receipt_handle == raw["receiptHandle"]
    assert raw["attributes"]["ApproximateReceiveCount"] == "1"
    assert raw["eventSource"] == "aws:sqs" and raw["eventSourceARN"].endswith(":fanout")


class Handler:
    """A handler that fails the bodies it is told to, in the way it is told to."""

    def __init__(self, answer: str = "report", fail: frozenset[str] = frozenset()) -> None:
        self.answer = answer
        self.fail = fail
        self.seen: list[str] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        assert context.get_remaining_time_in_millis() > 0
        records = event["Records"]
        self.seen += [r["body"] for r in records]
        failed = [{"itemIdentifier": r["messageId"]} for r in records if r["body"] in self.fail]
        if self.answer == "raise" and failed:
            raise RuntimeError("worker crashed")
        if self.answer == "malformed" and failed:
            return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}
        return {"batchItemFailures": failed}


@pytest.mark.parametrize(
    ("answer", "left"),
    [
        ("report", ["b"]),  # ReportBatchItemFailures: only the failed one stays
        ("raise", ["a", "b", "c"]),  # an exception fails the whole batch
        ("malformed", ["a", "b", "c"]),  # so does an answer naming an id not in the batch
    ],
)
def test_the_worker_deletes_what_succeeded(clock: Clock, answer: str, left: list[str]) -> None:
    queue, _ = queues(clock)
    queue.send(["a", "b", "c"])
    result = LocalQueueWorker(queue, Handler(answer, frozenset({"b"}))).run_once()
    assert result is not None and len(result.received) == 3
    assert sorted(queue.bodies()) == left


def test_drain_redelivers_failures_until_they_reach_the_dead_letter_queue() -> None:
    dead = LocalQueue("dlq")
    queue = LocalQueue("q", visibility_timeout_s=0.01, max_receive_count=2, dead_letter=dead)
    queue.send(["ok", "poison"])
    handler = Handler("report", frozenset({"poison"}))
    LocalQueueWorker(queue, handler).drain(timeout_s=5)
    assert handler.seen.count("ok") == 1 and handler.seen.count("poison") == 2
    assert dead.bodies() == ["poison"] and len(queue) == 0


def test_the_background_worker_delivers() -> None:
    queue = LocalQueue("q", visibility_timeout_s=0.01)
    handler = Handler()
    worker = LocalQueueWorker(queue, handler)
    worker.start()
    try:
        queue.send(["a"])
        for _ in range(500):
            if not len(queue):
                break
            queue.wait_for_messages(0.01)
    finally:
        worker.stop()
    assert handler.seen == ["a"] and len(queue) == 0


def test_send_batches_respect_sqs_limits() -> None:
    assert [len(b) for b in batches([str(i) for i in range(23)])] == [10, 10, 3]
    big = "x" * (SQS_BATCH_BYTES // 2 + 1)
    assert [len(b) for b in batches([big, big, big])] == [1, 1, 1]
