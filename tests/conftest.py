"""Shared pytest setup: the ``system`` marker, lab fixtures and a leak check.

System tests (``@pytest.mark.system``) need root, the daemons and the hooks
that ``make setup`` provides.  They fail (never skip) when those are missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402

QEMU_HOOK = Path("/etc/libvirt/hooks/qemu.d/kvmhooks")
NETWORK_HOOK = Path("/etc/libvirt/hooks/network.d/kvmhooks")
HOOK_PATHS = (QEMU_HOOK, NETWORK_HOOK)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system: needs root, real kernel devices, libvirtd/udevd and the installed hooks "
        "(run `make setup` first)",
    )


# --------------------------------------------------------------------------
# per-test fixtures


@pytest.fixture
def cleanup():
    """A :class:`lab.Cleanup` run at teardown; the test errors if a step failed."""
    registry = lab.Cleanup()
    yield registry
    errors = registry.run()
    if errors:
        details = "\n".join(
            getattr(exc, "__cleanup_traceback__", f"{what}: {exc!r}") for what, exc in errors
        )
        pytest.fail(f"{lab.CleanupError(errors)}\n{details}", pytrace=False)


@pytest.fixture
def kh_config(cleanup):
    """Factory: ``kh_config(toml_text) -> Path`` writes /etc/kvmhooks/kvmhooks.toml
    (several calls rewrite it); the previous file comes back at teardown."""
    cfg = lab.ConfigFile(cleanup)
    return cfg.write


@pytest.fixture(scope="session")
def syslog():
    """What kvmhooks logs to syslog during the session (lab.SyslogCapture)."""
    capture = lab.SyslogCapture()
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
    assert lab.agent_pid(), "the lab runs an agent (scripts/lab-setup starts it)"
    lab.stop_agent()
    cleanup.add(lab.start_agent, _what="start the kvmhooks agent again")


@pytest.fixture
def subnet():
    """A fresh /24 out of 198.18.0.0/15 that no route here covers (lab.Subnet)."""
    return lab.pick_subnet()


@pytest.fixture
def stand_in_nic(cleanup, subnet):
    """A stand-in NIC ``ktnic......`` with host 198.18.x.1/24 and LAN peer
    198.18.x.2/24 in its own namespace (lab.StandInNic; ``.subnet`` attached)."""
    nic = lab.StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2))
    nic.subnet = subnet
    return nic


# --------------------------------------------------------------------------
# libvirt


def _fail_setup(reason: str) -> None:
    pytest.fail(f"system test lab not ready: {reason}. Run `make setup` (as root).", pytrace=False)


@pytest.fixture(scope="session")
def libvirt_conn():
    """A read-write connection to qemu:///system.  Fails (does not skip) when
    not root, libvirtd is unreachable, the hooks are missing, or libvirtd
    started before the hooks were (re)installed."""
    if os.geteuid() != 0:
        _fail_setup("system tests must run as root")
    try:
        import libvirt
    except ImportError as exc:
        _fail_setup(f"libvirt-python is not importable ({exc})")
    try:
        conn = lab.connect()
    except libvirt.libvirtError as exc:
        _fail_setup(f"cannot connect to {lab.LIBVIRT_URI} ({exc.get_error_message()})")
    for hook in HOOK_PATHS:
        if not hook.exists():
            if hook == QEMU_HOOK:
                _fail_setup(f"{hook} is missing")
            continue
        if lab.daemon_started_after(hook) is False:
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
        import libvirt

        return libvirt.open(lab.LIBVIRT_URI)
    except Exception:
        return None


def _snapshot(conn) -> dict[str, set[str]]:
    return {
        "links": set(lab.leftover_links()),
        "namespaces": set(lab.leftover_netns()),
        "domains": set(lab.leftover_domains(conn)) if conn is not None else set(),
    }


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


def _purge_stale(conn, snap: dict[str, set[str]], config: pytest.Config) -> None:
    """Remove test-named (kt...) leftovers of an earlier, interrupted run."""
    removed = []
    for name in sorted(snap["domains"]):
        lab.destroy_and_undefine(conn, name)
        removed.append(f"domain {name}")
    for name in sorted(snap["links"]):
        if name.startswith(lab.TEST_PREFIX) and lab.delete_link(name):
            removed.append(f"link {name}")
    for name in sorted(snap["namespaces"]):
        lab.remove_netns(name)
        removed.append(f"netns {name}")
    if removed:
        _say(config, "\nlab: removed leftovers of an earlier test run: " + ", ".join(removed))


SYSTEM_LOCK = Path("/run/lock/kvmhooks-system-tests.lock")


def _lock_system_tests(config: pytest.Config, timeout: float = 900.0):
    """Serialize pytest sessions that run system tests on this machine (they
    share /etc/kvmhooks/kvmhooks.toml and purge each other's leftovers)."""
    import fcntl
    import time

    SYSTEM_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(SYSTEM_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.fail(f"another system test run holds {SYSTEM_LOCK}", pytrace=False)
            if not told:
                _say(config, f"\nlab: waiting for another system test run ({SYSTEM_LOCK})")
                told = True
            time.sleep(1)


@pytest.fixture(scope="session", autouse=True)
def _lab_leak_check(request):
    """In sessions that run system tests (as root): take the lab lock and
    clear kt... leftovers of interrupted runs first; at the end, error if this
    run left links (kt*/kh*), namespaces (kt*) or domains (kt*) behind."""
    has_system = any(item.get_closest_marker("system") for item in request.session.items)
    lock_fd = None
    conn = _libvirt_for_leak_check()
    if has_system and os.geteuid() == 0:
        lock_fd = _lock_system_tests(request.config)
        _purge_stale(conn, _snapshot(conn), request.config)
    before = _snapshot(conn)
    yield
    after = _snapshot(conn)
    leaks = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    if conn is not None:
        conn.close()
    # Only a session holding the lab lock owns what appears on the host meanwhile: a
    # unit-only run beside a system run would blame itself for the other's devices.
    if leaks and lock_fd is not None:
        pytest.fail(
            "tests left these behind (every test must remove what it made): "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in leaks.items()),
            pytrace=False,
        )
    if lock_fd is not None:
        os.close(lock_fd)
