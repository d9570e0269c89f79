"""domain.parse_domain: metadata entries in, typed intents or one MetadataError out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmhooks.domain import (
    Attachment,
    domain_from_tree,
    format_trunk,
    parse_domain,
    parse_trunk,
    parse_vlans,
)
from kvmhooks.errors import MetadataError
from kvmhooks.sources import DirectSource, current_source
from kvmhooks.xmlsafe import MAX_XML_BYTES, parse

from .builders import (
    MAC1,
    MAC2,
    MAC3,
    UUID,
    domain,
    domain_xml,
    hook_owned,
    interface,
    meta,
    native_bridge,
    native_direct,
    native_network,
)


def test_one_entry_of_each_type():
    parsed = domain(
        meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1),
        meta(MAC2, "direct", uplink="lan", mode="private"), native_direct(MAC2, "eth1"),
        meta(MAC3, "network", network="default"), native_network(MAC3, "default"))
    assert parsed.name == "web1" and parsed.uuid == UUID
    assert [t.attachment for t in parsed.tagged] == [
        Attachment(MAC1, "bridge", uplink="lan"),
        Attachment(MAC2, "direct", uplink="lan", mode="private"),
        Attachment(MAC3, "network", network="default"),
    ]
    assert [t.hook_owned for t in parsed.tagged] == [True, False, False]
    assert parsed.tagged[0].device.target_dev == "kh5254006b3c01"
    assert dict(parsed.tagged[1].device.source) == {"dev": "eth1"}
    assert current_source(parsed.tagged[1]) == DirectSource("eth1", "vepa")  # libvirt's default


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthrough"])
def test_direct_modes(mode):
    parsed = domain(meta(MAC1, "direct", uplink="lan", mode=mode), hook_owned(MAC1))
    assert parsed.tagged[0].attachment.mode == mode


def test_direct_mode_defaults_to_bridge_not_vepa():
    parsed = domain(meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "eth1"))
    assert parsed.tagged[0].attachment.mode == "bridge"


def test_mac_compared_case_insensitively():
    parsed = domain(meta(MAC1.upper(), "bridge", uplink="lan"),
                    native_bridge(MAC1.replace("6b", "6B"), "br-lan"))
    assert parsed.tagged[0].mac == MAC1


@pytest.mark.parametrize("prefix", ["kh", "k", "kvmhooks"])
def test_any_namespace_prefix(prefix):
    xml = domain_xml(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1), prefix=prefix)
    assert parse_domain(xml).tagged[0].attachment.uplink == "lan"


def test_default_namespace_without_prefix():
    xml = domain_xml(hook_owned(MAC1)).replace(
        "<devices>", '<metadata><net xmlns="urn:kvmhooks:net:1">'
        f'<interface mac="{MAC1}" uplink="lan" type="bridge"/></net></metadata><devices>')
    assert parse_domain(xml).tagged[0].attachment.kind == "bridge"


def test_untagged_domain_has_no_tagged_interfaces():
    assert domain(native_bridge(MAC1, "virbr0")).tagged == ()


def _error(xml: str | bytes, name_hint: str = "?") -> str:
    with pytest.raises(MetadataError) as caught:
        parse_domain(xml, name_hint)
    return str(caught.value)


def test_malformed_xml_names_the_domain_hint():
    message = _error("<domain><name>web1</name>", name_hint="web1")
    assert message.startswith("domain web1: malformed XML")


def test_doctype_and_entities_are_refused_not_resolved():
    xml = ('<!DOCTYPE domain [<!ENTITY n SYSTEM "file:///etc/hostname">]>'
           "<domain><name>&n;</name></domain>")
    assert "DOCTYPE" in _error(xml, "web1")


def test_doctype_refused_in_any_encoding():
    # The byte check for '<!DOCTYPE' misses a UTF-16 document; lxml parses it.
    xml = ('<?xml version="1.0" encoding="UTF-16"?>'
           '<!DOCTYPE domain [<!ENTITY n "evil">]><domain><name>&n;</name></domain>')
    assert "DOCTYPE" in _error(xml.encode("utf-16"), "web1")


def test_oversize_xml_is_refused():
    xml = domain_xml(native_bridge(MAC1, "br-lan")).replace(
        "</domain>", "<!--" + "x" * MAX_XML_BYTES + "--></domain>")
    message = _error(xml, "web1")
    assert message.startswith("domain web1: ") and "over the limit" in message


@pytest.mark.parametrize("parts, needle, mac", [
    ((meta(MAC1, "bridge", uplink="lan", colour="red"), hook_owned(MAC1)),
     "unknown attribute 'colour'", MAC1),
    (('<kh:interfaces mac="52:54:00:6b:3c:01"/>', hook_owned(MAC1)),
     "unknown element <interfaces>", None),
    ((meta(MAC1, "direct", uplink="lan", mode="vepa2"), hook_owned(MAC1)),
     "mode 'vepa2' is invalid", MAC1),
    ((meta(MAC1, "bridge", uplink="lan", mode="private"), hook_owned(MAC1)),
     "unknown attribute 'mode'", MAC1),
    ((meta(MAC1, "ethernet", uplink="lan"), hook_owned(MAC1)), "type is 'ethernet'", MAC1),
    ((meta(MAC1, "bridge"), hook_owned(MAC1)), "type 'bridge' needs uplink", MAC1),
    ((meta(MAC1, "direct"), hook_owned(MAC1)), "type 'direct' needs uplink", MAC1),
    ((meta(MAC1, "network"), native_network(MAC1, "default")),
     "type 'network' needs network", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC2)),
     "no <interface> in <devices> has this MAC", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), meta(MAC1.upper(), "direct", uplink="lan"),
      hook_owned(MAC1)), "MAC listed twice", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), interface(MAC1, "ethernet")),
     "needs <target dev='NAME' managed='no'/>", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1, managed=None)),
     "needs <target dev='NAME' managed='no'/>", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1, managed="yes")),
     "needs <target dev='NAME' managed='no'/>", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1, dev="kh5254006b3c01xy")),
     "longer than 15 characters", MAC1),
    ((meta(MAC1, "network", network="default"), hook_owned(MAC1)),
     "type 'network' takes the native form", MAC1),
    ((meta(MAC1, "bridge", uplink="lan"), interface(MAC1, "hostdev")),
     "cannot be tagged", MAC1),
    ((meta("52:54:00:6b:3c", "bridge", uplink="lan"), hook_owned(MAC1)),
     "is not a MAC address", None),
])
def test_bad_metadata_names_domain_and_mac(parts, needle, mac):
    message = _error(domain_xml(*parts))
    subject = "domain web1" + (f" interface {mac}" if mac else "")
    assert message.startswith(subject + ": ") and needle in message, message


def test_unknown_attribute_on_net():
    xml = domain_xml(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1)).replace(
        "<kh:net ", '<kh:net version="2" ')
    assert _error(xml).startswith("domain web1: unknown attribute 'version' on <net>")


# --- live XML: interfaces unplugged for now -----------------------------------------------

def _live_root():
    return parse(domain_xml(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1),
                            meta(MAC2, "direct", uplink="lan", mode="vepa"),
                            meta(MAC3, "network", network="default")))


def test_live_entry_without_interface_is_listed_as_unplugged():
    parsed = domain_from_tree(_live_root(), "web1", live=True)
    assert [t.mac for t in parsed.tagged] == [MAC1]
    assert parsed.unplugged == (Attachment(MAC2, "direct", uplink="lan", mode="vepa"),
                                Attachment(MAC3, "network", network="default"))


def test_definition_entry_without_interface_is_still_refused():
    with pytest.raises(MetadataError, match=f"domain web1 interface {MAC2}: no <interface>"):
        domain_from_tree(_live_root(), "web1", live=False)
    with pytest.raises(MetadataError, match=f"domain web1 interface {MAC2}: no <interface>"):
        domain_from_tree(_live_root(), "web1")


def test_live_domain_with_every_interface_has_none_unplugged():
    root = parse(domain_xml(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1)))
    assert domain_from_tree(root, "web1", live=True).unplugged == ()
    assert domain(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1)).unplugged == ()


def test_live_xml_still_checks_the_form_of_present_interfaces():
    root = parse(domain_xml(meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1, managed=None),
                            meta(MAC2, "bridge", uplink="lan")))
    with pytest.raises(MetadataError, match="needs <target dev='NAME' managed='no'/>"):
        domain_from_tree(root, "web1", live=True)


# --- VLANs: vlan and trunk ------------------------------------------------------------------

def test_vlan_and_trunk_parse():
    parsed = domain(meta(MAC1, "bridge", uplink="lan", vlan="10", trunk="30,20-22"),
                    hook_owned(MAC1),
                    meta(MAC2, "direct", uplink="lan", vlan=" 4094 "), hook_owned(MAC2))
    first, second = (t.attachment for t in parsed.tagged)
    assert (first.vlan, first.trunk, first.vlans) == (10, (20, 21, 22, 30), (10, 20, 21, 22, 30))
    assert (second.vlan, second.trunk, second.vlans) == (4094, (), (4094,))


@pytest.mark.parametrize("vlan", ["0", "4095", "", "a", "-1", "+5", "10 20", "1.5", "²", "٣"])
def test_bad_vlan_is_one_line_naming_domain_and_mac(vlan):
    message = _error(domain_xml(meta(MAC1, "bridge", uplink="lan", vlan=vlan),
                                hook_owned(MAC1)))
    assert message == f"domain web1 interface {MAC1}: vlan '{vlan}' is not a VLAN ID (1-4094)"


@pytest.mark.parametrize("trunk, message", [
    ("0", "trunk '0' is not a VLAN ID (1-4094)"),
    ("4095", "trunk '4095' is not a VLAN ID (1-4094)"),
    ("10-4095", "trunk '4095' is not a VLAN ID (1-4094)"),
    ("10-5", "trunk range '10-5' runs backwards"),
    ("a", "trunk 'a' is not a VLAN ID (1-4094)"),
    ("10,,20", "trunk '' is not a VLAN ID (1-4094)"),
    ("", "trunk '' is not a VLAN ID (1-4094)"),
    ("10-20-30", "trunk '20-30' is not a VLAN ID (1-4094)"),
])
def test_bad_trunk_is_one_line_naming_domain_and_mac(trunk, message):
    assert _error(domain_xml(meta(MAC1, "bridge", uplink="lan", trunk=trunk),
                             hook_owned(MAC1))) == f"domain web1 interface {MAC1}: {message}"


def test_access_vlan_in_the_trunk_is_refused():
    assert _error(domain_xml(meta(MAC1, "bridge", uplink="lan", vlan="20", trunk="10-30"),
                             hook_owned(MAC1))) == (
        f"domain web1 interface {MAC1}: VLAN 20 is both the access VLAN (vlan) and in the trunk")


@pytest.mark.parametrize("parts, kind, allowed", [
    ((meta(MAC1, "direct", uplink="lan", trunk="10"), hook_owned(MAC1)),
     "direct", "mac, mode, type, uplink, vlan"),
    ((meta(MAC1, "network", network="default", trunk="10"), native_network(MAC1, "default")),
     "network", "mac, network, type"),
])
def test_trunk_is_for_type_bridge_only(parts, kind, allowed):
    assert _error(domain_xml(*parts)) == (
        f"domain web1 interface {MAC1}: unknown attribute 'trunk' for type '{kind}' "
        f"(allowed: {allowed})")


def test_vlan_is_not_for_type_network():
    message = _error(domain_xml(meta(MAC1, "network", network="default", vlan="10"),
                                native_network(MAC1, "default")))
    assert message.startswith(f"domain web1 interface {MAC1}: unknown attribute 'vlan' for "
                              "type 'network'")


@pytest.mark.parametrize("vlans, text", [
    ((), ""), ((5,), "5"), ((5, 6), "5-6"), ((20, 21, 22, 30), "20-22,30"),
    ((1, 3, 4, 5, 4094), "1,3-5,4094"), ((30, 20, 21, 20), "20-21,30"),
])
def test_format_trunk_writes_ranges(vlans, text):
    assert format_trunk(vlans) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4094), st.integers(0, 40)), min_size=1,
                max_size=8))
def test_a_trunk_formatted_parses_back_to_the_same_vlans(ranges):
    """format_trunk(parse_trunk(x)) re-parses to parse_trunk(x), for any x of IDs and
    ranges in any order, overlapping or not."""
    text = ",".join(f"{low}-{min(low + extra, 4094)}" if extra else str(low)
                    for low, extra in ranges)
    vlans = parse_trunk(text, "web1", MAC1)
    assert vlans == tuple(sorted({v for low, extra in ranges
                                  for v in range(low, min(low + extra, 4094) + 1)}))
    compact = format_trunk(vlans)
    assert parse_trunk(compact, "web1", MAC1) == vlans
    assert len(compact.split(",")) <= len(ranges)


def test_parse_vlans_is_what_the_metadata_parser_reads():
    assert parse_vlans(None, None, "web1", MAC1) == (None, ())
    assert parse_vlans("10", "21,20", "web1", MAC1) == (10, (20, 21))
    with pytest.raises(MetadataError, match=f"^domain web1 interface {MAC1}: VLAN 20 is both"):
        parse_vlans("20", "20", "web1", MAC1)


@pytest.mark.parametrize("vlans", [{"vlan": "10"}, {"trunk": "20-21"},
                                   {"vlan": "10", "trunk": "20"}])
@pytest.mark.parametrize("device", [native_bridge(MAC1, "br-lan"), native_direct(MAC1, "eth1"),
                                    native_network(MAC1, "default")])
def test_vlans_on_type_bridge_refuse_the_native_form(vlans, device):
    """Hand-written metadata too, not only `kvmhooks attach --native`: any native form
    of a type bridge attachment (migrate and apply would make it type='bridge')."""
    message = _error(domain_xml(meta(MAC1, "bridge", uplink="lan", **vlans), device))
    assert message == (f"domain web1 interface {MAC1}: VLANs on type 'bridge' take the "
                       "hook-owned form <interface type='ethernet'> with <target dev='NAME' "
                       "managed='no'/> (kvmhooks sets them on the tap it builds; libvirt "
                       "makes its own tap after the prepare hook)")


def test_vlan_on_type_direct_takes_either_form():
    parsed = domain(meta(MAC1, "direct", uplink="lan", vlan="10"), native_direct(MAC1, "eth1"),
                    meta(MAC2, "direct", uplink="lan", vlan="10"), hook_owned(MAC2))
    assert [(t.attachment.vlan, t.hook_owned) for t in parsed.tagged] == [(10, False),
                                                                         (10, True)]


def test_type_bridge_without_vlans_keeps_the_native_form():
    assert not domain(meta(MAC1, "bridge", uplink="lan"),
                      native_bridge(MAC1, "br-lan")).tagged[0].hook_owned
