"""Run the app in-process under a given configuration, then put the environment back.

The app reads its settings from environment variables, as a deployed stage does; tests and the benchmark
configure it the same way, and ``chalicelib.wiring.reset()`` makes it rebuild everything it cached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from chalicelib import wiring


@contextmanager
def app_configured(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the app; on exit restore what was there and reset the app again."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    wiring.reset()
    try:
        yield
    finally:
        wiring.reset()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
