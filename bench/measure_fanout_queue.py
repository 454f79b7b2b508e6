"""Queued fan-out (issue 12): one message to 10,000 connections through the fan-out queue, with a 20 ms
``@connections`` endpoint and the default account push budget; then the same with one worker invocation failing
part of a shard.

The queue is local/queue.py's ``LocalQueue`` (SQS's visibility, receive-count and redrive rules, with a
dead-letter queue) registered as ``FANOUT_QUEUE_URL=local:<name>``, drained by ``LocalQueueWorker`` calling the
app's real ``app.fanout_worker`` with SQS-shaped events (batch size 10, as app.py declares), with one poller
invoking it in this process (one invocation at a time, as ``make dev`` runs it) and, in alternating runs, five
(app.py's ``maximum_concurrency``), each invoking its own warm worker process (bench/lambda_process.py), as
each Lambda invocation has its own execution environment: its own GIL, push pool and connections.
The endpoint is bench/recording_endpoint.py in its own process:
it records each connection's pushes and the time of the last one.

The group has 10,000 members, each with one connection: the sender's through the app's ``$connect``, the other
9,999 registered in the registry directly (the figure is the fan-out, not 10,000 ``$connect`` calls). The send
goes through ``app.message``; the sender's echo is pushed directly, the rest through the queue: above
``FANOUT_EXPAND_MEMBERS`` (2,000) as one expansion, which the worker turns into shards, so the queue hop
measured below is two hops (the expansion's, then its shards').

Timing: from just before ``app.message`` to the endpoint's last recorded push. The queue hop is the time from
the send to the first queued push (the first push to a connection other than the sender's).

Failure run: the poller is held until the send has enqueued its shards; the third shard's members are read
from the queue, and the endpoint answers 503 to the middle 50 of its connections for ``PUSH_MAX_ATTEMPTS``
tries each, so that invocation reports the shard as a batch item failure; the shard comes back after the
worker's backoff and only the unclaimed connections are pushed again. Its time runs from the poller's start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from bench.context import BenchContext, connect, send_frame
from bench.lambda_process import LambdaProcess
from bench.measure_ws import _send
from bench.phase import settings
from bench.recording_endpoint import RecordingEndpoint
from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.fanout import Expansion, Shard, parse_queued
from chalicelib.queue import register_local_queue, unregister_local_queue
from local.queue import LocalQueue, LocalQueueWorker

CONNECTIONS = 10_000
PUSH_DELAY_S = 0.02
RUNS = 3
POLLERS = (1, 5)
FAILED_SHARD = 2
FAILED_CONNECTIONS = 50
WAIT_S = 120.0

Handler = Callable[[dict[str, Any], Any], Any]


class Invocations:
    """Invocations of the fan-out worker, counted with the shards each reported failed and the time they took."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed_shards = 0
        self.busy_s = 0.0
        self._lock = threading.Lock()

    def via(self, target: Handler | None = None) -> Handler:
        """A handler for one poller: ``target`` (a LambdaProcess), or app.fanout_worker in this process."""

        def invoke(event: dict[str, Any], context: Any) -> Any:
            import app as chat_app

            started = time.perf_counter()
            try:
                answer = (target or chat_app.fanout_worker)(event, context)
            finally:
                with self._lock:
                    self.calls += 1
                    self.busy_s += time.perf_counter() - started
            failed = len(answer.get("batchItemFailures") or []) if isinstance(answer, dict) else 0
            with self._lock:
                self.failed_shards += failed
            return answer

        return invoke


def _wait_for(endpoint: RecordingEndpoint, expected: int, timeout_s: float) -> dict[str, Any]:
    """The endpoint's full stats once ``expected`` connections were pushed (polled with the small ``progress``:
    the full stats of 10,000 connections, 50 times a second, cost both processes CPU the fan-out needs)."""
    deadline = time.monotonic() + timeout_s
    while endpoint.progress()["connections"] < expected and time.monotonic() <= deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # a late duplicate would show now
    return endpoint.stats()


def _outcome(stats: dict[str, Any], started: float, sender_connection: str) -> dict[str, Any]:
    counts: dict[str, int] = stats["counts"]
    others = [at for connection_id, at in stats["times"].items() if connection_id != sender_connection]
    return {
        "delivered": len(counts),
        "duplicates": sum(count - 1 for count in counts.values() if count > 1),
        "lost": CONNECTIONS - len([c for c in counts if counts[c] > 0]),
        "ms": (stats["last_at"] - started) * 1000 if stats["last_at"] else None,
        "first_queued_push_ms": (min(others) - started) * 1000 if others else None,
        "rejected_pushes": stats["failed"],
        "sender_echoed": counts.get(sender_connection, 0) == 1,
    }


def _workers_cpu_s(workers: Sequence[LambdaProcess]) -> float:
    return sum(worker.cpu_s() or 0.0 for worker in workers)


def _timed_send(
    ctx: BenchContext,
    endpoint: RecordingEndpoint,
    handler: Invocations,
    sender: str,
    group: str,
    workers: Sequence[LambdaProcess],
) -> dict[str, Any]:
    """One message to the group, timed to the endpoint's last push, with where the time went."""
    endpoint.reset()
    calls, busy, cpu, endpoint_cpu = handler.calls, handler.busy_s, time.process_time(), endpoint.stats()["cpu_s"]
    workers_cpu = _workers_cpu_s(workers)
    started = time.time()
    send_frame(sender, _send(group))
    stats = _wait_for(endpoint, CONNECTIONS, WAIT_S)
    outcome = _outcome(stats, started, sender)
    outcome["invocations"] = handler.calls - calls
    # Where the time goes: the worker's invocations (summed), and each process's CPU.
    outcome["worker_busy_ms"] = (handler.busy_s - busy) * 1000
    outcome["bench_process_cpu_ms"] = (time.process_time() - cpu) * 1000
    outcome["worker_processes_cpu_ms"] = (_workers_cpu_s(workers) - workers_cpu) * 1000
    outcome["endpoint_process_cpu_ms"] = (stats["cpu_s"] - endpoint_cpu) * 1000
    outcome["load"] = os.getloadavg()[0]
    return outcome


def _shards_to_come(bodies: Sequence[str], members: Sequence[str]) -> list[Shard]:
    """The shards the queue holds, or those its one expansion will be turned into (the worker's own rule)."""
    queued = [parse_queued(body) for body in bodies]
    if len(queued) == 1 and isinstance(queued[0], Expansion):
        return queued[0].shards_for(sorted(members))
    return [item for item in queued if isinstance(item, Shard)]


def run(ctx: BenchContext, log: Any = print) -> dict[str, Any]:
    name = f"bench-fanout-{ctx.run_id}"
    results: dict[str, Any] = {"load before": os.getloadavg()}
    with RecordingEndpoint(PUSH_DELAY_S) as endpoint:
        dead = LocalQueue(f"{name}-dlq", retention_s=86400)
        max_receive = get_settings().fanout_max_receive_count
        queue = LocalQueue(name, visibility_timeout_s=360, max_receive_count=max_receive, dead_letter=dead)
        url = register_local_queue(name, queue)
        values = {
            "FANOUT_QUEUE_URL": url,
            "CONNECTIONS_ENDPOINT_URL": endpoint.url,
            "MAX_PARTICIPANTS": str(CONNECTIONS),
            "MAX_REQUEST_BYTES": "1000000",
        }
        try:
            with settings(values):
                results.update(_run(ctx, endpoint, queue, dead, log))
        finally:
            unregister_local_queue(name)
    results["load after"] = os.getloadavg()
    return results


def _run(
    ctx: BenchContext, endpoint: RecordingEndpoint, queue: LocalQueue, dead: LocalQueue, log: Any
) -> dict[str, Any]:
    config = get_settings()
    results: dict[str, Any] = {
        "budget per s": config.push_budget_per_s,
        "budget burst": config.push_budget_burst,
        "threshold": config.fanout_queue_threshold,
        "shard size": config.fanout_shard_size,
        "push concurrency": config.push_concurrency,
        "push max attempts": config.push_max_attempts,
    }
    service = wiring.get_service()
    members = [ctx.user(f"q{index:05d}") for index in range(CONNECTIONS)]
    body = json.dumps({"recipientIdArr": members[1:], "isGroup": True, "title": "queued fan-out"})
    group = str(service.create_conversation(members[0], body)["conversationId"])
    ctx.scratch_conversations.append(group)
    sender = connect(ctx, members[0])
    registry = wiring.get_registry()
    connection_of = {members[0]: sender}
    for index, member in enumerate(members[1:], start=1):
        connection_of[member] = f"bench-{ctx.run_id}-q{index:05d}="
        registry.register(connection_of[member], member)
    handler = Invocations()
    worker = LocalQueueWorker(queue, handler.via(), batch_size=10, timeout_s=60)
    # Creating the group queued its conversation-created announcement whole (above FANOUT_EXPAND_MEMBERS), and
    # a worker expands it to the members' connections of the moment it runs: drained here, now that all 10,000
    # have one, so that no timed run counts those pushes as its message's (the first two runs once counted
    # 700-4,900 such pushes as duplicates).
    results["announcement invocations"] = worker.drain(timeout_s=WAIT_S)
    results["announcement pushes"] = endpoint.progress()["pushes"]
    log(
        f"  {'the group creation, announced':<34} {results['announcement pushes']:,} pushes in"
        f" {results['announcement invocations']} invocations, before the timed runs"
    )

    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in POLLERS}
    with ExitStack() as stack:
        # Five warm execution environments, started once, as Lambda keeps them between invocations.
        lambdas = [stack.enter_context(LambdaProcess(queue)) for _ in range(POLLERS[-1])]
        for _ in range(RUNS):
            for count in POLLERS:  # interleaved: one poller in this process (make dev), then app.py's
                # maximum_concurrency of them, each invoking its own process (Lambda's execution environments)
                workers = lambdas[:count] if count > 1 else []
                targets: list[Handler | None] = [*workers] if workers else [None]
                pollers = [
                    LocalQueueWorker(queue, handler.via(target), batch_size=10, timeout_s=60) for target in targets
                ]
                for poller in pollers:
                    poller.start()
                try:
                    time.sleep(1.0)  # the budget refills (its burst) between runs, as between two big messages
                    outcome = _timed_send(ctx, endpoint, handler, sender, group, workers)
                finally:
                    for poller in pollers:
                        poller.stop()
                outcome["pollers"] = count
                outcome["poller_processes"] = len(workers)
                runs[count].append(outcome)
                log(
                    f"  {f'queued fan-out, {count} poller(s)':<34} {outcome['ms']:,.0f} ms to the last push;"
                    f" delivered {outcome['delivered']:,}, duplicates {outcome['duplicates']},"
                    f" lost {outcome['lost']}, first queued push {outcome['first_queued_push_ms']:,.0f} ms,"
                    f" {outcome['invocations']} invocations busy {outcome['worker_busy_ms']:,.0f} ms;"
                    f" CPU: bench {outcome['bench_process_cpu_ms']:,.0f} ms,"
                    f" worker processes {outcome['worker_processes_cpu_ms']:,.0f} ms,"
                    f" endpoint {outcome['endpoint_process_cpu_ms']:,.0f} ms; load {outcome['load']:.1f}"
                )
    results["runs"] = runs[1]
    results["runs 5 pollers"] = runs[POLLERS[-1]]

    # One invocation fails part of a shard.
    time.sleep(1.0)
    endpoint.reset()
    calls, failed_before = handler.calls, handler.failed_shards
    send_frame(sender, _send(group))
    shards = _shards_to_come(queue.bodies(), list(connection_of))
    victims = [connection_of[member] for member in shards[FAILED_SHARD].members]
    middle = len(victims) // 2 - FAILED_CONNECTIONS // 2
    endpoint.fail(config.push_max_attempts, victims[middle : middle + FAILED_CONNECTIONS])
    worker.start()
    started = time.time()
    try:
        outcome = _outcome(_wait_for(endpoint, CONNECTIONS, WAIT_S), started, sender)
        deadline = time.monotonic() + 10
        while len(queue) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    outcome["shards"] = len(shards)
    outcome["invocations"] = handler.calls - calls
    outcome["failed_shards"] = handler.failed_shards - failed_before
    outcome["queue_left"] = len(queue)
    outcome["dead_letter"] = len(dead)
    results["failing"] = outcome
    log(
        f"  {'with one shard failing midway':<34} {outcome['ms']:,.0f} ms from the worker's start;"
        f" delivered {outcome['delivered']:,}, duplicates {outcome['duplicates']},"
        f" lost {outcome['lost']}, {outcome['rejected_pushes']} pushes answered 503,"
        f" {outcome['failed_shards']} shard(s) reported failed, {outcome['invocations']} invocations,"
        f" queue {outcome['queue_left']}, DLQ {outcome['dead_letter']}"
    )
    return results
