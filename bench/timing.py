"""The timed calls of figures a and b, made the same way on both tiers: on the host (its
installed hook, its venv, its agent) and inside the EL9-floor root (bench/floor.py).
Standard library only: it runs under the floor's Python 3.9 too.

Each round times the interpreter's bare start (`python -c pass`, the ratio's floor)
beside the hook calls, so drift on a busy machine hits both sides alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from importlib import metadata

LIBRARIES = ("pyroute2", "lxml")  # what a prepare's time depends on besides Python


class CallFailed(Exception):
    """A timed hook call did not do what the figure measures."""


def timed(command: list[str], stdin: bytes = b"", env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, check=False)
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def versions() -> dict[str, str]:
    """This interpreter's version and its libraries' (as their packages name them)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def describe(found: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in found.items())


def noop_calls(python: str, hook: str, name: str, untagged: bytes, rounds: int,
               env: dict | None = None) -> dict[str, list[float]]:
    """Figure a: the qemu hook's `start` (answered by the shell) and `prepare` of a domain
    without kvmhooks metadata (answered by the client), beside `python -c pass` and, to
    show what the client adds to a bare start, `python -I -S -c pass`."""
    samples: dict[str, list[float]] = {"pass": [], "bare": [], "start": [], "untagged": []}
    for _ in range(rounds):
        samples["pass"].append(timed([python, "-c", "pass"], env=env))
        samples["bare"].append(timed([python, "-I", "-S", "-c", "pass"], env=env))
        samples["start"].append(timed([hook, name, "start", "begin", "-"], env=env))
        samples["untagged"].append(timed([hook, name, "prepare", "begin", "-"], untagged,
                                         env=env))
    return samples


def prepares(python: str, hook: str, name: str, xml: bytes, devices: list[str], rounds: int,
             env: dict | None = None) -> dict[str, list[float]]:
    """Figure b: `prepare` of a tagged domain, which builds its devices, beside
    `python -c pass`; each round's `release` (untimed) removes them again. A call that
    fails or builds nothing would make a fast sample: each is checked after its timing."""
    samples: dict[str, list[float]] = {"pass": [], "prepare": []}
    for _ in range(rounds):
        samples["pass"].append(timed([python, "-c", "pass"], env=env))
        start = time.perf_counter()
        prepared = subprocess.run([hook, name, "prepare", "begin", "-"], input=xml,
                                  capture_output=True, env=env, check=False)
        samples["prepare"].append(time.perf_counter() - start)
        missing = [dev for dev in devices if not _link_exists(dev)]
        if prepared.returncode or prepared.stderr or missing:
            raise CallFailed(f"prepare of {name}: exit status {prepared.returncode}, "
                             f"stderr {prepared.stderr.decode(errors='replace')!r}, "
                             f"devices missing: {missing}")
        released = subprocess.run([hook, name, "release", "end", "-"], input=xml,
                                  capture_output=True, env=env, check=False)
        left = [dev for dev in devices if _link_exists(dev)]
        if released.returncode or released.stderr or left:
            raise CallFailed(f"release of {name}: exit status {released.returncode}, "
                             f"stderr {released.stderr.decode(errors='replace')!r}, "
                             f"devices left: {left}")
    return samples


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")
