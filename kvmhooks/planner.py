"""Intents + config + inventory -> a Plan of actions (pure; what `explain` prints).

The kernel facts behind the shape of a plan (DESIGN section 4):
- a NIC that is a bridge port cannot carry macvtap or macvlan devices (EBUSY), and a
  NIC that carries them cannot be enslaved; so on an uplink with a bridge, every macvtap
  and the shim hang off the bridge, and on one without, off the NIC;
- a macvtap dies with its parent, a tap on a bridge survives its NIC leaving.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from .actions import (
    Action,
    AddAddress,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    DelAddress,
    DeleteLink,
    MoveRoute,
    SetMaster,
    SetRouteMetric,
    SetUp,
    WriteSource,
)
from .config import Config, Uplink
from .domain import Domain, TaggedInterface
from .errors import (
    ForeignDevice,
    HostError,
    KvmhooksError,
    MetadataError,
    NetworkRefused,
    NicAbsent,
    NotAllowed,
)
from .inventory import LOWER_KINDS, Inventory, Link, Route
from .names import MARK_PREFIX, bridge_mark, guest_mark, network_mark, shim_mark
from .network import NetworkDef

# Kinds that are never an uplink's NIC when we look it up by MAC or udev path: they
# copy or borrow a NIC's MAC (a VLAN, a bond's ports) or are guests' devices.
_NOT_A_NIC = ("bridge", "tun", "vlan", "macsec", "ipvlan", "vxlan", *LOWER_KINDS)
_AGGREGATES = ("bond", "team")
# What a lower device's route for the shim's subnet is raised by, so the shim's wins.
SHIM_PREFERENCE = 1024
# libvirt's default for <source mode> of a direct interface is vepa.
LIBVIRT_DEFAULT_DIRECT_MODE = "vepa"


@dataclass(frozen=True)
class Resolution:
    """What an uplink is on this host."""

    uplink: str
    nic: str | None  # None: the NIC is away for now, its uplink's bridge is here
    bridge: str | None

    @property
    def lower(self) -> str:
        """The device macvtaps and the shim hang off."""
        return self.bridge or self.nic


@dataclass(frozen=True)
class Plan:
    domain: str
    uuid: str
    actions: tuple[Action, ...] = ()
    sources: tuple[WriteSource, ...] = ()
    resolutions: tuple[Resolution, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict:
        return {"domain": self.domain, "uuid": self.uuid,
                "actions": [action.as_dict() for action in self.actions],
                "sources": [source.as_dict() for source in self.sources]}


def _family(interface) -> int:
    return socket.AF_INET6 if interface.version == 6 else socket.AF_INET


def tap_mac(guest_mac: str) -> str:
    """The host side of a tap carries the guest's MAC with first byte fe, as libvirt does:
    a bridge takes its lowest port MAC as its own and would swallow frames for the guest."""
    return "fe" + guest_mac[2:]


def resolve(uplink: Uplink, inventory: Inventory) -> Resolution:
    if uplink.nic:
        link = inventory.by_name(uplink.nic)
        if link is None:
            raise NicAbsent(uplink.name, uplink.selector())
    else:
        matches = [link for link in inventory.links
                   if link.kind not in _NOT_A_NIC and not link.marked
                   and not _in_aggregate(link, inventory) and (
                       (uplink.mac and uplink.mac in (link.mac, link.permanent_mac))
                       or (uplink.path and link.id_path == uplink.path))]
        if not matches:
            raise NicAbsent(uplink.name, uplink.selector())
        if len(matches) > 1:
            names = ", ".join(link.name for link in matches)
            raise HostError(f"uplink '{uplink.name}': {uplink.selector()} matches several "
                            f"links ({names})")
        link = matches[0]
    return Resolution(uplink=uplink.name, nic=link.name, bridge=uplink.bridge)


def _in_aggregate(link: Link, inventory: Inventory) -> bool:
    master = inventory.by_index(link.master)
    return master is not None and master.kind in _AGGREGATES


def uplink_for(tagged: TaggedInterface, domain: Domain, config: Config) -> Uplink | None:
    """The config uplink of a bridge or direct interface, checked against the allowlist."""
    attachment = tagged.attachment
    if attachment.kind == "network":
        return None
    uplink = config.uplinks.get(attachment.uplink)
    if uplink is None:
        raise MetadataError(domain.name, f"unknown uplink '{attachment.uplink}' (no "
                            f"[uplink.{attachment.uplink}] in {config.path})", tagged.mac)
    if not uplink.allows(domain.name):
        raise NotAllowed(domain.name, uplink.name, config.path)
    if attachment.kind == "bridge" and not uplink.bridge:
        raise MetadataError(domain.name, f"type 'bridge' needs a bridge, and uplink "
                            f"'{uplink.name}' has none in {config.path}", tagged.mac)
    return uplink


def wanted_source(tagged: TaggedInterface, resolution: Resolution | None) -> WriteSource:
    attachment = tagged.attachment
    if attachment.kind == "bridge":
        return WriteSource(tagged.mac, "bridge", bridge=resolution.bridge)
    if attachment.kind == "direct":
        return WriteSource(tagged.mac, "direct", dev=resolution.lower, mode=attachment.mode)
    return WriteSource(tagged.mac, "network", network=attachment.network)


def current_source(tagged: TaggedInterface) -> WriteSource:
    device = tagged.device
    if device.type == "bridge":
        return WriteSource(tagged.mac, "bridge", bridge=device.source_bridge)
    if device.type == "direct":
        return WriteSource(tagged.mac, "direct", dev=device.source_dev,
                           mode=device.source_mode or LIBVIRT_DEFAULT_DIRECT_MODE)
    return WriteSource(tagged.mac, device.type, network=device.source_network)


def source_difference(current: WriteSource, wanted: WriteSource) -> str:
    """A short sentence saying how a native source differs from this host's resolution."""
    if current.type != wanted.type:
        return f"interface is type '{current.type}', metadata says '{wanted.type}'"
    if current.type == "bridge":
        return (f"source bridge is '{current.bridge}', this host's uplink bridge is "
                f"'{wanted.bridge}'")
    if current.type == "direct":
        parts = []
        if current.dev != wanted.dev:
            parts.append(f"source dev is '{current.dev}', this host's uplink device is "
                         f"'{wanted.dev}'")
        if current.mode != wanted.mode:
            parts.append(f"source mode is '{current.mode}', metadata says '{wanted.mode}'")
        return "; ".join(parts)
    return f"source network is '{current.network}', metadata says '{wanted.network}'"


def resolve_all(domain: Domain, config: Config, inventory: Inventory) -> dict[str, Resolution]:
    """Uplink name -> resolution, for every uplink the domain's interfaces use."""
    resolutions: dict[str, Resolution] = {}
    for tagged in domain.tagged:
        uplink = uplink_for(tagged, domain, config)
        if uplink is not None and uplink.name not in resolutions:
            resolutions[uplink.name] = resolve_for_guests(uplink, inventory)
    return resolutions


def resolve_for_guests(uplink: Uplink, inventory: Inventory) -> Resolution:
    """As resolve, but a NIC that is away while its uplink's bridge exists (it went away
    and its NIC event will bring it back) does not keep guests off that bridge."""
    try:
        return resolve(uplink, inventory)
    except NicAbsent:
        bridge = inventory.by_name(uplink.bridge) if uplink.bridge else None
        if bridge is None or bridge.kind != "bridge":
            raise
        return Resolution(uplink=uplink.name, nic=None, bridge=uplink.bridge)


def plan_sources(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """The native sources to write for this host (migrate, restore, apply)."""
    resolutions = resolve_all(domain, config, inventory)
    sources = []
    for tagged in domain.tagged:
        if tagged.hook_owned:
            continue
        wanted = wanted_source(tagged, resolutions.get(tagged.attachment.uplink))
        if current_source(tagged) != wanted:
            sources.append(wanted)
    return Plan(domain.name, domain.uuid, sources=tuple(sources),
                resolutions=tuple(resolutions.values()))


def plan_prepare(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """Everything a start needs on this host: shared devices, then per-guest devices."""
    sources = plan_sources(domain, config, inventory)
    planner = _DevicePlanner(inventory)
    for resolution in sources.resolutions:
        planner.uplink(config.uplinks[resolution.uplink], resolution)
    lookup = {resolution.uplink: resolution for resolution in sources.resolutions}
    for tagged in domain.tagged:
        if tagged.hook_owned:
            planner.hook_owned(domain, tagged, lookup[tagged.attachment.uplink])
    return Plan(domain.name, domain.uuid, tuple(planner.actions), sources.sources,
                sources.resolutions)


def plan_repair(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """For a guest that already runs: shared devices, and its taps back on their bridge.

    Devices a running qemu holds are never deleted here; a dead macvtap needs a re-plug
    through libvirt, which is not allowed from inside a hook.
    """
    resolutions = resolve_all(domain, config, inventory)
    planner = _DevicePlanner(inventory)
    for resolution in resolutions.values():
        planner.uplink(config.uplinks[resolution.uplink], resolution)
    for tagged in domain.tagged:
        if tagged.hook_owned and tagged.attachment.kind == "bridge":
            planner.reenslave_tap(tagged.device.target_dev,
                                  resolutions[tagged.attachment.uplink].bridge)
    return Plan(domain.name, domain.uuid, tuple(planner.actions),
                resolutions=tuple(resolutions.values()))


@dataclass(frozen=True)
class Replug:
    """A running guest's interface whose macvtap died with its NIC: only a live detach
    and attach through libvirt brings the guest back (qemu's descriptor died too)."""

    mac: str
    source: WriteSource | None  # native: attach with this source; hook-owned: None
    detach: bool = True  # False: the interface is unplugged already, attach only


def resolve_affected(config: Config, inventory: Inventory, ifname: str) -> list[Resolution]:
    """The uplinks whose NIC is ifname on this host now."""
    found = []
    for uplink in config.uplinks.values():
        try:
            resolution = resolve(uplink, inventory)
        except KvmhooksError:
            continue
        if resolution.nic == ifname:
            found.append(resolution)
    return found


def plan_uplinks(resolutions: list[Resolution], config: Config, inventory: Inventory) -> Plan:
    """The shared devices of these uplinks: bridge, enslaved NIC, NIC up, shim."""
    planner = _DevicePlanner(inventory)
    for resolution in resolutions:
        planner.uplink(config.uplinks[resolution.uplink], resolution)
    return Plan("-", "", tuple(planner.actions), resolutions=tuple(resolutions))


def plan_reconnect(domain: Domain, resolutions: list[Resolution], config: Config,
                   inventory: Inventory, unplugged: frozenset[str] = frozenset()
                   ) -> tuple[Plan, tuple[Replug, ...]]:
    """For a running guest after its uplink's NIC came back: taps back on their bridge,
    and the interfaces whose macvtap is gone rebuilt (hook-owned) and re-plugged.

    unplugged: MACs of interfaces the guest does not have now (a re-plug cut short);
    domain holds them as its persistent definition describes them."""
    planner = _DevicePlanner(inventory)
    by_uplink = {resolution.uplink: resolution for resolution in resolutions}
    replugs = []
    for tagged in domain.tagged:
        resolution = by_uplink.get(tagged.attachment.uplink)
        if resolution is None:
            continue
        uplink_for(tagged, domain, config)  # the allowlist holds on this path too
        if tagged.attachment.kind == "bridge":
            planner.reenslave_tap(tagged.device.target_dev, resolution.bridge,
                                  hook_owned_only=False)
            continue
        device = inventory.by_name(tagged.device.target_dev or "")
        lower = inventory.by_name(resolution.lower)
        plugged = tagged.mac not in unplugged
        if (plugged and device is not None and device.kind == "macvtap" and lower is not None
                and device.parent == lower.index):
            continue
        if tagged.hook_owned:
            planner.hook_owned(domain, tagged, resolution)
            replugs.append(Replug(tagged.mac, None, plugged))
        else:
            replugs.append(Replug(tagged.mac, wanted_source(tagged, resolution), plugged))
    return (Plan(domain.name, domain.uuid, tuple(planner.actions),
                 resolutions=tuple(resolutions)), tuple(replugs))


MACVTAP_FORWARD_MODES = ("bridge", "private", "vepa", "passthrough")


def plan_network_start(network: NetworkDef, config: Config, inventory: Inventory) -> Plan:
    """What a libvirt network named in the config needs before it starts, or a refusal
    that says why its definition cannot work on this host."""
    entry = config.networks[network.name]
    uplink = config.uplinks[entry.uplink]
    resolution = resolve(uplink, inventory)
    subject = f"network {network.name}"
    if network.forward_mode == "bridge" and network.bridge:
        if not uplink.bridge:
            raise NetworkRefused(f"{subject}: forward mode bridge on bridge {network.bridge}, "
                                 f"but uplink '{uplink.name}' has no bridge in {config.path}; "
                                 f"set bridge = \"{network.bridge}\" there")
        if network.bridge != uplink.bridge:
            raise NetworkRefused(f"{subject}: bridge {network.bridge} is not uplink "
                                 f"'{uplink.name}' bridge {uplink.bridge}; use "
                                 f"<bridge name='{uplink.bridge}'/>")
    elif network.forward_mode in MACVTAP_FORWARD_MODES:
        for dev in network.forward_devs:
            _check_forward_dev(subject, dev, resolution, inventory)
    planner = _DevicePlanner(inventory, bridge_mark=network_mark(network.name))
    planner.uplink(uplink, resolution)
    return Plan(network.name, "", tuple(planner.actions), resolutions=(resolution,))


def _check_forward_dev(subject: str, dev: str, resolution: Resolution,
                       inventory: Inventory) -> None:
    """Judge a forward interface by the host this plan leaves: the uplink's bridge will
    exist, and its NIC will be a bridge port."""
    lower = resolution.lower
    use = f"<interface dev='{lower}'/>"
    if dev == resolution.bridge:
        return
    if resolution.bridge and dev == resolution.nic:
        raise NetworkRefused(f"{subject}: forward interface {dev} is a port of bridge "
                             f"{resolution.bridge} (the NIC of uplink '{resolution.uplink}'), "
                             f"and the kernel refuses a macvtap on a bridge port; use {use}")
    link = inventory.by_name(dev)
    if link is None:
        raise NetworkRefused(f"{subject}: forward interface {dev} does not exist on this "
                             f"host; use {use}")
    if link.kind in LOWER_KINDS:
        what = "the uplink's bridge" if resolution.bridge else "the physical NIC"
        raise NetworkRefused(f"{subject}: forward interface {dev} is itself a {link.kind} "
                             "device, and libvirt puts a macvtap on each forward interface; "
                             f"name {what} instead: {use}")
    master = inventory.by_index(link.master)
    if master is not None:
        raise NetworkRefused(f"{subject}: forward interface {dev} is a port of bridge "
                             f"{master.name}, and the kernel refuses a macvtap on a bridge "
                             f"port; use <interface dev='{master.name}'/>")


def plan_network_stop(network_name: str, inventory: Inventory) -> Plan:
    """Undo what the network hook built: a bridge it created goes, once nothing but its
    NIC and shim hang on it, and the NIC gets its addresses and routes back."""
    actions: list[Action] = []
    for bridge in inventory.marked_with(network_mark(network_name)):
        ports = inventory.ports(bridge)
        nics = [port for port in ports if port.kind not in ("tun", *LOWER_KINDS)]
        children = [c for c in inventory.children(bridge) if not c.alias or
                    not c.alias.startswith(MARK_PREFIX + "shim:")]
        if len(nics) > 1 or len(ports) > len(nics) or children:
            continue  # guests still use it: it stays until they are gone
        if nics:
            nic = nics[0].name
            actions += [AddAddress(nic, address) for address in bridge.addresses]
            actions += [MoveRoute(route, bridge.name, nic) for route in bridge.routes]
            actions.append(SetMaster(nic, None, bridge.name))
        actions.append(DeleteLink(bridge.name, f"network {network_name} stopped"))
    return Plan(network_name, "", tuple(actions))


def orphans(inventory: Inventory, running_uuids: set[str]) -> tuple[Link, ...]:
    """Per-guest devices kvmhooks made for domains that do not run (a prepare killed
    before it could undo, a release that never came)."""
    prefix = guest_mark("")
    return tuple(link for link in inventory.links
                 if link.alias and link.alias.startswith(prefix)
                 and link.alias[len(prefix):] not in running_uuids)


def plan_orphans(inventory: Inventory, running_uuids: set[str]) -> Plan:
    return Plan("-", "", tuple(DeleteLink(link.name, f"orphan of domain "
                                          f"{link.alias[len(guest_mark('')):]}")
                               for link in orphans(inventory, running_uuids)))


def plan_release(domain_name: str, domain_uuid: str, inventory: Inventory) -> Plan:
    """Remove the per-guest devices kvmhooks made for this domain; shared ones stay."""
    actions = tuple(DeleteLink(link.name, f"guest {domain_name} stopped")
                    for link in inventory.marked_with(guest_mark(domain_uuid)))
    return Plan(domain_name, domain_uuid, actions)


class _DevicePlanner:
    """Accumulates actions; remembers what it already planned so nothing is doubled."""

    def __init__(self, inventory: Inventory, bridge_mark: str | None = None):
        self.inventory = inventory
        self.bridge_mark = bridge_mark  # None: the uplink's own mark
        self.actions: list[Action] = []
        self.planned_links: set[str] = set()
        self.deleted_links: set[str] = set()
        self.planned_addresses: dict[str, list[str]] = {}

    def uplink(self, uplink: Uplink, resolution: Resolution) -> None:
        if resolution.nic is None:  # away for now: the bridge is all there is to keep
            if uplink.host_address is not None:
                self.shim(uplink, resolution.lower)
            return
        nic = self.inventory.by_name(resolution.nic)
        if nic is None:  # resolved on an earlier snapshot, gone since
            raise NicAbsent(uplink.name, uplink.selector())
        if resolution.bridge:
            self.bridge(uplink, resolution.bridge, nic)
        elif nic.master is not None:
            master = self.inventory.by_index(nic.master)
            raise HostError(f"uplink '{uplink.name}': NIC {nic.name} is a port of "
                            f"{master.name if master else nic.master}, and the kernel refuses "
                            f"macvtap on a bridge port; set bridge = "
                            f"\"{master.name if master else '...'}\" for this uplink")
        if not nic.up:
            self.actions.append(SetUp(nic.name))
        if uplink.host_address is not None:
            self.shim(uplink, resolution.lower)

    def bridge(self, uplink: Uplink, name: str, nic: Link) -> None:
        bridge = self.inventory.by_name(name)
        if bridge is None:
            mark = self.bridge_mark or bridge_mark(uplink.name)
            self.actions.append(CreateBridge(name, nic.mac, mark))
            self.planned_links.add(name)
        elif bridge.kind != "bridge":
            raise ForeignDevice(name, f"exists and is a {bridge.kind or 'plain'} device, "
                                "not a bridge")
        elif not bridge.up:
            self.actions.append(SetUp(name))
        if nic.master is None:
            self.enslave(uplink, nic, name)
        elif bridge is None or nic.master != bridge.index:
            master = self.inventory.by_index(nic.master)
            raise ForeignDevice(nic.name, f"is a port of {master.name if master else '?'}, "
                                f"not of uplink '{uplink.name}' bridge {name}")

    def enslave(self, uplink: Uplink, nic: Link, bridge: str) -> None:
        """Enslave the NIC, moving its addresses and routes to the bridge first so the
        host keeps its connectivity (what the nmcli bridge-slave dance does by hand)."""
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
        self.actions.extend(AddAddress(bridge, address) for address in nic.addresses)
        self.planned_addresses.setdefault(bridge, []).extend(nic.addresses)
        self.actions.extend(MoveRoute(route, nic.name, bridge) for route in nic.routes)
        self.actions.append(SetMaster(nic.name, bridge, None))
        self.actions.extend(DelAddress(nic.name, address) for address in nic.addresses)

    def shim(self, uplink: Uplink, lower: str) -> None:
        address = str(uplink.host_address)
        shim = None if uplink.shim in self.deleted_links else self.inventory.by_name(uplink.shim)
        if shim is not None and shim.alias != shim_mark(uplink.name):
            raise ForeignDevice(uplink.shim, "exists without kvmhooks' shim mark")
        lower_link = self.inventory.by_name(lower)
        in_place = (shim is not None and lower_link is not None and shim.kind == "macvlan"
                    and shim.parent == lower_link.index and shim.mode == "bridge")
        if shim is not None and not in_place:
            self.actions.append(DeleteLink(shim.name, f"shim of uplink '{uplink.name}' is "
                                           f"not a bridge-mode macvlan on {lower}"))
        if not in_place:
            self.actions.append(CreateShim(uplink.shim, lower, address,
                                           shim_mark(uplink.name)))
        else:
            if address not in shim.addresses:
                self.actions.append(AddAddress(shim.name, address))
            if not shim.up:
                self.actions.append(SetUp(shim.name))
        self.prefer_shim(uplink, lower, lower_link)

    def prefer_shim(self, uplink: Uplink, lower: str, lower_link: Link | None) -> None:
        """The host reaches the shim's subnet through the shim: a macvtap never hears
        what its lower device sends, so the lower's own route for that subnet (there when
        the NIC or bridge has an address in it) gets a higher metric and stays as the
        fallback."""
        network = uplink.host_address.network
        competing = {route.dst: route for route in (lower_link.prefix_routes if lower_link
                                                     else ())
                     if route.dst == str(network) and (route.priority or 0) < SHIM_PREFERENCE}
        for address in self.planned_addresses.get(lower, ()):
            interface = ipaddress.ip_interface(address)
            if interface.network == network:
                competing.setdefault(str(network), Route(
                    str(network), _family(interface), source=str(interface.ip)))
        self.actions.extend(SetRouteMetric(route, lower, SHIM_PREFERENCE + (route.priority or 0))
                            for route in competing.values())

    def hook_owned(self, domain: Domain, tagged: TaggedInterface, resolution: Resolution):
        name, mark = tagged.device.target_dev, guest_mark(domain.uuid)
        attachment = tagged.attachment
        if attachment.kind == "bridge":
            create: Action = CreateTap(name, tap_mac(tagged.mac), resolution.bridge, mark)
        else:
            create = CreateMacvtap(name, tagged.mac, resolution.lower, attachment.mode, mark)
        if name in self.planned_links:
            raise MetadataError(domain.name, f"target dev '{name}' is already used by "
                                "another device of this plan", tagged.mac)
        existing = self.inventory.by_name(name)
        if existing is not None:
            if existing.alias != mark:
                owner = f"carries mark '{existing.alias}'" if existing.marked else \
                    "exists without kvmhooks' mark"
                raise ForeignDevice(name, f"{owner}, so domain {domain.name} cannot use it")
            if self.matches(existing, create):
                self.planned_links.add(name)
                return
            self.actions.append(DeleteLink(name, "left from an earlier start, rebuilt"))
        self.actions.append(create)
        self.planned_links.add(name)

    def matches(self, link: Link, create: Action) -> bool:
        if isinstance(create, CreateTap):
            bridge = self.inventory.by_name(create.bridge)
            return (link.kind == "tun" and link.mac == create.mac and bridge is not None
                    and link.master == bridge.index and link.up)
        parent = self.inventory.by_name(create.parent)
        return (link.kind == "macvtap" and link.mac == create.mac and parent is not None
                and link.parent == parent.index and link.mode == create.mode)

    def reenslave_tap(self, name: str | None, bridge: str, hook_owned_only: bool = True):
        """Put a guest's tap back on its bridge; libvirt's own taps of tagged guests too
        when asked (after a NIC event, the bridge itself may have been rebuilt)."""
        tap = self.inventory.by_name(name) if name else None
        if tap is None or tap.kind != "tun" or (hook_owned_only and not tap.marked):
            return
        bridge_link = self.inventory.by_name(bridge)
        if bridge_link is None or tap.master != bridge_link.index:
            previous = self.inventory.by_index(tap.master)
            self.actions.append(SetMaster(name, bridge, previous.name if previous else None))
