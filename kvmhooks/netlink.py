"""The only module that imports pyroute2: host link snapshot and link changes, and the
frames that announce the shim's address.

Every kernel refusal becomes a HostError naming the device and the step. One code path
serves pyroute2 0.5.14 (EPEL 9) to today's releases: attributes are read with get_attr,
deletes name their request flags, and the two things old releases lack (attribute names,
an address request that keeps them) are set apart below and used only where needed.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import replace

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink import exceptions as netlink_exceptions
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from .announce import announcement
from .errors import HostError
from .inventory import (
    RTNH_F_ONLINK,
    Address,
    Inventory,
    Link,
    PortVlans,
    Route,
    is_prefix_route,
    prefix_route,
)

log = logging.getLogger("kvmhooks")

IFF_UP = 0x1
IFF_ALLMULTI = 0x200
RTN_UNICAST = 1
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
FOREVER = 0xFFFFFFFF  # an address lifetime that never ends (IFA_CACHEINFO)
USER_HZ = 100  # the unit of RTA_CACHEINFO's rta_expires
IFNAMSIZ_MAX = 15
# The IFA_F_* flags the kernel takes from userspace when adding an address (the rest it
# sets itself: temporary, secondary, permanent, deprecated, tentative...).
ADDABLE_FLAGS = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400
# The contract says "passthrough" as libvirt does; the kernel says "passthru".
_KERNEL_MODE = {"passthrough": "passthru"}
_CONTRACT_MODE = {"passthru": "passthrough"}
# pyroute2 0.5.14 sends its "del" requests with NLM_F_CREATE | NLM_F_EXCL, which kernels
# since 5.19 read as a bulk delete and refuse ("Operation not supported"). Every release
# takes the request type and flags spelled out.
_DELETE = NLM_F_REQUEST | NLM_F_ACK
# A dump the kernel's tables changed under (NLM_F_DUMP_INTR) is read again; pyroute2 0.7
# raises it, 0.9 reads again itself, 0.5 does not tell (and has no such class).
_DUMP_INTERRUPTED = getattr(netlink_exceptions, "NetlinkDumpInterrupted", ())
DUMP_ATTEMPTS = 10
IFLA_TUN_MULTI_QUEUE = 7  # include/uapi/linux/if_link.h
AF_BRIDGE = 7
RTEXT_FILTER_BRVLAN = 1 << 1  # a bridge port dump lists each VLAN of the port
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


def _naming(base: type, first_type: int, attributes: tuple) -> type:
    """``base``, or a subclass of it that names ``attributes`` (the kernel's types
    ``first_type`` and up) where this pyroute2 leaves some of them unnamed: it reads an
    unnamed attribute as UNKNOWN and drops it from what it sends. pyroute2 before 0.9
    does not name IFA_RT_PRIORITY (9) or IFA_PROTO (11), and 0.5 not IFLA_PERM_ADDRESS
    (54); their maps number attributes by position (include/uapi/linux/if_addr.h,
    if_link.h)."""
    known = {entry[1] if isinstance(entry[0], int) else entry[0] for entry in base.nla_map}
    if all(name in known for name, _ in attributes) or isinstance(base.nla_map[0][0], int) \
            or not first_type <= len(base.nla_map) < first_type + len(attributes):
        return base
    named = type(base.__name__, (base,), {"nla_map": tuple(base.nla_map) + tuple(
        attributes[len(base.nla_map) - first_type:])})
    # pyroute2 compiles a map once per class, and a subclass inherits its parent's flag
    # that says it is done: compile this one explicitly.
    named().compile_nla()
    return named


_ADDRESS_MESSAGE = _naming(ifaddrmsg, 9, (("IFA_RT_PRIORITY", "uint32"),
                                          ("IFA_TARGET_NETNSID", "hex"),
                                          ("IFA_PROTO", "uint8")))
_LINK_MESSAGE = _naming(ifinfmsg, 50, (("IFLA_MIN_MTU", "uint32"), ("IFLA_MAX_MTU", "uint32"),
                                       ("IFLA_PROP_LIST", "hex"), ("IFLA_ALT_IFNAME", "asciiz"),
                                       ("IFLA_PERM_ADDRESS", "l2addr")))


def route_socket() -> IPRoute:
    """An rtnetlink socket that reads every attribute kvmhooks keeps, whatever the
    pyroute2 release."""
    ipr = IPRoute()
    if _ADDRESS_MESSAGE is not ifaddrmsg:
        ipr.marshal.msg_map[RTM_NEWADDR] = _ADDRESS_MESSAGE
    if _LINK_MESSAGE is not ifinfmsg:
        ipr.marshal.msg_map[RTM_NEWLINK] = _LINK_MESSAGE
    return ipr


class Netlink:
    """One rtnetlink socket; close() it when done."""

    def __init__(self):
        self.ipr = route_socket()

    def close(self) -> None:
        self.ipr.close()

    # --- reading -----------------------------------------------------------------

    def inventory(self, id_paths: dict[str, str] | None = None) -> Inventory:
        """One dump each of links, addresses and main-table routes."""
        link_messages = self._dump("links", self.ipr.get_links)
        names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in link_messages}
        addresses: dict[int, list[Address]] = {}
        for msg in self._dump("addresses", self.ipr.get_addr):
            if msg["scope"] == RT_SCOPE_UNIVERSE:
                addresses.setdefault(msg["index"], []).append(
                    _address(msg, names.get(msg["index"]) or ""))
        routes: dict[int, list[Route]] = {}
        for msg in self._dump("routes", self.ipr.get_routes, table=RT_TABLE_MAIN):
            oif = msg.get_attr("RTA_OIF")
            if (msg["type"] != RTN_UNICAST or oif is None
                    or msg.get_attr("RTA_TABLE", RT_TABLE_MAIN) != RT_TABLE_MAIN):
                continue
            dst = msg.get_attr("RTA_DST")
            if dst and ipaddress.ip_address(dst).is_link_local:
                continue  # the kernel's own per-device IPv6 routes: never ours to move
            routes.setdefault(oif, []).append(_route(msg))
        links = []
        for msg in link_messages:
            index, name = msg["index"], msg.get_attr("IFLA_IFNAME")
            kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            mode = multi_queue = vlan_id = default_pvid = None
            vlan_filtering = False
            if kind == "tun":
                multi_queue = _multi_queue(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA"))
            elif kind == "bridge":
                vlan_filtering = bool(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                                     "IFLA_BR_VLAN_FILTERING"))
                default_pvid = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                              "IFLA_BR_VLAN_DEFAULT_PVID")
            elif kind == "vlan":
                vlan_id = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VLAN_ID")
            if kind in ("macvlan", "macvtap"):
                mode = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                      f"IFLA_{kind.upper()}_MODE")
                mode = _CONTRACT_MODE.get(mode, mode)
            # IFLA_LINK of a veth, or of any link with IFLA_LINK_NETNSID, is not a parent here.
            parent = msg.get_attr("IFLA_LINK") if msg.get_attr("IFLA_LINK_NETNSID") is None \
                else None
            held = tuple(addresses.get(index, ()))
            through = routes.get(index, [])
            links.append(Link(
                index=index, name=name, kind=kind, mac=msg.get_attr("IFLA_ADDRESS"),
                alias=msg.get_attr("IFLA_IFALIAS"), master=msg.get_attr("IFLA_MASTER") or None,
                parent=parent if parent and parent != index else None,
                up=bool(msg["flags"] & IFF_UP), mode=mode, addresses=held,
                routes=tuple(r for r in through if not is_prefix_route(r, held)),
                prefix_routes=tuple(r for r in through if is_prefix_route(r, held)),
                id_path=(id_paths or {}).get(name),
                permanent_mac=msg.get_attr("IFLA_PERM_ADDRESS"), mtu=msg.get_attr("IFLA_MTU"),
                multi_queue=multi_queue, vlan_filtering=vlan_filtering, vlan_id=vlan_id,
                default_pvid=default_pvid))
        filtering = {link.index for link in links if link.vlan_filtering}
        if filtering:  # its ports' VLANs, and its own (the host's VLANs on it)
            vlans = self._port_vlans()
            links = [replace(link, vlans=vlans.get(link.index, PortVlans()))
                     if link.master in filtering or link.index in filtering else link
                     for link in links]
        return Inventory(tuple(links))

    def _bridge_ports(self):
        """A dump of the bridge family with each port's VLANs. pyroute2 0.9's get_links
        sends the family and the filter mask; earlier releases drop them, so the request
        is spelled out there (0.9 reads no such request)."""
        if hasattr(self.ipr, "asyncore"):  # 0.9
            return self.ipr.get_links(family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN)
        request = ifinfmsg()
        request["family"] = AF_BRIDGE
        request["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_BRVLAN)]
        return self.ipr.nlm_request(request, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP)

    def _port_vlans(self) -> dict[int, PortVlans]:
        """The VLANs of every bridge port, by index: one dump of the bridge family."""
        found = {}
        for msg in self._dump("bridge ports' VLANs", self._bridge_ports):
            spec = msg.get_attr("IFLA_AF_SPEC")
            entries = spec.get_attrs("IFLA_BRIDGE_VLAN_INFO") if spec is not None else []
            pvid, untagged, members = None, [], []
            for entry in entries:
                vlan, flags = entry["vid"], entry["flags"]
                members.append(vlan)
                if flags & BRIDGE_VLAN_INFO_PVID:
                    pvid = vlan
                if flags & BRIDGE_VLAN_INFO_UNTAGGED:
                    untagged.append(vlan)
            found[msg["index"]] = PortVlans(pvid, tuple(sorted(untagged)),
                                            tuple(sorted(members)))
        return found

    # --- changing ----------------------------------------------------------------

    def create_bridge(self, name: str, mac: str | None, mark: str, mtu: int | None) -> None:
        extra = {"address": mac} if mac else {}
        if mtu:
            extra["mtu"] = mtu
        self._call(f"create bridge {name}", "add", ifname=name, kind="bridge", **extra)
        self._finish_create(name, mark, up=True)

    def create_tap(self, name: str, mac: str, bridge: str, mark: str,
                   mtu: int | None, multi_queue: bool) -> None:
        # qemu opens a persistent tap with the queue flag it was made with, or not at all.
        flags = {"ifr": {"multi_queue": True}} if multi_queue else {}
        self._call(f"create tap {name}", "add", ifname=name, kind="tuntap", mode="tap",
                   **flags)
        self._finish_create(name, mark, up=True, address=mac, mtu=mtu,
                            master=self.index(bridge))

    def create_macvtap(self, name: str, parent: str, mode: str, mac: str, mark: str,
                       mtu: int | None) -> None:
        kernel_mode = _KERNEL_MODE.get(mode, mode)
        extra = {"mtu": mtu} if mtu else {}
        self._call(f"create macvtap {name} on {parent}", "add", ifname=name, kind="macvtap",
                   link=self.index(parent), macvtap_mode=kernel_mode, address=mac, **extra)
        # A passthru macvtap takes its parent's MAC at creation; setting it afterwards
        # sets it on the parent too, which the kernel restores when the macvtap goes.
        # All multicast: a macvtap's filter knows nothing of the guest's groups, and IPv6
        # neighbour discovery for the guest's addresses is multicast.
        self._finish_create(name, mark, up=True,
                            address=mac if kernel_mode == "passthru" else None,
                            allmulticast=True)

    def create_shim(self, name: str, parent: str, addresses: tuple[Address, ...], mark: str,
                    mac: str, mtu: int | None) -> None:
        extra = {"mtu": mtu} if mtu else {}
        self._call(f"create shim {name} on {parent}", "add", ifname=name, kind="macvlan",
                   link=self.index(parent), macvlan_mode="bridge", address=mac, **extra)
        self._finish_create(name, mark, up=True)
        try:
            for address in addresses:
                self.add_address(name, address)
        except HostError:
            self.delete_link(name)
            raise
        for address in addresses:
            self._announce(name, mac, address)

    def _finish_create(self, name: str, mark: str, up: bool, address: str | None = None,
                       mtu: int | None = None, master: int | None = None,
                       allmulticast: bool = False) -> None:
        """Mark a new device first, then configure it; delete it when any step fails.
        Its MTU comes before its master: a bridge takes the smallest MTU of its ports."""
        try:
            index = self.index(name)
            self._call(f"mark {name}", "set", index=index, ifalias=mark)
            if address:
                self._call(f"set MAC of {name}", "set", index=index, address=address)
            if mtu:
                self._call(f"set MTU of {name}", "set", index=index, mtu=mtu)
            if master:
                self._call(f"enslave {name}", "set", index=index, master=master)
            if allmulticast:
                self._call(f"set {name} allmulticast", "set", index=index,
                           flags=IFF_ALLMULTI, change=IFF_ALLMULTI)
            if up:
                self._call(f"set {name} up", "set", index=index, state="up")
        except HostError:
            self.delete_link(name)
            raise

    def _announce(self, name: str, mac: str, address: Address) -> None:
        """Tell the LAN where the address is now; a lost announcement leaves neighbours
        to find out by themselves, so it is a warning, not a failure."""
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((name, 0))
                sock.send(announcement(mac, address.cidr))
        except OSError as error:
            log.warning("announce %s on %s: %s", address.cidr, name, _reason(error))

    def set_state(self, name: str, up: bool) -> None:
        state = "up" if up else "down"
        self._call(f"set {name} {state}", "set", index=self.index(name), state=state)

    def set_master(self, name: str, master: str | None) -> None:
        target = self.index(master) if master else 0
        self._call(f"set master of {name}", "set", index=self.index(name), master=target)

    def set_mtu(self, name: str, mtu: int) -> None:
        self._call(f"set MTU {mtu} on {name}", "set", index=self.index(name), mtu=mtu)

    def set_mark(self, name: str, mark: str | None) -> None:
        """Give a device kvmhooks' mark (or take it away: None)."""
        self._call(f"mark {name}", "set", index=self.index(name), ifalias=mark or "")

    def add_address(self, name: str, address: Address) -> None:
        """Add an address with its lifetimes, flags, metric, broadcast, label and
        protocol."""
        interface = address.interface
        spec = {"index": self.index(name), "address": str(interface.ip),
                "prefixlen": interface.network.prefixlen}
        if address.flags & ADDABLE_FLAGS:
            spec["IFA_FLAGS"] = address.flags & ADDABLE_FLAGS
        if address.valid is not None or address.preferred is not None:
            spec["IFA_CACHEINFO"] = {"ifa_preferred": _or_forever(address.preferred),
                                     "ifa_valid": _or_forever(address.valid),
                                     "cstamp": 0, "tstamp": 0}
        if address.metric is not None:
            spec["IFA_RT_PRIORITY"] = address.metric
        if address.broadcast:
            spec["IFA_BROADCAST"] = address.broadcast
        if address.label and len(name + address.label) <= IFNAMSIZ_MAX:
            spec["IFA_LABEL"] = name + address.label
        if address.protocol is not None:
            spec["IFA_PROTO"] = address.protocol
        try:
            if _ADDRESS_MESSAGE is ifaddrmsg:
                self.ipr.addr("add", **spec)
            else:  # this pyroute2's addr() would drop the attributes it does not name
                self.ipr.nlm_request(_address_message(spec), msg_type=RTM_NEWADDR,
                                     msg_flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
                                     | NLM_F_EXCL)
        except (NetlinkError, OSError) as error:
            raise HostError(f"add address {address} on {name}: {_reason(error)}") from None

    def del_address(self, name: str, address: Address) -> None:
        """Remove an address, and the prefix route the kernel made for it wherever the
        kernel leaves that route behind: an IPv6 address with a finite lifetime keeps
        its prefix route until the lifetime ends (addrconf's check_cleanup_prefix_route
        acts for permanent addresses alone), which on a bridge port would send the
        prefix's traffic past the bridge."""
        interface = address.interface
        index = self.index(name)
        try:
            self.ipr.addr((RTM_DELADDR, _DELETE), index=index, address=str(interface.ip),
                          prefixlen=interface.network.prefixlen)
            if address.family == socket.AF_INET6 and address.valid is not None \
                    and address.makes_prefix_route:
                self._del_prefix_route_left_by(index, address)
        except (NetlinkError, OSError) as error:
            raise HostError(f"del address {address} on {name}: {_reason(error)}") from None

    def _del_prefix_route_left_by(self, index: int, address: Address) -> None:
        network = address.interface.network
        for msg in self._dump("addresses", self.ipr.get_addr, family=socket.AF_INET6,
                              index=index):
            other = _address(msg, "")
            if other.interface.network == network and other.makes_prefix_route:
                return  # the route is that address's too
        try:
            self.ipr.route((RTM_DELROUTE, _DELETE), **_route_spec(prefix_route(address), index))
        except NetlinkError as error:
            if error.code != errno.ESRCH:  # its lifetime had ended already
                raise

    def set_route_metric(self, route: Route, dev: str, metric: int) -> None:
        """Give a prefix route another metric: add it anew, then remove the old one."""
        index = self.index(dev)
        try:
            # Appended: IPv4 keys a route by prefix and metric, not by device, and the
            # shim's own route for the prefix may hold that key already (the kernel adds
            # its prefix routes the same way).
            self.ipr.route("append", **_route_spec(replace(route, priority=metric), index))
            self.ipr.route((RTM_DELROUTE, _DELETE),
                           **_route_spec(replace(route, priority=route.priority or 0), index))
        except (NetlinkError, OSError) as error:
            raise HostError(f"set metric {metric} on route {route.describe()} dev {dev}: "
                            f"{_reason(error)}") from None

    def add_route(self, route: Route, dev: str) -> None:
        # Appended, as the kernel adds its prefix routes (see set_route_metric).
        self._route_call(f"add route {route.describe()} dev {dev}", "append", route, dev)

    def del_route(self, route: Route, dev: str) -> None:
        self._route_call(f"delete route {route.describe()} dev {dev}", (RTM_DELROUTE, _DELETE),
                         route, dev)

    def move_route(self, route: Route, target: str) -> None:
        """Put a route on another device with all it has (gateway, metric, source,
        protocol, scope, onlink, preference, metrics, expiry)."""
        self._route_call(f"move route {route.describe()} to {target}", "replace", route,
                         target)

    def delete_link(self, name: str) -> None:
        self._call(f"delete {name}", (RTM_DELLINK, _DELETE), index=self.index(name))

    def create_vlan(self, name: str, parent: str, vlan: int, mark: str,
                    mtu: int | None) -> None:
        extra = {"mtu": mtu} if mtu else {}
        try:
            self.ipr.link("add", ifname=name, kind="vlan", link=self.index(parent),
                          vlan_id=vlan, **extra)
        except NetlinkError as error:
            if error.code == errno.EOPNOTSUPP:
                raise HostError(f"create VLAN {vlan} sub-interface {name} on {parent}: this "
                                "kernel has no 802.1Q VLAN devices (module 8021q)") from None
            raise HostError(f"create VLAN {vlan} sub-interface {name} on {parent}: "
                            f"{_reason(error)}") from None
        self._finish_create(name, mark, up=True)

    def set_vlan_filtering(self, bridge: str, enabled: bool) -> None:
        try:
            self.ipr.link("set", index=self.index(bridge), kind="bridge",
                          br_vlan_filtering=int(enabled))
        except NetlinkError as error:
            if error.code == errno.EOPNOTSUPP:
                raise HostError(f"turn VLAN filtering on on bridge {bridge}: this kernel "
                                "cannot filter VLANs on a bridge "
                                "(CONFIG_BRIDGE_VLAN_FILTERING)") from None
            raise HostError(f"turn VLAN filtering {'on' if enabled else 'off'} on bridge "
                            f"{bridge}: {_reason(error)}") from None

    def add_port_vlan(self, port: str, vlan: int, pvid: bool, untagged: bool) -> None:
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | \
            (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        try:
            self.ipr.vlan_filter("add", index=self.index(port),
                                 vlan_info={"vid": vlan, "flags": flags})
        except NetlinkError as error:
            raise HostError(f"add VLAN {vlan} to bridge port {port}: "
                            f"{_reason(error)}") from None

    def del_port_vlan(self, port: str, vlan: int) -> None:
        """Converges: a VLAN the port does not have is gone already."""
        try:
            self.ipr.vlan_filter("del", index=self.index(port), vlan_info={"vid": vlan})
        except NetlinkError as error:
            if error.code != errno.ENOENT:
                raise HostError(f"remove VLAN {vlan} from bridge port {port}: "
                                f"{_reason(error)}") from None

    def _dump(self, what: str, read, **spec) -> list:
        """A dump, read again while the kernel says its table changed under it."""
        for _ in range(DUMP_ATTEMPTS):
            try:
                return list(read(**spec))
            except _DUMP_INTERRUPTED:
                continue
        raise HostError(f"read the host's {what}: they changed during each of "
                        f"{DUMP_ATTEMPTS} reads")

    def index(self, name: str) -> int:
        # One request for one link: a dump of them all could be interrupted.
        try:
            return self.ipr.link("get", ifname=name)[0]["index"]
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                raise HostError(f"device {name} not found") from None
            raise HostError(f"look up device {name}: {_reason(error)}") from None

    def _route_call(self, step: str, command: str | tuple, route: Route, dev: str) -> None:
        try:
            self.ipr.route(command, **_route_spec(route, self.index(dev)))
        except (NetlinkError, OSError) as error:
            raise HostError(f"{step}: {_reason(error)}") from None

    def _call(self, step: str, command: str | tuple, **spec) -> None:
        try:
            self.ipr.link(command, **spec)
        except (NetlinkError, OSError) as error:  # tuntap creation goes through ioctl
            raise HostError(f"{step}: {_reason(error)}") from None


def _multi_queue(data) -> bool | None:
    """Whether a tun device was made multi-queue, from its IFLA_INFO_DATA: attributes
    where pyroute2 decodes them, raw bytes as "hex" text where it does not (0.5)."""
    if data is None:
        return None
    if not isinstance(data, str):
        value = data.get_attr("IFLA_TUN_MULTI_QUEUE")
        return None if value is None else bool(value)
    raw = bytes.fromhex(data.replace(":", ""))
    offset = 0
    while offset + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, offset)
        if length < 4:
            break
        if kind == IFLA_TUN_MULTI_QUEUE and length >= 5:
            return bool(raw[offset + 4])
        offset += (length + 3) & ~3
    return None


def _address(msg, device: str) -> Address:
    cache = msg.get_attr("IFA_CACHEINFO")
    local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    label = msg.get_attr("IFA_LABEL")
    return Address(
        cidr=f"{local}/{msg['prefixlen']}",
        # IFA_FLAGS holds all of them; the header's byte only the first eight.
        flags=msg.get_attr("IFA_FLAGS") or msg["flags"],
        valid=_lifetime(cache["ifa_valid"]) if cache else None,
        preferred=_lifetime(cache["ifa_preferred"]) if cache else None,
        metric=msg.get_attr("IFA_RT_PRIORITY"), broadcast=msg.get_attr("IFA_BROADCAST"),
        label=label[len(device):] if label and label != device and label.startswith(device)
        else None,
        protocol=msg.get_attr("IFA_PROTO"))


def _address_message(spec: dict):
    """The RTM_NEWADDR request ``addr("add", **spec)`` makes, with every attribute."""
    msg = _ADDRESS_MESSAGE()
    ip = ipaddress.ip_address(spec["address"])
    msg["family"] = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    msg["prefixlen"], msg["index"] = spec["prefixlen"], spec["index"]
    msg["attrs"] = [["IFA_LOCAL", str(ip)], ["IFA_ADDRESS", str(ip)]] + [
        [key, value] for key, value in spec.items() if key.startswith("IFA_")]
    return msg


def _lifetime(value: int | None) -> int | None:
    return None if value is None or value == FOREVER else value


def _or_forever(value: int | None) -> int:
    return FOREVER if value is None else value


def _route(msg) -> Route:
    dst = msg.get_attr("RTA_DST")
    cache = msg.get_attr("RTA_CACHEINFO")
    expires = cache["rta_expires"] if cache else None
    metrics = msg.get_attr("RTA_METRICS")
    return Route(
        dst=f"{dst}/{msg['dst_len']}" if dst else "default", family=msg["family"],
        gateway=msg.get_attr("RTA_GATEWAY"), priority=msg.get_attr("RTA_PRIORITY"),
        source=msg.get_attr("RTA_PREFSRC"), protocol=msg["proto"], scope=msg["scope"],
        # The other flags tell the device's state (linkdown, dead), not the route's.
        flags=msg["flags"] & RTNH_F_ONLINK, tos=msg["tos"], pref=msg.get_attr("RTA_PREF"),
        expires=expires // USER_HZ if expires and expires > 0 else None,
        metrics=tuple(sorted((nla[0], nla[1]) for nla in metrics["attrs"])) if metrics else ())


def _route_spec(route: Route, oif: int) -> dict:
    """The request that makes ``route`` through device ``oif``, all of it spelled out:
    the kernel matches a delete by protocol and scope too, and pyroute2's defaults are
    not the kernel's."""
    spec = {"dst": route.dst, "family": route.family, "oif": oif, "scope": route.scope,
            "tos": route.tos}
    if route.gateway:
        spec["gateway"] = route.gateway
    if route.priority is not None:
        spec["priority"] = route.priority
    if route.source:
        spec["prefsrc"] = route.source
    if route.protocol is not None:
        spec["proto"] = route.protocol
    if route.flags:
        spec["flags"] = route.flags
    if route.pref is not None:
        spec["RTA_PREF"] = route.pref
    if route.expires is not None:
        spec["RTA_EXPIRES"] = bytearray(struct.pack("=I", route.expires))  # 0.5 takes no bytes
    if route.metrics:
        spec["metrics"] = dict(route.metrics)
    return spec


def _reason(error: Exception) -> str:
    if isinstance(error, NetlinkError) and len(error.args) > 1:
        return str(error.args[1])
    return getattr(error, "strerror", None) or str(error)
