"""Per-guest VLANs on a kernel that cannot do them (this lab's: no 802.1Q, no bridge VLAN
filtering): the start is refused with one line that says so, and nothing it built stays.
The VLANs themselves are tested in the systemd host VM (tests/vm/test_vlans.py)."""

from __future__ import annotations

import libvirt
import pytest

from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_exists, link_info
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define

pytestmark = pytest.mark.system


def refused_start(conn, cleanup, iface: Iface) -> str:
    """kvmhooks' line, as libvirt quotes the hook's stderr in its error."""
    dom = define(conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)
    with pytest.raises(libvirt.libvirtError) as caught:
        dom.create()
    message = str(caught.value).strip()
    assert "unexpected exit status 1: kvmhooks: " in message and "\n" not in message
    return message.split("unexpected exit status 1: ", 1)[1]


def test_a_bridge_guest_on_a_vlan_is_refused_before_the_nic_is_touched(
        libvirt_conn, cleanup, kh_config, stand_in_nic, subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    iface = Iface(guest_mac(), "bridge", up.name, vlan=10)
    line = refused_start(libvirt_conn, cleanup, iface)
    assert line == (f"kvmhooks: turn VLAN filtering on on bridge {up.bridge} failed: turn "
                    f"VLAN filtering on on bridge {up.bridge}: this kernel cannot filter "
                    "VLANs on a bridge (CONFIG_BRIDGE_VLAN_FILTERING); earlier steps were "
                    "undone")
    assert not link_exists(up.bridge) and not link_exists(iface.hook_owned_dev)
    nic = link_info(stand_in_nic.name)
    assert nic["master"] is None and subnet.addr(1) in nic["addresses"], \
        "the NIC keeps its address and stays off any bridge"


def test_a_macvtap_guest_on_a_vlan_is_refused_and_leaves_no_sub_interface(
        libvirt_conn, cleanup, kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "bridge", vlan=10)
    line = refused_start(libvirt_conn, cleanup, iface)
    name = f"{stand_in_nic.name}.10"
    assert line == (f"kvmhooks: create VLAN 10 sub-interface {name} on {stand_in_nic.name}, "
                    f"MTU 1500 failed: create VLAN 10 sub-interface {name} on "
                    f"{stand_in_nic.name}: this kernel has no 802.1Q VLAN devices (module "
                    "8021q); earlier steps were undone")
    assert not link_exists(f"{stand_in_nic.name}.10")
    assert not link_exists(iface.hook_owned_dev)
