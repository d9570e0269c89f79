"""Builders shared by the unit tests: domain XML, host config and a hand-made host.

Nothing here touches libvirt, netlink or the file system: a Host stands for the
links a netlink dump would report.
"""

from __future__ import annotations

from kvmhooks import config as config_module
from kvmhooks.domain import Domain, parse_domain
from kvmhooks.inventory import Address, Inventory, Link
from kvmhooks.names import guest_mark
from tests.lab import domains as lab_domains
from tests.lab.domains import (  # noqa: F401 - the unit tests import them from here
    Entry,
    hook_owned,
    interface,
    meta,
    native_bridge,
    native_direct,
    native_network,
)

UUID = "6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab"
OTHER_UUID = "0b9d7c1e-5a4f-4e2d-8c3b-fedcba987654"
MAC1 = "52:54:00:6b:3c:01"
MAC2 = "52:54:00:6b:3c:02"
MAC3 = "52:54:00:6b:3c:03"
NIC_MAC = "02:00:c6:12:05:01"
CONFIG_PATH = "/etc/kvmhooks/kvmhooks.toml"

LAN = '[uplink.lan]\nnic = "eth1"\n'
LAN_BRIDGE = '[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'


# --- domain XML (rendered by the lab's one builder, tests/lab/domains.py) --------------

def domain_xml(*parts: Entry | str, name: str = "web1", uuid: str = UUID,
               prefix: str = "kh") -> str:
    """Entries go into the kvmhooks metadata (a str starting with '<PREFIX:' too),
    other strings into <devices>."""
    entries = [p for p in parts if isinstance(p, Entry) or p.startswith(f"<{prefix}:")]
    devices = [p for p in parts if isinstance(p, str) and not p.startswith(f"<{prefix}:")]
    metadata = lab_domains.metadata_xml(entries, prefix) if entries else ""
    return lab_domains.domain_xml(name, metadata=metadata, devices=devices, uuid=uuid)


def domain(*parts: Entry | str, name: str = "web1") -> Domain:
    return parse_domain(domain_xml(*parts, name=name))


# --- host config ----------------------------------------------------------------------

def make_config(text: str) -> config_module.Config:
    return config_module.parse(text.encode("utf-8"), CONFIG_PATH)


# --- host links -----------------------------------------------------------------------

class Host:
    """Links by name; master and parent name other links, indexes are given at the end."""

    def __init__(self):
        self.specs: dict[str, dict] = {}

    def link(self, name: str, kind: str | None = None, **fields) -> Host:
        """addresses may be given as 'a/len' strings (an Address with nothing else)."""
        if "addresses" in fields:
            fields["addresses"] = tuple(Address(a) if isinstance(a, str) else a
                                        for a in fields["addresses"])
        self.specs[name] = {"kind": kind, "up": True, **fields}
        return self

    def nic(self, name: str = "eth1", mac: str = NIC_MAC, **fields) -> Host:
        return self.link(name, None, mac=mac, **fields)

    def bridge(self, name: str = "br-lan", mac: str = NIC_MAC, **fields) -> Host:
        return self.link(name, "bridge", mac=mac, **fields)

    def tap(self, name: str, mac: str, master: str | None, uuid: str = UUID,
            **fields) -> Host:
        return self.link(name, "tun", mac=mac, master=master, alias=guest_mark(uuid),
                         **fields)

    def macvtap(self, name: str, mac: str, parent: str, mode: str, uuid: str = UUID,
                **fields) -> Host:
        return self.link(name, "macvtap", mac=mac, parent=parent, mode=mode,
                         alias=guest_mark(uuid), **fields)

    def inventory(self) -> Inventory:
        index = {name: number for number, name in enumerate(self.specs, start=2)}
        links = []
        for name, spec in self.specs.items():
            spec = dict(spec)
            for key in ("master", "parent"):
                if spec.get(key) is not None:
                    spec[key] = index[spec[key]]
            links.append(Link(index=index[name], name=name, **spec))
        return Inventory(tuple(links))
