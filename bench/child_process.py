"""The benchmark's helper processes (the recording endpoints, the worker processes) end the same way."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(process: subprocess.Popen[Any] | None, timeout_s: float) -> None:
    """Close the child's stdin, its signal to finish; kill it if it has not within ``timeout_s``."""
    if process is None:
        return
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
