"""The device diff (pure): which links an uplink and a guest need, compared with the links
a snapshot has, as steps. planner.py asks it for each plan.

Kernel facts behind it:
- a NIC that is a bridge port cannot carry macvtap or macvlan devices (EBUSY), and a
  NIC that carries them cannot be enslaved; so on an uplink with a bridge, every macvtap
  and the shim hang off the bridge, and on one without, off the NIC;
- a macvtap dies with its lower device; a tap on a bridge survives its NIC leaving.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from .actions import (
    Action,
    AddAddress,
    AddPortVlan,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    CreateVlan,
    DelAddress,
    DeleteLink,
    DelRoute,
    MarkLink,
    MoveRoute,
    SetDown,
    SetMaster,
    SetMtu,
    SetPortVlans,
    SetRouteMetric,
    SetUp,
    SetVlanFiltering,
    describe_vlans,
)
from .config import Uplink
from .domain import Attachment, Domain, TaggedInterface
from .errors import ForeignDevice, HostError, LeaseOnNic, MetadataError, NicAbsent
from .inventory import (
    DEFAULT_PVID,
    IFA_F_NODAD,
    Address,
    Inventory,
    Link,
    PortVlans,
    Route,
    in_adding_order,
    prefix_route,
)
from .names import (
    bridge_mark,
    guest_mark,
    ifname_problem,
    shim_mark,
    vlan_device_name,
    vlan_mark,
)
from .resolve import Resolution
from .sources import macvtap_lower

# What a lower device's route for the shim's subnet is raised by, so the shim's wins.
SHIM_PREFERENCE = 1024


@dataclass(frozen=True)
class WantedLink:
    """A device as kvmhooks wants it: its kind ("tun", "macvtap" or "macvlan"), the device
    it hangs on (a tap's bridge, a macvtap's or macvlan's lower device), and its MAC and
    mode where they are kvmhooks' to say (None: whatever the device has)."""

    kind: str
    lower: str
    mac: str | None = None
    mode: str | None = None
    multi_queue: bool | None = None  # a tap's queue flag, where kvmhooks made the tap
    vlans: PortVlans | None = None  # a tap's VLANs on its bridge; None: the bridge's default


def link_problem(link: Link, wanted: WantedLink, inventory: Inventory) -> str | None:
    """Why link is not the wanted device, as words that follow its name; None when it is.
    The one "this link already matches" of kvmhooks: plans, re-plugs and status ask it."""
    lower = inventory.by_name(wanted.lower)
    if wanted.kind == "tun":
        if link.kind != "tun" or lower is None or link.master != lower.index:
            return f"is not a port of bridge {wanted.lower}"
    elif link.kind != wanted.kind or lower is None or link.parent != lower.index:
        return f"is not a {wanted.kind} on {wanted.lower}"
    if wanted.mode is not None and link.mode != wanted.mode:
        return f"is in mode {link.mode}, metadata says {wanted.mode}"
    if wanted.mac is not None and link.mac != wanted.mac:
        return f"has MAC {link.mac}"
    if None not in (wanted.multi_queue, link.multi_queue) and \
            link.multi_queue != wanted.multi_queue:
        return f"is {_queueing(link.multi_queue)}, the interface needs " \
            f"{_queueing(wanted.multi_queue)}"
    if wanted.vlans is not None and link.vlans != wanted.vlans:
        have = describe_vlans(link.vlans) if link.vlans else "on a bridge that filters no VLANs"
        return f"has VLANs {have}, metadata says {describe_vlans(wanted.vlans)}"
    return None


def _queueing(multi_queue: bool) -> str:
    return "multi-queue" if multi_queue else "single-queue"


def tap_mac(guest_mac: str) -> str:
    """The host side of a tap carries the guest's MAC with first byte fe, as libvirt does:
    a bridge takes its lowest port MAC as its own and would swallow frames for the guest."""
    return "fe" + guest_mac[2:]


def joining_vlans(bridge: Link | None) -> PortVlans:
    """The VLANs a port has when it joins this bridge: its default VLAN, untagged (the
    kernel's 1 where the bridge is new or does not say; none where it is 0)."""
    default = DEFAULT_PVID if bridge is None or bridge.default_pvid is None \
        else bridge.default_pvid
    return PortVlans(default, (default,), (default,)) if default else PortVlans()


def tap_vlans(attachment: Attachment) -> PortVlans | None:
    """A guest's tap's VLANs: its access VLAN (else the bridge's default) as PVID and
    untagged, its trunk tagged; None for an interface that asks for no VLAN."""
    if not attachment.vlans:
        return None
    pvid = attachment.vlan or DEFAULT_PVID
    if pvid in attachment.trunk:  # trunk-only, and the default VLAN tagged in it
        return PortVlans(None, (), attachment.trunk)
    return PortVlans(pvid, (pvid,), tuple(sorted({pvid, *attachment.trunk})))


def guest_link(tagged: TaggedInterface, resolution: Resolution) -> WantedLink:
    """The host device a tagged bridge or direct interface needs. libvirt chooses the MAC
    of its own taps (native type bridge); every other MAC is the metadata's."""
    attachment = tagged.attachment
    if attachment.kind == "bridge" and tagged.hook_owned:
        return WantedLink("tun", resolution.bridge, tap_mac(tagged.mac),
                          multi_queue=tagged.device.queues > 1, vlans=tap_vlans(attachment))
    if attachment.kind == "bridge":
        return WantedLink("tun", resolution.bridge)
    return WantedLink("macvtap", macvtap_lower(attachment, resolution), tagged.mac,
                      attachment.mode)


def _route_key(route: Route) -> tuple:
    """What makes two routes one for the kernel's choice of a way out."""
    return route.dst, route.family, route.priority, route.gateway


def shim_mac(uplink: str, host_mac: str) -> str:
    """The shim's MAC: the same at every rebuild, so that neighbours' entries for its
    address stay right after a NIC flap. Derived from the uplink's name and the host's
    MAC on that LAN (its NIC's permanent one), it differs between uplinks and between
    hosts; locally administered and unicast."""
    digest = bytearray(hashlib.sha256(f"kvmhooks shim {uplink} {host_mac}".encode())
                       .digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{byte:02x}" for byte in digest)


def shim_address(cidr: str) -> Address:
    """The shim's address. An IPv6 one skips duplicate address detection: it is the
    host's own, and it is announced at once (a neighbour advertisement for a tentative
    address is not allowed, RFC 4862 section 5.4), as keepalived does with its
    addresses."""
    return Address(cidr, flags=IFA_F_NODAD if ":" in cidr else 0)


class DevicePlanner:
    """Accumulates steps; remembers what it already planned so nothing is doubled."""

    def __init__(self, inventory: Inventory, bridge_mark: str | None = None):
        self.inventory = inventory
        self.bridge_mark = bridge_mark  # None: the uplink's own mark
        self.actions: list[Action] = []
        self.planned_links: set[str] = set()
        self.deleted_links: set[str] = set()
        self.planned_addresses: dict[str, list[Address]] = {}
        self.planned_mtus: dict[str, int] = {}  # shared devices whose MTU the plan sets
        self.planned_filtering: set[str] = set()  # bridges the plan turns VLAN filtering on

    def mtu_of(self, name: str) -> int | None:
        """A shared device's MTU once the plan has run."""
        if name in self.planned_mtus:
            return self.planned_mtus[name]
        link = self.inventory.by_name(name)
        return link.mtu if link else None

    def uplink(self, uplink: Uplink, resolution: Resolution,
               vlans: frozenset[int] = frozenset()) -> None:
        """The shared devices: bridge with the NIC enslaved, NIC up, shim; with the
        uplink's MTU where it has one. vlans: the VLANs guests about to start on the
        bridge ask for (the bridge then filters, and the NIC's port carries them)."""
        if resolution.nic is None:  # away for now: the bridge is all there is to keep
            bridge = self.inventory.by_name(resolution.bridge)
            self.uplink_mtu(uplink, bridge)
            if vlans:
                self.vlan_filtering(uplink, bridge.name, bridge)
            if uplink.host_addresses:
                # The bridge's MAC need not be its NIC's: a shim in place keeps its MAC
                # until the NIC is back, and a new one is rebuilt then if need be.
                self.shim(uplink, resolution.lower, bridge.mac, nic_away=True)
            return
        nic = self.inventory.by_name(resolution.nic)
        if nic is None:  # resolved on an earlier snapshot, gone since
            raise NicAbsent(uplink.name, uplink.selector())
        # The NIC first: nothing on it may have a larger MTU than it.
        self.uplink_mtu(uplink, nic)
        if resolution.bridge:
            self.bridge(uplink, resolution.bridge, nic, vlans)
        elif nic.master is not None:
            master = self.inventory.by_index(nic.master)
            raise HostError(f"uplink '{uplink.name}': NIC {nic.name} is a port of "
                            f"{master.name if master else nic.master}, and the kernel refuses "
                            f"macvtap on a bridge port; set bridge = "
                            f"\"{master.name if master else '...'}\" for this uplink")
        if not nic.up:
            self.actions.append(SetUp(nic.name))
        if uplink.host_addresses:
            self.shim(uplink, resolution.lower, nic.permanent_mac or nic.mac)

    def uplink_mtu(self, uplink: Uplink, link: Link) -> None:
        """The uplink's MTU on one of its shared devices, where it has one."""
        if uplink.mtu is not None and link.mtu != uplink.mtu:
            self.actions.append(SetMtu(link.name, uplink.mtu, link.mtu))
            self.planned_mtus[link.name] = uplink.mtu

    def claim(self, link: Link) -> None:
        """A device of kvmhooks' that a kill left without its mark gets it."""
        if link.mark_pending:
            self.actions.append(MarkLink(link.name, link.alias))

    def bridge(self, uplink: Uplink, name: str, nic: Link,
               vlans: frozenset[int] = frozenset()) -> None:
        bridge = self.inventory.by_name(name)
        if bridge is None:
            mark = self.bridge_mark or bridge_mark(uplink.name)
            # With its NIC's MTU from the start: a bridge takes the smallest MTU of its
            # ports, and guests' devices take the bridge's.
            mtu = self.mtu_of(nic.name)
            self.actions.append(CreateBridge(name, nic.mac, mark, mtu))
            self.planned_links.add(name)
            self.planned_mtus[name] = mtu
        elif bridge.kind != "bridge":
            raise ForeignDevice(name, f"exists and is a {bridge.kind or 'plain'} device, "
                                "not a bridge")
        else:
            self.claim(bridge)
            if not bridge.up:
                self.actions.append(SetUp(name))
            self.uplink_mtu(uplink, bridge)
        if vlans:  # before the NIC is touched: a kernel that cannot filter stops it here
            self.vlan_filtering(uplink, name, bridge)
        if nic.master is None:
            self.enslave(uplink, nic, name)
        elif bridge is None or nic.master != bridge.index:
            master = self.inventory.by_index(nic.master)
            raise ForeignDevice(nic.name, f"is a port of {master.name if master else '?'}, "
                                f"not of uplink '{uplink.name}' bridge {name}")
        else:  # enslaved already, and what it still holds goes to the bridge
            self.move_to_bridge(nic, name, enslave=False)
        self.nic_port_vlans(nic, name, bridge, vlans)

    def vlan_filtering(self, uplink: Uplink, name: str, bridge: Link | None) -> None:
        """The bridge filters VLANs: its own bridges when a guest asks for a VLAN, an
        administrator's only when the uplink says so. Ports keep the bridge's default
        VLAN as their untagged one, so the host's own address and untagged guests stay
        where they were."""
        if self.filters(name, bridge):
            return
        ours = bridge is None or bridge.alias == (self.bridge_mark or bridge_mark(uplink.name))
        if not ours and not uplink.vlan_filtering:
            raise HostError(f"uplink '{uplink.name}': bridge {name} filters no VLANs and is "
                            "not kvmhooks'; set vlan_filtering = true for this uplink to let "
                            "kvmhooks turn VLAN filtering on")
        self.actions.append(SetVlanFiltering(name, True))
        self.planned_filtering.add(name)

    def filters(self, name: str, bridge: Link | None) -> bool:
        """Whether the bridge filters VLANs once the plan has run."""
        return (bridge is not None and bridge.vlan_filtering) or name in self.planned_filtering

    def nic_port_vlans(self, nic: Link, name: str, bridge: Link | None,
                       vlans: frozenset[int]) -> None:
        """The NIC's port carries, tagged, every VLAN a guest on the bridge is on: those
        of the bridge's taps, and vlans. What the port has besides stays."""
        if not self.filters(name, bridge):
            return
        in_use = set(vlans)
        if bridge is not None:
            for port in self.inventory.ports(bridge):
                if port.kind == "tun" and port.vlans is not None:
                    in_use.update(port.vlans.members)
        enslaved = bridge is not None and nic.master == bridge.index and nic.vlans is not None
        has = nic.vlans if enslaved else joining_vlans(bridge)
        self.actions.extend(AddPortVlan(nic.name, vlan) for vlan in sorted(in_use)
                            if vlan not in has.members)

    def enslave(self, uplink: Uplink, nic: Link, bridge: str) -> None:
        """Enslave the NIC, moving its addresses and routes to the bridge first so the
        host keeps its connectivity (what the nmcli bridge-slave dance does by hand). Not
        a NIC with a DHCP lease: the lease would work on the bridge only until it ends,
        then its client, still on the port, puts a new one back on the port."""
        lease = next((address for address in nic.addresses if address.lease), None)
        if lease is not None:
            raise LeaseOnNic(uplink.name, nic.name, bridge, lease.describe())
        children = self.inventory.children(nic)
        own_shim = [c for c in children if c.alias == shim_mark(uplink.name)]
        if own_shim:
            # Left on the NIC from before the uplink had a bridge; the shim step below
            # builds it again on the bridge.
            self.actions.append(DeleteLink(own_shim[0].name, "shim moves to the bridge"))
            self.deleted_links.add(own_shim[0].name)
            children = tuple(c for c in children if c not in own_shim)
        if children:
            raise HostError(f"uplink '{uplink.name}': NIC {nic.name} carries "
                            f"{', '.join(c.name for c in children)}; the kernel refuses to "
                            "enslave a NIC with macvtap or macvlan devices")
        self.move_to_bridge(nic, bridge, enslave=True)

    def move_to_bridge(self, nic: Link, bridge: str, enslave: bool) -> None:
        """The NIC's addresses and routes go to the bridge, each with its properties. An
        address the bridge holds already is only removed from the NIC (a network manager
        re-applied it to a NIC that came back, or a kill came before the NIC's turn), so
        this converges from any state its own steps leave.

        An IPv6 temporary address moves with its lifetimes as a plain one: the kernel
        takes that flag from no one (it makes new temporary addresses on the bridge from
        the moved mngtmpaddr address itself, where the bridge has use_tempaddr)."""
        held = self.inventory.by_name(bridge)
        adding = [address for address in nic.addresses
                  if not (held and held.holds(address.cidr))]
        self.actions.extend(AddAddress(bridge, address) for address in adding)
        self.planned_addresses.setdefault(bridge, []).extend(adding)
        on_bridge = {_route_key(route) for route in (held.routes + held.prefix_routes
                                                     if held else ())}
        on_bridge |= {_route_key(prefix_route(address)) for address in adding
                      if address.makes_prefix_route}
        # One the bridge has already only leaves the NIC.
        for route in in_adding_order(nic.routes):
            self.actions.append(DelRoute(route, nic.name) if _route_key(route) in on_bridge
                                else MoveRoute(route, nic.name, bridge))
        if enslave:
            self.actions.append(SetMaster(nic.name, bridge, None))
        # Last first, and temporary addresses before all: the kernel removes an IPv4
        # primary's secondaries with it, and a mngtmpaddr address's temporary ones.
        removing = sorted(reversed(nic.addresses), key=lambda address: not address.temporary)
        self.actions.extend(DelAddress(nic.name, address) for address in removing)

    def shim(self, uplink: Uplink, lower: str, host_mac: str | None,
             nic_away: bool = False) -> None:
        addresses = tuple(shim_address(str(address)) for address in uplink.host_addresses)
        mac = shim_mac(uplink.name, host_mac or "")
        mtu = self.mtu_of(lower)
        shim = None if uplink.shim in self.deleted_links else self.inventory.by_name(uplink.shim)
        if shim is not None and shim.alias != shim_mark(uplink.name):
            raise ForeignDevice(uplink.shim, "exists without kvmhooks' shim mark")
        if shim is not None:
            if link_problem(shim, WantedLink("macvlan", lower, mode="bridge"),
                            self.inventory) is not None:
                self.actions.append(DeleteLink(shim.name, f"shim of uplink '{uplink.name}' "
                                               f"is not a bridge-mode macvlan on {lower}"))
                shim = None
            elif shim.mac != mac and not nic_away:
                self.actions.append(DeleteLink(shim.name, f"shim of uplink '{uplink.name}' "
                                               f"has MAC {shim.mac}, not its own {mac}"))
                shim = None
        if shim is None:
            self.actions.append(CreateShim(uplink.shim, lower, addresses,
                                           shim_mark(uplink.name), mac, mtu))
        else:
            self.claim(shim)
            self.actions.extend(AddAddress(shim.name, address) for address in addresses
                                if not shim.holds(address.cidr))
            if mtu is not None and shim.mtu != mtu:
                self.actions.append(SetMtu(shim.name, mtu, shim.mtu))
            if not shim.up:
                self.actions.append(SetUp(shim.name))
        self.prefer_shim(uplink, lower, self.inventory.by_name(lower))

    def prefer_shim(self, uplink: Uplink, lower: str, lower_link: Link | None) -> None:
        """The host reaches the shim's subnet through the shim: a macvtap never hears
        what its lower device sends, so the lower's own route for that subnet (there when
        the NIC or bridge has an address in it) gets a higher metric and stays as the
        fallback. Where a kill left that route with both metrics, the old one goes."""
        networks = {str(address.network) for address in uplink.host_addresses}
        present = lower_link.prefix_routes if lower_link else ()
        competing = {route.dst: route for route in present
                     if route.dst in networks and (route.priority or 0) < SHIM_PREFERENCE}
        for address in self.planned_addresses.get(lower, ()):
            network = str(address.interface.network)
            if address.makes_prefix_route and network in networks:
                competing.setdefault(network, prefix_route(address))
        for route in competing.values():
            metric = SHIM_PREFERENCE + (route.priority or 0)
            if any(other.dst == route.dst and other.priority == metric for other in present):
                self.actions.append(DelRoute(route, lower))
            else:
                self.actions.append(SetRouteMetric(route, lower, metric))

    def guest_device(self, domain: Domain, tagged: TaggedInterface,
                     resolution: Resolution) -> None:
        """A hook-owned interface's device, with its lower device's MTU: kept when it
        matches (set up if down), else built, replacing one of ours left from an earlier
        start."""
        name, mark = tagged.device.target_dev, guest_mark(domain.uuid)
        wanted = guest_link(tagged, resolution)
        if wanted.kind == "macvtap" and tagged.attachment.vlan is not None:
            self.vlan_device(domain, tagged, resolution)
        mtu = self.mtu_of(wanted.lower)
        if name in self.planned_links:
            raise MetadataError(domain.name, f"target dev '{name}' is already used by "
                                "another device of this plan", tagged.mac)
        self.planned_links.add(name)
        existing = self.inventory.by_name(name)
        if existing is not None:
            if existing.alias != mark:
                owner = f"carries mark '{existing.alias}'" if existing.marked else \
                    "exists without kvmhooks' mark"
                raise ForeignDevice(name, f"{owner}, so domain {domain.name} cannot use it")
            if link_problem(existing, replace(wanted, vlans=None), self.inventory) is None:
                self.claim(existing)
                if mtu is not None and existing.mtu != mtu:
                    self.actions.append(SetMtu(name, mtu, existing.mtu))
                if wanted.vlans is not None and existing.vlans != wanted.vlans:
                    self.actions.append(SetPortVlans(
                        name, wanted.vlans,
                        existing.vlans or joining_vlans(self.inventory.by_name(wanted.lower))))
                if not existing.up:
                    self.actions.append(SetUp(name))
                return
            self.actions.append(DeleteLink(name, "left from an earlier start, rebuilt"))
        if wanted.kind == "tun":
            self.actions.append(CreateTap(name, wanted.mac, wanted.lower, mark, mtu,
                                          bool(wanted.multi_queue)))
            if wanted.vlans is not None:
                self.actions.append(SetPortVlans(
                    name, wanted.vlans, joining_vlans(self.inventory.by_name(wanted.lower))))
        else:
            self.actions.append(CreateMacvtap(name, wanted.mac, wanted.lower, wanted.mode,
                                              mark, mtu))

    def reenslave_tap(self, name: str | None, bridge: str, hook_owned_only: bool = True,
                      vlans: PortVlans | None = None):
        """Put a guest's tap back on its bridge, with its VLANs (a port that joins a
        bridge has the bridge's default); libvirt's own taps of tagged guests too when
        asked (after a NIC event, the bridge itself may have been rebuilt)."""
        tap = self.inventory.by_name(name) if name else None
        if tap is None or tap.kind != "tun" or (hook_owned_only and not tap.marked):
            return
        if link_problem(tap, WantedLink("tun", bridge), self.inventory) is None:
            return
        previous = self.inventory.by_index(tap.master)
        if vlans is None:
            self.actions.append(SetMaster(name, bridge, previous.name if previous else None))
            return
        # Down while it joins: a port joins on the bridge's default VLAN, and a running
        # guest's frames must not reach it before the tap has its own VLANs.
        joining = [SetMaster(name, bridge, previous.name if previous else None),
                   SetPortVlans(name, vlans, joining_vlans(self.inventory.by_name(bridge)))]
        self.actions += [SetDown(name), *joining, SetUp(name)] if tap.up else joining

    def vlan_device(self, domain: Domain, tagged: TaggedInterface,
                    resolution: Resolution) -> None:
        """The NIC's 802.1Q sub-interface a macvtap guest on a VLAN hangs off: kept when
        there, whoever made it, built and marked when not."""
        vlan, nic = tagged.attachment.vlan, resolution.lower
        name = vlan_device_name(nic, vlan)
        if name in self.planned_links:
            return
        if problem := ifname_problem(name):
            raise MetadataError(domain.name, f"VLAN {vlan} sub-interface of NIC {nic}: "
                                f"{problem}", tagged.mac)
        self.planned_links.add(name)
        existing = self.inventory.by_name(name)
        parent = self.inventory.by_name(nic)
        if existing is None:
            mtu = self.mtu_of(nic)
            self.actions.append(CreateVlan(name, nic, vlan, vlan_mark(resolution.uplink), mtu))
            self.planned_mtus[name] = mtu
            return
        if existing.kind != "vlan" or existing.vlan_id != vlan or parent is None or \
                existing.parent != parent.index:
            raise ForeignDevice(name, f"exists and is not the VLAN {vlan} sub-interface "
                                f"of {nic}")
        self.claim(existing)
        if not existing.up:
            self.actions.append(SetUp(name))
