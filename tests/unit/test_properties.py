"""Properties of metadata and config parsing (hypothesis).

(a) valid metadata, rendered any way the contract allows (namespace prefix, attribute order,
    quotes, MAC case, comments, untagged interfaces, trunk lists), parses back to exactly its
    attachments;
(b) one mutation of valid metadata (an unknown attribute, an invalid mode, a MAC missing from
    <devices>, a MAC listed twice) always raises MetadataError naming the domain and MAC;
(c) arbitrary bytes and text raise nothing but MetadataError / ConfigError;
(d) valid configs, rendered to TOML any way, parse back to the same uplinks and networks;
(e) one bad value in a valid config raises ConfigError carrying the file path and the key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmhooks import config as config_module
from kvmhooks.config import Config, NetworkEntry, Uplink
from kvmhooks.domain import DIRECT_MODES, NAMESPACE, Attachment, Domain, parse_domain
from kvmhooks.errors import ConfigError, MetadataError

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# Text an XML 1.0 document can carry (no controls, surrogates or non-characters) and
# that never holds a line break of any kind.
SAFE_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Zl", "Zp"))
safe_text = st.text(SAFE_CHARS, min_size=1, max_size=20)
uplink_names = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
ifnames = st.from_regex(r"[A-Za-z0-9_.+-]{1,15}", fullmatch=True).filter(
    lambda name: name not in (".", ".."))
network_names = st.from_regex(r"[A-Za-z0-9_.+-]{1,15}", fullmatch=True)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
domain_names = safe_text.filter(lambda s: s == s.strip())


@st.composite
def any_case(draw, text: str) -> str:
    flags = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flag else c for c, flag in zip(text, flags))


def attr_value(value: str, quote: str) -> str:
    out = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace(quote, "&quot;" if quote == '"' else "&apos;")
    for char in "\t\n\r":
        out = out.replace(char, f"&#{ord(char)};")
    return f"{quote}{out}{quote}"


def text_value(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- domain XML, as data, then rendered --------------------------------------------------

@dataclass
class Entry:
    """A metadata entry: attributes as written (order matters to the rendering only)."""

    attrs: dict
    expected: Attachment


@dataclass
class Device:
    mac: str  # as written
    type: str
    children: list = field(default_factory=list)  # (tag, attrs)


@dataclass
class Spec:
    name: str
    entries: list
    devices: list
    prefix: str | None  # None: the default namespace
    comment: bool


@st.composite
def vlan_attributes(draw, kind: str):
    """(text, value) of vlan and of trunk, (None, None) and (None, ()) when absent: trunk
    (bridge only) as IDs and ranges in any order, overlapping or not."""
    vlan, trunk = (None, None), (None, ())
    if draw(st.booleans()):
        number = draw(st.integers(1, 4094))
        vlan = (str(number), number)
    if kind == "bridge" and draw(st.booleans()):
        ranges = draw(st.lists(st.tuples(st.integers(1, 4094), st.integers(0, 3)),
                               min_size=1, max_size=4))
        parts, ids = [], set()
        for low, extra in ranges:
            high = min(low + extra, 4094)
            parts.append(str(low) if low == high and draw(st.booleans()) else f"{low}-{high}")
            ids.update(range(low, high + 1))
        if vlan[1] not in ids:
            trunk = (",".join(parts), tuple(sorted(ids)))
    return vlan, trunk


@st.composite
def entries_and_devices(draw, mac: str):
    """One tagged interface: its metadata entry and its <devices> interface."""
    kind = draw(st.sampled_from(("bridge", "direct", "network")))
    attrs = {"mac": draw(any_case(mac)), "type": kind}
    if kind == "network":
        attrs["network"] = draw(safe_text)
        expected = Attachment(mac, "network", network=attrs["network"])
    else:
        attrs["uplink"] = draw(uplink_names)
        mode = draw(st.none() | st.sampled_from(DIRECT_MODES)) if kind == "direct" else None
        if mode is not None:
            attrs["mode"] = mode
        vlan, trunk = draw(vlan_attributes(kind))
        attrs.update({key: text for key, (text, _) in (("vlan", vlan), ("trunk", trunk))
                      if text is not None})
        expected = Attachment(mac, kind, uplink=attrs["uplink"],
                              mode=(mode or "bridge") if kind == "direct" else None,
                              vlan=vlan[1], trunk=trunk[1])
    forms = ("bridge", "direct", "network") + (("ethernet",) if kind != "network" else ())
    if kind == "bridge" and expected.vlans:
        forms = ("ethernet",)  # VLANs on type bridge take the hook-owned form
    form = draw(st.sampled_from(forms))
    device = Device(draw(any_case(mac)), form)
    if form == "ethernet":
        # Unique per MAC: two interfaces cannot share a hook-owned device.
        device.children.append(("target", {"dev": "kh" + mac.replace(":", ""),
                                           "managed": "no"}))
    elif form == "bridge":
        device.children.append(("source", {"bridge": draw(ifnames)}))
    elif form == "direct":
        source = {"dev": draw(ifnames)}
        if draw(st.booleans()):
            source["mode"] = draw(st.sampled_from(DIRECT_MODES))
        device.children.append(("source", source))
    else:
        device.children.append(("source", {"network": draw(safe_text)}))
    order = draw(st.permutations(list(attrs)))
    return Entry({key: attrs[key] for key in order}, expected), device


@st.composite
def domain_specs(draw, min_tagged: int = 0):
    all_macs = draw(st.lists(macs, min_size=min_tagged, max_size=6, unique=True))
    split = draw(st.integers(min_tagged, len(all_macs))) if all_macs else 0
    entries, devices = [], []
    for mac in all_macs[:split]:
        entry, device = draw(entries_and_devices(mac))
        entries.append(entry)
        devices.append(device)
    for mac in all_macs[split:]:  # untagged interfaces, which kvmhooks ignores
        devices.append(Device(draw(any_case(mac)), draw(st.sampled_from(
            ("network", "bridge", "user"))), [("model", {"type": "virtio"})]))
    devices = draw(st.permutations(devices))
    prefix = draw(st.none() | st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True).filter(
        lambda p: not p.startswith("xml")))
    return Spec(draw(domain_names), entries, list(devices), prefix, draw(st.booleans()))


def render(spec: Spec, quote: str = '"') -> str:
    tag = f"{spec.prefix}:" if spec.prefix else ""
    declaration = f"xmlns:{spec.prefix}" if spec.prefix else "xmlns"
    lines = [f"<domain type={quote}kvm{quote}>", f"  <name>{text_value(spec.name)}</name>",
             "  <uuid>6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab</uuid>", "  <metadata>",
             f"    <{tag}net {declaration}={attr_value(NAMESPACE, quote)}>"]
    if spec.comment:
        lines.append("      <!-- kvmhooks: urn:kvmhooks:net:1 -->")
    for entry in spec.entries:
        attrs = " ".join(f"{key}={attr_value(value, quote)}" for key, value in entry.attrs.items())
        lines.append(f"      <{tag}interface {attrs}/>")
    lines += [f"    </{tag}net>", "  </metadata>", "  <devices>"]
    for device in spec.devices:
        lines.append(f"    <interface type={attr_value(device.type, quote)}>")
        lines.append(f"      <mac address={attr_value(device.mac, quote)}/>")
        for child, attrs in device.children:
            text = " ".join(f"{key}={attr_value(value, quote)}" for key, value in attrs.items())
            lines.append(f"      <{child} {text}/>")
        lines.append("    </interface>")
    lines += ["  </devices>", "</domain>", ""]
    return "\n".join(lines)


@PROPERTY
@given(domain_specs(), st.sampled_from(['"', "'"]))
def test_valid_metadata_parses_back_to_its_attachments(spec, quote):
    domain = parse_domain(render(spec, quote), "hint")
    assert isinstance(domain, Domain)
    assert domain.name == spec.name
    assert [t.attachment for t in domain.tagged] == [e.expected for e in spec.entries]
    tagged_devices = {d.mac.lower(): d for d in spec.devices}
    for tagged in domain.tagged:
        device = tagged_devices[tagged.mac]
        assert tagged.device.type == device.type
        assert tagged.hook_owned == (device.type == "ethernet")
        children = dict(device.children)
        if device.type == "ethernet":
            assert tagged.device.target_dev == children["target"]["dev"]


# --- (b) one mutation -> MetadataError naming the domain and the MAC ---------------------

UNKNOWN_ATTRIBUTES = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True).filter(
    lambda name: name not in ("mac", "type", "uplink", "mode", "network", "vlan", "trunk")
    and not name.startswith("xml"))
INVALID_MODES = st.text(SAFE_CHARS, max_size=12).filter(lambda m: m not in DIRECT_MODES)


@st.composite
def mutated(draw):
    """(rendered XML, domain name, the MAC the error must name)."""
    spec = draw(domain_specs(min_tagged=1))
    index = draw(st.integers(0, len(spec.entries) - 1))
    entry = spec.entries[index]
    mac = entry.expected.mac
    how = draw(st.sampled_from(("unknown-attribute", "invalid-mode", "missing-device",
                                "duplicate-mac")))
    if how == "unknown-attribute":
        attrs = dict(entry.attrs)
        attrs[draw(UNKNOWN_ATTRIBUTES)] = draw(safe_text)
        order = draw(st.permutations(list(attrs)))
        spec.entries[index] = replace(entry, attrs={key: attrs[key] for key in order})
    elif how == "invalid-mode":
        attrs = {"mac": entry.attrs["mac"], "type": "direct",
                 "uplink": draw(uplink_names), "mode": draw(INVALID_MODES)}
        spec.entries[index] = replace(entry, attrs=attrs)
        device = next(d for d in spec.devices if d.mac.lower() == mac)
        device.type, device.children = "ethernet", [("target", {"dev": "kh0", "managed": "no"})]
    elif how == "missing-device":
        spec.devices = [d for d in spec.devices if d.mac.lower() != mac]
    else:
        twin, _ = draw(entries_and_devices(mac))
        spec.entries.insert(draw(st.integers(index + 1, len(spec.entries))), twin)
    return render(spec, draw(st.sampled_from(['"', "'"]))), spec.name, mac


@PROPERTY
@given(mutated())
def test_mutated_metadata_raises_metadata_error_naming_domain_and_mac(case):
    xml, name, mac = case
    try:
        parse_domain(xml, "hint")
    except MetadataError as error:
        assert error.domain == name
        assert error.mac == mac
        assert str(error).startswith(f"domain {name} interface {mac}: ")
        assert "\n" not in str(error)
    else:
        raise AssertionError("accepted:\n" + xml)


# --- (c) anything at all -> only the parsers' own errors ---------------------------------

XML_TOKENS = st.sampled_from([
    "<domain>", "</domain>", "<name>", "</name>", "web1", "<metadata>", "</metadata>",
    f'<kh:net xmlns:kh="{NAMESPACE}">', "</kh:net>", f'<net xmlns="{NAMESPACE}">', "</net>",
    "<kh:interface ", "<interface ", 'mac="52:54:00:00:00:01" ', "mac='52:54:00:00:00:02' ",
    'type="bridge" ', 'type="direct" ', 'type="network" ', 'type="ethernet" ', 'mode="x" ',
    'uplink="lan" ', 'network="n" ', "/>", ">", "</interface>", "<devices>", "</devices>",
    "<mac address='52:54:00:00:00:01'/>", "<target dev='kh0' managed='no'/>",
    "<source bridge='br0'/>", "&amp;", "&#10;", "&#0;", "&bogus;", "<!--", "-->",
    "<![CDATA[", "]]>", "<?xml version='1.0'?>", "<?pi x?>", "<!DOCTYPE domain>", '"', "'",
    "\n", " ", "\x00", "\xff", "é", "<", "&"])
TOML_TOKENS = st.sampled_from([
    "[uplink.lan]", "[uplink]", "[network.n]", "[[uplink.lan]]", "[uplink.\"a b\"]", "\n",
    "nic = ", "mac = ", "path = ", "bridge = ", "host_address = ", "domains = ",
    "uplink = ", "colour = ", '"eth1"', '"br0"', '"52:54:00:00:00:01"', '"lan"',
    '"198.18.0.1/24"', '"::1/128"', '"x/y"', '""', "'lit'", '"""multi\n"""', "[", "]",
    "{", "}", ",", "=", ".", "1", "-0", "1e999", "true", "nan", "2024-01-01T00:00:00Z",
    "#", " ", '"\\u0000"', '"\\n"', "\x00", "\xff", "\r\n", "é"])


def nested_xml(depth: int) -> bytes:
    return b"<domain><metadata>" + b"<a>" * depth + b"</a>" * depth + b"</metadata></domain>"


def nested_toml(depth: int, kind: str) -> bytes:
    """domains = [[[...]]] or domains = {a={a=...1}}: arrays or inline tables, nested."""
    opening, middle, closing = ("[", "", "]") if kind == "array" else ("{a=", "1", "}")
    value = opening * depth + middle + closing * depth
    return f'[uplink.lan]\nnic = "eth1"\ndomains = {value}\n'.encode()


@FUZZ
@given(st.binary(max_size=600) | st.lists(XML_TOKENS, max_size=40).map(
    lambda tokens: "".join(tokens).encode()) | st.integers(0, 5000).map(nested_xml))
def test_any_bytes_give_a_domain_or_metadata_error(data):
    try:
        parse_domain(data, "hint")
    except MetadataError:
        pass


@FUZZ
@given(st.text(max_size=400) | st.lists(XML_TOKENS, max_size=40).map("".join))
def test_any_text_gives_a_domain_or_metadata_error(text):
    try:
        parse_domain(text, "hint")
    except MetadataError:
        pass


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode)
       | st.lists(TOML_TOKENS, max_size=40).map(lambda t: "".join(t).encode())
       | st.builds(nested_toml, st.integers(0, 5000), st.sampled_from(("array", "table"))))
def test_any_bytes_give_a_config_or_config_error(data):
    try:
        parsed = config_module.parse(data, "/etc/kc/any.toml")
    except ConfigError as error:
        assert str(error).startswith("/etc/kc/any.toml")
    else:
        assert isinstance(parsed, Config)


# --- (d) configs round trip ------------------------------------------------------------

def toml_string(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7f else c for c in out)
    return f'"{out}"'


def toml_key(draw, key: str) -> str:
    return toml_string(key) if draw(st.booleans()) else key


interfaces = (
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32))
    | st.tuples(st.ip_addresses(v=6), st.integers(0, 128))
).map(lambda pair: ipaddress.ip_interface(f"{pair[0]}/{pair[1]}"))


@dataclass
class ConfigSpec:
    uplinks: dict  # name -> {key: TOML literal}
    expected: dict  # name -> Uplink
    networks: dict  # name -> uplink
    inline: set  # uplinks written as inline tables under one [uplink]


@st.composite
def config_specs(draw, min_uplinks: int = 0):
    names = draw(st.lists(uplink_names, min_size=min_uplinks, max_size=4, unique=True))
    bridges = iter(draw(st.lists(ifnames, min_size=len(names), max_size=len(names),
                                 unique=True)))
    uplinks, expected = {}, {}
    for name in names:
        body, fields = {}, {}
        selector = draw(st.sampled_from(("nic", "mac", "path")))
        if selector == "nic":
            fields["nic"] = draw(ifnames)
            body["nic"] = toml_string(fields["nic"])
        elif selector == "mac":
            mac = draw(macs)
            fields["mac"] = mac
            body["mac"] = toml_string(draw(any_case(mac)))
        else:
            fields["path"] = draw(st.text(min_size=1, max_size=30))
            body["path"] = toml_string(fields["path"])
        bridge = next(bridges)
        if draw(st.booleans()) and bridge != fields.get("nic"):
            fields["bridge"] = bridge
            body["bridge"] = toml_string(bridge)
        addresses = draw(st.lists(interfaces, max_size=3, unique_by=lambda a: a.ip))
        if addresses and len(addresses) == 1 and draw(st.booleans()):
            fields["host_addresses"] = tuple(addresses)
            body["host_address"] = toml_string(str(addresses[0]))
        elif addresses:
            fields["host_addresses"] = tuple(addresses)
            body["host_address"] = "[" + ", ".join(toml_string(str(a)) for a in addresses) + "]"
        if draw(st.booleans()):
            domains = draw(st.lists(st.text(min_size=1, max_size=10), max_size=4))
            fields["domains"] = tuple(domains)
            body["domains"] = "[" + ", ".join(toml_string(d) for d in domains) + "]"
        order = draw(st.permutations(list(body)))
        uplinks[name] = {key: body[key] for key in order}
        expected[name] = Uplink(name=name, **fields)
    networks = {}
    if names:
        for network in draw(st.lists(network_names, max_size=3, unique=True)):
            networks[network] = draw(st.sampled_from(names))
    inline = set(draw(st.sets(st.sampled_from(names)))) if names else set()
    return ConfigSpec(uplinks, expected, networks, inline)


def render_config(draw, spec: ConfigSpec) -> str:
    lines = ["# kvmhooks host config (generated)"]
    if spec.inline:
        lines.append("[uplink]")
        for name in spec.uplinks:
            if name in spec.inline:
                body = ", ".join(f"{toml_key(draw, k)} = {v}"
                                 for k, v in spec.uplinks[name].items())
                lines.append(f"{toml_key(draw, name)} = {{ {body} }}")
        lines.append("")
    for name, body in spec.uplinks.items():
        if name in spec.inline:
            continue
        header = draw(st.sampled_from((f"[uplink.{name}]", f'[uplink."{name}"]',
                                       f"[ uplink . {name} ]")))
        lines.append(header + draw(st.sampled_from(("", "  # an uplink"))))
        for key, value in body.items():
            lines.append(f"{toml_key(draw, key)} = {value}")
        lines.append("")
    for network, uplink in spec.networks.items():
        bare = all(c.isalnum() or c in "_-" for c in network) and network.isascii()
        lines.append(f"[network.{network}]" if bare and draw(st.booleans())
                     else f"[network.{toml_string(network)}]")
        lines.append(f"uplink = {toml_string(uplink)}")
        lines.append("")
    return "\n".join(lines)


config_paths = st.from_regex(r"/etc/[a-z]{1,8}/[a-z0-9._-]{1,12}\.toml", fullmatch=True)


@PROPERTY
@given(st.data(), config_specs(), config_paths)
def test_valid_configs_parse_back_to_the_same_uplinks_and_networks(data, spec, path):
    text = render_config(data.draw, spec)
    parsed = config_module.parse(text.encode(), path)
    assert parsed.path == path
    assert dict(parsed.uplinks) == spec.expected, text
    assert dict(parsed.networks) == {name: NetworkEntry(name, uplink)
                                     for name, uplink in spec.networks.items()}, text


# --- (e) one bad value -> ConfigError with the path and the key --------------------------

not_ifname_chars = st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Zl", "Zp"),
                                 blacklist_characters="ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "abcdefghijklmnopqrstuvwxyz0123456789_.+-")
bad_ifnames = (
    st.from_regex(r"[A-Za-z0-9_.+-]{16,30}", fullmatch=True).map(toml_string)
    | st.tuples(st.text(SAFE_CHARS, max_size=6), not_ifname_chars,
                st.text(SAFE_CHARS, max_size=6)).map(lambda t: toml_string("".join(t)))
    | st.sampled_from(('""', '"."', '".."', "5", "true", '["eth1"]', "{ a = 1 }"))
)
bad_macs = (st.text(SAFE_CHARS, max_size=20).filter(
    lambda s: config_module.normalize_mac(s) is None).map(toml_string)
    | st.sampled_from(('""', "52", "false", '["52:54:00:00:00:01"]')))
bad_addresses = st.sampled_from(('"198.18.0.1"', '"198.18.0.300/24"', '"198.18.0.1/33"',
                                 '"fe80::1/129"', '"lan/24"', '"/"', "24", '""', "[]"))
bad_domains = st.sampled_from(('"web-*"', '[""]', '["web", 1]', "[[]]", "5", "{ a = 1 }"))


@st.composite
def bad_configs(draw):
    """(TOML text, path, the key the error must name)."""
    spec = draw(config_specs(min_uplinks=1))
    name = draw(st.sampled_from(sorted(spec.uplinks)))
    body = dict(spec.uplinks[name])
    what = draw(st.sampled_from(("nic", "mac", "path", "bridge", "host_address", "domains",
                                 "unknown", "network")))
    key = f"uplink.{name}.{what}"
    if what in ("nic", "mac", "path"):
        for selector in ("nic", "mac", "path"):
            body.pop(selector, None)
        body[what] = draw({"nic": bad_ifnames, "mac": bad_macs,
                           "path": st.sampled_from(('""', "1", "[]"))}[what])
    elif what == "bridge":
        body["bridge"] = draw(bad_ifnames)
    elif what == "host_address":
        body["host_address"] = draw(bad_addresses)
    elif what == "domains":
        body["domains"] = draw(bad_domains)
    elif what == "unknown":
        unknown = draw(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
            lambda k: k not in ("nic", "mac", "path", "bridge", "host_address", "domains")))
        body[unknown] = toml_string("x")
        key = f"uplink.{name}.{unknown}"
    else:
        network = draw(network_names)
        missing = draw(uplink_names.filter(lambda u: u not in spec.uplinks))
        spec.networks[network] = missing
        key = f"network.{network}.uplink"
    order = draw(st.permutations(list(body)))
    spec.uplinks[name] = {k: body[k] for k in order}
    return render_config(draw, spec), draw(config_paths), key


@PROPERTY
@given(bad_configs())
def test_bad_values_raise_config_error_with_path_and_key(case):
    text, path, key = case
    try:
        config_module.parse(text.encode(), path)
    except ConfigError as error:
        assert error.path == path
        assert error.key == key, str(error)
        assert str(error).startswith(path)
        assert f": {key}: " in str(error)
        assert "\n" not in str(error)
        if error.line is not None:
            assert key.rsplit(".", 1)[-1] in text.splitlines()[error.line - 1], \
                (str(error), text)
    else:
        raise AssertionError("accepted:\n" + text)
