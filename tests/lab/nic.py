"""The stand-in NIC: a veth pair whose host end plays a physical NIC and whose peer, in a
network namespace of its own, plays the LAN host behind it."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from .cleanup import Cleanup
from .daemons import settle_nic_events
from .links import (
    PROTECTED_LINKS,
    create_netns,
    delete_link,
    link_exists,
    link_index,
    link_info,
    ping,
)
from .names import IFNAMSIZ, TEST_PREFIX, random_mac, unique_name
from .rtnl import made_in_netns, rtnl
from .wait import wait_for

FOREVER = 0xFFFFFFFF  # a lifetime that never ends (IFA_CACHEINFO)
IFA_F_TEMPORARY = 0x01
IFA_F_MANAGETEMPADDR = 0x100
IFA_F_NOPREFIXROUTE = 0x200
RTNH_F_ONLINK = 0x4
RT_SCOPE_LINK = 253
# who made a route: the kernel (or NetworkManager, for its own prefix routes), a router
# advertisement, DHCP
RTPROT_KERNEL, RTPROT_RA, RTPROT_DHCP = 2, 9, 16


@dataclass(frozen=True)
class NicAddress:
    """An address the stand-in NIC carries besides ``host_address``, as a DHCP client,
    SLAAC or NetworkManager leaves it: 'a/len', its lifetimes in seconds (None: forever)
    and its IFA_F_* flags (``IFA_F_MANAGETEMPADDR``, ``IFA_F_NOPREFIXROUTE``...)."""

    cidr: str
    valid: int | None = None
    preferred: int | None = None
    flags: int = 0


@dataclass(frozen=True)
class NicRoute:
    """A route through the stand-in NIC that plug() adds after the NIC's addresses:
    ``onlink`` for a gateway outside the NIC's subnets, ``proto``, ``metric``,
    ``expires`` and ``metrics`` as a DHCP client, NetworkManager or a router
    advertisement sets them."""

    dst: str
    gateway: str | None = None
    onlink: bool = False
    proto: int | None = None
    metric: int | None = None
    expires: int | None = None  # seconds (IPv6 routes only, as a router advertisement's)
    metrics: tuple[tuple[str, int], ...] = ()  # RTAX_*: ("mtu", 1400), ("advmss", 1360)


@contextlib.contextmanager
def udev_events_held():
    """udev queues events without running rules while this lasts: a NIC made inside is
    fully configured (addresses, MTU, up) by the time kvmhooks' rule sees it."""
    subprocess.run(["udevadm", "control", "--stop-exec-queue"], check=True)
    try:
        yield
    finally:
        subprocess.run(["udevadm", "control", "--start-exec-queue"], check=True)


class StandInNic:
    """A veth pair standing in for a physical NIC and its LAN.

    The host end is ``name`` (the "NIC"); the peer ``lan0`` lives in a new
    network namespace ``self.ns`` (the "LAN") with ``lan_address``.  The host
    end is up and, if ``host_address`` is given, carries it, and ``addresses``
    (NicAddress) and ``routes`` (NicRoute) besides; ``mtu`` sets both ends; with
    ``ipv6_privacy`` the kernel makes temporary addresses from its ``mngtmpaddr`` ones.
    The NIC keeps its MAC across :meth:`unplug`/:meth:`plug` like a real NIC does.

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
        *,
        mtu: int | None = None,
        addresses: tuple[NicAddress, ...] = (),
        routes: tuple[NicRoute, ...] = (),
        lan_addresses: tuple[str, ...] = (),
        ipv6_privacy: bool = False,
    ) -> None:
        self.cleanup = cleanup
        self.name = name or unique_name(TEST_PREFIX + "nic")
        if self.name in PROTECTED_LINKS or len(self.name) > IFNAMSIZ:
            raise ValueError(f"bad stand-in NIC name {self.name!r}")
        self.host_address = host_address
        self.lan_address = lan_address
        self.mac = mac
        self.mtu = mtu
        self.addresses = addresses
        self.routes = routes
        self.lan_addresses = lan_addresses
        self.ipv6_privacy = ipv6_privacy
        self.ns = create_netns(cleanup)
        # registered once: deletes whatever name the NIC has at cleanup time
        cleanup.add(lambda: delete_link(self.name), _what=f"delete stand-in NIC {self.name}")
        self.plug()
        # The NIC's add event runs kvmhooks' udev rule; let it finish before the test
        # writes a config, so that it never acts on a half-made lab.
        settle_nic_events()

    # -- lifecycle -------------------------------------------------------

    def plug(self, name: str | None = None, host_address: str | None = None,
             addresses: tuple[NicAddress, ...] | None = None,
             routes: tuple[NicRoute, ...] | None = None, hold_events: bool = False) -> None:
        """(Re)create the veth pair: the NIC appears (under ``name`` if given).

        ``host_address`` replaces the address the NIC gets (``""``: none, as
        when kvmhooks had moved it to a bridge that still exists), ``addresses``
        the other ones and ``routes`` its routes. With ``hold_events`` the NIC is
        complete (addresses, routes, MTU, up) before udev runs its rules for it, as when
        a network manager re-applied its addresses before kvmhooks' handler looked."""
        if name:
            self.name = name
        if host_address is not None:
            self.host_address = host_address
        if addresses is not None:
            self.addresses = addresses
        if routes is not None:
            self.routes = routes
        if link_exists(self.name):
            raise RuntimeError(f"stand-in NIC {self.name} already exists")
        with udev_events_held() if hold_events else contextlib.nullcontext():
            self._create()

    def _create(self) -> None:
        tmp_peer = unique_name(TEST_PREFIX + "p")
        # An explicit MAC at creation makes the kernel mark it "set", so
        # udevd's MACAddressPolicy=persistent leaves it alone (it rewrites
        # random MACs of new virtual links asynchronously otherwise).
        self.mac = self.mac or random_mac()
        # The LAN host keeps its MAC too, as a real one does when only our NIC flaps
        # (a new one would sit behind the guests' stale ARP entries).
        self.lan_mac = getattr(self, "lan_mac", None) or random_mac()
        mtu = {"mtu": self.mtu} if self.mtu else {}
        with rtnl() as ipr:
            ipr.link("add", ifname=self.name, kind="veth", address=self.mac,
                     peer={"ifname": tmp_peer, "address": self.lan_mac, **mtu}, **mtu)
            try:
                peer_idx = ipr.link_lookup(ifname=tmp_peer)[0]
                ipr.link("set", index=peer_idx, net_ns_fd=self.ns)
                with rtnl(self.ns) as ns:
                    pidx = ns.link_lookup(ifname=tmp_peer)[0]
                    ns.link("set", index=pidx, ifname=self.PEER)
                    for cidr in ([self.lan_address] if self.lan_address else []) + \
                            list(self.lan_addresses):
                        _add_address(self.PEER, NicAddress(cidr), self.ns)
                    ns.link("set", index=pidx, state="up")
                idx = ipr.link_lookup(ifname=self.name)[0]
                if self.ipv6_privacy:
                    with open(f"/proc/sys/net/ipv6/conf/{self.name}/use_tempaddr", "w") as f:
                        f.write("2")
                # Up with its LAN first, as a network manager adds addresses: the kernel
                # makes temporary addresses only for mngtmpaddr ones added to a device
                # that has its carrier.
                ipr.link("set", index=idx, state="up")
                wait_for(lambda: ipr.get_links(idx)[0].get_attr("IFLA_CARRIER") == 1, 5,
                         what=f"carrier on {self.name}")
                wanted = [NicAddress(self.host_address)] if self.host_address else []
                for address in wanted + list(self.addresses):
                    _add_address(self.name, address)
                for route in self.routes:
                    _add_route(ipr, idx, route)
            except BaseException:
                delete_link(self.name)
                raise

    def unplug(self) -> None:
        """The NIC disappears (its LAN peer with it; the namespace stays)."""
        delete_link(self.name)

    def recreate(self, name: str | None = None, host_address: str | None = None,
                 addresses: tuple[NicAddress, ...] | None = None,
                 routes: tuple[NicRoute, ...] | None = None,
                 hold_events: bool = False) -> None:
        """Delete the NIC and create it again, under ``name`` if given (the arguments
        as for :meth:`plug`)."""
        self.unplug()
        self.plug(name, host_address, addresses, routes, hold_events)

    def rename(self, new_name: str) -> None:
        """Rename the NIC in place (down, rename, up), like a udev rename."""
        with rtnl() as ipr:
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

    def lan_ping(self, address: str, count: int = 1, timeout: float = 2.0,
                 size: int | None = None) -> bool:
        """Ping ``address`` from inside the LAN namespace."""
        return ping(address, ns=self.ns, count=count, timeout=timeout, size=size)

    def lan_neighbour(self, address: str) -> str | None:
        """The MAC the LAN host holds for ``address`` in its neighbour table, or None."""
        family = 10 if ipaddress.ip_address(address).version == 6 else 2
        with rtnl(self.ns) as ns:
            for entry in ns.get_neighbours(family=family):
                if entry.get_attr("NDA_DST") == address:
                    return entry.get_attr("NDA_LLADDR")
        return None

    def capture(self) -> LanCapture:
        """Record every frame the LAN host receives from now on (closed at cleanup)."""
        capture = LanCapture(self.ns, self.PEER)
        self.cleanup.add(capture.close, _what=f"stop capturing on {self.ns}")
        return capture

    def set_lan_neighbour(self, address: str, mac: str) -> None:
        """Make the LAN host believe ``address`` is at ``mac`` (a stale entry, as left by
        a device that had another MAC)."""
        family = 10 if ipaddress.ip_address(address).version == 6 else 2
        with rtnl(self.ns) as ns:
            index = ns.link_lookup(ifname=self.PEER)[0]
            ns.neigh("replace", dst=address, lladdr=mac, ifindex=index, family=family,
                     state=0x04)  # NUD_STALE


#: The IFA_F_* flags a NicAddress may carry, as iproute2 spells them.
IP_ADDRESS_FLAGS = {0x02: "nodad", 0x10: "home", IFA_F_MANAGETEMPADDR: "mngtmpaddr",
                    IFA_F_NOPREFIXROUTE: "noprefixroute", 0x400: "autojoin"}


def _add_address(device: str, address: NicAddress, netns: str | None = None) -> None:
    """With iproute2, which sends every lifetime and flag as given: pyroute2 0.7's addr()
    drops IFA_CACHEINFO, and the lab must not lean on kvmhooks' own netlink code."""
    command = ["ip", *(["-n", netns] if netns else []), "address", "add", address.cidr,
               "dev", device]
    if address.valid is not None or address.preferred is not None:
        command += ["valid_lft", str(FOREVER if address.valid is None else address.valid),
                    "preferred_lft",
                    str(FOREVER if address.preferred is None else address.preferred)]
    unknown = address.flags & ~sum(IP_ADDRESS_FLAGS)
    if unknown:
        raise ValueError(f"{address.cidr}: flags {unknown:#x} cannot be added")
    command += [name for flag, name in IP_ADDRESS_FLAGS.items() if address.flags & flag]
    subprocess.run(command, check=True, capture_output=True)


def _add_route(ipr, index: int, route: NicRoute) -> None:
    spec = {"dst": route.dst, "oif": index, "family": 10 if ":" in route.dst else 2}
    if route.gateway:
        spec["gateway"] = route.gateway
    elif spec["family"] == 2:
        spec["scope"] = RT_SCOPE_LINK  # as `ip route add` makes a route without a gateway
    if route.expires is not None:
        spec["RTA_EXPIRES"] = bytearray(struct.pack("=I", route.expires))  # 0.5 takes no bytes
    if route.onlink:
        spec["flags"] = RTNH_F_ONLINK
    if route.proto is not None:
        spec["proto"] = route.proto
    if route.metric is not None:
        spec["priority"] = route.metric
    if route.metrics:
        spec["metrics"] = dict(route.metrics)
    ipr.route("add", **spec)


ETH_P_ALL = 0x0003


class LanCapture:
    """A raw packet socket on the LAN host's side of the stand-in NIC, opened inside the
    LAN's namespace."""

    def __init__(self, ns: str, ifname: str):
        def open_packet_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                sock.bind((ifname, 0))
            except BaseException:
                sock.close()
                raise
            return sock

        self.sock = made_in_netns(ns, open_packet_socket)
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    def read(self, wait: float = 0.5) -> list[bytes]:
        """Every frame received so far, after ``wait`` seconds without a new one."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < wait:
            try:
                self.frames.append(self.sock.recv(65535))
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.02)
        return list(self.frames)

    def close(self) -> None:
        self.sock.close()
