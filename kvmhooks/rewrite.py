"""Domain XML edits (pure, golden-tested): this host's sources written into native tagged
interfaces (migrate, restore, `kvmhooks apply`), the interface a re-plug attaches, and the
tagged interface `kvmhooks attach` adds or changes."""

from __future__ import annotations

import copy

from lxml import etree

from .config import Config
from .domain import NAMESPACE, Attachment, domain_from_tree, format_trunk, metadata_elements
from .inventory import Inventory
from .names import hook_owned_name
from .resolve import resolve, resolve_all, uplink_for
from .sources import (
    NetworkSource,
    Source,
    SourceChange,
    change_type,
    insert_after_mac,
    remove_children,
    wanted_source,
    write_source,
)

_PREFIX = "kh"


def write_sources(root: etree._Element, changes: tuple[SourceChange, ...]) -> etree._Element:
    """Rewrite each interface named by a change in place; returns root."""
    for change in changes:
        write_source(find_interface(root, change.mac), change.wanted, domain_name(root))
    return root


def retargeted_interface(live: etree._Element, source: Source) -> etree._Element:
    """A copy of a live <interface> with this host's source (libvirt's live update moves a
    running tap to another bridge with it)."""
    new = copy.deepcopy(live)
    write_source(new, source, domain_name(live.getroottree().getroot()))
    return new


def replugged_interface(live: etree._Element, source: Source | None) -> etree._Element:
    """The <interface> a re-plug attaches in place of the live one: the same device with
    this host's source (None: a hook-owned interface, whose target kvmhooks rebuilt). A
    native interface's target is the device the detach took with it: libvirt names anew."""
    if source is None:
        return copy.deepcopy(live)
    new = retargeted_interface(live, source)
    remove_children(new, "target")
    return new


def domain_name(root: etree._Element) -> str:
    """The name a refusal gives the domain whose XML root is."""
    return (root.findtext("name") or "").strip() or "?"


def find_interface(root: etree._Element, mac: str) -> etree._Element | None:
    for element in root.findall("devices/interface"):
        mac_element = element.find("mac")
        if mac_element is not None and mac_element.get("address", "").lower() == mac:
            return element
    return None


def attach_interface(root: etree._Element, name: str, attachment: Attachment, native: bool,
                     config: Config, inventory: Inventory) -> None:
    """`kvmhooks attach` on a definition: the metadata entry, and the interface with its
    MAC (added when none has it) hook-owned, or native with this host's source. The whole
    domain must work on this host; what the interface's old type had that the new one
    cannot carry is dropped or refused."""
    set_attachment(root, attachment)
    if attachment.kind == "network":  # a libvirt network: the native form is the only one
        set_native(root, attachment.mac, NetworkSource(attachment.network))
        resolve_all(domain_from_tree(root, name), config, inventory)
        return
    # The domain is judged with a bare hook-owned interface standing in for this one, so
    # that its children are judged once, against the form it takes.
    stand_in = copy.deepcopy(root)
    while (old := find_interface(stand_in, attachment.mac)) is not None:
        old.getparent().remove(old)
    set_hook_owned(stand_in, attachment.mac)
    domain = domain_from_tree(stand_in, name)
    resolve_all(domain, config, inventory)
    if native:
        tagged = next(t for t in domain.tagged if t.mac == attachment.mac)
        resolution = resolve(uplink_for(tagged, domain, config), inventory)
        set_native(root, attachment.mac, wanted_source(tagged, resolution))
    else:
        set_hook_owned(root, attachment.mac)
    domain_from_tree(root, name)


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
    if attachment.vlan is not None:
        entry.set("vlan", str(attachment.vlan))
    if attachment.trunk:
        entry.set("trunk", format_trunk(attachment.trunk))


def set_hook_owned(root: etree._Element, mac: str) -> None:
    """Make the interface with this MAC hook-owned, adding one when none has it; what
    the old type had that a hook-owned interface cannot carry is dropped or refused."""
    element = _interface_for(root, mac)
    change_type(element, "ethernet", domain_name(root))
    remove_children(element, "source")
    remove_children(element, "target")
    insert_after_mac(element, etree.Element("target", dev=hook_owned_name(mac), managed="no"))


def set_native(root: etree._Element, mac: str, source: Source) -> None:
    """Make the interface with this MAC native, with this source; what its old form had
    that the new type cannot carry is dropped or refused."""
    element = _interface_for(root, mac)
    target = element.find("target")
    if target is not None and target.get("managed") == "no":
        element.remove(target)
    write_source(element, source, domain_name(root))


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
