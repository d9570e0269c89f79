"""Intents + config + snapshot -> a Plan (pure): one plan_* function per thing kvmhooks
does. What each plan holds is what `explain` prints and what apply.py runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .actions import Action, AddAddress, DeleteLink, DelPortVlan, MoveRoute, SetMaster
from .config import Config
from .devices import DevicePlanner, guest_link, link_problem, tap_vlans
from .domain import Domain
from .errors import NetworkRefused
from .inventory import LOWER_KINDS, Inventory, in_adding_order
from .names import guest_mark, network_mark
from .network import NetworkDef
from .resolve import Resolution, resolve, resolve_all, uplink_for
from .sources import Source, SourceChange, source_change, wanted_source


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    sources: tuple[SourceChange, ...] = ()
    resolutions: tuple[Resolution, ...] = field(default=(), compare=False)
    domain: str | None = None  # the domain's name and UUID, for plans made for one
    uuid: str | None = None

    def as_dict(self) -> dict:
        return {"domain": self.domain, "uuid": self.uuid,
                "actions": [action.as_dict() for action in self.actions],
                "sources": [source.as_dict() for source in self.sources]}


def plan_sources(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """The native sources to write for this host (migrate, restore, apply)."""
    resolutions = resolve_all(domain, config, inventory)
    changes = (source_change(tagged, resolutions.get(tagged.attachment.uplink))
               for tagged in domain.tagged)
    return Plan(sources=tuple(change for change in changes if change is not None),
                resolutions=tuple(resolutions.values()), domain=domain.name, uuid=domain.uuid)


def plan_prepare(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """Everything a start needs on this host: shared devices, then per-guest devices."""
    sources = plan_sources(domain, config, inventory)
    planner = DevicePlanner(inventory)
    for resolution in sources.resolutions:
        planner.uplink(config.uplinks[resolution.uplink], resolution,
                       bridge_vlans(domain, resolution.uplink))
    lookup = {resolution.uplink: resolution for resolution in sources.resolutions}
    for tagged in domain.tagged:
        if tagged.hook_owned:
            planner.guest_device(domain, tagged, lookup[tagged.attachment.uplink])
        elif tagged.attachment.kind == "direct" and tagged.attachment.vlan is not None:
            planner.vlan_device(domain, tagged, lookup[tagged.attachment.uplink])
    return Plan(tuple(planner.actions), sources.sources, sources.resolutions, domain.name,
                domain.uuid)


def bridge_vlans(domain: Domain, uplink: str) -> frozenset[int]:
    """The VLANs the domain's interfaces on this uplink's bridge are on."""
    return frozenset(vlan for tagged in domain.tagged
                     if tagged.attachment.kind == "bridge" and tagged.attachment.uplink == uplink
                     for vlan in tagged.attachment.vlans)


def plan_repair(domain: Domain, config: Config, inventory: Inventory) -> Plan:
    """For a guest that already runs: shared devices, and its taps back on their bridge.

    Devices a running qemu holds are never deleted here; a dead macvtap needs a re-plug
    through libvirt, which is not allowed from inside a hook.
    """
    resolutions = resolve_all(domain, config, inventory)
    planner = DevicePlanner(inventory)
    for resolution in resolutions.values():
        planner.uplink(config.uplinks[resolution.uplink], resolution)
    for tagged in domain.tagged:
        if tagged.hook_owned and tagged.attachment.kind == "bridge":
            planner.reenslave_tap(tagged.device.target_dev,
                                  resolutions[tagged.attachment.uplink].bridge,
                                  vlans=tap_vlans(tagged.attachment))
    return Plan(tuple(planner.actions), resolutions=tuple(resolutions.values()),
                domain=domain.name, uuid=domain.uuid)


@dataclass(frozen=True)
class Replug:
    """A running guest's interface whose macvtap died with its NIC: only a live detach
    and attach through libvirt brings the guest back (qemu's descriptor died too)."""

    mac: str
    source: Source | None  # native: attach with this source; hook-owned: None
    detach: bool = True  # False: the interface is unplugged already, attach only


def plan_uplinks(resolutions: list[Resolution], config: Config, inventory: Inventory) -> Plan:
    """The shared devices of these uplinks: bridge, enslaved NIC, NIC up, shim."""
    planner = DevicePlanner(inventory)
    for resolution in resolutions:
        planner.uplink(config.uplinks[resolution.uplink], resolution)
    return Plan(tuple(planner.actions), resolutions=tuple(resolutions))


def plan_reconnect(domain: Domain, resolutions: list[Resolution], config: Config,
                   inventory: Inventory, unplugged: frozenset[str] = frozenset()
                   ) -> tuple[Plan, tuple[Replug, ...]]:
    """For a running guest after its uplink's NIC came back: taps back on their bridge,
    and the interfaces whose macvtap is gone rebuilt (hook-owned) and re-plugged.

    unplugged: MACs of interfaces the guest does not have now (a re-plug cut short);
    domain holds them as its persistent definition describes them."""
    planner = DevicePlanner(inventory)
    by_uplink = {resolution.uplink: resolution for resolution in resolutions}
    replugs = []
    for tagged in domain.tagged:
        resolution = by_uplink.get(tagged.attachment.uplink)
        if resolution is None:
            continue
        uplink_for(tagged, domain, config)  # the allowlist holds on this path too
        if tagged.attachment.kind == "bridge":
            planner.reenslave_tap(tagged.device.target_dev, resolution.bridge,
                                  hook_owned_only=False, vlans=tap_vlans(tagged.attachment))
            continue
        device = inventory.by_name(tagged.device.target_dev or "")
        plugged = tagged.mac not in unplugged
        if plugged and device is not None and \
                link_problem(device, guest_link(tagged, resolution), inventory) is None:
            continue
        if tagged.hook_owned:
            planner.guest_device(domain, tagged, resolution)
            replugs.append(Replug(tagged.mac, None, plugged))
        else:
            replugs.append(Replug(tagged.mac, wanted_source(tagged, resolution), plugged))
    return (Plan(tuple(planner.actions), resolutions=tuple(resolutions), domain=domain.name,
                 uuid=domain.uuid), tuple(replugs))


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
    elif network.forward_mode == "passthrough" and uplink.bridge:
        raise NetworkRefused(f"{subject}: forward mode passthrough needs an uplink without "
                             f"a bridge: uplink '{uplink.name}' has bridge {uplink.bridge}, "
                             "which holds the host's own address, and a passthrough macvtap "
                             "on it would take that address off the network")
    elif network.forward_mode in MACVTAP_FORWARD_MODES:
        for dev in network.forward_devs:
            _check_forward_dev(subject, dev, resolution, inventory)
    planner = DevicePlanner(inventory, bridge_mark=network_mark(network.name))
    planner.uplink(uplink, resolution)
    return Plan(tuple(planner.actions), resolutions=(resolution,))


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
        children = [c for c in inventory.children(bridge)
                    if c.mark is None or c.mark.kind != "shim"]
        if len(nics) > 1 or len(ports) > len(nics) or children:
            continue  # guests still use it: it stays until they are gone
        if nics:
            nic = nics[0].name
            actions += [AddAddress(nic, address) for address in bridge.addresses]
            actions += [MoveRoute(route, bridge.name, nic)
                        for route in in_adding_order(bridge.routes)]
            actions.append(SetMaster(nic, None, bridge.name))
        actions.append(DeleteLink(bridge.name, f"network {network_name} stopped"))
    return Plan(tuple(actions))


def plan_orphans(inventory: Inventory, running_uuids: set[str]) -> Plan:
    """Remove the per-guest devices of domains that do not run."""
    return Plan(tuple(DeleteLink(link.name, f"orphan of domain {uuid}")
                      for link, uuid in inventory.orphans(running_uuids)))


def plan_release(domain_name: str, domain_uuid: str, inventory: Inventory) -> Plan:
    """Remove the per-guest devices kvmhooks made for this domain, then what only they
    used: the VLAN sub-interfaces kvmhooks made, and the VLANs of kvmhooks' bridges'
    NIC ports that no guest's port is on any more. Other shared devices stay; a bridge
    kvmhooks did not create keeps every VLAN of its ports."""
    leaving = inventory.marked_with(guest_mark(domain_uuid))
    actions = [DeleteLink(link.name, f"guest {domain_name} stopped") for link in leaving]
    gone = {link.index for link in leaving}
    for link in inventory.links:
        if link.kind == "vlan" and link.mark is not None and link.mark.kind == "vlan" \
                and inventory.children(link) and \
                all(child.index in gone for child in inventory.children(link)):
            actions.append(DeleteLink(link.name, f"VLAN {link.vlan_id} has no guest left"))
    for bridge in inventory.links:
        if not (bridge.vlan_filtering and bridge.mark is not None
                and bridge.mark.kind == "bridge"):
            continue
        ports = inventory.ports(bridge)
        in_use = {vlan for port in ports if port.kind == "tun" and port.index not in gone
                  and port.vlans is not None for vlan in port.vlans.members}
        in_use.update(bridge.vlans.members if bridge.vlans else ())  # the host's own
        for port in ports:
            if port.kind != "tun" and port.vlans is not None:
                actions += [DelPortVlan(port.name, vlan) for vlan in port.vlans.tagged
                            if vlan not in in_use]
    return Plan(tuple(actions), domain=domain_name, uuid=domain_uuid)
