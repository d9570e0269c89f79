"""kvmhooks on the systemd host VM, driven from outside: installed the way a host installs
it, configured, and nested guests that boot inside it (type='kvm': the VM's CPU has SVM)
and ping the LAN.

    host = KvmhooksHost(vm, lan)
    host.install(wheel)
    host.configure('[uplink.lan]\\nnic = "enp1s0"\\n')
    guest = host.start_guest([Iface(guest_mac(), "direct", "lan", "bridge")])
    guest.wait_pinging(lan.host)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab.cleanup import Cleanup
from tests.lab.domains import Iface, domain_xml, serial_log_path
from tests.lab.guest import guest_cmdline, ping_line
from tests.lab.names import unique_name

from .image import GUEST_DIR
from .machine import HostVM, Lan
from .qemu import Completed

PROJECT = Path(__file__).resolve().parents[2]
CONFIG = "/etc/kvmhooks/kvmhooks.toml"
#: libvirt's cache of what each QEMU binary can do: a daemon that finds none probes QEMU,
#: which takes about 12 s under TCG, at the first guest start of every fresh VM.
QEMU_CAPABILITIES = "/var/cache/libvirt/qemu/capabilities"


def build_wheel(into: Path) -> Path:
    """The kvmhooks wheel of this tree (what `pip install kvmhooks` would install)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(into), str(PROJECT)], check=True)
    (wheel,) = into.glob("kvmhooks-*.whl")
    return wheel


@dataclass
class NestedGuest:
    host: KvmhooksHost
    name: str
    ifaces: list[Iface]

    def serial(self) -> list[str]:
        out = self.host.sh(f"cat {serial_log_path(self.name)} 2>/dev/null || true").stdout
        return out.splitlines()

    def wait_line(self, regex: str, timeout: float, after: int = 0, count: int = 1) -> int:
        """Wait for ``count`` serial lines matching ``regex`` after line ``after``; the
        number of lines then."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.serial()
            if sum(1 for line in lines[after:] if pattern.search(line)) >= count:
                return len(lines)
            if time.monotonic() >= deadline:
                tail = "\n".join(lines[-10:])
                raise TimeoutError(f"guest {self.name}: no {count} x /{regex}/ within "
                                   f"{timeout} s; last lines:\n{tail}")
            time.sleep(1)

    def wait_pinging(self, address: str, timeout: float = 120, after: int = 0) -> int:
        """Two successful pings of ``address`` after line ``after`` (one in flight at the
        mark may count for the old state)."""
        return self.wait_line(ping_line(address), timeout, after, count=2)


def pinging_again_after(action, guests: list[NestedGuest], target: str, timeout: float) -> None:
    """``action()``, then each guest pings ``target`` again: twice after the serial line
    it had reached before the action."""
    marks = [len(guest.serial()) for guest in guests]
    action()
    for guest, mark in zip(guests, marks):
        guest.wait_pinging(target, timeout=timeout, after=mark)


class KvmhooksHost:
    def __init__(self, vm: HostVM, lan: Lan) -> None:
        self.vm, self.lan = vm, lan
        #: Its address on the hosts' migration link (addr without length), once it has one.
        self.migration_address: str | None = None

    def sh(self, script: str, timeout: float = 120) -> Completed:
        try:
            return self.vm.agent.sh(script, timeout)
        except OSError as error:  # timeouts too: what the console says tells why
            raise type(error)(f"{error}; the VM's console ends:\n"
                              f"{self.vm.console_tail(25)}") from error

    def check(self, script: str, timeout: float = 120) -> str:
        return self.sh(script, timeout).check().stdout

    def install(self, wheel: Path) -> None:
        """pip's wheel, then `kvmhooks install` writes the RPM's files at the RPM's paths;
        the agent socket is enabled through systemd; udev reloads its rules."""
        target = f"/root/{wheel.name}"
        self.vm.agent.write_file(target, wheel.read_bytes())
        self.check(f"pip install -q --break-system-packages --no-deps --no-index "
                   f"--root-user-action=ignore {target} && kvmhooks install && "
                   "systemctl daemon-reload && systemctl enable --now kvmhooks-agent.socket && "
                   "udevadm control --reload", timeout=300)

    def warm_qemu_capabilities(self, saved: Path) -> None:
        """libvirt's cache of QEMU's capabilities as a VM of the same image wrote it
        (``saved``/*.xml), given before the daemon first starts. libvirt checks a cached
        entry against the QEMU and libvirt binaries, the kernel, the CPU and /dev/kvm, and
        probes again when one differs."""
        files = sorted(saved.glob("*.xml")) if saved.is_dir() else []
        if files:
            self.check(f"mkdir -p {QEMU_CAPABILITIES}")
        for file in files:
            self.vm.agent.write_file(f"{QEMU_CAPABILITIES}/{file.name}", file.read_bytes(),
                                     0o600)

    def save_qemu_capabilities(self, into: Path) -> None:
        """Keep the cache libvirt wrote here in ``into`` for the next VMs, unless a cache
        is kept there already."""
        if into.is_dir() and any(into.glob("*.xml")):
            return
        names = self.check(f"cd {QEMU_CAPABILITIES} 2>/dev/null && ls -- *.xml || true").split()
        into.mkdir(exist_ok=True)
        for name in names:
            partial = into / f".{name}"
            partial.write_text(self.check(f"cat {QEMU_CAPABILITIES}/{name}"))
            partial.rename(into / name)

    def accept_migrations(self, hostname: str, uuid_digit: str) -> None:
        """libvirt listening on TCP without authentication (the link is the test's own),
        under a hostname and host UUID of its own: libvirt refuses a migration between
        hosts that share either, and every host VM boots from the same image."""
        uuid = "00000000-0000-4000-8000-" + uuid_digit * 12
        self.check(f"hostnamectl set-hostname {hostname} && "
                   f"printf 'auth_tcp = \"none\"\\nhost_uuid = \"{uuid}\"\\n' "
                   ">>/etc/libvirt/libvirtd.conf && systemctl stop libvirtd.service && "
                   "systemctl enable --now libvirtd-tcp.socket")

    def ifname(self, mac: str) -> str:
        """The name of the VM's NIC with ``mac``."""
        for line in self.check("ip -o link show").splitlines():
            if f"link/ether {mac.lower()} " in line:
                return line.split(": ")[1].split("@")[0]
        raise LookupError(f"no NIC with MAC {mac} in the VM")

    def set_static_address(self, ifname: str, address: str) -> None:
        """A static IPv4 address on ``ifname``, the way the host's NetworkManager keeps it."""
        self.check(f"nmcli -w 30 connection add type ethernet con-name static-{ifname} "
                   f"ifname {ifname} ipv4.method manual ipv4.addresses {address} "
                   f"ipv6.method disabled connection.autoconnect-priority 10 && "
                   f"nmcli -w 30 connection up static-{ifname}", timeout=60)

    def authorize_ssh_key(self, public_key: str) -> None:
        self.check("mkdir -p -m 700 /root/.ssh")
        self.vm.agent.write_file("/root/.ssh/authorized_keys", public_key.encode(), 0o600)
        self.check("systemctl start ssh.service")

    def configure(self, text: str) -> None:
        self.check(f"mkdir -p /etc/kvmhooks && printf %s {shlex.quote(text)} >{CONFIG}.new && "
                   f"kvmhooks check-config {CONFIG}.new && mv {CONFIG}.new {CONFIG}")

    def define_guest(self, cleanup: Cleanup, ifaces: list[Iface], ips: dict[str, str],
                     pings: list[str], *, autostart: bool = False,
                     vlans: dict[str, dict[int, str]] | None = None) -> NestedGuest:
        """Define a nested guest (kvm, 128 MiB) running the lab image (``vlans``: its
        VLAN sub-interfaces, guest.guest_cmdline)."""
        name = unique_name("kt-g-")
        xml = domain_xml(name, ifaces, virt_type="kvm", memory_mib=128,
                         kernel=f"{GUEST_DIR}/vmlinuz", initrd=f"{GUEST_DIR}/initrd.gz",
                         cmdline=guest_cmdline(ips, pings, vlans=vlans))
        self.vm.agent.write_file(f"/root/{name}.xml", xml.encode())
        cleanup.add(self.remove_guest, name, _what=f"remove nested guest {name}")
        self.check(f"virsh -q define /root/{name}.xml"
                   + (f" && virsh -q autostart {name}" if autostart else ""))
        return NestedGuest(self, name, ifaces)

    def start_guest(self, cleanup: Cleanup, ifaces: list[Iface], ips: dict[str, str],
                    pings: list[str], *, autostart: bool = False) -> NestedGuest:
        """Define and start a nested guest."""
        guest = self.define_guest(cleanup, ifaces, ips, pings, autostart=autostart)
        self.check(f"virsh -q start {guest.name}", timeout=180)
        return guest

    def remove_guest(self, name: str) -> None:
        if self.vm.process is None or self.vm.process.poll() is not None:
            return
        self.sh(f"virsh -q destroy {name}; virsh -q undefine {name}; "
                f"rm -f /root/{name}.xml {serial_log_path(name)}", timeout=120)

    def settle(self, timeout: float = 120) -> None:
        """Wait until udev has run its queue and no kvmhooks-nic@ unit is at work."""
        self.check("udevadm settle && "
                   "while systemctl list-units --no-legend 'kvmhooks-nic@*' | grep -q .; do "
                   "sleep 0.5; done", timeout=timeout)

    def address(self, ifname: str) -> str | None:
        """The IPv4 address (addr/len) on ``ifname`` in the VM, or None."""
        out = self.sh(f"ip -4 -o addr show dev {shlex.quote(ifname)}").stdout
        found = re.search(r"inet (\S+)", out)
        return found.group(1) if found else None
