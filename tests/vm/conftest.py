"""The `vm` tier: one systemd host VM per session, booted under TCG on a LAN of its own,
with kvmhooks installed as a host installs it. Tests drive it from outside and leave it
as they found it (config, guests, NIC plugged); the session removes the VM, its overlay,
taps and namespace, also on failure. What the tier measured is printed at the end."""

from __future__ import annotations

import os

import pytest
from pyroute2 import netns

from tests.lab.cleanup import Cleanup
from tests.lab.lock import take_lab_lock

from .host import KvmhooksHost, build_wheel
from .machine import WORK_DIR, HostVM, Lan, VmNic

#: name -> seconds, printed in the terminal summary (the README's "Tested on a systemd host").
MEASURED: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured on the systemd host VM")
        for name, seconds in MEASURED.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def vm_host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the vm tier runs as root (network namespaces, taps)", pytrace=False)
    session = Cleanup()
    lan = None
    try:
        # One lab user at a time: the system tiers' leak checks would count the VM's LAN
        # namespace, and a TCG VM beside timed tests makes both slow.
        take_lab_lock(session)
        wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
        lan = Lan(session)
        vm = HostVM(session, lan, [VmNic("uplink"), VmNic("static")])
        MEASURED["boot to multi-user"] = vm.boot()
        host = KvmhooksHost(vm, lan)
        host.install(wheel)
        yield host
    finally:
        errors = session.run()
    left = []
    if lan is not None:
        left += [lan.ns] if lan.ns in netns.listnetns() else []
        left += [str(p) for p in WORK_DIR.glob(f"{lan.ns}-*")] if WORK_DIR.exists() else []
    if errors or left:
        pytest.fail(f"the vm session's cleanup failed ({errors}) or left {left}", pytrace=False)
