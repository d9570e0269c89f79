"""The lab lock: system test sessions, the demo and the benchmark take it, so that one
at a time owns /etc/kvmhooks/kvmhooks.toml, the daemons and the ``kt*`` leftovers."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from .cleanup import Cleanup

LAB_LOCK = Path("/run/lock/kvmhooks-system-tests.lock")


def take_lab_lock(cleanup: Cleanup, on_wait: Callable[[Path], object] | None = None,
                  timeout: float | None = None, shared: bool = False) -> None:
    """Hold the lab lock until ``cleanup`` runs; ``shared`` beside other shared holders
    (the vm tier's sessions, whose VMs touch nothing of this machine's lab).

    When another holds it, calls ``on_wait(LAB_LOCK)`` once (to say so) and waits:
    for ever, or ``timeout`` seconds, then raises TimeoutError."""
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    cleanup.add(os.close, lock, _what="release the lab lock")
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not told and on_wait is not None:
            on_wait(LAB_LOCK)
        told = True
        if deadline is None:
            fcntl.flock(lock, mode)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"another system test run holds {LAB_LOCK}")
        time.sleep(1)
