"""resolve.resolve: which link of this host an uplink's nic, mac or path names."""

from __future__ import annotations

import pytest

from kvmhooks.errors import HostError, NicAbsent
from kvmhooks.names import bridge_mark
from kvmhooks.resolve import Resolution, resolve

from .builders import NIC_MAC, Host, make_config

OTHER_MAC = "02:00:c6:12:05:99"


def _uplink(selector: str, bridge: bool = False):
    text = f"[uplink.lan]\n{selector}\n" + ('bridge = "br-lan"\n' if bridge else "")
    return make_config(text).uplinks["lan"]


def test_by_nic_name():
    host = Host().nic("eth0", OTHER_MAC).nic("eth1")
    assert resolve(_uplink('nic = "eth1"', bridge=True), host.inventory()) == \
        Resolution("lan", "eth1", "br-lan")


def test_lower_is_the_bridge_when_there_is_one():
    inventory = Host().nic("eth1").inventory()
    assert resolve(_uplink('nic = "eth1"', bridge=True), inventory).lower == "br-lan"
    assert resolve(_uplink('nic = "eth1"'), inventory).lower == "eth1"


@pytest.mark.parametrize("selector", [f'mac = "{NIC_MAC}"', f'mac = "{NIC_MAC.upper()}"'])
def test_by_mac(selector):
    host = Host().nic("eth0", OTHER_MAC).nic("eno1")
    assert resolve(_uplink(selector), host.inventory()).nic == "eno1"


def test_by_permanent_mac():
    # A NIC whose current MAC was changed is still found by its burnt-in one.
    host = Host().nic("eno1", OTHER_MAC, permanent_mac=NIC_MAC)
    assert resolve(_uplink(f'mac = "{NIC_MAC}"'), host.inventory()).nic == "eno1"


def test_by_mac_ignores_bridges_taps_macvtaps_and_marked_links():
    host = (Host().nic("eno1").bridge("br-lan", alias=bridge_mark("lan"))
            .bridge("br-other").link("tap0", "tun", mac=NIC_MAC)
            .link("mvt0", "macvtap", mac=NIC_MAC, parent="eno1", mode="bridge")
            .link("mvl0", "macvlan", mac=NIC_MAC, parent="eno1", mode="bridge")
            .link("veth-x", "veth", mac=NIC_MAC, alias="kvmhooks:network:x"))
    assert resolve(_uplink(f'mac = "{NIC_MAC}"'), host.inventory()).nic == "eno1"


def test_by_udev_path():
    host = (Host().nic("eth0", OTHER_MAC, id_path="pci-0000:02:00.0")
            .nic("enp3s0", id_path="pci-0000:03:00.0"))
    assert resolve(_uplink('path = "pci-0000:03:00.0"'), host.inventory()).nic == "enp3s0"


@pytest.mark.parametrize("selector", [
    'nic = "eth9"', 'mac = "02:00:c6:12:05:77"', 'path = "pci-0000:09:00.0"'])
def test_nothing_matches(selector):
    host = Host().nic("eth1", id_path="pci-0000:03:00.0")
    with pytest.raises(NicAbsent) as caught:
        resolve(_uplink(selector), host.inventory())
    assert str(caught.value) == f"uplink 'lan': no NIC on this host matches {selector}"


@pytest.mark.parametrize("selector", [f'mac = "{NIC_MAC}"', 'path = "pci-0000:03:00.0"'])
def test_several_matches_are_an_error(selector):
    host = (Host().nic("eth1", id_path="pci-0000:03:00.0")
            .nic("eth2", id_path="pci-0000:03:00.0"))
    with pytest.raises(HostError, match=r"uplink 'lan': .* matches several links \(eth1, eth2\)"):
        resolve(_uplink(selector), host.inventory())


@pytest.mark.parametrize("host", [
    Host().nic("eno1").link("eno1.10", "vlan", mac=NIC_MAC, parent="eno1"),
    Host().nic("eno1").nic("eno2", master="bond0").link("bond0", "bond", mac=OTHER_MAC)
    .nic("eno3", mac=OTHER_MAC, master="bond0"),
], ids=["vlan-copies-the-mac", "bond-port-elsewhere"])
def test_by_mac_ignores_vlans_and_bond_ports(host):
    assert resolve(_uplink(f'mac = "{NIC_MAC}"'), host.inventory()).nic == "eno1"
