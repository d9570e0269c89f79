"""A hook killed (SIGKILL) in the middle of prepare: `status` shows the orphans kvmhooks
owns, `apply` removes them, and a new start converges with nothing doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.lab.commands import QEMU_HOOK, kvmhooks
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import delete_link_later, link_exists, link_info, marked_links
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define

pytestmark = pytest.mark.system


def kill_in_the_middle(name: str, xml: str, devices: list[str], attempts: int = 8) -> list[str]:
    """Run prepare as libvirt would (in-process: no agent), freeze it once it has built
    some but not all devices, kill it; returns the devices it left."""
    for _ in range(attempts):
        hook = subprocess.Popen([QEMU_HOOK, name, "prepare", "begin", "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hook.stdin.write(xml.encode())
        hook.stdin.close()
        deadline = time.monotonic() + 30
        # Past the first device, so that at least one is complete when the kill comes.
        while sum(os.path.exists(f"/sys/class/net/{d}") for d in devices) < 2:
            if hook.poll() is not None or time.monotonic() > deadline:
                break
        hook.send_signal(signal.SIGSTOP)
        hook.kill()
        hook.wait()
        # After the kill: a tap caught before it was made persistent goes with its process.
        left = [d for d in devices if os.path.exists(f"/sys/class/net/{d}")]
        if 0 < len(left) < len(devices):
            return left
        subprocess.run([QEMU_HOOK, name, "release", "end", "-"], input=xml.encode(), check=True)
    pytest.fail(f"no attempt stopped prepare half way in {attempts} tries")


def orphan_rows(name: str) -> list[dict]:
    rows = json.loads(kvmhooks("status", "--json").stdout)
    return [row for row in rows if row["domain"] == name and row["state"] == "orphan"]


def test_killed_prepare_leaves_orphans_that_apply_removes_and_a_start_converges(
        libvirt_conn, cleanup, kh_config, stand_in_nic, no_agent):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink = up.name
    ifaces = [Iface(guest_mac(), "bridge", uplink) for _ in range(6)] + \
        [Iface(guest_mac(), "direct", uplink, "bridge") for _ in range(6)]
    devices = [iface.hook_owned_dev for iface in ifaces]
    for device in devices:
        delete_link_later(cleanup, device)
    name = unique_name("kt-dom-")
    xml = domain_xml(name, ifaces)
    dom = define(libvirt_conn, xml, cleanup)

    left = kill_in_the_middle(name, xml, devices)
    orphans = orphan_rows(name)
    assert sorted(row["device"] for row in orphans) == sorted(left)
    applied = kvmhooks("apply")
    assert applied.returncode == 0, applied.stderr
    assert not any(link_exists(device) for device in left)
    assert orphan_rows(name) == []

    kill_in_the_middle(name, xml, devices)
    dom.create()  # a new start over what the killed one left
    for iface in ifaces:
        info = link_info(iface.hook_owned_dev)
        assert info is not None and info["alias"] == f"kvmhooks:guest:{dom.UUIDString()}"
    macs = [link_info(n)["mac"] for n in marked_links(f"kvmhooks:guest:{dom.UUIDString()}")]
    assert len(macs) == len(ifaces) == len(set(macs)), "nothing doubled"
    assert orphan_rows(name) == []
    dom.destroy()
    assert not marked_links(f"kvmhooks:guest:{dom.UUIDString()}")
