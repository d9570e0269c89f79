"""Tagged domain XML for system tests and the demo: metadata plus interfaces."""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass

import lab

NAMESPACE = "urn:kvmhooks:net:1"


@dataclass(frozen=True)
class Iface:
    """One tagged interface: its metadata entry and its form in <devices>."""

    mac: str
    kind: str  # bridge, direct, network
    uplink: str | None = None
    mode: str | None = None
    network: str | None = None
    native: bool = False
    source: str | None = None  # native source: bridge name or direct dev; None: none written
    source_mode: str | None = None  # native direct <source mode>; None: the entry's mode

    @property
    def hook_owned_dev(self) -> str:
        return "kh" + self.mac.replace(":", "")

    def metadata(self) -> str:
        attributes = f'mac="{self.mac}" type="{self.kind}"'
        if self.uplink:
            attributes += f' uplink="{self.uplink}"'
        if self.mode:
            attributes += f' mode="{self.mode}"'
        if self.network:
            attributes += f' network="{self.network}"'
        return f"<kh:interface {attributes}/>"

    def device(self) -> str:
        mac = f"<mac address='{self.mac}'/><model type='virtio'/>"
        if not self.native:
            return (f"<interface type='ethernet'>{mac}"
                    f"<target dev='{self.hook_owned_dev}' managed='no'/></interface>")
        if self.kind == "bridge":
            return f"<interface type='bridge'>{mac}<source bridge='{self.source}'/></interface>"
        if self.kind == "network":
            return f"<interface type='network'>{mac}<source network='{self.network}'/></interface>"
        mode = self.source_mode or self.mode or "bridge"
        return (f"<interface type='direct'>{mac}"
                f"<source dev='{self.source}' mode='{mode}'/></interface>")


def metadata_xml(ifaces: list[Iface], extra: str = "") -> str:
    entries = "".join(iface.metadata() for iface in ifaces)
    return f'<kh:net xmlns:kh="{NAMESPACE}">{entries}{extra}</kh:net>'


def domain_xml(name: str, ifaces: list[Iface], metadata: str | None = None,
               virt_type: str = "kvm", **kwargs) -> str:
    """A minimal domain (lab.minimal_domain_xml) with these tagged interfaces."""
    xml = lab.minimal_domain_xml(
        name, "".join(iface.device() for iface in ifaces),
        metadata if metadata is not None else metadata_xml(ifaces), virt_type, **kwargs)
    return xml.replace("<name>", f"<uuid>{uuid_module.uuid4()}</uuid>\n  <name>", 1)
