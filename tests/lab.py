"""Helpers for system tests and the demo: stand-in NICs, subnets, domains.

Everything a helper creates is registered in a :class:`Cleanup`, which undoes
it in reverse order, also when a test fails half-way.

Naming: every kernel link, network namespace and libvirt domain that tests
make starts with ``TEST_PREFIX`` (``kt``) so the leak check in conftest.py can
find leftovers.  Devices that kvmhooks itself creates are named ``kh...``
(``kh`` + 12 hex digits per guest, ``kh-<uplink>`` shims); the leak check
looks for those too.

Addresses: only 198.18.0.0/15, and only /24s that no route on the machine
covers (:func:`pick_subnet`).  Never touches eth0.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from xml.sax.saxutils import escape, quoteattr

from pyroute2 import IPRoute, NetNS, netns

T = TypeVar("T")

TEST_PREFIX = "kt"
#: Link name prefixes the leak check looks at: test-made and kvmhooks-made.
LEAK_LINK_PREFIXES = (TEST_PREFIX, "kh")
LAB_SUPERNET = ipaddress.ip_network("198.18.0.0/15")
LIBVIRT_URI = "qemu:///system"
CONFIG_PATH = Path("/etc/kvmhooks/kvmhooks.toml")
PROTECTED_LINKS = frozenset({"eth0", "lo"})
IFNAMSIZ = 15


# --------------------------------------------------------------------------
# Cleanup registry


class CleanupError(Exception):
    """One or more cleanup callbacks failed; ``errors`` holds the details."""

    def __init__(self, errors: list[tuple[str, BaseException]]):
        self.errors = errors
        lines = [f"{len(errors)} cleanup step(s) failed:"]
        for what, exc in errors:
            lines.append(f"  {what}: {type(exc).__name__}: {exc}")
        super().__init__("\n".join(lines))


class Cleanup:
    """LIFO registry of undo callbacks.

    ``add(fn, *args, **kwargs)`` registers; ``run()`` calls all of them, newest
    first, keeps going when one raises, and returns the list of
    ``(description, exception)`` it collected (also kept in ``errors``).
    ``run(raise_errors=True)`` raises :class:`CleanupError` instead.
    Usable as a context manager (raises on exit if something failed).
    """

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[..., Any], tuple, dict]] = []
        self.errors: list[tuple[str, BaseException]] = []

    def add(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        what = kwargs.pop("_what", None) or _describe(fn, args)
        self._stack.append((what, fn, args, kwargs))
        return fn

    def __len__(self) -> int:
        return len(self._stack)

    def run(self, raise_errors: bool = False) -> list[tuple[str, BaseException]]:
        errors: list[tuple[str, BaseException]] = []
        while self._stack:
            what, fn, args, kwargs = self._stack.pop()
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - keep cleaning up
                exc.__cleanup_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
                errors.append((what, exc))
        self.errors.extend(errors)
        if raise_errors and errors:
            raise CleanupError(errors)
        return errors

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(raise_errors=exc_info[0] is None)


def _describe(fn: Callable[..., Any], args: tuple) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    shown = ", ".join(repr(a) for a in args)
    return f"{name}({shown})"


# --------------------------------------------------------------------------
# Names and subnets


def random_mac(first_octet: int | None = None) -> str:
    """A random locally administered unicast MAC (02:..., or ``first_octet``)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = first_octet if first_octet is not None else (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def unique_name(prefix: str = TEST_PREFIX, hexdigits: int = 6) -> str:
    """``prefix`` + random hex, at most 15 characters (a kernel link name).

    Uses fewer hex digits (but at least 4) when the prefix is long.
    """
    room = IFNAMSIZ - len(prefix)
    if room < 4:
        raise ValueError(f"prefix {prefix!r} too long for a unique 15-character name")
    n = min(hexdigits, room)
    return prefix + secrets.token_hex((n + 1) // 2)[:n]


@dataclass(frozen=True)
class Subnet:
    """A /24 out of 198.18.0.0/15. ``addr(1)`` -> '198.18.7.1/24', ``ip(1)`` -> '198.18.7.1'."""

    network: ipaddress.IPv4Network

    def ip(self, host: int) -> str:
        return str(self.network[host])

    def addr(self, host: int) -> str:
        return f"{self.network[host]}/{self.network.prefixlen}"

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def __str__(self) -> str:
        return str(self.network)


_handed_out: set[ipaddress.IPv4Network] = set()


def _routed_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    with IPRoute() as ipr:
        for table in (254, 255):  # main (what `ip route` shows) and local
            for r in ipr.get_routes(family=2, table=table):
                dst = r.get_attr("RTA_DST")
                plen = r["dst_len"]
                if dst is None or plen == 0:
                    continue  # the default route covers nothing specific
                nets.append(ipaddress.ip_network(f"{dst}/{plen}", strict=False))
        for a in ipr.get_addr(family=2):
            nets.append(
                ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            )
    return nets


def pick_subnet() -> Subnet:
    """A random /24 in 198.18.0.0/15 that overlaps no route or address here
    and was not handed out before in this process."""
    used = _routed_networks()
    candidates = list(LAB_SUPERNET.subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if net in _handed_out:
            continue
        if any(net.overlaps(u) for u in used):
            continue
        _handed_out.add(net)
        return Subnet(net)
    raise RuntimeError("no free /24 left in 198.18.0.0/15")


# --------------------------------------------------------------------------
# Links and namespaces


def link_index(name: str, ns: str | None = None) -> int | None:
    """Index of link ``name`` (in namespace ``ns``), or None."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_exists(name: str, ns: str | None = None) -> bool:
    return link_index(name, ns) is not None


def link_info(name: str, ns: str | None = None) -> dict[str, Any] | None:
    """A plain dict about link ``name``: index, ifname, mac, kind, master
    (name or None), up (bool), operstate, alias, addresses (list of 'a/len'),
    link (parent index, for macvlan/macvtap), mode (macvlan/macvtap mode name).
    None when the link does not exist."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        msg = ipr.get_links(found[0])[0]
        master_idx = msg.get_attr("IFLA_MASTER")
        master = None
        if master_idx:
            m = ipr.get_links(master_idx)
            master = m[0].get_attr("IFLA_IFNAME") if m else None
        addrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])
        ]
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    mode = None
    if linkinfo and kind in ("macvlan", "macvtap"):
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if data is not None:
            mode = data.get_attr("IFLA_MACVLAN_MODE") or data.get_attr("IFLA_MACVTAP_MODE")
    return {
        "index": found[0],
        "ifname": msg.get_attr("IFLA_IFNAME"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "kind": kind,
        "master": master,
        "up": bool(msg["flags"] & 1),
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "alias": msg.get_attr("IFLA_IFALIAS"),
        "addresses": addrs,
        "link": msg.get_attr("IFLA_LINK"),
        "mode": mode,
    }


def delete_link(name: str, ns: str | None = None) -> bool:
    """Delete link ``name`` if it exists; True when something was deleted."""
    if ns is None and name in PROTECTED_LINKS:
        raise ValueError(f"refusing to delete {name}")
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except Exception as exc:  # gone in between (a veth peer, a macvtap)
            if getattr(exc, "code", None) == errno.ENODEV:
                return False
            raise
    return True


def delete_link_later(cleanup: Cleanup, name: str, ns: str | None = None) -> None:
    """Register removal of ``name`` (if present at cleanup time): for devices
    that kvmhooks or libvirt create on a test's behalf, such as bridges."""
    cleanup.add(delete_link, name, ns, _what=f"delete link {name}")


def create_tap(name: str, cleanup: Cleanup, mac: str | None = None) -> int:
    """A tap device ``name`` (down), removed at cleanup. Returns its index."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        delete_link_later(cleanup, name)
        idx = ipr.link_lookup(ifname=name)[0]
        if mac:
            ipr.link("set", index=idx, address=mac)
    return idx


def create_macvtap(
    name: str, parent: str, cleanup: Cleanup, mac: str | None = None, mode: str = "bridge"
) -> int:
    """A macvtap ``name`` on link ``parent`` in ``mode``, removed at cleanup."""
    if parent in PROTECTED_LINKS:
        raise ValueError(f"refusing to put a macvtap on {parent}")
    with IPRoute() as ipr:
        parent_idx = ipr.link_lookup(ifname=parent)[0]
        kw: dict[str, Any] = {}
        if mac:
            kw["address"] = mac
        ipr.link("add", ifname=name, kind="macvtap", link=parent_idx, macvtap_mode=mode, **kw)
        delete_link_later(cleanup, name)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, state="up")
    return idx


def create_bridge(name: str, cleanup: Cleanup, address: str | None = None) -> int:
    """An up Linux bridge ``name`` (optionally with ``address`` 'a/len'), removed at cleanup."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        delete_link_later(cleanup, name)
        idx = ipr.link_lookup(ifname=name)[0]
        if address:
            ip, plen = address.split("/")
            ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")
    return idx


def create_netns(cleanup: Cleanup, name: str | None = None) -> str:
    """A new network namespace (name ``kt...``) with lo up; removed at cleanup."""
    name = name or unique_name(TEST_PREFIX + "ns")
    netns.create(name)
    cleanup.add(remove_netns, name, _what=f"remove netns {name}")
    with NetNS(name, flags=0) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    return name


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def _ipr(ns: str | None):
    return NetNS(ns, flags=0) if ns else IPRoute()


def ping(address: str, ns: str | None = None, count: int = 1, timeout: float = 2.0) -> bool:
    """True when ``address`` answers a ping (from the host, or from inside ``ns``)."""
    cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(max(1, int(timeout))), address]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return r.returncode == 0


def _listened_on(path: str) -> bool:
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


class SyslogCapture:
    """Listens on /dev/log (where no syslog daemon does) and keeps what kvmhooks logs,
    hooks and detached NIC handlers included, as (severity, text) pairs."""

    PATH = "/dev/log"
    SEVERITY = {3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}

    def __init__(self) -> None:
        import socket
        import threading
        self.records: list[tuple[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each record's arrival
        if os.path.exists(self.PATH) and not _listened_on(self.PATH):
            _remove_file(self.PATH)  # left by a run that was killed
        self.owned = not os.path.exists(self.PATH)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.owned:
            self.sock.bind(self.PATH)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            text = data.decode(errors="replace").rstrip("\0\n")
            priority, _, message = text.partition(">")
            severity = int(priority.lstrip("<") or 6) % 8 if priority.startswith("<") else 6
            self.times.append(time.monotonic())
            self.records.append((self.SEVERITY.get(severity, str(severity)), message))

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.records[mark:]

    def close(self) -> None:
        self.sock.close()
        if self.owned:
            _remove_file(self.PATH)


AGENT_PIDFILE = Path("/run/kvmhooks-agent.pid")  # written by scripts/lab-setup too
AGENT_SOCKET = Path("/run/kvmhooks/agent.sock")


def agent_pid() -> int | None:
    """The running kvmhooks agent's PID, or None."""
    try:
        pid = int(AGENT_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() and AGENT_SOCKET.exists() else None


def _gone(pid: int) -> bool:
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
    wait_for(lambda: _gone(pid), 10, what=f"agent {pid} to stop")
    _remove_file(str(AGENT_SOCKET))


def start_agent() -> int:
    """Start `kvmhooks agent` as scripts/lab-setup does; returns its PID."""
    import sys
    _remove_file(str(AGENT_SOCKET))
    command = os.path.join(os.path.dirname(sys.executable), "kvmhooks")
    process = subprocess.Popen([command, "agent"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    AGENT_PIDFILE.write_text(f"{process.pid}\n")
    wait_for(AGENT_SOCKET.exists, 10, what="the agent's socket")
    return process.pid


LAB_LOCK = Path("/run/lock/kvmhooks-system-tests.lock")


def take_lab_lock(cleanup: Cleanup) -> None:
    """The lab lock that system test runs, the demo and the benchmark share: one at a
    time owns /etc/kvmhooks/kvmhooks.toml and the daemons."""
    import fcntl
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    cleanup.add(os.close, lock, _what="release the lab lock")
    fcntl.flock(lock, fcntl.LOCK_EX)


def settle_nic_events(timeout: float = 15.0) -> None:
    """Wait until udev has run its queue and no `kvmhooks nic-event` handler runs."""
    subprocess.run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)
    wait_for(lambda: not nic_event_handlers(), timeout, what="kvmhooks nic-event handlers")


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


class StandInNic:
    """A veth pair standing in for a physical NIC and its LAN.

    The host end is ``name`` (the "NIC"); the peer ``lan0`` lives in a new
    network namespace ``self.ns`` (the "LAN") with ``lan_address``.  The host
    end is up and, if ``host_address`` is given, carries it.  The NIC keeps
    its MAC across :meth:`unplug`/:meth:`plug` like a real NIC does.

        nic = StandInNic(cleanup, unique_name("ktnic"), subnet.addr(1), subnet.addr(2))
        ping(subnet.ip(2))          # host -> LAN
        nic.unplug(); nic.plug()    # the NIC goes away and comes back
    """

    PEER = "lan0"

    def __init__(
        self,
        cleanup: Cleanup,
        name: str | None = None,
        host_address: str | None = None,
        lan_address: str | None = None,
        mac: str | None = None,
    ) -> None:
        self.cleanup = cleanup
        self.name = name or unique_name(TEST_PREFIX + "nic")
        if self.name in PROTECTED_LINKS or len(self.name) > IFNAMSIZ:
            raise ValueError(f"bad stand-in NIC name {self.name!r}")
        self.host_address = host_address
        self.lan_address = lan_address
        self.mac = mac
        self.ns = create_netns(cleanup)
        # registered once: deletes whatever name the NIC has at cleanup time
        cleanup.add(lambda: delete_link(self.name), _what=f"delete stand-in NIC {self.name}")
        self.plug()
        # The NIC's add event runs kvmhooks' udev rule; let it finish before the test
        # writes a config, so that it never acts on a half-made lab.
        settle_nic_events()

    # -- lifecycle -------------------------------------------------------

    def plug(self, name: str | None = None, host_address: str | None = None) -> None:
        """(Re)create the veth pair: the NIC appears (under ``name`` if given).

        ``host_address`` replaces the address the NIC gets (``""``: none, as
        when kvmhooks had moved it to a bridge that still exists)."""
        if name:
            self.name = name
        if host_address is not None:
            self.host_address = host_address
        if link_exists(self.name):
            raise RuntimeError(f"stand-in NIC {self.name} already exists")
        tmp_peer = unique_name(TEST_PREFIX + "p")
        # An explicit MAC at creation makes the kernel mark it "set", so
        # udevd's MACAddressPolicy=persistent leaves it alone (it rewrites
        # random MACs of new virtual links asynchronously otherwise).
        self.mac = self.mac or random_mac()
        # The LAN host keeps its MAC too, as a real one does when only our NIC flaps
        # (a new one would sit behind the guests' stale ARP entries).
        self.lan_mac = getattr(self, "lan_mac", None) or random_mac()
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.name, kind="veth", address=self.mac,
                     peer={"ifname": tmp_peer, "address": self.lan_mac})
            try:
                peer_idx = ipr.link_lookup(ifname=tmp_peer)[0]
                ipr.link("set", index=peer_idx, net_ns_fd=self.ns)
                idx = ipr.link_lookup(ifname=self.name)[0]
                if self.host_address:
                    ip, plen = self.host_address.split("/")
                    ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
                ipr.link("set", index=idx, state="up")
            except BaseException:
                delete_link(self.name)
                raise
        with NetNS(self.ns, flags=0) as ns:
            pidx = ns.link_lookup(ifname=tmp_peer)[0]
            ns.link("set", index=pidx, ifname=self.PEER)
            if self.lan_address:
                ip, plen = self.lan_address.split("/")
                ns.addr("add", index=pidx, address=ip, prefixlen=int(plen))
            ns.link("set", index=pidx, state="up")

    def unplug(self) -> None:
        """The NIC disappears (its LAN peer with it; the namespace stays)."""
        delete_link(self.name)

    def recreate(self, name: str | None = None, host_address: str | None = None) -> None:
        """Delete the NIC and create it again, under ``name`` if given."""
        self.unplug()
        self.plug(name, host_address)

    def rename(self, new_name: str) -> None:
        """Rename the NIC in place (down, rename, up), like a udev rename."""
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, state="down")
            ipr.link("set", index=idx, ifname=new_name)
            ipr.link("set", index=idx, state="up")
        self.name = new_name

    # -- queries ---------------------------------------------------------

    @property
    def index(self) -> int | None:
        return link_index(self.name)

    def read_mac(self) -> str:
        """The NIC's current MAC (lower case)."""
        info = link_info(self.name)
        if info is None:
            raise RuntimeError(f"stand-in NIC {self.name} does not exist")
        return info["mac"]

    def lan_ping(self, address: str, count: int = 1, timeout: float = 2.0) -> bool:
        """Ping ``address`` from inside the LAN namespace."""
        return ping(address, ns=self.ns, count=count, timeout=timeout)


# --------------------------------------------------------------------------
# libvirt


def connect(uri: str = LIBVIRT_URI):
    """A read-write libvirt connection (raises libvirt.libvirtError)."""
    import libvirt

    # errors arrive as exceptions; keep libvirt from also printing them
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(uri)


def minimal_domain_xml(
    name: str,
    interfaces_xml: str = "",
    metadata_xml: str = "",
    virt_type: str = "kvm",
    serial_path: str | None = None,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
    memory_mib: int = 64,
) -> str:
    """A tiny i440fx domain: 1 vCPU, no disks, no graphics, ACPI, serial to a file.

    Without ``kernel`` it sits in the BIOS doing nothing much (enough for
    device plumbing and hooks).  ``metadata_xml`` goes inside ``<metadata>``.
    ``serial_path`` defaults to /var/log/libvirt/qemu/NAME-serial.log.
    """
    serial_path = serial_path or serial_log_path(name)
    os_extra = ""
    if kernel:
        os_extra += f"<kernel>{escape(kernel)}</kernel>"
        if initrd:
            os_extra += f"<initrd>{escape(initrd)}</initrd>"
        if cmdline:
            os_extra += f"<cmdline>{escape(cmdline)}</cmdline>"
    else:
        os_extra = "<boot dev='hd'/>"
    metadata = f"<metadata>{metadata_xml}</metadata>" if metadata_xml else ""
    return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  {metadata}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    {os_extra}
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'>
      <source path={quoteattr(serial_path)}/>
      <target port='0'/>
    </serial>
    {interfaces_xml}
  </devices>
</domain>
"""


def serial_log_path(name: str) -> str:
    return f"/var/log/libvirt/qemu/{name}-serial.log"


def undefine_flags() -> int:
    import libvirt

    flags = 0
    for flag in (
        "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
        "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
        "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
        "VIR_DOMAIN_UNDEFINE_NVRAM",
    ):
        flags |= getattr(libvirt, flag, 0)
    return flags


def destroy_and_undefine(conn, name: str) -> None:
    """Destroy (if running) and undefine domain ``name`` if it exists."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise  # "domain is not running" raced us: fine
    if dom.isPersistent():
        dom.undefineFlags(undefine_flags())


def define(conn, xml: str, cleanup: Cleanup):
    """Define a persistent domain; cleanup destroys and undefines it."""
    dom = conn.defineXML(xml)
    name = dom.name()
    for log in (serial_log_path(name), f"/var/log/libvirt/qemu/{name}.log"):
        cleanup.add(_remove_file, log, _what=f"remove {log}")
    cleanup.add(destroy_and_undefine, conn, name, _what=f"destroy+undefine domain {name}")
    return dom


def define_and_start(conn, xml: str, cleanup: Cleanup):
    """Define and start a persistent domain; cleanup destroys and undefines
    it (with its managed save, snapshot metadata and nvram). Returns virDomain."""
    dom = define(conn, xml, cleanup)
    dom.create()
    return dom


def domain_xml(dom, live: bool = True) -> str:
    """The live (or, ``live=False``, the persistent/inactive) XML."""
    import libvirt

    return dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE)


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy; return that.
    Raises TimeoutError (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Host config


class ConfigFile:
    """Writes /etc/kvmhooks/kvmhooks.toml for one test and puts back what was
    there (or nothing) at cleanup.  libvirtd passes no environment to hooks,
    so system tests must use the real path.

        ConfigFile(cleanup).write('[uplink.lan]\\nnic = "ktnic1a2b3c"\\n')
    """

    def __init__(self, cleanup: Cleanup, path: Path | str = CONFIG_PATH) -> None:
        self.path = Path(path)
        self._backup: bytes | None = None
        self._backup_mode: int | None = None
        self._created_dir: Path | None = None
        self._armed = False
        self.cleanup = cleanup

    def write(self, text: str) -> Path:
        if not self._armed:
            if self.path.exists():
                self._backup = self.path.read_bytes()
                self._backup_mode = self.path.stat().st_mode & 0o7777
            elif not self.path.parent.exists():
                self._created_dir = self.path.parent
            self.cleanup.add(self.restore, _what=f"restore {self.path}")
            self._armed = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".kt-tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)
        return self.path

    def restore(self) -> None:
        if self._backup is not None:
            self.path.write_bytes(self._backup)
            if self._backup_mode is not None:
                os.chmod(self.path, self._backup_mode)
        else:
            _remove_file(str(self.path))
            if self._created_dir is not None:
                shutil.rmtree(self._created_dir, ignore_errors=True)
        self._armed = False


# --------------------------------------------------------------------------
# Leak detection (used by conftest.py)


def leftover_links() -> list[str]:
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if n and n.startswith(LEAK_LINK_PREFIXES))


def leftover_netns() -> list[str]:
    try:
        return sorted(n for n in netns.listnetns() if n.startswith(TEST_PREFIX))
    except FileNotFoundError:
        return []


def leftover_domains(conn) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(TEST_PREFIX))


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


def daemon_started_after(path: Path | str, pidfile: str = "/run/libvirtd.pid") -> bool | None:
    """True when libvirtd (per ``pidfile``) started after ``path`` was last
    changed; None when either is unknown."""
    try:
        pid = int(Path(pidfile).read_text().strip())
        started = process_start_time(pid)
        changed = os.stat(path).st_mtime
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return started + 1.0 >= changed
