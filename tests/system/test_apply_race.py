"""`kvmhooks apply` removes the devices of domains that do not run; a domain that starts
between apply's look at libvirt and its turn at the host keeps its devices."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import pytest

from tests.lab.commands import STATE_DIR
from tests.lab.daemons import waits_for_a_lock
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_exists
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define
from tests.lab.wait import wait_for

pytestmark = pytest.mark.system


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def lock_is_free(path) -> bool:
    probe = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(probe)


def test_a_guest_that_starts_while_apply_waits_keeps_its_devices(libvirt_conn, cleanup,
                                                                  kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "bridge")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)

    # apply reads which domains run, then waits for the host lock, held here; it is
    # stopped there while the guest starts, so the guest's prepare builds first.
    lock = os.open(STATE_DIR / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        apply = subprocess.Popen([sys.executable, "-m", "kvmhooks", "apply"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cleanup.add(lambda: apply.poll() is None and (apply.kill(), apply.wait()),
                    _what="stop kvmhooks apply")
        wait_for(lambda: waits_for_a_lock(apply.pid), 30, what="apply to wait for the lock")
        os.kill(apply.pid, signal.SIGSTOP)
        cleanup.add(lambda: apply.poll() is None and os.kill(apply.pid, signal.SIGCONT),
                    _what="let kvmhooks apply go on")
        wait_for(lambda: process_state(apply.pid) == "T", 10, what="apply to stop")
    finally:
        os.close(lock)
    assert lock_is_free(STATE_DIR / "lock"), "apply took the lock before it stopped"
    dom.create()
    assert link_exists(iface.hook_owned_dev)
    os.kill(apply.pid, signal.SIGCONT)
    out, err = apply.communicate(timeout=60)
    assert apply.returncode == 0, err
    assert link_exists(iface.hook_owned_dev), f"apply removed a running guest's device: {out}"
