"""sources: a native interface's <source> read, compared and written by one declaration
per interface type."""

from __future__ import annotations

import pytest
from lxml import etree

from kvmhooks.rewrite import replugged_interface, retargeted_interface
from kvmhooks.sources import (
    BridgeSource,
    DirectSource,
    NetworkSource,
    current_source,
    difference,
    write_source,
)
from kvmhooks.xmlsafe import serialize

from .builders import MAC1, domain, hook_owned, interface, meta, native_direct


@pytest.mark.parametrize("element, source", [
    (interface(MAC1, "bridge", {"bridge": "br0"}), BridgeSource("br0")),
    (native_direct(MAC1, "eth0", "private"), DirectSource("eth0", "private")),
    (native_direct(MAC1, "eth0"), DirectSource("eth0", "vepa")),  # libvirt's default mode
    (interface(MAC1, "network", {"network": "default", "portid": "x", "bridge": "virbr0"}),
     NetworkSource("default")),  # the live XML's extra attributes are not the source's
    (hook_owned(MAC1), None),
])
def test_current_source(element, source):
    entry = meta(MAC1, "network", network="default") if "network" in element else \
        meta(MAC1, "direct", uplink="lan")
    assert current_source(domain(entry, element).tagged[0]) == source


@pytest.mark.parametrize("current, wanted, text", [
    (BridgeSource("br0"), BridgeSource("br-lan"),
     "source bridge is 'br0', this host's uplink bridge is 'br-lan'"),
    (DirectSource("eth0", "vepa"), DirectSource("eth1", "private"),
     "source dev is 'eth0', this host's uplink device is 'eth1'; "
     "source mode is 'vepa', metadata says 'private'"),
    (NetworkSource("a"), NetworkSource("b"), "source network is 'a', metadata says 'b'"),
    (BridgeSource("br0"), DirectSource("eth1", "bridge"),
     "interface is type 'bridge', metadata says 'direct'"),
])
def test_difference_says_what_differs(current, wanted, text):
    assert difference(current, wanted) == text


def live(xml: str) -> etree._Element:
    return etree.fromstring(xml)


def test_write_source_keeps_the_target_of_the_same_type():
    element = live(interface(MAC1, "bridge", {"bridge": "br0"}, {"dev": "vnet0"}))
    write_source(element, BridgeSource("br-lan"), "web1")
    assert element.find("source").attrib == {"bridge": "br-lan"}
    assert element.find("target").get("dev") == "vnet0"


def test_write_source_of_another_type_drops_the_target():
    element = live(interface(MAC1, "bridge", {"bridge": "br0"}, {"dev": "vnet0"}))
    write_source(element, DirectSource("eth1", "bridge"), "web1")
    assert element.get("type") == "direct" and element.find("target") is None
    assert list(element.find("source").attrib.items()) == [("dev", "eth1"), ("mode", "bridge")]


def test_replugged_interface_leaves_the_live_one_alone():
    old = live(interface(MAC1, "direct", {"dev": "eth0", "mode": "bridge"},
                         {"dev": "macvtap0"}))
    before = serialize(old)
    moved = retargeted_interface(old, DirectSource("eth1", "bridge"))
    replugged = replugged_interface(old, DirectSource("eth1", "bridge"))
    assert serialize(old) == before
    assert moved.find("target").get("dev") == "macvtap0"  # libvirt's live update keeps it
    assert replugged.find("target") is None  # the detach took the device: libvirt names anew
    assert replugged.find("source").get("dev") == "eth1"
    hook_owned_element = live(hook_owned(MAC1))
    assert serialize(replugged_interface(hook_owned_element, None)) == \
        serialize(hook_owned_element)
