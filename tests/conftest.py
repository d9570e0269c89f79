"""Shared pytest setup: the ``system`` marker, lab fixtures and a leak check.

System tests (``@pytest.mark.system``) need root, the daemons and the hooks
that ``make setup`` provides.  They fail (never skip) when those are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab import leaks
from tests.lab.cleanup import Cleanup, CleanupError
from tests.lab.commands import HOOKS, QEMU_HOOK
from tests.lab.config import ConfigFile
from tests.lab.daemons import (
    agent_pid,
    daemon_started_after,
    settle_nic_events,
    start_agent,
    stop_agent,
)
from tests.lab.lock import take_lab_lock
from tests.lab.logcapture import SyslogCapture
from tests.lab.names import pick_subnet
from tests.lab.nic import StandInNic
from tests.lab.virt import LIBVIRT_URI, connect


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system: needs root, real kernel devices, libvirtd/udevd and the installed hooks "
        "(run `make setup` first)",
    )


# --------------------------------------------------------------------------
# per-test fixtures


@pytest.fixture
def cleanup(request):
    """A :class:`Cleanup` run at teardown; the test errors if a step failed.

    In system tests the teardown first lets udev's queue and kvmhooks' NIC-event
    handlers finish: a handler still at work on an event the test caused would
    otherwise rebuild a bridge or shim right after the cleanup removed it."""
    registry = Cleanup()
    yield registry
    if request.node.get_closest_marker("system") and os.geteuid() == 0:
        try:
            settle_nic_events()
        except TimeoutError:
            pass  # a handler the test itself holds up: its own cleanup step stops it
    errors = registry.run()
    if errors:
        details = "\n".join(
            getattr(exc, "__cleanup_traceback__", f"{what}: {exc!r}") for what, exc in errors
        )
        pytest.fail(f"{CleanupError(errors)}\n{details}", pytrace=False)


@pytest.fixture
def kh_config(cleanup):
    """Factory: ``kh_config(toml_text) -> Path`` writes /etc/kvmhooks/kvmhooks.toml
    (several calls rewrite it); the previous file comes back at teardown."""
    cfg = ConfigFile(cleanup)
    return cfg.write


@pytest.fixture(scope="session")
def syslog():
    """What kvmhooks logs to syslog during the session (SyslogCapture)."""
    capture = SyslogCapture()
    if not capture.owned:
        capture.close()
        pytest.fail("/dev/log exists: a syslog daemon runs, the tests cannot read kvmhooks' "
                    "log", pytrace=False)
    yield capture
    capture.close()


@pytest.fixture
def no_agent(cleanup):
    """The kvmhooks agent stopped for one test (hooks work in-process), started again
    afterwards."""
    assert agent_pid(), "the lab runs an agent (scripts/lab-setup starts it)"
    stop_agent()
    cleanup.add(start_agent, _what="start the kvmhooks agent again")


@pytest.fixture
def subnet():
    """A fresh /24 out of 198.18.0.0/15 that no route here covers (names.Subnet)."""
    return pick_subnet()


@pytest.fixture
def stand_in_nic(cleanup, subnet):
    """A stand-in NIC ``ktnic......`` with host 198.18.x.1/24 and LAN peer
    198.18.x.2/24 in its own namespace (nic.StandInNic; ``.subnet`` attached)."""
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2))
    nic.subnet = subnet
    return nic


# --------------------------------------------------------------------------
# libvirt


def _fail_setup(reason: str) -> None:
    pytest.fail(f"system test lab not ready: {reason}. Run `make setup` (as root).", pytrace=False)


@pytest.fixture
def libvirt_conn():
    """A read-write connection to qemu:///system, one per test (a test may restart
    libvirtd, which closes its connections).  Fails (does not skip) when
    not root, libvirtd is unreachable, the hooks are missing, or libvirtd
    started before the hooks were (re)installed."""
    if os.geteuid() != 0:
        _fail_setup("system tests must run as root")
    try:
        import libvirt
    except ImportError as exc:
        _fail_setup(f"libvirt-python is not importable ({exc})")
    try:
        conn = connect()
    except libvirt.libvirtError as exc:
        _fail_setup(f"cannot connect to {LIBVIRT_URI} ({exc.get_error_message()})")
    for hook in HOOKS:
        if not hook.exists():
            if hook == QEMU_HOOK:
                _fail_setup(f"{hook} is missing")
            continue
        if daemon_started_after(hook) is False:
            _fail_setup(f"libvirtd started before {hook} was last written, so it ignores hooks")
    yield conn
    try:
        conn.close()
    except Exception:
        pass


# --------------------------------------------------------------------------
# leak check


def _libvirt_for_leak_check():
    """A connection for the leak check, or None (unit-only runs, non-root)."""
    if os.geteuid() != 0 or not Path("/run/libvirt/libvirt-sock").exists():
        return None
    try:
        return connect()
    except Exception:
        return None


def _say(config: pytest.Config, message: str) -> None:
    """Print ``message`` on the terminal even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(message, yellow=True)
    else:
        reporter.write_line(message, yellow=True)


def _lock_system_tests(config: pytest.Config, timeout: float = 900.0) -> Cleanup:
    """Serialize pytest sessions that run system tests on this machine (they
    share /etc/kvmhooks/kvmhooks.toml and purge each other's leftovers), and the
    demo and the benchmark; the lock is held until the returned Cleanup runs."""
    held = Cleanup()
    try:
        take_lab_lock(held, timeout=timeout, on_wait=lambda path: _say(
            config, f"\nlab: waiting for another system test run ({path})"))
    except TimeoutError as error:
        held.run()
        pytest.fail(str(error), pytrace=False)
    return held


class _LinkWatch:
    """Which test's teardown first left each new kt*/kh* link behind, so that the
    session's leak report names a suspect (a link may also come from a process that
    outlived an earlier test)."""

    baseline: set[str] | None = None
    first_seen: dict[str, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    if _LinkWatch.baseline is not None:
        for name in set(leaks.leftover_links()) - _LinkWatch.baseline:
            _LinkWatch.first_seen.setdefault(name, item.nodeid)


def _suspects(links: list[str]) -> str:
    named = sorted({_LinkWatch.first_seen[n] for n in links if n in _LinkWatch.first_seen})
    return f" (first seen after {', '.join(named)})" if named else ""


@pytest.fixture(scope="session", autouse=True)
def _lab_leak_check(request):
    """In sessions that run system tests (as root): take the lab lock and
    clear kt... leftovers of interrupted runs first; at the end, error if this
    run left links (kt*/kh*), namespaces (kt*) or domains (kt*) behind. Other
    sessions have nothing to check."""
    # Only a session holding the lab lock owns what appears on the host meanwhile: a
    # unit-only run beside a system run would blame itself for the other's devices (and
    # would trip over the libvirtd that run restarts).
    if not any(item.get_closest_marker("system") for item in request.session.items) \
            or os.geteuid() != 0:
        yield
        return
    conn = _libvirt_for_leak_check()
    lock = _lock_system_tests(request.config)
    removed = leaks.purge_stale(conn, leaks.snapshot(conn))
    if removed:
        _say(request.config,
             "\nlab: removed leftovers of an earlier test run: " + ", ".join(removed))
    before = leaks.snapshot(conn)
    if conn is not None:
        conn.close()
    _LinkWatch.baseline = before["links"]
    yield
    _LinkWatch.baseline = None
    conn = _libvirt_for_leak_check()  # a test may have restarted libvirtd meanwhile
    after = leaks.snapshot(conn)
    left = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    if conn is not None:
        conn.close()
    if left:
        pytest.fail(
            "tests left these behind (every test must remove what it made): "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in left.items())
            + _suspects(left.get("links", [])),
            pytrace=False,
        )
    lock.run()
