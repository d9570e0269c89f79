"""Polling: wait until something holds, or fail naming what was awaited."""

from __future__ import annotations

import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy; return that.
    Raises TimeoutError (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def wait_started(
    process: subprocess.Popen, ready: Callable[[], object], timeout: float, what: str,
    exited: Callable[[], str],
) -> None:
    """Until the just started ``process`` is ``ready()``; should it exit first, raises
    RuntimeError with the message ``exited()`` makes (what the process left to say).
    Raises TimeoutError (naming ``what``) after ``timeout`` seconds."""
    wait_for(lambda: process.poll() is not None or ready(), timeout, what=what)
    if process.poll() is not None:
        raise RuntimeError(exited())
