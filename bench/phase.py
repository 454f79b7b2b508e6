"""What the later phases share: app settings raised for one phase, and compared operations timed in alternating
rounds so a load change on the (shared, 2-core) machine lands on every variant alike."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bench.timing import Stats, measure
from chalicelib import wiring

Operation = Callable[[], Any]


@contextmanager
def settings(values: Mapping[str, str]) -> Iterator[None]:
    """The app's environment with ``values`` set for this phase (the factories rebuilt), restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    wiring.reset()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        wiring.reset()


def interleaved(
    variants: Mapping[str, tuple[Operation, Operation | None]],
    *,
    rounds: int,
    per_round: int,
    warmup: int,
) -> dict[str, Stats]:
    """Each variant ``(operation, setup)`` timed ``per_round`` times in turn, ``rounds`` times over; the samples of
    one variant pooled. ``warmup`` untimed calls of each variant before its first round."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(rounds):
        for name, (operation, setup) in variants.items():
            stats = measure(operation, setup=setup, iterations=per_round, warmup=warmup if index == 0 else 0)
            samples[name].extend(stats.samples)
    return {name: Stats(values) for name, values in samples.items()}
