"""virsh save, remap the uplink to another NIC, virsh restore: the restore hook rewrites
native interfaces and prepare builds hook-owned ones on the new NIC."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from tests.lab.commands import run_hook
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_exists, link_info
from tests.lab.names import guest_mac, pick_subnet, unique_name
from tests.lab.nic import StandInNic
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start, live_interface, live_target

pytestmark = pytest.mark.system


def test_restore_follows_the_uplink_to_another_nic(libvirt_conn, cleanup, kh_config,
                                                  tmp_path):
    first = StandInNic(cleanup, None, pick_subnet().addr(1))
    second = StandInNic(cleanup, None, pick_subnet().addr(1))
    config = '[uplink.lan]\nnic = "{}"\n'
    kh_config(config.format(first.name))
    native = Iface(guest_mac(), "direct", "lan", "private", native=True, source=first.name)
    hook_owned = Iface(guest_mac(), "direct", "lan", "vepa")
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                                    [native, hook_owned]), cleanup)
    assert link_info(live_target(dom, native.mac))["link"] == first.index

    image = str(tmp_path / "saved.img")
    cleanup.add(lambda: os.path.exists(image) and os.unlink(image), _what="remove image")
    dom.save(image)
    assert not link_exists(hook_owned.hook_owned_dev), "release left the macvtap"
    kh_config(config.format(second.name))
    libvirt_conn.restore(image)

    dom = libvirt_conn.lookupByName(dom.name())
    assert dom.isActive()
    source = live_interface(dom, native.mac).find("source")
    assert (source.get("dev"), source.get("mode")) == (second.name, "private")
    native_device = link_info(live_target(dom, native.mac))
    assert (native_device["link"], native_device["mode"]) == (second.index, "private")
    built = link_info(hook_owned.hook_owned_dev)
    assert (built["link"], built["mode"], built["mac"]) == (second.index, "vepa",
                                                            hook_owned.mac)
    persistent = dom.XMLDesc(0x2)  # VIR_DOMAIN_XML_INACTIVE: restore changes only the run
    assert f"dev='{first.name}'" in persistent


def test_migrate_hook_prints_one_rewritten_document(cleanup, kh_config):
    nic = StandInNic(cleanup)
    kh_config(f'[uplink.lan]\nnic = "{nic.name}"\nbridge = "ktbr-remote"\n')
    native = [Iface(guest_mac(), "direct", "lan", "bridge", native=True, source="eth7",
                    source_mode="vepa"),
              Iface(guest_mac(), "bridge", "lan", native=True, source="br-source-host")]
    hook_owned = Iface(guest_mac(), "direct", "lan", "private")
    xml = domain_xml(unique_name("kt-dom-"), [*native, hook_owned])

    result = run_hook("guest", "migrate", xml)
    assert result.returncode == 0, result.stderr
    root = etree.fromstring(result.stdout)  # exactly one document, or this raises
    sources = {i.find("mac").get("address"): (i.get("type"), dict(i.find("source").attrib))
               for i in root.findall("devices/interface") if i.find("source") is not None}
    assert sources == {native[0].mac: ("direct", {"dev": "ktbr-remote", "mode": "bridge"}),
                       native[1].mac: ("bridge", {"bridge": "ktbr-remote"})}
    assert root.find("devices/interface[@type='ethernet']/target").get("dev") == \
        hook_owned.hook_owned_dev
    assert result.stderr == b""
    assert not link_exists("ktbr-remote"), "migrate begin must not build anything"


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tagged-hook-owned"])
def test_a_restore_with_nothing_to_rewrite_leaves_the_domain_untainted(
        tagged, libvirt_conn, cleanup, kh_config, stand_in_nic, tmp_path):
    # libvirt takes any output of the restore hook as a new XML and taints the domain.
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    ifaces = [Iface(guest_mac(), "direct", up.name, "bridge")] if tagged else []
    dom = define_and_start(libvirt_conn, domain_xml(
        unique_name("kt-dom-"), ifaces, metadata=None if tagged else ""), cleanup)
    image = str(tmp_path / "saved.img")
    cleanup.add(lambda: os.path.exists(image) and os.unlink(image), _what="remove image")
    dom.save(image)
    libvirt_conn.restore(image)
    assert libvirt_conn.lookupByName(dom.name()).isActive()
    log = Path(f"/var/log/libvirt/qemu/{dom.name()}.log").read_text()
    assert "tainted: hook-script" not in log
