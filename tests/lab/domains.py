"""The one domain-XML builder of the tests, the demo and the benchmark.

A minimal i440fx domain (1 vCPU, no disks, no graphics, ACPI, the serial port to a
file), optionally booting a kernel, with the kvmhooks metadata and tagged interfaces in
their hook-owned (``<interface type='ethernet'>`` on a ``kh`` device) or native forms.

Values are written as given, unescaped in attributes: unit tests feed malformed ones on
purpose. Imports stay light (no libvirt, no pyroute2): the unit tests build their XML
here without root.

    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    xml = domain_xml("kt-dom-1a2b3c", [iface])     # metadata and device from iface
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union
from xml.sax.saxutils import escape, quoteattr

from kvmhooks.domain import NAMESPACE
from kvmhooks.names import hook_owned_name


def serial_log_path(name: str) -> str:
    """Where a domain built here writes its serial console (virt.define removes it)."""
    return f"/var/log/libvirt/qemu/{name}-serial.log"


# --- the kvmhooks metadata ------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One <kh:interface> of the kvmhooks metadata; attrs keep their order."""

    attrs: dict = field(default_factory=dict)

    def render(self, prefix: str = "kh") -> str:
        text = " ".join(f'{key}="{value}"' for key, value in self.attrs.items())
        return f"<{prefix}:interface {text}/>"


def meta(mac: str, kind: str, **attrs: str) -> Entry:
    """The metadata entry for ``mac``: ``type`` is ``kind``, then ``attrs`` in order."""
    return Entry({"mac": mac, "type": kind, **attrs})


# --- <interface> elements ---------------------------------------------------------------

def interface(mac: str, kind: str, source: dict | None = None,
              target: dict | None = None) -> str:
    """An <interface type=KIND> with its MAC, <source>, <target> (attributes that are
    None are left out, and an element with none) and a virtio model."""
    def element(tag: str, attrs: dict | None) -> str:
        given = {key: value for key, value in (attrs or {}).items() if value is not None}
        if not given:
            return ""
        text = " ".join(f'{key}="{value}"' for key, value in given.items())
        return f"\n      <{tag} {text}/>"
    return (f'<interface type="{kind}">\n      <mac address="{mac}"/>'
            f'{element("source", source)}{element("target", target)}\n'
            '      <model type="virtio"/>\n    </interface>')


def hook_owned(mac: str, dev: str | None = None, managed: str | None = "no") -> str:
    """The hook-owned form: type ethernet on the device kvmhooks makes (``kh`` + MAC)."""
    return interface(mac, "ethernet", target={"dev": dev or hook_owned_name(mac.lower()),
                                              "managed": managed})


def native_bridge(mac: str, bridge: str | None) -> str:
    return interface(mac, "bridge", {"bridge": bridge})


def native_direct(mac: str, dev: str | None, mode: str | None = None) -> str:
    return interface(mac, "direct", {"dev": dev, "mode": mode})


def native_network(mac: str, network: str | None) -> str:
    return interface(mac, "network", {"network": network})


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
    queues: int = 1  # more than 1: <driver queues='N'/>
    vlan: int | None = None  # metadata vlan
    trunk: str | None = None  # metadata trunk, as written ("20-21,30")

    @property
    def hook_owned_dev(self) -> str:
        return hook_owned_name(self.mac.lower())

    def entry(self) -> Entry:
        optional = {"uplink": self.uplink, "mode": self.mode, "network": self.network,
                    "vlan": str(self.vlan) if self.vlan else None, "trunk": self.trunk}
        return meta(self.mac, self.kind, **{k: v for k, v in optional.items() if v})

    def metadata(self) -> str:
        return self.entry().render()

    def device(self) -> str:
        xml = self._device()
        if self.queues == 1:
            return xml
        return xml.replace("</interface>", f'  <driver queues="{self.queues}"/>\n    </interface>')

    def _device(self) -> str:
        if not self.native:
            return hook_owned(self.mac)
        if self.kind == "bridge":
            return native_bridge(self.mac, self.source)
        if self.kind == "network":
            return native_network(self.mac, self.network)
        return native_direct(self.mac, self.source, self.source_mode or self.mode or "bridge")


MetadataPart = Union[Entry, Iface, str]


def metadata_xml(entries: Iterable[MetadataPart], prefix: str = "kh") -> str:
    """The kvmhooks metadata element (``<kh:net xmlns:kh=...>``) holding ``entries``:
    Entry and Iface are rendered with ``prefix``, strings go in as they are."""
    lines = []
    for entry in entries:
        if isinstance(entry, Iface):
            entry = entry.entry()
        lines.append(entry.render(prefix) if isinstance(entry, Entry) else entry)
    body = "".join(f"      {line}\n" for line in lines)
    return f'<{prefix}:net xmlns:{prefix}="{NAMESPACE}">\n{body}    </{prefix}:net>'


# --- the domain -------------------------------------------------------------------------

def domain_xml(
    name: str,
    ifaces: Sequence[Iface] = (),
    metadata: str | None = None,
    *,
    devices: Sequence[str] = (),
    uuid: str | None = None,
    virt_type: str = "kvm",
    memory_mib: int = 64,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
    serial_path: str | None = None,
) -> str:
    """A tiny i440fx domain with ``ifaces`` (their devices, then ``devices``, raw
    <interface> elements) and the kvmhooks metadata.

    ``metadata`` replaces the metadata element built from ``ifaces`` (``""``: no
    <metadata> at all). ``uuid`` defaults to a random one. Without ``kernel`` the
    domain sits in its BIOS doing nothing much (enough for device plumbing and hooks);
    with it, it boots ``kernel``/``initrd`` with ``cmdline``. The serial port writes
    to ``serial_path`` (default :func:`serial_log_path`).
    """
    if metadata is None:
        metadata = metadata_xml(ifaces)
    metadata_block = f"  <metadata>\n    {metadata}\n  </metadata>\n" if metadata else ""
    if kernel:
        boot = f"<kernel>{escape(kernel)}</kernel>"
        if initrd:
            boot += f"<initrd>{escape(initrd)}</initrd>"
        if cmdline:
            boot += f"<cmdline>{escape(cmdline)}</cmdline>"
    else:
        boot = '<boot dev="hd"/>'
    interfaces = "".join(f"    {device}\n"
                         for device in [*(iface.device() for iface in ifaces), *devices])
    serial = quoteattr(serial_path or serial_log_path(name))
    return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(name)}</name>
  <uuid>{uuid or uuid_module.uuid4()}</uuid>
{metadata_block}  <memory unit="MiB">{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    {boot}
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type="usb" model="none"/>
    <memballoon model="none"/>
    <serial type="file">
      <source path={serial}/>
      <target port="0"/>
    </serial>
{interfaces}  </devices>
</domain>
"""
