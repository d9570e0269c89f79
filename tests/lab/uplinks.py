"""An uplink of one test's own: a unique name, its table for the host config, and the
shared devices kvmhooks builds for it (its bridge, its shim), which outlive the guests and
are removed at cleanup.

    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    Iface(guest_mac(), "bridge", up.name)
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmhooks.names import shim_name

from .cleanup import Cleanup
from .links import delete_link_later
from .names import unique_name, uplink_name


@dataclass(frozen=True)
class LabUplink:
    name: str
    bridge: str | None
    table: str  # "[uplink.NAME]" and its keys, for the host config

    @property
    def shim(self) -> str:
        return shim_name(self.name)


def lab_uplink(cleanup: Cleanup, nic: str | None = None, *, bridge: bool | str = False,
               host_address: str | None = None, selector: str | None = None,
               extra: str = "", host_addresses: tuple[str, ...] = ()) -> LabUplink:
    """An uplink on the NIC named ``nic`` (or as ``selector``, a TOML line such as
    ``mac = "..."``), with a new bridge (``bridge=True``) or the named one, a shim with
    ``host_address`` (or ``host_addresses``, written as a list), and ``extra`` TOML
    lines. A new bridge and the shim are removed at cleanup; a named bridge is the test's
    to remove."""
    name = uplink_name()
    bridge_name = unique_name("ktbr") if bridge is True else (bridge or None)
    lines = [f"[uplink.{name}]", selector or f'nic = "{nic}"']
    if bridge_name:
        lines.append(f'bridge = "{bridge_name}"')
    if host_address:
        lines.append(f'host_address = "{host_address}"')
    elif host_addresses:
        quoted = ", ".join(f'"{address}"' for address in host_addresses)
        lines.append(f"host_address = [{quoted}]")
    if bridge is True:
        delete_link_later(cleanup, bridge_name)
    if host_address or host_addresses:
        delete_link_later(cleanup, shim_name(name))
    table = "\n".join(lines) + "\n" + extra
    return LabUplink(name, bridge_name, table)
