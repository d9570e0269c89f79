"""The network hook with a real libvirtd: libvirt networks named in the config."""

from __future__ import annotations

import pytest

from tests.lab.domains import Iface, domain_xml
from tests.lab.links import (
    create_bridge,
    create_macvtap,
    link_exists,
    link_info,
    marked_links,
    ping,
)
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start

pytestmark = pytest.mark.system


def network_xml(name: str, forward: str) -> str:
    return f"<network><name>{name}</name>{forward}</network>"


def start_network(conn, cleanup, xml: str):
    network = conn.networkDefineXML(xml)
    name = network.name()

    def remove():
        import libvirt
        try:
            stale = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            return
        if stale.isActive():
            stale.destroy()
        stale.undefine()

    cleanup.add(remove, _what=f"remove network {name}")
    network.create()
    return network


def test_host_bridge_network_gets_its_bridge(libvirt_conn, cleanup, kh_config, stand_in_nic,
                                             subnet):
    up, net = lab_uplink(cleanup, stand_in_nic.name, bridge=True), unique_name("kt-net-")
    kh_config(f'{up.table}\n[network.{net}]\nuplink = "{up.name}"\n')
    bridge = up.bridge
    assert not link_exists(bridge)
    network = start_network(libvirt_conn, cleanup, network_xml(
        net, f"<forward mode='bridge'/><bridge name='{bridge}'/>"))
    assert network.isActive()
    info = link_info(bridge)
    assert info["kind"] == "bridge" and info["alias"] == f"kvmhooks:network:{net}"
    assert link_info(stand_in_nic.name)["master"] == bridge
    assert subnet.addr(1) in info["addresses"]

    mac = guest_mac()
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [
        Iface(mac, "network", network=net, native=True)]), cleanup)
    assert dom.isActive()
    dom.destroy()

    network.destroy()
    assert not link_exists(bridge), "kvmhooks created the bridge, so it goes"
    nic = link_info(stand_in_nic.name)
    assert nic["master"] is None and subnet.addr(1) in nic["addresses"]
    assert ping(subnet.ip(2))


def test_network_keeps_a_bridge_it_did_not_create(libvirt_conn, cleanup, kh_config,
                                                  stand_in_nic):
    bridge, net = unique_name("ktbr"), unique_name("kt-net-")
    create_bridge(bridge, cleanup)
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=bridge)
    kh_config(f'{up.table}\n[network.{net}]\nuplink = "{up.name}"\n')
    network = start_network(libvirt_conn, cleanup, network_xml(
        net, f"<forward mode='bridge'/><bridge name='{bridge}'/>"))
    assert link_info(stand_in_nic.name)["master"] == bridge
    network.destroy()
    assert link_exists(bridge)
    assert bridge not in marked_links()


def test_private_network_on_a_macvtap_is_refused(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic):
    net, handmade = unique_name("kt-net-"), unique_name("ktmvt")
    create_macvtap(handmade, stand_in_nic.name, cleanup, mode="private")
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(f'{up.table}\n[network.{net}]\nuplink = "{up.name}"\n')
    network = libvirt_conn.networkDefineXML(network_xml(
        net, f"<forward mode='private'><interface dev='{handmade}'/></forward>"))
    cleanup.add(network.undefine, _what=f"undefine network {net}")
    with pytest.raises(Exception) as refused:
        network.create()
    message = str(refused.value)
    assert f"network {net}: forward interface {handmade} is itself a macvtap device" in message
    assert f"name the physical NIC instead: <interface dev='{stand_in_nic.name}'/>" in message
    assert not network.isActive()


def test_networks_not_in_the_config_are_left_alone(libvirt_conn, cleanup, kh_config,
                                                   stand_in_nic):
    kh_config(lab_uplink(cleanup, stand_in_nic.name).table)
    bridge = unique_name("ktbr")
    create_bridge(bridge, cleanup)
    network = start_network(libvirt_conn, cleanup, network_xml(
        unique_name("kt-net-"), f"<forward mode='bridge'/><bridge name='{bridge}'/>"))
    assert network.isActive()
    assert link_info(stand_in_nic.name)["master"] is None


@pytest.mark.parametrize("broken", ['brige = "x"\n', "nic = [\n"], ids=["typo", "syntax"])
def test_a_broken_config_stops_only_the_networks_it_names(broken, libvirt_conn, cleanup,
                                                          kh_config, stand_in_nic):
    # A broken config fails only what kvmhooks acts on: libvirt's own networks start.
    named, other = unique_name("kt-net-"), unique_name("kt-net-")
    kh_config(lab_uplink(cleanup, stand_in_nic.name).table + broken
              + f'\n[network.{named}]\nuplink = "lan"\n')
    assert start_network(libvirt_conn, cleanup, network_xml(other, "")).isActive()
    with pytest.raises(Exception) as refused:
        start_network(libvirt_conn, cleanup, network_xml(named, ""))
    assert "/etc/kvmhooks/kvmhooks.toml" in str(refused.value)
    assert not libvirt_conn.networkLookupByName(named).isActive()
