"""Intents + config + inventory -> a Plan of actions (pure; what `explain` prints).

The kernel facts behind the shape of a plan (DESIGN section 4):
- a NIC that is a bridge port cannot carry macvtap or macvlan devices (EBUSY), and a
  NIC that carries them cannot be enslaved; so on an uplink with a bridge, every macvtap
  and the shim hang off the bridge, and on one without, off the NIC;
- a macvtap dies with its parent, a tap on a bridge survives its NIC leaving.
"""

from __future__ import annotations

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
    SetUp,
    WriteSource,
)
from .config import Config, Uplink
from .domain import Domain, TaggedInterface
from .errors import ForeignDevice, HostError, MetadataError, NicAbsent, NotAllowed
from .inventory import LOWER_KINDS, Inventory, Link
from .names import bridge_mark, guest_mark, shim_mark

# Kinds that are never an uplink's NIC when we look it up by MAC or udev path: they
# copy or borrow a NIC's MAC (a VLAN, a bond's ports) or are guests' devices.
_NOT_A_NIC = ("bridge", "tun", "vlan", "macsec", "ipvlan", "vxlan", *LOWER_KINDS)
_AGGREGATES = ("bond", "team")
# libvirt's default for <source mode> of a direct interface is vepa.
LIBVIRT_DEFAULT_DIRECT_MODE = "vepa"


@dataclass(frozen=True)
class Resolution:
    """What an uplink is on this host."""

    uplink: str
    nic: str
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

    def describe(self) -> list[str]:
        return [action.describe() for action in self.actions + self.sources]


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
            resolutions[uplink.name] = resolve(uplink, inventory)
    return resolutions


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


def plan_release(domain_name: str, domain_uuid: str, inventory: Inventory) -> Plan:
    """Remove the per-guest devices kvmhooks made for this domain; shared ones stay."""
    actions = tuple(DeleteLink(link.name, f"guest {domain_name} stopped")
                    for link in inventory.marked_with(guest_mark(domain_uuid)))
    return Plan(domain_name, domain_uuid, actions)


class _DevicePlanner:
    """Accumulates actions; remembers what it already planned so nothing is doubled."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self.actions: list[Action] = []
        self.planned_links: set[str] = set()
        self.deleted_links: set[str] = set()

    def uplink(self, uplink: Uplink, resolution: Resolution) -> None:
        nic = self.inventory.by_name(resolution.nic)
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
            self.actions.append(CreateBridge(name, nic.mac, bridge_mark(uplink.name)))
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
            return
        if address not in shim.addresses:
            self.actions.append(AddAddress(shim.name, address))
        if not shim.up:
            self.actions.append(SetUp(shim.name))

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

    def reenslave_tap(self, name: str, bridge: str) -> None:
        tap = self.inventory.by_name(name)
        if tap is None or not tap.marked or tap.kind != "tun":
            return
        bridge_link = self.inventory.by_name(bridge)
        if bridge_link is None or tap.master != bridge_link.index:
            previous = self.inventory.by_index(tap.master)
            self.actions.append(SetMaster(name, bridge, previous.name if previous else None))
