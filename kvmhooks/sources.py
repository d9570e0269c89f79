"""A native interface's type and <source> (pure): read from domain XML, wanted on this
host, compared, and written back, with what the interface's other children may keep
when its type changes.

libvirt spells each interface type's source as attributes of <source>; the fields of each
class below are those attribute names, so one declaration serves reading and writing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, fields
from typing import ClassVar

from lxml import etree

from .domain import Attachment, TaggedInterface
from .errors import MetadataError
from .names import normalize_mac, vlan_device_name
from .resolve import Resolution

log = logging.getLogger("kvmhooks")

# <interface type='direct'> without <source mode> is libvirt's vepa.
LIBVIRT_DEFAULT_DIRECT_MODE = "vepa"


def _attribute(wanted_by: str):
    """A <source> attribute; wanted_by says whose word its wanted value is, for messages."""
    return field(default=None, metadata={"wanted_by": wanted_by})


@dataclass(frozen=True)
class Source:
    type: ClassVar[str]

    def attributes(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def describe(self) -> str:
        text = " ".join(f"{name}='{value}'" for name, value in self.attributes().items())
        return f"type='{self.type}' <source {text}/>"


@dataclass(frozen=True)
class BridgeSource(Source):
    type: ClassVar[str] = "bridge"
    bridge: str | None = _attribute("this host's uplink bridge is")


@dataclass(frozen=True)
class DirectSource(Source):
    type: ClassVar[str] = "direct"
    dev: str | None = _attribute("this host's uplink device is")
    mode: str | None = _attribute("metadata says")


@dataclass(frozen=True)
class NetworkSource(Source):
    type: ClassVar[str] = "network"
    network: str | None = _attribute("metadata says")


SOURCE_TYPES = {cls.type: cls for cls in (BridgeSource, DirectSource, NetworkSource)}
_ALL_ATTRIBUTES = tuple(dict.fromkeys(f.name for cls in SOURCE_TYPES.values()
                                      for f in fields(cls)))


def current_source(tagged: TaggedInterface) -> Source | None:
    """The source a native interface has in its XML; None for a hook-owned one."""
    cls = SOURCE_TYPES.get(tagged.device.type)
    if cls is None:
        return None
    attributes = dict(tagged.device.source)
    source = cls(**{f.name: attributes.get(f.name) for f in fields(cls)})
    if isinstance(source, DirectSource) and source.mode is None:
        source = dataclasses.replace(source, mode=LIBVIRT_DEFAULT_DIRECT_MODE)
    return source


def macvtap_lower(attachment: Attachment, resolution: Resolution) -> str:
    """A macvtap's lower device: the uplink's, or its NIC's VLAN sub-interface."""
    if attachment.vlan is not None:
        return vlan_device_name(resolution.lower, attachment.vlan)
    return resolution.lower


def wanted_source(tagged: TaggedInterface, resolution: Resolution | None) -> Source:
    """The source this interface's metadata means on this host (resolution: its uplink's,
    None for type network)."""
    attachment = tagged.attachment
    if attachment.kind == "bridge":
        return BridgeSource(resolution.bridge)
    if attachment.kind == "direct":
        return DirectSource(macvtap_lower(attachment, resolution), attachment.mode)
    return NetworkSource(attachment.network)


def difference(current: Source, wanted: Source) -> str:
    """A short sentence saying how a native source differs from this host's resolution."""
    if current.type != wanted.type:
        return f"interface is type '{current.type}', metadata says '{wanted.type}'"
    return "; ".join(f"source {f.name} is '{getattr(current, f.name)}', "
                     f"{f.metadata['wanted_by']} '{getattr(wanted, f.name)}'"
                     for f in fields(wanted) if getattr(current, f.name) != getattr(wanted, f.name))


@dataclass(frozen=True)
class SourceChange:
    """A native interface whose source is not this host's: what it has, what it needs."""

    mac: str
    current: Source
    wanted: Source

    def describe(self) -> str:
        return f"write interface {self.mac}: {self.wanted.describe()}"

    def difference(self) -> str:
        return difference(self.current, self.wanted)

    def as_dict(self) -> dict:
        return {"action": "write_source", "mac": self.mac, "type": self.wanted.type,
                **dict.fromkeys(_ALL_ATTRIBUTES), **self.wanted.attributes()}


def source_change(tagged: TaggedInterface, resolution: Resolution | None) -> SourceChange | None:
    """What a native interface needs written on this host; None when nothing (or when the
    interface is hook-owned)."""
    current = current_source(tagged)
    if current is None:
        return None
    wanted = wanted_source(tagged, resolution)
    return None if current == wanted else SourceChange(tagged.mac, current, wanted)


# --- what an interface keeps when its type changes --------------------------------------
#
# Some children of <interface> mean something for some types only, and libvirt refuses
# them, or fails the start, on the others (libvirt 9.0 and later: its domain parser and
# validation, which the test driver runs too, and the qemu driver's validation and start).
# When kvmhooks gives an interface another type, or a macvtap another mode, each child below
# goes along only where the new one carries it. Elsewhere it is dropped where it only meant
# something for the old attachment, and the rewrite is refused where dropping it would
# change what the guest gets: one line naming the domain, the MAC and the element.

DROP, REFUSE = "drop", "refuse"


@dataclass(frozen=True)
class ChildRule:
    xpath: str  # the children (or attributes) concerned, relative to <interface>
    element: str  # how a line names them
    carried_by: frozenset[str]  # types that take them ("direct MODE": that macvtap mode only)
    otherwise: str  # DROP or REFUSE
    why: str  # what they are, for the line


def _types(*names: str) -> frozenset[str]:
    return frozenset(names)


CHILD_RULES = (
    ChildRule("target", "<target>", _types(), DROP,
              "the device name libvirt chose for the old type"),
    # The port of the old attachment's switch (Open vSwitch, 802.1Qbg/Qbh, MidoNet); an
    # untyped one is merged with a network's, and libvirt refuses it on any other type.
    # kvmhooks' bridges are Linux bridges and its macvtaps join no managed switch.
    ChildRule("virtualport", "<virtualport>", _types(), DROP,
              "the old attachment's switch port"),
    ChildRule("coalesce", "<coalesce>", _types("bridge", "network"), DROP,
              "interrupt coalescing of a tap device (qemu refuses it elsewhere)"),
    ChildRule("backend[@type='passt']", "<backend type='passt'>", _types("user"), DROP,
              "user networking's backend"),
    ChildRule("portForward", "<portForward>", _types("user"), DROP,
              "user networking's port forwards"),
    ChildRule("ip|route", "<ip>", _types("user"), DROP,
              "the guest's address in user networking (qemu refuses it elsewhere)"),
    ChildRule("driver[@name='vfio' or @name='kvm' or @name='xen']", "<driver name>",
              _types("hostdev"), DROP, "a host device's driver"),
    ChildRule("@managed", "<interface managed>", _types("hostdev"), DROP,
              "whether libvirt detaches a host device from its host driver"),
    ChildRule("bandwidth/inbound[@floor]", "<bandwidth><inbound floor>", _types("network"),
              REFUSE, "a floor is a guaranteed share of a libvirt network's bandwidth (type "
              "network only)"),
    ChildRule("port[@isolated='yes']", "<port isolated='yes'>", _types("bridge", "network"),
              REFUSE, "port isolation keeps the guest from the other isolated ports of a "
              "Linux bridge (types bridge and network only)"),
    ChildRule("vlan[@trunk='yes' or count(tag) > 1]", "<vlan trunk='yes'>",
              _types("network"), REFUSE, "libvirt trunks the guest's VLANs on networks and "
              "Open vSwitch ports only"),
    ChildRule("vlan", "<vlan>", _types("network", "hostdev", "direct passthrough"), REFUSE,
              "libvirt tags the guest's VLAN on networks, SR-IOV devices and Open vSwitch "
              "ports only"),
    ChildRule("mtu", "<mtu>", _types("network", "bridge", "ethernet", "vhostuser"), REFUSE,
              "it is the guest's MTU, and qemu sets none on a macvtap"),
    ChildRule("teaming[@type='transient']", "<teaming type='transient'>",
              _types("network", "hostdev"), REFUSE,
              "the guest's failover pair is an SR-IOV device (types network and hostdev "
              "only)"),
)


def _kinds(interface_type: str, mode: str | None) -> frozenset[str]:
    return _types(interface_type, f"{interface_type} {mode}") if mode else _types(interface_type)


def _kind_text(interface_type: str, mode: str | None) -> str:
    if interface_type == "ethernet":  # kvmhooks writes type ethernet in this form alone
        return "the hook-owned form (type 'ethernet')"
    return f"type '{interface_type}' mode '{mode}'" if mode else f"type '{interface_type}'"


def _direct_mode(interface: etree._Element) -> str | None:
    if interface.get("type") != "direct":
        return None
    source = interface.find("source")
    mode = source.get("mode") if source is not None else None
    return mode or LIBVIRT_DEFAULT_DIRECT_MODE


def interface_mac(interface: etree._Element) -> str:
    mac = interface.find("mac")
    address = mac.get("address", "") if mac is not None else ""
    return normalize_mac(address) or address


def change_type(interface: etree._Element, interface_type: str, domain: str,
                mode: str | None = None) -> None:
    """Give an <interface> another type (or a direct one another mode, None: keep it),
    with the children the new type carries: refuses (MetadataError, nothing changed) or
    drops the others as CHILD_RULES say."""
    old_mode = _direct_mode(interface)
    if interface.get("type") == interface_type and (mode is None or mode == old_mode):
        return
    kinds = _kinds(interface_type, mode)
    lost = [rule for rule in CHILD_RULES
            if not rule.carried_by & kinds and interface.xpath(rule.xpath)]
    mac = interface_mac(interface)
    for rule in lost:
        if rule.otherwise == REFUSE:
            raise MetadataError(domain, f"{rule.element} cannot go with "
                                f"{_kind_text(interface_type, mode)}: {rule.why}; remove "
                                "it from the interface, or tag the interface with a type "
                                "that carries it", mac)
    for rule in lost:
        for found in interface.xpath(rule.xpath):
            if getattr(found, "is_attribute", False):
                del found.getparent().attrib[found.attrname]
            else:
                found.getparent().remove(found)
        log.info("domain %s interface %s: %s dropped: %s does not carry it: %s",
                 domain, mac, rule.element, _kind_text(interface_type, mode), rule.why)
    interface.set("type", interface_type)


def write_source(interface: etree._Element, source: Source, domain: str) -> None:
    """Give one <interface> element the type and <source> of source; domain names it in
    a refusal."""
    change_type(interface, source.type, domain, getattr(source, "mode", None))
    old = interface.find("source")
    new = etree.Element("source", source.attributes())
    if old is not None:
        new.tail = old.tail
        interface.replace(old, new)
    else:
        insert_after_mac(interface, new)


def remove_children(element: etree._Element, tag: str) -> None:
    for child in element.findall(tag):
        element.remove(child)


def insert_after_mac(interface: etree._Element, new: etree._Element) -> None:
    mac = interface.find("mac")
    if mac is None:
        interface.insert(0, new)
        return
    new.tail = mac.tail
    interface.insert(list(interface).index(mac) + 1, new)
