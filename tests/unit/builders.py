"""Builders shared by the unit tests: domain XML, host config and a hand-made host.

Nothing here touches libvirt, netlink or the file system: a Host stands for the
links a netlink dump would report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmhooks import config as config_module
from kvmhooks.domain import NAMESPACE, Domain, parse_domain
from kvmhooks.inventory import Inventory, Link
from kvmhooks.names import guest_mark, hook_owned_name

UUID = "6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab"
OTHER_UUID = "0b9d7c1e-5a4f-4e2d-8c3b-fedcba987654"
MAC1 = "52:54:00:6b:3c:01"
MAC2 = "52:54:00:6b:3c:02"
MAC3 = "52:54:00:6b:3c:03"
NIC_MAC = "02:00:c6:12:05:01"
CONFIG_PATH = "/etc/kvmhooks/kvmhooks.toml"

LAN = '[uplink.lan]\nnic = "eth1"\n'
LAN_BRIDGE = '[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'


# --- domain XML -----------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One <kh:interface> of the kvmhooks metadata; attrs keep their order."""

    attrs: dict = field(default_factory=dict)

    def render(self, prefix: str) -> str:
        text = " ".join(f'{key}="{value}"' for key, value in self.attrs.items())
        return f"<{prefix}:interface {text}/>"


def meta(mac: str, kind: str, **attrs: str) -> Entry:
    return Entry({"mac": mac, "type": kind, **attrs})


def interface(mac: str, kind: str, source: dict | None = None,
              target: dict | None = None) -> str:
    def element(tag: str, attrs: dict | None) -> str:
        if attrs is None:
            return ""
        text = " ".join(f'{key}="{value}"' for key, value in attrs.items())
        return f"\n      <{tag} {text}/>"
    return (f'<interface type="{kind}">\n      <mac address="{mac}"/>'
            f'{element("source", source)}{element("target", target)}\n'
            '      <model type="virtio"/>\n    </interface>')


def hook_owned(mac: str, dev: str | None = None, managed: str | None = "no") -> str:
    target = {"dev": dev or hook_owned_name(mac.lower())}
    if managed is not None:
        target["managed"] = managed
    return interface(mac, "ethernet", target=target)


def native_bridge(mac: str, bridge: str) -> str:
    return interface(mac, "bridge", {"bridge": bridge})


def native_direct(mac: str, dev: str, mode: str | None = None) -> str:
    return interface(mac, "direct", {"dev": dev, **({"mode": mode} if mode else {})})


def native_network(mac: str, network: str) -> str:
    return interface(mac, "network", {"network": network})


def domain_xml(*parts: Entry | str, name: str = "web1", uuid: str = UUID,
               prefix: str = "kh") -> str:
    """Entries go into the kvmhooks metadata (a str starting with '<PREFIX:' too),
    other strings into <devices>."""
    entries = [p.render(prefix) if isinstance(p, Entry) else p for p in parts
               if isinstance(p, Entry) or p.startswith(f"<{prefix}:")]
    devices = [p for p in parts if isinstance(p, str) and not p.startswith(f"<{prefix}:")]
    metadata = ""
    if entries:
        body = "".join(f"      {entry}\n" for entry in entries)
        metadata = (f'  <metadata>\n    <{prefix}:net xmlns:{prefix}="{NAMESPACE}">\n'
                    f"{body}    </{prefix}:net>\n  </metadata>\n")
    interfaces = "".join(f"    {device}\n" for device in devices)
    return (f'<domain type="kvm">\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n'
            f'{metadata}  <memory unit="MiB">256</memory>\n'
            f"  <devices>\n{interfaces}  </devices>\n</domain>\n")


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
