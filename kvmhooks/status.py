"""What `kvmhooks status` reports for each tagged interface (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .config import Config
from .devices import guest_link, link_problem
from .domain import Domain, TaggedInterface
from .errors import KvmhooksError
from .inventory import Inventory
from .resolve import Resolution, resolve, uplink_for
from .sources import source_change


@dataclass(frozen=True)
class InterfaceStatus:
    domain: str
    mac: str
    uplink: str
    nic: str
    device: str
    state: str  # ok, missing, stale or orphan
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def domain_status(domain: Domain, running: bool, config: Config, inventory: Inventory,
                  definition: Domain | None = None) -> list[InterfaceStatus]:
    """One row per tagged interface. ``definition``: a running guest's persistent
    definition, which the next start uses; a native source there that disagrees with this
    host makes the row stale too (a --persistent migration leaves the source's sources
    there)."""
    rows = [_interface(domain, tagged, running, config, inventory) for tagged in domain.tagged]
    if definition is None:
        return rows
    stale = {row.mac: row.reason for row in domain_status(definition, False, config, inventory)
             if row.state == "stale"}
    return [replace(row, state="stale", reason=f"definition: {stale[row.mac]}")
            if row.state == "ok" and row.mac in stale else row for row in rows]


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
    change = source_change(tagged, resolution)
    if change is not None:
        return row("stale", change.difference(), nic)
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
    problem = link_problem(link, guest_link(tagged, resolution), inventory)
    return ("stale", f"{name} {problem}") if problem else None


def orphan_status(inventory: Inventory, running_uuids: set[str],
                  names: dict[str, str]) -> list[InterfaceStatus]:
    """Rows for the per-guest devices kvmhooks owns whose domain does not run; names maps
    the UUIDs of defined domains to their names."""
    return [InterfaceStatus(
        domain=names.get(uuid, uuid), mac=link.mac or "-", uplink="-", nic="-",
        device=link.name, state="orphan",
        reason="kvmhooks made it for a domain that does not run; 'kvmhooks apply' "
               "removes it") for link, uuid in inventory.orphans(running_uuids)]
