"""What `kvmhooks status` reports for each tagged interface (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import Config
from .domain import Domain, TaggedInterface
from .errors import KvmhooksError
from .inventory import Inventory
from .names import guest_mark
from .planner import (
    Resolution,
    current_source,
    orphans,
    resolve,
    source_difference,
    tap_mac,
    uplink_for,
    wanted_source,
)


@dataclass(frozen=True)
class InterfaceStatus:
    domain: str
    mac: str
    uplink: str
    nic: str
    device: str
    state: str  # ok, missing or stale
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def domain_status(domain: Domain, running: bool, config: Config,
                  inventory: Inventory) -> list[InterfaceStatus]:
    return [_interface(domain, tagged, running, config, inventory) for tagged in domain.tagged]


def _interface(domain: Domain, tagged: TaggedInterface, running: bool, config: Config,
               inventory: Inventory) -> InterfaceStatus:
    attachment = tagged.attachment
    uplink_label = attachment.uplink or f"network:{attachment.network}"
    device = tagged.device.target_dev if running and tagged.device.target_dev else "-"

    def row(state: str, reason: str = "", nic: str = "-") -> InterfaceStatus:
        return InterfaceStatus(domain.name, tagged.mac, uplink_label, nic, device, state, reason)

    resolution = None
    try:
        uplink = uplink_for(tagged, domain, config)
        if uplink is not None:
            resolution = resolve(uplink, inventory)
    except KvmhooksError as error:
        return row("missing", str(error))
    nic = resolution.nic if resolution and resolution.nic else "-"
    if not tagged.hook_owned:
        wanted = wanted_source(tagged, resolution)
        current = current_source(tagged)
        if current != wanted:
            return row("stale", source_difference(current, wanted), nic)
    if not running:
        return row("ok", "", nic)
    problem = _device_problem(tagged, resolution, inventory)
    if problem is None:
        return row("ok", "", nic)
    state, reason = problem
    return row(state, reason, nic)


def _device_problem(tagged: TaggedInterface, resolution: Resolution | None,
                    inventory: Inventory) -> tuple[str, str] | None:
    name = tagged.device.target_dev
    link = inventory.by_name(name) if name else None
    if link is None:
        return "missing", f"host device {name or '(unnamed)'} does not exist"
    if resolution is None:
        return None
    if tagged.attachment.kind == "bridge":
        bridge = inventory.by_name(resolution.bridge)
        if bridge is None or link.master != bridge.index:
            return "stale", f"{name} is not a port of bridge {resolution.bridge}"
        if tagged.hook_owned and link.mac != tap_mac(tagged.mac):
            return "stale", f"{name} has MAC {link.mac}"
        return None
    lower = inventory.by_name(resolution.lower)
    if link.kind != "macvtap" or lower is None or link.parent != lower.index:
        return "stale", f"{name} is not a macvtap on {resolution.lower}"
    if link.mode != tagged.attachment.mode:
        return "stale", f"{name} is in mode {link.mode}, metadata says {tagged.attachment.mode}"
    if link.mac != tagged.mac:
        return "stale", f"{name} has MAC {link.mac}"
    return None


def orphan_status(inventory: Inventory, running_uuids: set[str],
                  names: dict[str, str]) -> list[InterfaceStatus]:
    """Rows for the per-guest devices kvmhooks owns whose domain does not run; names maps
    the UUIDs of defined domains to their names."""
    rows = []
    for link in orphans(inventory, running_uuids):
        uuid = link.alias[len(guest_mark("")):]
        rows.append(InterfaceStatus(
            domain=names.get(uuid, uuid), mac=link.mac or "-", uplink="-", nic="-",
            device=link.name, state="orphan",
            reason="kvmhooks made it for a domain that does not run; 'kvmhooks apply' "
                   "removes it"))
    return rows
