"""The `vm` tier: one systemd host VM per session, booted under TCG on a LAN of its own,
with kvmhooks installed as a host installs it. Tests drive it from outside and leave it
as they found it (config, guests, NIC plugged); the session removes the VM, its overlay,
taps and namespace, also on failure. What the tier measured is printed at the end."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import netns

from tests.lab.cleanup import Cleanup
from tests.lab.lock import take_lab_lock
from tests.lab.names import Subnet

from .fleet import PlayRun, run_playbook, write_inventory
from .host import KvmhooksHost, build_wheel
from .image import MANAGED_NIC, STATIC_NIC
from .lanes import SECOND_HOST_GATE_ENV, WHEEL_ENV
from .machine import WORK_DIR, HostVM, Lan, VmNic, purge_stale_runs

#: The bridge in the LAN's namespace that links the hosts for migrations and SSH.
MIGRATION_LINK = "migration"

#: name -> seconds, printed in the terminal summary (the README's "Tested on a systemd host").
MEASURED: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured on the systemd host VM")
        for name, seconds in MEASURED.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed vm test's report carries what each host VM's machine and console said,
    and the LAN's DHCP server."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    diagnoses = {}
    if "vm_lab" in funcargs:
        host = funcargs["vm_lab"].host
        diagnoses["host VM"], diagnoses["the LAN"] = host.vm.diagnosis, host.lan.diagnosis
    if "two_hosts" in funcargs:
        diagnoses["second host VM"] = funcargs["two_hosts"].b.vm.diagnosis
    for what, diagnosis in diagnoses.items():
        report.sections.append((f"{what} ({report.when})", diagnosis()))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get(WHEEL_ENV):  # `make vmtest` built it for both its lanes
        return Path(os.environ[WHEEL_ENV])
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@dataclass(frozen=True)
class VmLab:
    """What a vm session runs: host a (the session's host VM) on the LAN and, when a
    selected test needs two hosts, host b on the LAN and the migration link. A TCG VM
    keeps one core busy and this machine has two: host b boots beside host a from the
    start, or, with ``second_gate`` (`make vmtest`'s main lane), once the lane beside
    this session has ended."""

    host: KvmhooksHost
    second: HostVM | None
    migration_link: Subnet | None
    second_gate: Path | None = None

    def boot_second_host_when_free(self, wait: bool = False) -> None:
        """Start host b's boot, once, if its gate is free (``wait``: when it is)."""
        if self.second is None or self.second.process is not None:
            return
        if self.second_gate is not None and not _free(self.second_gate, wait):
            return
        self.second.start()


def _free(gate: Path, wait: bool) -> bool:
    """Whether no process holds ``gate`` (waiting until none does, if ``wait``)."""
    try:
        lock = os.open(gate, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(lock)


def needs_two_hosts(session: pytest.Session) -> bool:
    return any("two_hosts" in item.fixturenames for item in session.items)


@pytest.fixture(scope="session")
def vm_lab(wheel, request) -> VmLab:
    if os.geteuid() != 0:
        pytest.fail("the vm tier runs as root (network namespaces, taps)", pytrace=False)
    session = Cleanup()
    lan = None
    try:
        # Not beside the system tiers: their leak checks would count the VM's LAN
        # namespace, and a TCG VM beside timed tests makes both slow. vm sessions share
        # it: `make vmtest` runs two, each with a LAN and VMs of its own.
        take_lab_lock(session, shared=True)
        for removed in purge_stale_runs():
            print(f"removed what an interrupted vm session left: {removed}")
        lan = Lan(session)
        vm = HostVM(session, lan, [VmNic("uplink"), VmNic("static")])
        second = link = None
        gate = os.environ.get(SECOND_HOST_GATE_ENV)
        if needs_two_hosts(request.session):
            link = lan.add_segment(MIGRATION_LINK)
            second = HostVM(session, lan, [VmNic("b-migration", segment=MIGRATION_LINK),
                                           VmNic("b-uplink")], memory_mib=1536)
            if gate is None:
                second.start()
        MEASURED["boot to multi-user"] = vm.boot()
        host = KvmhooksHost(vm, lan)
        host.warm_qemu_capabilities(vm.image.qemu_capabilities)
        host.install(wheel)
        yield VmLab(host, second, link, Path(gate) if gate else None)
    finally:
        errors = session.run()
    left = []
    if lan is not None:
        left += [lan.ns] if lan.ns in netns.listnetns() else []
        left += [str(p) for p in WORK_DIR.glob(f"{lan.ns}-*")] if WORK_DIR.exists() else []
    if errors or left:
        pytest.fail(f"the vm session's cleanup failed ({errors}) or left {left}", pytrace=False)


@pytest.fixture(scope="session")
def vm_host(vm_lab) -> KvmhooksHost:
    return vm_lab.host


@pytest.fixture(autouse=True)
def second_host_boots_when_free(vm_lab) -> None:
    """Between tests, host b's boot starts once its gate is free."""
    vm_lab.boot_second_host_when_free()


@dataclass(frozen=True)
class TwoHosts:
    """Host a (the session's VM: uplink NIC enp1s0, DHCP from the LAN) and host b (uplink
    NIC enp2s0, no address), both on the LAN and on a migration link of their own, with
    kvmhooks installed and configured by the project's Ansible role: ``first_run`` is that
    run, ``inventory`` its inventory; root logs in to either over SSH on the link."""

    a: KvmhooksHost
    b: KvmhooksHost
    inventory: Path
    first_run: PlayRun

    def play(self, playbook: str, *extra: str) -> PlayRun:
        return run_playbook(self.a.lan.ns, self.inventory, playbook, *extra)


@pytest.fixture(scope="module")
def two_hosts(vm_lab, wheel, tmp_path_factory) -> TwoHosts:
    """Host b (1 vCPU, 1.5 GiB, booted beside the session's host a: see VmLab), nothing
    of kvmhooks on b until the role installs it; both accept live migrations over TCP on
    the link. Host b stops with the module. Host a keeps its new hostname, the role's
    install and libvirt's TCP listener: the modules that follow in a session of all of
    tests/vm configure kvmhooks their own way and need none of them undone."""
    module = Cleanup()
    try:
        a, link = vm_lab.host, vm_lab.migration_link
        vm_lab.boot_second_host_when_free(wait=True)
        vm_lab.second.wait_booted()
        a_link = VmNic("a-migration", segment=MIGRATION_LINK)
        a.vm.add_nic(a_link)
        module.add(a.vm.unplug, a_link.id, _what="unplug host a's migration NIC")
        module.add(vm_lab.second.stop, _what="stop host b")
        b = KvmhooksHost(vm_lab.second, a.lan)
        # By b's clock: b may have booted long before this module.
        MEASURED["second host: boot to multi-user, beside host a"] = int(
            b.check("systemctl show -P FinishTimestampMonotonic")) / 1e6
        b_link, b_uplink = b.vm.nics["b-migration"], b.vm.nics["b-uplink"]
        # Both hosts boot the same image: the capabilities host a's libvirt probed hold
        # for host b's.
        a.save_qemu_capabilities(a.vm.image.qemu_capabilities)
        b.warm_qemu_capabilities(b.vm.image.qemu_capabilities)
        work = tmp_path_factory.mktemp("fleet")
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        for host, nic, last_octet, name in ((a, a_link, 11, "a"), (b, b_link, 12, "b")):
            module.add(host.sh, "rm -f /root/.ssh/authorized_keys",
                       _what=f"remove host {name}'s SSH key")
            host.set_static_address(host.ifname(nic.mac), link.addr(last_octet))
            host.migration_address = link.ip(last_octet)
            host.accept_migrations(f"kvmhost-{name}", name)
            host.authorize_ssh_key(key.with_suffix(".pub").read_text())
        # Each way of naming a NIC: a's by kernel name and udev path, b's by MAC.
        a_static_path = a.check("udevadm info --query=property --property=ID_PATH --value "
                                f"/sys/class/net/{STATIC_NIC}").strip()
        inventory = write_inventory(work / "inventory.yml", {
            "kvmhost-a": {"ansible_host": a.migration_address, "kvmhooks_uplinks": {
                "lan": {"nic": MANAGED_NIC}, "storage": {"path": a_static_path}}},
            "kvmhost-b": {"ansible_host": b.migration_address, "kvmhooks_uplinks": {
                "lan": {"mac": b_uplink.mac}}},
        }, {"ansible_user": "root", "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3", "kvmhooks_wheel": str(wheel)})
        started = time.monotonic()
        first_run = run_playbook(a.lan.ns, inventory, "site.yml")
        MEASURED["the Ansible role's first run on both hosts"] = time.monotonic() - started
        if first_run.returncode != 0:
            pytest.fail(f"the Ansible role failed on the hosts:\n{first_run.output}",
                        pytrace=False)
        yield TwoHosts(a, b, inventory, first_run)
    finally:
        errors = module.run()
    if errors:
        pytest.fail(f"the second host's cleanup failed: {errors}", pytrace=False)
