"""The only module that imports pyroute2: host link snapshot and link changes.

Every kernel refusal becomes a HostError naming the device and the step.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import HostError
from .inventory import Inventory, Link, Route

IFF_UP = 0x1
RTPROT_KERNEL = 2
RTN_UNICAST = 1
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
# The contract says "passthrough" as libvirt does; the kernel says "passthru".
_KERNEL_MODE = {"passthrough": "passthru"}
_CONTRACT_MODE = {"passthru": "passthrough"}


class Netlink:
    """One rtnetlink socket; close() it when done."""

    def __init__(self):
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # --- reading -----------------------------------------------------------------

    def inventory(self, id_paths: dict[str, str] | None = None) -> Inventory:
        """One dump each of links, addresses and main-table routes."""
        addresses: dict[int, list[str]] = {}
        for msg in self.ipr.get_addr():
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            addresses.setdefault(msg["index"], []).append(f"{local}/{msg['prefixlen']}")
        routes: dict[int, list[Route]] = {}
        prefix_routes: dict[int, list[Route]] = {}
        for msg in self.ipr.get_routes(table=RT_TABLE_MAIN):
            oif = msg.get("RTA_OIF")
            if (msg["type"] != RTN_UNICAST or oif is None
                    or msg.get("RTA_TABLE", RT_TABLE_MAIN) != RT_TABLE_MAIN):
                continue
            dst = msg.get("RTA_DST")
            route = Route(dst=f"{dst}/{msg['dst_len']}" if dst else "default",
                          family=msg["family"], gateway=msg.get("RTA_GATEWAY"),
                          priority=msg.get("RTA_PRIORITY"), source=msg.get("RTA_PREFSRC"))
            if dst and ipaddress.ip_address(dst).is_link_local:
                continue  # the kernel's own per-device IPv6 routes: never ours to move
            kernel = msg["proto"] == RTPROT_KERNEL
            (prefix_routes if kernel else routes).setdefault(oif, []).append(route)
        links = []
        for msg in self.ipr.get_links():
            index, name = msg["index"], msg.get("IFLA_IFNAME")
            kind = msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            mode = None
            if kind in ("macvlan", "macvtap"):
                mode = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                      f"IFLA_{kind.upper()}_MODE")
                mode = _CONTRACT_MODE.get(mode, mode)
            # IFLA_LINK of a veth, or of any link with IFLA_LINK_NETNSID, is not a parent here.
            parent = msg.get("IFLA_LINK") if msg.get("IFLA_LINK_NETNSID") is None else None
            links.append(Link(
                index=index, name=name, kind=kind, mac=msg.get("IFLA_ADDRESS"),
                alias=msg.get("IFLA_IFALIAS"), master=msg.get("IFLA_MASTER") or None,
                parent=parent if parent and parent != index else None,
                up=bool(msg["flags"] & IFF_UP), mode=mode,
                addresses=tuple(addresses.get(index, ())),
                routes=tuple(routes.get(index, ())),
                prefix_routes=tuple(prefix_routes.get(index, ())),
                id_path=(id_paths or {}).get(name),
                permanent_mac=msg.get("IFLA_PERM_ADDRESS")))
        return Inventory(tuple(links))

    # --- changing ----------------------------------------------------------------

    def create_bridge(self, name: str, mac: str | None, mark: str) -> None:
        extra = {"address": mac} if mac else {}
        self._call(f"create bridge {name}", "add", ifname=name, kind="bridge", **extra)
        self._finish_create(name, mark, up=True)

    def create_tap(self, name: str, mac: str, bridge: str, mark: str) -> None:
        self._call(f"create tap {name}", "add", ifname=name, kind="tuntap", mode="tap")
        self._finish_create(name, mark, up=True, address=mac, master=self.index(bridge))

    def create_macvtap(self, name: str, parent: str, mode: str, mac: str, mark: str) -> None:
        kernel_mode = _KERNEL_MODE.get(mode, mode)
        self._call(f"create macvtap {name} on {parent}", "add", ifname=name, kind="macvtap",
                   link=self.index(parent), macvtap_mode=kernel_mode, address=mac)
        # A passthru macvtap takes its parent's MAC at creation; setting it afterwards
        # sets it on the parent too, which the kernel restores when the macvtap goes.
        self._finish_create(name, mark, up=True,
                            address=mac if kernel_mode == "passthru" else None)

    def create_shim(self, name: str, parent: str, address: str, mark: str) -> None:
        self._call(f"create shim {name} on {parent}", "add", ifname=name, kind="macvlan",
                   link=self.index(parent), macvlan_mode="bridge")
        self._finish_create(name, mark, up=True)
        try:
            self.add_address(name, address)
        except HostError:
            self.delete_link(name)
            raise

    def _finish_create(self, name: str, mark: str, up: bool, address: str | None = None,
                       master: int | None = None) -> None:
        """Mark a new device first, then configure it; delete it when any step fails."""
        try:
            index = self.index(name)
            self._call(f"mark {name}", "set", index=index, ifalias=mark)
            if address:
                self._call(f"set MAC of {name}", "set", index=index, address=address)
            if master:
                self._call(f"enslave {name}", "set", index=index, master=master)
            if up:
                self._call(f"set {name} up", "set", index=index, state="up")
        except HostError:
            self.delete_link(name)
            raise

    def set_state(self, name: str, up: bool) -> None:
        state = "up" if up else "down"
        self._call(f"set {name} {state}", "set", index=self.index(name), state=state)

    def set_master(self, name: str, master: str | None) -> None:
        target = self.index(master) if master else 0
        self._call(f"set master of {name}", "set", index=self.index(name), master=target)

    def add_address(self, name: str, address: str) -> None:
        self._address("add", name, address)

    def del_address(self, name: str, address: str) -> None:
        self._address("del", name, address)

    def _address(self, command: str, name: str, address: str) -> None:
        interface = ipaddress.ip_interface(address)
        try:
            self.ipr.addr(command, index=self.index(name), address=str(interface.ip),
                          prefixlen=interface.network.prefixlen)
        except (NetlinkError, OSError) as error:
            raise HostError(f"{command} address {address} on {name}: {_reason(error)}") from None

    def set_route_metric(self, route: Route, dev: str, metric: int) -> None:
        """Give a prefix route another metric: add it anew, then remove the old one."""
        index = self.index(dev)
        # Spelled out in full: a delete matches protocol and scope, and pyroute2's
        # defaults are not the kernel's own for a prefix route.
        base = {"dst": route.dst, "family": route.family, "oif": index,
                "proto": RTPROT_KERNEL, "scope": RT_SCOPE_LINK}
        new = {**base, "priority": metric}
        if route.source:
            new["prefsrc"] = route.source
        old = {**base, "priority": route.priority or 0}
        try:
            # Appended: IPv4 keys a route by prefix and metric, not by device, and the
            # shim's own route for the prefix may hold that key already (the kernel adds
            # its prefix routes the same way).
            self.ipr.route("append", **new)
            self.ipr.route("del", **old)
        except (NetlinkError, OSError) as error:
            raise HostError(f"set metric {metric} on route {route.describe()} dev {dev}: "
                            f"{_reason(error)}") from None

    def move_route(self, route: Route, target: str) -> None:
        spec = {"dst": route.dst, "family": route.family, "oif": self.index(target)}
        if route.gateway:
            spec["gateway"] = route.gateway
        if route.priority is not None:
            spec["priority"] = route.priority
        try:
            self.ipr.route("replace", **spec)
        except (NetlinkError, OSError) as error:
            raise HostError(f"move route {route.describe()} to {target}: "
                            f"{_reason(error)}") from None

    def delete_link(self, name: str) -> None:
        self._call(f"delete {name}", "del", index=self.index(name))

    def index(self, name: str) -> int:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise HostError(f"device {name} not found")
        return found[0]

    def _call(self, step: str, command: str, **spec) -> None:
        try:
            self.ipr.link(command, **spec)
        except (NetlinkError, OSError) as error:  # tuntap creation goes through ioctl
            raise HostError(f"{step}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    if isinstance(error, NetlinkError) and len(error.args) > 1:
        return str(error.args[1])
    return getattr(error, "strerror", None) or str(error)
