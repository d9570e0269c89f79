"""What `kvmhooks status` reports for each tagged interface, and for each uplink's shared
devices (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .config import Config
from .devices import guest_link, link_problem
from .domain import Domain, TaggedInterface
from .errors import KvmhooksError
from .inventory import Inventory
from .names import shim_mark
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


@dataclass(frozen=True)
class UplinkStatus:
    """An uplink's shared devices on this host: its NIC, its bridge and its shim."""

    uplink: str
    nic: str  # the NIC found; when none is, the configured name ("" for mac or path)
    nic_present: bool
    bridge: str | None = None  # None: the uplink has no bridge
    bridge_present: bool = False
    shim: str | None = None  # None: the uplink has no host_address, so no shim
    shim_present: bool = False


@dataclass(frozen=True)
class HostStatus:
    """Everything `kvmhooks status` reports; errors: the domains whose XML could not be
    read (their interfaces have no rows)."""

    interfaces: tuple[InterfaceStatus, ...] = ()
    uplinks: tuple[UplinkStatus, ...] = ()
    errors: tuple[KvmhooksError, ...] = ()


def uplink_status(config: Config, inventory: Inventory) -> list[UplinkStatus]:
    """One row per uplink of the config, by name. A bridge counts when a bridge of that
    name exists (kvmhooks' or an administrator's); a shim when kvmhooks' own does."""
    rows = []
    for name in sorted(config.uplinks):
        uplink = config.uplinks[name]
        try:
            nic = resolve(uplink, inventory).nic
        except KvmhooksError:  # absent, or a selector that matches several links
            nic = None
        bridge = inventory.by_name(uplink.bridge) if uplink.bridge else None
        shim = inventory.by_name(uplink.shim) if uplink.host_addresses else None
        rows.append(UplinkStatus(
            uplink=name, nic=nic or uplink.nic or "", nic_present=nic is not None,
            bridge=uplink.bridge, bridge_present=bridge is not None and bridge.kind == "bridge",
            shim=uplink.shim if uplink.host_addresses else None,
            shim_present=shim is not None and shim.alias == shim_mark(name)))
    return rows
