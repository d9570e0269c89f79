"""A snapshot of host links (dataclasses, no I/O); netlink.py fills it in."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, replace

from .names import Mark, parse_mark

LOWER_KINDS = ("macvlan", "macvtap")  # kinds whose IFLA_LINK is a parent on this host

# Address flags (IFA_F_*, linux/if_addr.h) and route values (linux/rtnetlink.h) the
# decisions below read.
IFA_F_TEMPORARY = 0x01  # IPv6 only (IPv4's IFA_F_SECONDARY has the same value)
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RTPROT_KERNEL = 2
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTNH_F_ONLINK = 0x4


@dataclass(frozen=True)
class Address:
    """An address on a link, with what moving it keeps: its IFA_F_* flags, its remaining
    lifetimes in seconds (None: forever), the metric of its prefix route, its broadcast
    address, what its label holds after the device's name (":1"), and its protocol."""

    cidr: str  # "198.18.1.1/24"
    flags: int = 0
    valid: int | None = None
    preferred: int | None = None
    metric: int | None = None
    broadcast: str | None = None
    label: str | None = None
    protocol: int | None = None

    def __str__(self) -> str:
        return self.cidr

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.cidr)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.interface.version == 6 else socket.AF_INET

    @property
    def temporary(self) -> bool:
        """An IPv6 temporary (privacy) address: the kernel makes it from a mngtmpaddr
        address, removes it with that address, and takes the flag from no one."""
        return self.family == socket.AF_INET6 and bool(self.flags & IFA_F_TEMPORARY)

    @property
    def lease(self) -> bool:
        """An IPv4 address with an end: a DHCP client's lease (the kernel ends none of its
        own IPv4 addresses)."""
        return self.family == socket.AF_INET and self.valid is not None

    @property
    def makes_prefix_route(self) -> bool:
        return not self.flags & IFA_F_NOPREFIXROUTE

    def describe(self) -> str:
        lifetimes = f" (valid {self.valid} s, preferred {self.preferred} s)" \
            if self.valid is not None else ""
        return self.cidr + lifetimes


@dataclass(frozen=True)
class Route:
    """A main-table unicast route through a link, with what moving it keeps."""

    dst: str  # "default" or a prefix such as "198.18.5.0/24"
    family: int
    gateway: str | None = None
    priority: int | None = None  # the metric
    source: str | None = None  # prefsrc
    protocol: int | None = None  # RTPROT_* (None: not known)
    scope: int = 0
    flags: int = 0  # RTNH_F_ONLINK
    tos: int = 0
    pref: int | None = None  # an IPv6 router's preference
    expires: int | None = None  # seconds left (IPv6); None: never
    metrics: tuple[tuple[str, int], ...] = ()  # RTAX_*: mtu, advmss...

    def describe(self) -> str:
        text = self.dst + (f" via {self.gateway}" if self.gateway else "")
        text += " onlink" if self.flags & RTNH_F_ONLINK else ""
        return text + (f" metric {self.priority}" if self.priority is not None else "")


def is_prefix_route(route: Route, addresses: tuple[Address, ...]) -> bool:
    """Whether the kernel made this route for one of the link's addresses (and makes it
    again wherever the address goes). A route of protocol "kernel" for a prefix whose
    address has noprefixroute was made by someone else (NetworkManager makes its prefix
    routes so), and moves with the addresses."""
    return route.protocol == RTPROT_KERNEL and any(
        address.makes_prefix_route and address.family == route.family
        and str(address.interface.network) == route.dst for address in addresses)


def in_adding_order(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """``routes`` in an order the kernel accepts them in on another device: a route
    through a gateway only after the routes that reach gateways. The kernel lists routes
    by destination, so a default route comes before the prefix route NetworkManager
    adds for its noprefixroute address, and would find its gateway unreachable."""
    return tuple(sorted(routes, key=lambda route: route.gateway is not None))


def prefix_route(address: Address) -> Route:
    """The route the kernel makes for an address on a device (IPv6's metric 256 where
    the address names none)."""
    interface = address.interface
    ipv4 = interface.version == 4
    metric = address.metric if address.metric is not None or ipv4 else 256
    return Route(str(interface.network), address.family, priority=metric,
                 source=str(interface.ip) if ipv4 else None, protocol=RTPROT_KERNEL,
                 scope=RT_SCOPE_LINK if ipv4 else RT_SCOPE_UNIVERSE)


@dataclass(frozen=True)
class PortVlans:
    """The VLANs of a port of a bridge that filters VLANs: its PVID (the VLAN its untagged
    frames join, None when it has none) and every VLAN it is a member of."""

    pvid: int | None = None
    untagged: tuple[int, ...] = ()  # VLANs whose frames leave the port untagged
    members: tuple[int, ...] = ()  # every VLAN of the port, ascending

    @property
    def tagged(self) -> tuple[int, ...]:
        return tuple(vlan for vlan in self.members if vlan not in self.untagged)


DEFAULT_PVID = 1  # the kernel's default_pvid: every new port's untagged VLAN


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None = None  # "bridge", "macvtap", "macvlan", "tun", "veth", ... or None
    mac: str | None = None
    alias: str | None = None
    master: int | None = None
    parent: int | None = None  # lower device of a macvlan or macvtap
    up: bool = False
    mode: str | None = None  # macvlan/macvtap mode, in the contract's words
    addresses: tuple[Address, ...] = ()  # global-scope addresses
    routes: tuple[Route, ...] = ()  # routes through the link that are not the kernel's
    prefix_routes: tuple[Route, ...] = ()  # the kernel's routes for the link's addresses
    id_path: str | None = None  # udev ID_PATH, when it was asked for
    permanent_mac: str | None = None
    mtu: int = 1500
    multi_queue: bool | None = None  # a tun device's queue flag; None: not a tun, or unknown
    vlan_filtering: bool = False  # a bridge that filters VLANs
    default_pvid: int | None = None  # a bridge's VLAN for new ports (0: none; None: unknown)
    vlans: PortVlans | None = None  # a filtering bridge's, or a port's of one: its VLANs
    vlan_id: int | None = None  # an 802.1Q sub-interface's VLAN
    mark_pending: bool = False  # its mark comes from the creation journal, not the kernel

    @property
    def mark(self) -> Mark | None:
        return parse_mark(self.alias)

    @property
    def marked(self) -> bool:
        return self.mark is not None

    def holds(self, cidr: str) -> bool:
        return any(address.cidr == cidr for address in self.addresses)


@dataclass(frozen=True)
class Inventory:
    links: tuple[Link, ...] = ()
    _by_name: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {link.name: link for link in self.links})

    def by_name(self, name: str) -> Link | None:
        return self._by_name.get(name)

    def by_index(self, index: int | None) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def children(self, link: Link) -> tuple[Link, ...]:
        """macvlan and macvtap devices whose lower device is link."""
        return tuple(child for child in self.links
                     if child.kind in LOWER_KINDS and child.parent == link.index)

    def ports(self, link: Link) -> tuple[Link, ...]:
        return tuple(port for port in self.links if port.master == link.index)

    def marked_with(self, mark: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.alias == mark)

    def orphans(self, running_uuids: set[str]) -> tuple[tuple[Link, str], ...]:
        """kvmhooks' per-guest devices of domains that do not run (a prepare killed before
        it could undo, a release that never came), each with its domain's UUID."""
        return tuple((link, link.mark.subject) for link in self.links
                     if link.mark is not None and link.mark.kind == "guest"
                     and link.mark.subject not in running_uuids)


def with_creating_marks(inventory: Inventory, marks: dict[str, str]) -> Inventory:
    """The links kvmhooks was creating when it was stopped carry no mark yet: give them
    the one the creation journal holds for them (plans mark them for good)."""
    if not marks:
        return inventory
    return Inventory(tuple(replace(link, alias=marks[link.name], mark_pending=True)
                           if link.alias is None and link.name in marks else link
                           for link in inventory.links))
