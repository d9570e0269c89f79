"""A definition kvmhooks writes back keeps everything it did not mean to change, secrets
first: libvirt leaves VNC and SPICE passwords out of XML read without
VIR_DOMAIN_XML_SECURE, and defining that XML back drops them."""

from __future__ import annotations

import copy

import libvirt
import pytest
from lxml import etree

from tests.lab.commands import kvmhooks
from tests.lab.domains import Iface, domain_xml
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define

pytestmark = pytest.mark.system

GRAPHICS = "<graphics type='vnc' port='-1' autoport='yes' passwd='ktSecr01'/>"
UNTAGGED = ("<interface type='user'><mac address='52:54:00:00:00:42'/>"
            "<model type='e1000'/></interface>")


def secure_definition(dom) -> etree._Element:
    return etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                        | libvirt.VIR_DOMAIN_XML_SECURE).encode())


def apart_from(root: etree._Element, mac: str) -> bytes:
    """The definition without what kvmhooks meant to change: its metadata and the
    interface with this MAC."""
    root = copy.deepcopy(root)
    for metadata in root.findall("metadata"):
        root.remove(metadata)
    for interface in root.findall("devices/interface"):
        if interface.find("mac").get("address") == mac:
            interface.getparent().remove(interface)
    return etree.tostring(root, method="c14n")


@pytest.mark.parametrize("native", [False, True], ids=["hook-owned", "native"])
def test_attach_keeps_the_rest_of_the_definition(native, libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [], metadata="",
                                          devices=[GRAPHICS, UNTAGGED]), cleanup)
    before = secure_definition(dom)
    mac = guest_mac()
    attached = kvmhooks("attach", dom.name(), "--mac", mac, "--uplink", up.name, "--type",
                        "direct", *(["--native"] if native else []))
    assert attached.returncode == 0, attached.stderr
    after = secure_definition(dom)
    assert after.find("devices/graphics").get("passwd") == "ktSecr01"
    assert apart_from(after, mac) == apart_from(before, mac)


def test_apply_keeps_the_rest_of_the_definition(libvirt_conn, cleanup, kh_config,
                                                stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "bridge", native=True,
                  source="ktnic-elsewhere")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface],
                                          devices=[GRAPHICS, UNTAGGED]), cleanup)
    before = secure_definition(dom)
    applied = kvmhooks("apply", dom.name())
    assert applied.returncode == 0, applied.stderr
    after = secure_definition(dom)
    assert after.find("devices/graphics").get("passwd") == "ktSecr01"
    assert etree.tostring(after.find("metadata"), method="c14n") == \
        etree.tostring(before.find("metadata"), method="c14n")
    assert apart_from(after, iface.mac) == apart_from(before, iface.mac)
    source = next(i for i in after.findall("devices/interface")
                  if i.find("mac").get("address") == iface.mac).find("source")
    assert source.get("dev") == stand_in_nic.name
