"""What an uplink is on this host (pure): its NIC and bridge, found by name, MAC or udev
path in a snapshot, and the domain allowlist that says who may use it."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, Uplink
from .domain import Domain, TaggedInterface
from .errors import HostError, KvmhooksError, MetadataError, NicAbsent, NotAllowed
from .inventory import LOWER_KINDS, Inventory, Link

# Kinds that are never an uplink's NIC when we look it up by MAC or udev path: they
# copy or borrow a NIC's MAC (a VLAN, a bond's ports) or are guests' devices.
_NOT_A_NIC = ("bridge", "tun", "vlan", "macsec", "ipvlan", "vxlan", *LOWER_KINDS)
_AGGREGATES = ("bond", "team")


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
    if attachment.kind == "direct" and attachment.vlan is not None and uplink.bridge:
        raise MetadataError(domain.name, f"vlan on type 'direct' needs an uplink without a "
                            f"bridge (a macvtap sits on the NIC's VLAN sub-interface, and "
                            f"uplink '{uplink.name}' has its NIC on bridge {uplink.bridge}); "
                            "use type 'bridge' with vlan", tagged.mac)
    if attachment.kind == "direct" and attachment.mode == "passthrough" and uplink.bridge:
        raise MetadataError(domain.name, f"mode 'passthrough' needs an uplink without a "
                            f"bridge: uplink '{uplink.name}' has bridge {uplink.bridge}, "
                            "which holds the host's own address, and a passthrough macvtap "
                            "on it would take that address off the network", tagged.mac)
    return uplink


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


def lost_uplinks(config: Config, inventory: Inventory, ifname: str) -> set[str]:
    """Uplinks whose NIC was ifname, which is gone: named so, or named by MAC or path and
    now absent."""
    lost = set()
    for uplink in config.uplinks.values():
        if uplink.nic is not None and uplink.nic != ifname:
            continue
        try:
            resolve(uplink, inventory)
        except KvmhooksError:
            lost.add(uplink.name)
    return lost
