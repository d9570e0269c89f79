"""A native interface's type and <source> (pure): read from domain XML, wanted on this
host, compared, and written back.

libvirt spells each interface type's source as attributes of <source>; the fields of each
class below are those attribute names, so one declaration serves reading and writing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import ClassVar

from lxml import etree

from .domain import TaggedInterface
from .resolve import Resolution

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


def wanted_source(tagged: TaggedInterface, resolution: Resolution | None) -> Source:
    """The source this interface's metadata means on this host (resolution: its uplink's,
    None for type network)."""
    attachment = tagged.attachment
    if attachment.kind == "bridge":
        return BridgeSource(resolution.bridge)
    if attachment.kind == "direct":
        return DirectSource(resolution.lower, attachment.mode)
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


def write_source(interface: etree._Element, source: Source) -> None:
    """Give one <interface> element the type and <source> of source."""
    if interface.get("type") != source.type:
        interface.set("type", source.type)
        # A target name libvirt chose for the old type means nothing for the new one.
        remove_children(interface, "target")
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
