"""A systemd host VM booted here under TCG, and the LAN it sits on.

QEMU runs inside a network namespace of the test's own: its NICs are taps there,
enslaved to a bridge ``lan`` that holds the LAN host's address and a dnsmasq serving
DHCP. Nothing of it is seen by this machine's own links, udev or routes.

    lan = Lan(cleanup)
    vm = HostVM(cleanup, lan, [VmNic("uplink")])
    vm.boot()  # returns once systemd has finished booting
    vm.agent.sh("ip -br link").check()
    vm.unplug("uplink"); vm.plug("uplink")
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import netns

from tests.lab.cleanup import Cleanup
from tests.lab.links import create_netns, remove_netns
from tests.lab.names import Subnet, guest_mac, pick_subnet, unique_name
from tests.lab.wait import wait_for, wait_started

from .image import HostImage, ensure_image
from .qemu import GuestAgent, Qmp, QmpError

WORK_DIR = Path("/var/tmp/kvmhooks-vm")
QEMU = "qemu-system-x86_64"
#: PCIe root ports: one per NIC slot, so that each NIC can be unplugged and plugged.
ROOT_PORTS = 4
DHCP_LEASE = "2m"  # dnsmasq's shortest
#: Seconds to the first renewal (DHCP option 58; half the lease when unset): NetworkManager's
#: client renews six times a minute, so a test sees renewals without waiting out a lease.
DHCP_RENEWAL = 10
NETNS_PREFIX = "kvlan"


class Lan:
    """A network namespace with a bridge ``lan`` (the LAN host at ``subnet.addr(1)``) and
    a DHCP server handing out .100 to .199 with a short lease."""

    BRIDGE = "lan"

    def __init__(self, cleanup: Cleanup, subnet: Subnet | None = None) -> None:
        self.subnet = subnet or pick_subnet()
        # Not kt...: the system tiers' leak checks and purges leave the vm tier's LAN alone.
        name = unique_name(NETNS_PREFIX)
        _hold_while_alive(cleanup, name)
        self.ns = create_netns(cleanup, name)
        self.host = self.subnet.ip(1)
        self._ip("link", "add", self.BRIDGE, "type", "bridge")
        self._ip("addr", "add", self.subnet.addr(1), "dev", self.BRIDGE)
        self._ip("link", "set", self.BRIDGE, "up")
        self.leases = Path(tempfile.mkstemp(prefix=f"{self.ns}-", suffix=".leases")[1])
        cleanup.add(self.leases.unlink, missing_ok=True, _what="remove the lease file")
        self.dhcp_log = Path(tempfile.mkstemp(prefix=f"{self.ns}-", suffix=".log")[1])
        cleanup.add(self.dhcp_log.unlink, missing_ok=True, _what="remove dnsmasq's log")
        # No pid file: the default one, /var/run/dnsmasq.pid, is shared by the two lanes'
        # servers, and the one that loses the race to create it exits with status 3.
        # Errors before its log is open go to the same file.
        with self.dhcp_log.open("a") as early_errors:
            self.dhcp_server = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "dnsmasq", "--keep-in-foreground",
                 "--pid-file=", "--no-resolv", "--no-hosts", "--port=0",
                 f"--interface={self.BRIDGE}", "--bind-interfaces",
                 f"--dhcp-leasefile={self.leases}",
                 f"--dhcp-range={self.subnet.ip(100)},{self.subnet.ip(199)},{DHCP_LEASE}",
                 f"--dhcp-option=option:router,{self.host}",
                 f"--dhcp-option=option:T1,{DHCP_RENEWAL}", "--log-dhcp",
                 f"--log-facility={self.dhcp_log}"],
                stdout=subprocess.DEVNULL, stderr=early_errors)
        cleanup.add(_stop, self.dhcp_server, _what="stop the LAN's dnsmasq")
        wait_started(self.dhcp_server,
                     lambda: "DHCP, IP range" in self.dhcp_log.read_text(errors="replace"),
                     10, what="the LAN's DHCP server to start",
                     exited=lambda: f"the LAN's DHCP server did not start: {self.diagnosis()}")

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True)

    def acks(self, address: str) -> int:
        """How many DHCPACKs the server has sent for ``address`` (a/len or a)."""
        ip = address.split("/")[0]
        return sum(1 for line in self.dhcp_log.read_text().splitlines()
                   if re.search(rf"DHCPACK\(\S+\) {re.escape(ip)} ", line))

    def diagnosis(self, lines: int = 30) -> str:
        """For a failed test: whether the DHCP server runs, and what it last said."""
        status = self.dhcp_server.poll()
        state = "running" if status is None else f"exited with status {status}"
        said = self.dhcp_log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join([f"dnsmasq {state}; its log's last lines:", *said])

    def add_segment(self, bridge: str) -> Subnet:
        """A second link in the namespace (a bridge ``bridge``, no DHCP), such as the
        hosts' migration link; this machine's end holds ``.1`` of its own subnet."""
        subnet = pick_subnet()
        self._ip("link", "add", bridge, "type", "bridge")
        self._ip("addr", "add", subnet.addr(1), "dev", bridge)
        self._ip("link", "set", bridge, "up")
        return subnet

    def attach(self, tap: str, bridge: str = BRIDGE) -> None:
        self._ip("link", "set", tap, "master", bridge, "up")

    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool:
        done = subprocess.run(["ip", "netns", "exec", self.ns, "ping", "-n", "-q", "-c",
                               str(count), "-W", str(timeout), address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return done.returncode == 0


@dataclass
class VmNic:
    """A virtio NIC of the VM: QMP device ``id``, on its own root port, on the LAN or on
    another segment of the LAN's namespace (Lan.add_segment)."""

    id: str
    mac: str = field(default_factory=guest_mac)
    segment: str = Lan.BRIDGE


class HostVM:
    """The host image booted with a copy-on-write overlay of its own (a reboot keeps it)."""

    #: One vCPU: with two, the VM stopped answering (QEMU spinning on both vCPU threads) or
    #: reset itself in about one full vm tier run of two, each time with nested guests
    #: running; TCG's emulation of SVM for a nested guest on one vCPU while the other
    #: waits on it is the suspect.
    CPUS = 1

    def __init__(self, cleanup: Cleanup, lan: Lan, nics: list[VmNic], *,
                 memory_mib: int = 2048, image: HostImage | None = None):
        if len(nics) > ROOT_PORTS:
            raise ValueError(f"at most {ROOT_PORTS} NICs")
        self.cleanup, self.lan, self.nics = cleanup, lan, {nic.id: nic for nic in nics}
        self.memory_mib = memory_mib
        self.image = image or ensure_image()
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lan.ns}-", dir=WORK_DIR))
        cleanup.add(shutil.rmtree, self.dir, ignore_errors=True,
                    _what=f"remove {self.dir}")
        self.overlay = self.dir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(self.image.disk), str(self.overlay)], check=True)
        self.serial = self.dir / "serial.log"
        self.agent = GuestAgent(str(self.dir / "qga.sock"))
        self.process: subprocess.Popen | None = None
        self.qmp: Qmp | None = None
        self.started = 0.0  # time.monotonic() of the last start()

    def _port(self, nic: VmNic) -> str:
        return f"rp{list(self.nics).index(nic.id) + 1}"

    def _tap(self, nic: VmNic) -> str:
        return f"tap-{nic.id}"[:15]

    def _nic_device(self, nic: VmNic) -> str:
        return f"virtio-net-pci,id={nic.id},netdev=net-{nic.id},mac={nic.mac},bus={self._port(nic)}"

    def command(self) -> list[str]:
        args = [
            QEMU, "-name", self.lan.ns, "-nodefaults", "-display", "none",
            "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(self.CPUS), "-m", str(self.memory_mib),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            # TCG fails the kernel's TSC checks, and the HPET it falls back to is emulated
            # on every clock read: tsc=reliable made a two-vCPU VM 15-25% faster.
            "-append", "root=/dev/vda rw console=ttyS0 tsc=reliable",
            "-drive", f"file={self.overlay},if=none,id=disk,format=qcow2,cache=unsafe",
            "-device", "virtio-blk-pci,drive=disk",
            "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
            "-chardev", f"socket,id=qga,path={self.dir / 'qga.sock'},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-object", "rng-random,id=rng,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng",
        ]
        for i in range(1, ROOT_PORTS + 1):
            args += ["-device", f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i},slot={i}"]
        for nic in self.nics.values():
            args += ["-netdev", f"tap,id=net-{nic.id},ifname={self._tap(nic)},"
                                "script=no,downscript=no,vhost=off",
                     "-device", self._nic_device(nic)]
        return args

    def boot(self, timeout: float = 180.0) -> float:
        """Start QEMU and wait until systemd has booted; returns the seconds it took."""
        self.start()
        return self.wait_booted(timeout)

    def start(self) -> None:
        """Start QEMU, its NICs on their segments; the system boots on meanwhile."""
        self.started = time.monotonic()
        self.process = subprocess.Popen(["ip", "netns", "exec", self.lan.ns, *self.command()],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir / "qemu.err", "wb"),
                                        start_new_session=True)
        self.cleanup.add(self.stop, _what="stop the host VM")
        qmp_path = self.dir / "qmp.sock"
        wait_started(self.process, qmp_path.exists, 30, what="QEMU's QMP socket",
                     exited=lambda: f"QEMU exited: {(self.dir / 'qemu.err').read_text()}")
        self.qmp = Qmp(str(qmp_path))
        for nic in self.nics.values():
            self.lan.attach(self._tap(nic), nic.segment)

    def wait_booted(self, timeout: float = 180.0) -> float:
        """Wait until systemd has booted what start() started; the seconds since then."""
        self.wait_system_up(timeout)
        return time.monotonic() - self.started

    def wait_system_up(self, timeout: float) -> None:
        """Until systemd says the boot is done (running, or degraded). Asked afresh each
        time: the guest agent itself may restart while the system boots."""
        self.agent.wait_up(timeout)

        def booted() -> bool:
            try:
                state = self.agent.sh("systemctl is-system-running", timeout=20).stdout
            except (OSError, ConnectionError, ValueError, RuntimeError, TimeoutError):
                return False
            return state.strip() in ("running", "degraded")

        wait_for(booted, timeout, interval=1, what="systemd to finish booting the VM")

    def stop(self) -> None:
        """Kill QEMU (the overlay stays until the cleanup removes it)."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def console_tail(self, lines: int = 40) -> str:
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def diagnosis(self, lines: int = 60) -> str:
        """For a failed test: the machine events QEMU sent (a RESET no test asked for is a
        machine that restarted itself) and the console's last lines."""
        if self.process is None or self.qmp is None:
            return "the VM is not running"
        try:
            events = ", ".join(
                f"{event['event']} at "
                f"{time.strftime('%H:%M:%S', time.gmtime(event['timestamp']['seconds']))}"
                for event in self.qmp.pending_events()[-20:]) or "none"
        except (OSError, QmpError) as error:
            events = f"unreadable ({error})"
        return f"QMP events not yet consumed (the last 20): {events}\n{self.console_tail(lines)}"

    # -- the machine ------------------------------------------------------------------

    def unplug(self, nic_id: str, timeout: float = 30.0) -> None:
        """PCI hot-unplug of the NIC: the guest's kernel sees it go."""
        self.qmp.execute("device_del", id=nic_id)
        self.qmp.wait_event("DEVICE_DELETED", timeout, device=nic_id)

    def add_nic(self, nic: VmNic) -> None:
        """A NIC the VM did not boot with, hot-plugged on the next free root port, its
        tap on ``nic.segment``."""
        if len(self.nics) >= ROOT_PORTS:
            raise ValueError(f"at most {ROOT_PORTS} NICs")
        self.nics[nic.id] = nic
        self.qmp.execute("netdev_add", type="tap", id=f"net-{nic.id}", ifname=self._tap(nic),
                         script="no", downscript="no", vhost=False)
        self.lan.attach(self._tap(nic), nic.segment)
        self.plug(nic.id)

    def plug(self, nic_id: str) -> None:
        """PCI hotplug of the NIC again, on its own port, with its own MAC."""
        nic = self.nics[nic_id]
        self.qmp.execute("device_add", driver="virtio-net-pci", id=nic.id,
                         netdev=f"net-{nic.id}", mac=nic.mac, bus=self._port(nic))

    def reboot(self, timeout: float = 240.0) -> float:
        """A clean reboot from inside (systemd stops everything); the seconds until the
        system is up again."""
        started = time.monotonic()
        # A reboot sends two RESETs: one of an earlier reboot, still queued, would pass
        # for this one's.
        self.qmp.drop_events("RESET")
        self.agent.call("guest-exec", path="/bin/systemctl", arg=["reboot"])
        try:
            self.qmp.wait_event("RESET", 180)
        except TimeoutError as error:
            tail = self.console_tail()
            raise TimeoutError(f"{error}; the console's last lines:\n{tail}") from None
        self.wait_system_up(timeout)
        return time.monotonic() - started


def _alive_lock(ns: str) -> Path:
    return WORK_DIR / f"{ns}.lock"


def _hold_while_alive(cleanup: Cleanup, ns: str) -> None:
    """Hold ``ns``'s lock until ``cleanup`` runs, taken before the namespace exists: a vm
    session beside this one (`make vmtest` runs two) purges nothing of a LAN in use."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = _alive_lock(ns)
    while True:
        lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(lock)  # a purge took that file for a stale one's and removed it

    def release() -> None:
        path.unlink(missing_ok=True)
        os.close(lock)

    cleanup.add(release, _what=f"release {path}")


def _lan_of(path: Path) -> str:
    """The namespace whose session made ``path`` (named ``ns-...`` or ``ns.lock``)."""
    return path.name.split("-", 1)[0].split(".", 1)[0]


def purge_stale_runs() -> list[str]:
    """Remove what a vm session killed outright left (its QEMUs, LAN namespaces with their
    dnsmasq, overlays, lease files); what a running session holds the lock of is left
    alone. Returns what it removed."""
    removed = []
    claimed: dict[str, int] = {}  # stale LANs: their locks, held until their remains are gone

    def stale(ns: str) -> bool:
        if ns not in claimed:
            lock = os.open(_alive_lock(ns), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                return False
            claimed[ns] = lock
        return True

    def pids_in(ns: str) -> list[str]:
        return subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        for ns in sorted(n for n in netns.listnetns() if n.startswith(NETNS_PREFIX)):
            if not stale(ns):
                continue
            pids = pids_in(ns)
            for pid in pids:  # QEMU and dnsmasq run in the namespace
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda ns=ns: not pids_in(ns), 30,
                     what=f"the processes of namespace {ns} gone")
            remove_netns(ns)
            removed.append(f"netns {ns} ({len(pids)} processes)")
        remains = list(WORK_DIR.glob(f"{NETNS_PREFIX}*"))
        remains += Path(tempfile.gettempdir()).glob(f"{NETNS_PREFIX}*")
        for path in sorted(remains):
            if not stale(_lan_of(path)) or path.suffix == ".lock":
                continue  # in use; or a stale lock, removed below
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
    finally:
        for ns, lock in claimed.items():
            _alive_lock(ns).unlink(missing_ok=True)
            os.close(lock)
    return removed


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
