"""The steps of a plan: each says what it is (describe), does it through the backend
(run), and names the step that reverses it (undo). planner.py and devices.py decide them,
apply.py runs them, explain prints them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from .domain import format_trunk
from .inventory import Address, PortVlans, Route


class Backend(Protocol):
    """The host changes steps are made of; netlink.Netlink is the implementation. Each
    raises HostError naming the device and the step when the kernel refuses. An MTU of
    None is the kernel's choice."""

    def create_bridge(self, name: str, mac: str | None, mark: str,
                      mtu: int | None) -> None: ...
    def create_tap(self, name: str, mac: str, bridge: str, mark: str,
                   mtu: int | None, multi_queue: bool) -> None: ...
    def create_macvtap(self, name: str, parent: str, mode: str, mac: str, mark: str,
                       mtu: int | None) -> None: ...
    def create_shim(self, name: str, parent: str, addresses: tuple[Address, ...], mark: str,
                    mac: str, mtu: int | None) -> None: ...
    def set_state(self, name: str, up: bool) -> None: ...
    def set_master(self, name: str, master: str | None) -> None: ...
    def set_mtu(self, name: str, mtu: int) -> None: ...
    def set_mark(self, name: str, mark: str | None) -> None: ...
    def add_address(self, name: str, address: Address) -> None: ...
    def del_address(self, name: str, address: Address) -> None: ...
    def move_route(self, route: Route, target: str) -> None: ...
    def set_route_metric(self, route: Route, dev: str, metric: int) -> None: ...
    def add_route(self, route: Route, dev: str) -> None: ...
    def del_route(self, route: Route, dev: str) -> None: ...
    def delete_link(self, name: str) -> None: ...
    def create_vlan(self, name: str, parent: str, vlan: int, mark: str,
                    mtu: int | None) -> None: ...
    def set_vlan_filtering(self, bridge: str, enabled: bool) -> None: ...
    def add_port_vlan(self, port: str, vlan: int, pvid: bool, untagged: bool) -> None: ...
    def del_port_vlan(self, port: str, vlan: int) -> None: ...


@dataclass(frozen=True)
class Action:
    def describe(self) -> str:
        raise NotImplementedError

    def run(self, backend: Backend) -> None:
        raise NotImplementedError

    def undo(self) -> Action | None:
        """The step that reverses this one, or None when it cannot be reversed."""
        return None

    def as_dict(self) -> dict:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        return {"action": name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Create(Action):
    """A step that creates a device named `name` carrying the mark `mark` (the creation
    journal records it while the device exists unmarked)."""

    def undo(self) -> Action:
        return DeleteLink(self.name, "undo")


def _mtu(mtu: int | None) -> str:
    return f", MTU {mtu}" if mtu else ""


@dataclass(frozen=True)
class CreateBridge(Create):
    name: str
    mac: str | None
    mark: str
    mtu: int | None = None

    def describe(self) -> str:
        return f"create bridge {self.name}" + (f" with MAC {self.mac}" if self.mac else "") \
            + _mtu(self.mtu)

    def run(self, backend: Backend) -> None:
        backend.create_bridge(self.name, self.mac, self.mark, self.mtu)


@dataclass(frozen=True)
class CreateTap(Create):
    name: str
    mac: str
    bridge: str
    mark: str
    mtu: int | None = None
    multi_queue: bool = False  # for <driver queues='N'/> with N > 1

    def describe(self) -> str:
        return f"create tap {self.name} with MAC {self.mac} on bridge {self.bridge}" + \
            _mtu(self.mtu) + (", multi-queue" if self.multi_queue else "")

    def run(self, backend: Backend) -> None:
        backend.create_tap(self.name, self.mac, self.bridge, self.mark, self.mtu,
                           self.multi_queue)


@dataclass(frozen=True)
class CreateMacvtap(Create):
    name: str
    mac: str
    parent: str
    mode: str
    mark: str
    mtu: int | None = None

    def describe(self) -> str:
        return (f"create macvtap {self.name} with MAC {self.mac} on {self.parent}, "
                f"mode {self.mode}" + _mtu(self.mtu))

    def run(self, backend: Backend) -> None:
        backend.create_macvtap(self.name, self.parent, self.mode, self.mac, self.mark,
                               self.mtu)


@dataclass(frozen=True)
class CreateShim(Create):
    """The shim, built and then announced on the LAN."""

    name: str
    parent: str
    addresses: tuple[Address, ...]
    mark: str
    mac: str
    mtu: int | None = None

    def describe(self) -> str:
        return (f"create shim {self.name} (macvlan bridge mode) on {self.parent} with "
                f"MAC {self.mac} and {', '.join(str(a) for a in self.addresses)}"
                f"{_mtu(self.mtu)}, announced")

    def run(self, backend: Backend) -> None:
        backend.create_shim(self.name, self.parent, self.addresses, self.mark, self.mac,
                            self.mtu)


@dataclass(frozen=True)
class _Marking(Action):
    """MarkLink and UnmarkLink: a device kvmhooks created whose creation a kill cut off
    before its mark gets it (the creation journal claimed it meanwhile)."""

    name: str
    mark: str
    marks: ClassVar[bool]

    def describe(self) -> str:
        if self.marks:
            return f"mark {self.name} {self.mark}"
        return f"remove mark {self.mark} from {self.name}"

    def run(self, backend: Backend) -> None:
        backend.set_mark(self.name, self.mark if self.marks else None)

    def undo(self) -> Action:
        return (UnmarkLink if self.marks else MarkLink)(self.name, self.mark)


class MarkLink(_Marking):
    marks = True


class UnmarkLink(_Marking):
    marks = False


@dataclass(frozen=True)
class SetMtu(Action):
    name: str
    mtu: int
    previous: int

    def describe(self) -> str:
        return f"set MTU {self.mtu} on {self.name} (was {self.previous})"

    def run(self, backend: Backend) -> None:
        backend.set_mtu(self.name, self.mtu)

    def undo(self) -> Action:
        return SetMtu(self.name, self.previous, self.mtu)


@dataclass(frozen=True)
class _LinkState(Action):
    """SetUp and SetDown: one step, in two directions that undo each other."""

    name: str
    up: ClassVar[bool]

    def describe(self) -> str:
        return f"set {self.name} {'up' if self.up else 'down'}"

    def run(self, backend: Backend) -> None:
        backend.set_state(self.name, self.up)

    def undo(self) -> Action:
        return (SetDown if self.up else SetUp)(self.name)


class SetUp(_LinkState):
    up = True


class SetDown(_LinkState):
    up = False


@dataclass(frozen=True)
class SetMaster(Action):
    name: str
    master: str | None
    previous: str | None = None

    def describe(self) -> str:
        if self.master is None:
            return f"release {self.name} from bridge {self.previous}"
        return f"enslave {self.name} to bridge {self.master}"

    def run(self, backend: Backend) -> None:
        backend.set_master(self.name, self.master)

    def undo(self) -> Action:
        return SetMaster(self.name, self.previous, self.master)


@dataclass(frozen=True)
class _AddressChange(Action):
    """AddAddress and DelAddress: one step, in two directions that undo each other."""

    name: str
    address: Address
    add: ClassVar[bool]

    def describe(self) -> str:
        if self.add:
            return f"add address {self.address.describe()} to {self.name}"
        return f"remove address {self.address} from {self.name}"

    def run(self, backend: Backend) -> None:
        (backend.add_address if self.add else backend.del_address)(self.name, self.address)

    def undo(self) -> Action:
        return (DelAddress if self.add else AddAddress)(self.name, self.address)


class AddAddress(_AddressChange):
    add = True


class DelAddress(_AddressChange):
    add = False


@dataclass(frozen=True)
class MoveRoute(Action):
    route: Route
    source: str
    target: str

    def describe(self) -> str:
        return f"move route {self.route.describe()} from {self.source} to {self.target}"

    def run(self, backend: Backend) -> None:
        backend.move_route(self.route, self.target)

    def undo(self) -> Action:
        return MoveRoute(self.route, self.target, self.source)


@dataclass(frozen=True)
class SetRouteMetric(Action):
    """Change the metric of a prefix route (the kernel's route for an address)."""

    route: Route
    dev: str
    metric: int

    def describe(self) -> str:
        return f"set metric {self.metric} on route {self.route.dst} dev {self.dev}"

    def run(self, backend: Backend) -> None:
        backend.set_route_metric(self.route, self.dev, self.metric)

    def undo(self) -> Action:
        return SetRouteMetric(replace(self.route, priority=self.metric), self.dev,
                              self.route.priority or 0)


@dataclass(frozen=True)
class _RouteChange(Action):
    """AddRoute and DelRoute: one step, in two directions that undo each other."""

    route: Route
    dev: str
    add: ClassVar[bool]

    def describe(self) -> str:
        if self.add:
            return f"add route {self.route.describe()} dev {self.dev}"
        return f"remove route {self.route.describe()} dev {self.dev}"

    def run(self, backend: Backend) -> None:
        (backend.add_route if self.add else backend.del_route)(self.route, self.dev)

    def undo(self) -> Action:
        return (DelRoute if self.add else AddRoute)(self.route, self.dev)


class AddRoute(_RouteChange):
    add = True


class DelRoute(_RouteChange):
    add = False


@dataclass(frozen=True)
class DeleteLink(Action):
    name: str
    reason: str

    def describe(self) -> str:
        return f"delete {self.name} ({self.reason})"

    def run(self, backend: Backend) -> None:
        backend.delete_link(self.name)


@dataclass(frozen=True)
class CreateVlan(Create):
    """An 802.1Q sub-interface of a NIC, for macvtap guests on one of its VLANs."""

    name: str
    parent: str
    vlan: int
    mark: str
    mtu: int | None = None

    def describe(self) -> str:
        return f"create VLAN {self.vlan} sub-interface {self.name} on {self.parent}" + \
            _mtu(self.mtu)

    def run(self, backend: Backend) -> None:
        backend.create_vlan(self.name, self.parent, self.vlan, self.mark, self.mtu)


@dataclass(frozen=True)
class SetVlanFiltering(Action):
    bridge: str
    enabled: bool

    def describe(self) -> str:
        return f"turn VLAN filtering {'on' if self.enabled else 'off'} on bridge {self.bridge}"

    def run(self, backend: Backend) -> None:
        backend.set_vlan_filtering(self.bridge, self.enabled)

    def undo(self) -> Action:
        return SetVlanFiltering(self.bridge, not self.enabled)


@dataclass(frozen=True)
class _PortVlanChange(Action):
    """AddPortVlan and DelPortVlan: a tagged VLAN on a bridge port (the uplink's NIC)."""

    port: str
    vlan: int
    add: ClassVar[bool]

    def describe(self) -> str:
        if self.add:
            return f"add VLAN {self.vlan} (tagged) to bridge port {self.port}"
        return f"remove VLAN {self.vlan} from bridge port {self.port}"

    def run(self, backend: Backend) -> None:
        if self.add:
            backend.add_port_vlan(self.port, self.vlan, pvid=False, untagged=False)
        else:
            backend.del_port_vlan(self.port, self.vlan)

    def undo(self) -> Action:
        return (DelPortVlan if self.add else AddPortVlan)(self.port, self.vlan)


class AddPortVlan(_PortVlanChange):
    add = True


class DelPortVlan(_PortVlanChange):
    add = False


@dataclass(frozen=True)
class SetPortVlans(Action):
    """A guest's tap gets exactly its VLANs: its access VLAN as PVID, untagged, and its
    trunk tagged. previous: what it has now (a new port: the bridge's default)."""

    port: str
    vlans: PortVlans
    previous: PortVlans

    def describe(self) -> str:
        return f"set VLANs of bridge port {self.port}: {describe_vlans(self.vlans)} " \
            f"(was {describe_vlans(self.previous)})"

    def run(self, backend: Backend) -> None:
        # The new PVID first: the kernel moves the PVID to the VLAN added with it.
        for vlan in sorted(self.vlans.members, key=lambda vlan: vlan != self.vlans.pvid):
            backend.add_port_vlan(self.port, vlan, pvid=vlan == self.vlans.pvid,
                                  untagged=vlan in self.vlans.untagged)
        for vlan in self.previous.members:
            if vlan not in self.vlans.members:
                backend.del_port_vlan(self.port, vlan)

    def undo(self) -> Action:
        return SetPortVlans(self.port, self.previous, self.vlans)


def describe_vlans(vlans: PortVlans) -> str:
    words = [f"PVID {vlans.pvid} untagged" if vlans.pvid in vlans.untagged
             else f"PVID {vlans.pvid}"] if vlans.pvid else []
    if vlans.tagged:
        words.append(f"tagged {format_trunk(vlans.tagged)}")
    return ", ".join(words) or "none"
