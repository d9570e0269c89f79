"""The daemons the lab runs beside the tests: the kvmhooks agent (stop, start, its PID),
udev's NIC-event handlers (wait until they are done), libvirtd (its start time: did it
start after the hooks were written, so that it runs them; stopped and started again, as
a daemon restart does), and a guest's qemu process (frozen, so that libvirt calls that
need its monitor hang)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .cleanup import Cleanup, remove_file
from .wait import wait_for

AGENT_PIDFILE = Path("/run/kvmhooks-agent.pid")  # written by scripts/lab-setup too
AGENT_SOCKET = Path("/run/kvmhooks/agent.sock")
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
LIBVIRT_URI = "qemu:///system"


# --- the kvmhooks agent ---------------------------------------------------------------

def agent_pid() -> int | None:
    """The running kvmhooks agent's PID, or None."""
    try:
        pid = int(AGENT_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() and AGENT_SOCKET.exists() else None


def waits_for_a_lock(pid: int, path: str | None = None) -> bool:
    """Whether process ``pid`` is blocked on a file lock (a "->" line in /proc/locks), on
    the file at ``path`` if given."""
    inode = f":{os.stat(path).st_ino}" if path else ""
    with open("/proc/locks") as locks:
        waiters = [line.split() for line in locks if " -> " in line]
    return any(fields[5] == str(pid) and fields[6].endswith(inode) for fields in waiters)


def process_gone(pid: int) -> bool:
    """The process ended (a zombie child of this process is reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def stop_agent() -> None:
    pid = agent_pid()
    if pid is None:
        return
    os.kill(pid, 15)
    wait_for(lambda: process_gone(pid), 10, what=f"agent {pid} to stop")
    remove_file(AGENT_SOCKET)


def start_agent() -> int:
    """Start `kvmhooks agent` as scripts/lab-setup does; returns its PID."""
    remove_file(AGENT_SOCKET)
    command = os.path.join(os.path.dirname(sys.executable), "kvmhooks")
    process = subprocess.Popen([command, "agent"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    AGENT_PIDFILE.write_text(f"{process.pid}\n")
    wait_for(AGENT_SOCKET.exists, 10, what="the agent's socket")
    return process.pid


# --- udev and kvmhooks' NIC-event handlers ----------------------------------------------

def settle_nic_events(timeout: float = 15.0) -> None:
    """Wait until udev has run its queue and no `kvmhooks nic-event` handler runs."""
    settle_udev(timeout)
    wait_for(lambda: not nic_event_handlers(), timeout, what="kvmhooks nic-event handlers")


def settle_udev(timeout: float = 15.0) -> None:
    """Wait (``timeout`` seconds at most) until udev has run the rules of every event."""
    subprocess.run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)


def nic_event_handlers() -> list[int]:
    """Process IDs of running `kvmhooks nic-event` handlers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                words = stream.read().split(b"\0")
        except OSError:
            continue
        if b"kvmhooks" in b" ".join(words) and b"nic-event" in words:
            found.append(int(entry))
    return found


# --- libvirtd -------------------------------------------------------------------------

def process_start_time(pid: int) -> float:
    """Wall-clock start time of process ``pid`` (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    btime = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def daemon_started_after(path: Path | str, pidfile: Path | str = LIBVIRTD_PIDFILE) -> bool | None:
    """True when libvirtd (per ``pidfile``) started after ``path`` was last
    changed; None when either is unknown. libvirtd reads its hook scripts only when
    it starts."""
    try:
        pid = int(Path(pidfile).read_text().strip())
        started = process_start_time(pid)
        changed = os.stat(path).st_mtime
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return started + 1.0 >= changed


def libvirtd_pid() -> int | None:
    """The running libvirtd's PID, or None."""
    try:
        pid = int(LIBVIRTD_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if process_gone(pid) else pid


def stop_libvirtd(cleanup: Cleanup) -> None:
    """Stop libvirtd as a restart of the daemon begins (its guests' qemu processes keep
    running); it is started again at cleanup unless the test did so first."""
    pid = libvirtd_pid()
    assert pid is not None, "the lab runs libvirtd (scripts/lab-setup starts it)"
    cleanup.add(start_libvirtd, _what="start libvirtd again")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: process_gone(pid), 30, what=f"libvirtd {pid} to stop")


def start_libvirtd() -> None:
    """Start libvirtd as scripts/lab-setup does, unless it runs; returns once it answers
    (it reconnects to the running guests first, running their reconnect hooks)."""
    if libvirtd_pid() is None:
        os.makedirs("/run/libvirt", exist_ok=True)
        subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"],
                                    capture_output=True).returncode == 0,
             30, what="libvirtd to answer")


# --- a guest's qemu -------------------------------------------------------------------

def qemu_pid(domain: str) -> int:
    """The PID of a running domain's qemu process."""
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())


def freeze_qemu(cleanup: Cleanup, domain: str) -> None:
    """Stop the domain's qemu process (SIGSTOP): its monitor answers nothing, so every
    libvirt call that needs it (a device detach or attach) hangs; it goes on at cleanup."""
    pid = qemu_pid(domain)
    cleanup.add(os.kill, pid, signal.SIGCONT, _what=f"let qemu {pid} of {domain} go on")
    os.kill(pid, signal.SIGSTOP)
