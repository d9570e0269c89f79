"""Domain XML and kvmhooks metadata -> typed, validated intents (pure).

The metadata (namespace urn:kvmhooks:net:1) says what each tagged interface attaches
to; the <devices> interface with the same MAC says in which form (hook-owned
type='ethernet', or native bridge/direct/network).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from .errors import MetadataError

# hookclient.py runs alone under `python3 -I -S` and triages on the namespace: defined there once.
from .hookclient import NAMESPACE
from .names import ifname_problem, normalize_mac
from .xmlsafe import UnsafeXml, parse

KINDS = ("bridge", "direct", "network")
DIRECT_MODES = ("bridge", "private", "vepa", "passthrough")
DEFAULT_DIRECT_MODE = "bridge"
_ATTRIBUTES = {
    "bridge": {"mac", "type", "uplink", "vlan", "trunk"},
    "direct": {"mac", "type", "uplink", "mode", "vlan"},
    "network": {"mac", "type", "network"},
}
VLAN_IDS = range(1, 4095)


@dataclass(frozen=True)
class Attachment:
    """One metadata entry: what the interface with this MAC attaches to."""

    mac: str
    kind: str
    uplink: str | None = None
    mode: str | None = None
    network: str | None = None
    vlan: int | None = None  # the access VLAN: the guest's untagged frames
    trunk: tuple[int, ...] = ()  # VLANs the guest sees tagged, ascending

    @property
    def vlans(self) -> tuple[int, ...]:
        """Every VLAN the interface is on, ascending."""
        return tuple(sorted({*self.trunk, *([self.vlan] if self.vlan else [])}))


@dataclass(frozen=True)
class DeviceInterface:
    """The parts of a <devices><interface> that kvmhooks reads. What the attributes of
    <source> mean for each type is sources.py's to say."""

    mac: str
    type: str
    target_dev: str | None = None
    managed: str | None = None
    source: tuple[tuple[str, str], ...] = ()  # the attributes of <source>
    queues: int = 1  # <driver queues='N'/>


@dataclass(frozen=True)
class TaggedInterface:
    attachment: Attachment
    device: DeviceInterface

    @property
    def mac(self) -> str:
        return self.attachment.mac

    @property
    def hook_owned(self) -> bool:
        return self.device.type == "ethernet"


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    tagged: tuple[TaggedInterface, ...]
    unplugged: tuple[Attachment, ...] = ()  # live XML only: entries with no interface now


def domain_tree(xml: bytes | str, name_hint: str = "?") -> etree._Element:
    """Parse domain XML safely (xmlsafe); a refusal is a MetadataError naming the domain."""
    try:
        return parse(xml)
    except UnsafeXml as error:
        raise MetadataError(name_hint, str(error)) from None


def read_domain(xml: bytes | str, name_hint: str = "?",
                live: bool = False) -> tuple[etree._Element, Domain]:
    """A whole domain XML: its tree, and its intents."""
    root = domain_tree(xml, name_hint)
    return root, domain_from_tree(root, name_hint, live)


def parse_domain(xml: bytes | str, name_hint: str = "?") -> Domain:
    """The intents alone, for callers that do not edit the XML."""
    return read_domain(xml, name_hint)[1]


def domain_from_tree(root: etree._Element, name_hint: str = "?", live: bool = False) -> Domain:
    """live: root is a running guest's XML, where an interface may be unplugged for now
    (between the detach and the attach of a re-plug); it is listed, not refused."""
    if root.tag != "domain":
        raise MetadataError(name_hint, f"root element is <{root.tag}>, not <domain>")
    name = (root.findtext("name") or "").strip() or name_hint
    uuid = (root.findtext("uuid") or "").strip()
    attachments = parse_metadata(root, name)
    devices = device_interfaces(root, name)
    tagged, unplugged = [], []
    for attachment in attachments:
        device = devices.get(attachment.mac)
        if device is None and live:
            unplugged.append(attachment)
            continue
        if device is None:
            raise MetadataError(name, "no <interface> in <devices> has this MAC",
                                attachment.mac)
        tagged.append(TaggedInterface(attachment, device))
        check_form(name, tagged[-1])
    targets: dict[str, str] = {}
    for item in tagged:
        if item.hook_owned and item.device.target_dev in targets:
            raise MetadataError(name, f"target dev '{item.device.target_dev}' is also the "
                                f"target of interface {targets[item.device.target_dev]}",
                                item.mac)
        if item.hook_owned:
            targets[item.device.target_dev] = item.mac
    return Domain(name=name, uuid=uuid, tagged=tuple(tagged), unplugged=tuple(unplugged))


def metadata_elements(root: etree._Element) -> list[etree._Element]:
    return root.findall(f"metadata/{{{NAMESPACE}}}net")


def parse_metadata(root: etree._Element, domain: str) -> tuple[Attachment, ...]:
    nets = metadata_elements(root)
    if len(nets) > 1:
        raise MetadataError(domain, f"more than one <net> element in namespace {NAMESPACE}")
    if not nets:
        return ()
    net = nets[0]
    _no_text(net, domain)
    for key in net.attrib:
        raise MetadataError(domain, f"unknown attribute '{_local(key)}' on <net>")
    attachments: dict[str, Attachment] = {}
    for child in net:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        if child.tag != f"{{{NAMESPACE}}}interface":
            raise MetadataError(domain, f"unknown element <{_local(child.tag)}> in kvmhooks "
                                "metadata (expected <interface>)")
        attachment = _attachment(child, domain)
        if attachment.mac in attachments:
            raise MetadataError(domain, "MAC listed twice in kvmhooks metadata",
                                attachment.mac)
        attachments[attachment.mac] = attachment
    return tuple(attachments.values())


def _attachment(element: etree._Element, domain: str) -> Attachment:
    _no_text(element, domain)
    if len([c for c in element if isinstance(c.tag, str)]):
        raise MetadataError(domain, "<interface> in kvmhooks metadata takes no child elements")
    raw_mac = element.get("mac")
    if raw_mac is None:
        raise MetadataError(domain, "kvmhooks <interface> without the required 'mac'")
    mac = normalize_mac(raw_mac)
    if mac is None:
        raise MetadataError(domain, f"'{raw_mac}' is not a MAC address (attribute mac)")
    kind = element.get("type")
    if kind not in KINDS:
        shown = "missing" if kind is None else f"'{kind}'"
        raise MetadataError(domain, f"type is {shown}; expected one of {', '.join(KINDS)}",
                            mac)
    for key in element.attrib:
        if key not in _ATTRIBUTES[kind]:
            raise MetadataError(domain, f"unknown attribute '{_local(key)}' for type "
                                f"'{kind}' (allowed: {', '.join(sorted(_ATTRIBUTES[kind]))})",
                                mac)
    uplink = element.get("uplink")
    if kind in ("bridge", "direct") and not uplink:
        raise MetadataError(domain, f"type '{kind}' needs uplink", mac)
    mode = element.get("mode")
    if kind == "direct":
        mode = mode if mode is not None else DEFAULT_DIRECT_MODE
        if mode not in DIRECT_MODES:
            raise MetadataError(domain, f"mode '{mode}' is invalid; expected one of "
                                f"{', '.join(DIRECT_MODES)}", mac)
    network = element.get("network")
    if kind == "network" and not network:
        raise MetadataError(domain, "type 'network' needs network", mac)
    vlan, trunk = parse_vlans(element.get("vlan"), element.get("trunk"), domain, mac)
    return Attachment(mac=mac, kind=kind, uplink=uplink, mode=mode, network=network,
                      vlan=vlan, trunk=trunk)


def parse_vlans(vlan: str | None, trunk: str | None, domain: str,
                mac: str) -> tuple[int | None, tuple[int, ...]]:
    """The vlan and trunk attributes (None: absent) as an Attachment holds them; the
    metadata parser and `kvmhooks attach` share these checks and their words."""
    access = parse_vlan(vlan, domain, mac) if vlan is not None else None
    tagged = parse_trunk(trunk, domain, mac) if trunk is not None else ()
    if access is not None and access in tagged:
        raise MetadataError(domain, f"VLAN {access} is both the access VLAN (vlan) and in the "
                            "trunk", mac)
    return access, tagged


def parse_vlan(text: str, domain: str, mac: str, key: str = "vlan") -> int:
    """One VLAN ID, 1 to 4094."""
    digits = text.strip()
    # ASCII digits only: str.isdigit() is true of '²', which int() refuses.
    if not (digits.isascii() and digits.isdigit()) or int(digits) not in VLAN_IDS:
        raise MetadataError(domain, f"{key} '{text}' is not a VLAN ID (1-4094)", mac)
    return int(digits)


def parse_trunk(text: str, domain: str, mac: str) -> tuple[int, ...]:
    """'100,200-210': VLAN IDs and ranges of them, ascending, each once."""
    vlans: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        low = parse_vlan(first, domain, mac, "trunk")
        high = parse_vlan(last, domain, mac, "trunk") if dash else low
        if high < low:
            raise MetadataError(domain, f"trunk range '{part.strip()}' runs backwards", mac)
        vlans.update(range(low, high + 1))
    return tuple(sorted(vlans))


def format_trunk(vlans: Iterable[int]) -> str:
    """parse_trunk's inverse, compact: (20, 21, 22, 30) is '20-22,30'."""
    runs: list[list[int]] = []
    for vlan in sorted(set(vlans)):
        if runs and vlan == runs[-1][1] + 1:
            runs[-1][1] = vlan
        else:
            runs.append([vlan, vlan])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


def device_interfaces(root: etree._Element, domain: str) -> dict[str, DeviceInterface]:
    found: dict[str, DeviceInterface] = {}
    duplicates: set[str] = set()
    for element in root.findall("devices/interface"):
        mac_element = element.find("mac")
        mac = normalize_mac(mac_element.get("address", "")) if mac_element is not None else None
        if mac is None:
            continue
        if mac in found:
            duplicates.add(mac)
        source = element.find("source")
        target = element.find("target")
        found[mac] = DeviceInterface(
            mac=mac,
            type=element.get("type", ""),
            target_dev=target.get("dev") if target is not None else None,
            managed=target.get("managed") if target is not None else None,
            source=tuple(source.attrib.items()) if source is not None else (),
            queues=_queues(element.find("driver"), domain, mac),
        )
    for mac in sorted(duplicates):
        raise MetadataError(domain, "more than one <interface> in <devices> has this MAC", mac)
    return found


def _queues(driver: etree._Element | None, domain: str, mac: str) -> int:
    text = driver.get("queues") if driver is not None else None
    if text is None:
        return 1
    if not text.strip().isdigit() or int(text) < 1:
        raise MetadataError(domain, f"<driver queues='{text}'> is not a positive number", mac)
    return int(text)


def check_form(domain: str, tagged: TaggedInterface) -> None:
    """The device interface is in a form kvmhooks supports for its attachment."""
    device, kind = tagged.device, tagged.attachment.kind
    if device.type == "ethernet":
        if kind == "network":
            raise MetadataError(domain, "type 'network' takes the native form "
                                "<interface type='network'>", tagged.mac)
        if not device.target_dev or device.managed != "no":
            raise MetadataError(domain, "a hook-owned interface needs "
                                "<target dev='NAME' managed='no'/>", tagged.mac)
        if problem := ifname_problem(device.target_dev):
            raise MetadataError(domain, f"target dev {problem}", tagged.mac)
    elif device.type not in KINDS:
        raise MetadataError(domain, f"<interface type='{device.type}'> cannot be tagged; "
                            "use type 'ethernet' (hook-owned) or bridge, direct, network",
                            tagged.mac)
    elif kind == "bridge" and tagged.attachment.vlans:
        # libvirt makes a native interface's tap itself, after the prepare hook (its
        # qemu_process.c runs the hook first, then sets up the network devices): only a
        # tap that kvmhooks builds can be on its VLANs before qemu opens it.
        raise MetadataError(domain, "VLANs on type 'bridge' take the hook-owned form "
                            "<interface type='ethernet'> with <target dev='NAME' "
                            "managed='no'/> (kvmhooks sets them on the tap it builds; "
                            "libvirt makes its own tap after the prepare hook)", tagged.mac)


def _local(tag: str) -> str:
    return etree.QName(tag).localname if tag.startswith("{") else tag


def _no_text(element: etree._Element, domain: str) -> None:
    texts = [element.text] + [child.tail for child in element]
    if any(text and text.strip() for text in texts):
        raise MetadataError(domain, f"unexpected text inside kvmhooks <{_local(element.tag)}>")
