"""Domain XML transformations (pure, golden-tested): write this host's sources into
native tagged interfaces, and add or change a tagged interface for `kvmhooks attach`."""

from __future__ import annotations

from lxml import etree

from .actions import WriteSource
from .domain import NAMESPACE, Attachment, metadata_elements
from .names import hook_owned_name

_PREFIX = "kh"


def write_sources(root: etree._Element, sources: tuple[WriteSource, ...]) -> etree._Element:
    """Rewrite each interface named by a WriteSource in place; returns root."""
    for source in sources:
        apply_source(find_interface(root, source.mac), source)
    return root


def apply_source(element: etree._Element, source: WriteSource) -> None:
    """Give one <interface> element the type and <source> of a WriteSource."""
    if element.get("type") != source.type:
        element.set("type", source.type)
        # A target name libvirt chose for the old type means nothing for the new one.
        for target in element.findall("target"):
            element.remove(target)
    _set_source(element, source)


def _set_source(element: etree._Element, source: WriteSource) -> None:
    old = element.find("source")
    new = etree.Element("source")
    if source.type == "bridge":
        new.set("bridge", source.bridge)
    elif source.type == "direct":
        new.set("dev", source.dev)
        new.set("mode", source.mode)
    else:
        new.set("network", source.network)
    if old is not None:
        new.tail = old.tail
        element.replace(old, new)
    else:
        _insert_after_mac(element, new)


def find_interface(root: etree._Element, mac: str) -> etree._Element | None:
    for element in root.findall("devices/interface"):
        mac_element = element.find("mac")
        if mac_element is not None and mac_element.get("address", "").lower() == mac:
            return element
    return None


def set_attachment(root: etree._Element, attachment: Attachment) -> None:
    """Add or replace the metadata entry for attachment.mac."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
    nets = metadata_elements(root)
    net = nets[0] if nets else etree.SubElement(metadata, f"{{{NAMESPACE}}}net",
                                                nsmap={_PREFIX: NAMESPACE})
    entry = None
    for existing in net.findall(f"{{{NAMESPACE}}}interface"):
        if existing.get("mac", "").lower() == attachment.mac:
            entry = existing
    if entry is None:
        entry = etree.SubElement(net, f"{{{NAMESPACE}}}interface")
    entry.attrib.clear()
    entry.set("mac", attachment.mac)
    if attachment.uplink:
        entry.set("uplink", attachment.uplink)
    entry.set("type", attachment.kind)
    if attachment.kind == "direct":
        entry.set("mode", attachment.mode)
    if attachment.network:
        entry.set("network", attachment.network)


def set_hook_owned(root: etree._Element, mac: str) -> None:
    """Make the interface with this MAC hook-owned, adding one when none has it."""
    element = _interface_for(root, mac)
    element.set("type", "ethernet")
    for child in element.findall("source"):
        element.remove(child)
    for child in element.findall("target"):
        element.remove(child)
    target = etree.Element("target", dev=hook_owned_name(mac), managed="no")
    _insert_after_mac(element, target)


def set_native(root: etree._Element, source: WriteSource) -> None:
    element = _interface_for(root, source.mac)
    target = element.find("target")
    if target is not None and target.get("managed") == "no":
        element.remove(target)
    element.set("type", source.type)
    _set_source(element, source)


def _interface_for(root: etree._Element, mac: str) -> etree._Element:
    element = find_interface(root, mac)
    if element is not None:
        return element
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    element = etree.SubElement(devices, "interface", type="ethernet")
    etree.SubElement(element, "mac", address=mac)
    etree.SubElement(element, "model", type="virtio")
    return element


def _insert_after_mac(element: etree._Element, new: etree._Element) -> None:
    mac = element.find("mac")
    if mac is None:
        element.insert(0, new)
        return
    new.tail = mac.tail
    element.insert(list(element).index(mac) + 1, new)
