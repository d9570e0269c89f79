"""status.domain_status: one row per tagged interface, state ok / missing / stale; and
status.uplink_status: one row per uplink, its NIC, bridge and shim there or not."""

from __future__ import annotations

import pytest

from kvmhooks.names import shim_mark
from kvmhooks.status import InterfaceStatus, UplinkStatus, domain_status, uplink_status

from .builders import (
    LAN,
    LAN_BRIDGE,
    MAC1,
    NIC_MAC,
    Host,
    domain,
    hook_owned,
    interface,
    make_config,
    meta,
    native_bridge,
    native_network,
)

TAP1 = "kh5254006b3c01"
TAP1_MAC = "fe:54:00:6b:3c:01"


def bridged() -> Host:
    return Host().nic("eth1", master="br-lan").bridge("br-lan")


def row(device: str, state: str, reason: str = "", nic: str = "eth1",
        uplink: str = "lan") -> list[InterfaceStatus]:
    return [InterfaceStatus("web1", MAC1, uplink, nic, device, state, reason)]


def status(config_text: str, host: Host, running: bool, *parts):
    return domain_status(domain(*parts), running, make_config(config_text), host.inventory())


BRIDGE_TAP = (meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1))
DIRECT_TAP = (meta(MAC1, "direct", uplink="lan", mode="private"), hook_owned(MAC1))


def test_ok_when_stopped():
    assert status(LAN_BRIDGE, bridged(), False, *BRIDGE_TAP) == row("-", "ok")


def test_ok_hook_owned_tap():
    host = bridged().tap(TAP1, TAP1_MAC, "br-lan")
    assert status(LAN_BRIDGE, host, True, *BRIDGE_TAP) == row(TAP1, "ok")


def test_ok_hook_owned_macvtap():
    host = Host().nic("eth1").macvtap(TAP1, MAC1, "eth1", "private")
    assert status(LAN, host, True, *DIRECT_TAP) == row(TAP1, "ok")


def test_ok_native_bridge_running():
    parts = (meta(MAC1, "bridge", uplink="lan"),
             interface(MAC1, "bridge", {"bridge": "br-lan"}, {"dev": "vnet0"}))
    host = bridged().link("vnet0", "tun", master="br-lan")
    assert status(LAN_BRIDGE, host, True, *parts) == row("vnet0", "ok")


def test_ok_network():
    parts = (meta(MAC1, "network", network="default"), native_network(MAC1, "default"))
    assert status(LAN, Host(), False, *parts) == row("-", "ok", nic="-",
                                                      uplink="network:default")


def test_missing_nic():
    assert status(LAN_BRIDGE, Host(), True, *BRIDGE_TAP) == row(
        TAP1, "missing", "uplink 'lan': no NIC on this host matches nic = \"eth1\"", nic="-")


def test_missing_device():
    assert status(LAN_BRIDGE, bridged(), True, *BRIDGE_TAP) == row(
        TAP1, "missing", f"host device {TAP1} does not exist")


def test_stale_native_source():
    parts = (meta(MAC1, "bridge", uplink="lan"), native_bridge(MAC1, "br0"))
    assert status(LAN_BRIDGE, bridged(), False, *parts) == row(
        "-", "stale", "source bridge is 'br0', this host's uplink bridge is 'br-lan'")


def test_a_running_guests_definition_that_names_another_hosts_source_is_stale():
    """After a --persistent migration the live XML is this host's, the definition the
    source's: the next start would be refused."""
    entry = meta(MAC1, "bridge", uplink="lan")
    live = interface(MAC1, "bridge", {"bridge": "br-lan"}, {"dev": "vnet0"})
    host = bridged().link("vnet0", "tun", master="br-lan")
    assert domain_status(domain(entry, live), True, make_config(LAN_BRIDGE), host.inventory(),
                         domain(entry, native_bridge(MAC1, "br0"))) == row(
        "vnet0", "stale", "definition: source bridge is 'br0', this host's uplink bridge is "
        "'br-lan'")
    assert domain_status(domain(entry, live), True, make_config(LAN_BRIDGE), host.inventory(),
                         domain(entry, native_bridge(MAC1, "br-lan"))) == row("vnet0", "ok")


@pytest.mark.parametrize("config_text, host, parts, reason", [
    (LAN_BRIDGE, bridged().tap(TAP1, TAP1_MAC, None), BRIDGE_TAP,
     f"{TAP1} is not a port of bridge br-lan"),
    (LAN_BRIDGE, bridged().tap(TAP1, MAC1, "br-lan"), BRIDGE_TAP, f"{TAP1} has MAC {MAC1}"),
    (LAN, Host().nic("eth1").macvtap(TAP1, MAC1, "eth1", "vepa"), DIRECT_TAP,
     f"{TAP1} is in mode vepa, metadata says private"),
    (LAN_BRIDGE, bridged().macvtap(TAP1, MAC1, "eth1", "private"), DIRECT_TAP,
     f"{TAP1} is not a macvtap on br-lan"),
])
def test_stale_device(config_text, host, parts, reason):
    assert status(config_text, host, True, *parts) == row(TAP1, "stale", reason)


# --- status.uplink_status ----------------------------------------------------------------

def test_an_uplink_whose_devices_are_all_there():
    config = make_config('[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'
                         'host_address = "192.0.2.10/24"\n')
    host = (Host().nic("eth1", master="br-lan").bridge("br-lan")
            .link("kh-lan", "macvlan", parent="br-lan", alias=shim_mark("lan")))
    assert uplink_status(config, host.inventory()) == [
        UplinkStatus("lan", "eth1", True, "br-lan", True, "kh-lan", True)]


def test_an_uplink_whose_devices_are_all_gone():
    config = make_config('[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'
                         'host_address = "192.0.2.10/24"\n')
    assert uplink_status(config, Host().inventory()) == [
        UplinkStatus("lan", "eth1", False, "br-lan", False, "kh-lan", False)]


def test_an_uplink_without_bridge_or_shim_reports_its_nic_only():
    config = make_config('[uplink.lan]\nnic = "eth1"\n')
    assert uplink_status(config, Host().nic("eth1").inventory()) == [
        UplinkStatus("lan", "eth1", True)]


def test_a_nic_found_by_mac_is_named_and_an_absent_one_is_not():
    config = make_config(f'[uplink.lan]\nmac = "{NIC_MAC}"\n[uplink.wan]\npath = "pci-0"\n')
    assert uplink_status(config, Host().nic("enp3s0").inventory()) == [
        UplinkStatus("lan", "enp3s0", True), UplinkStatus("wan", "", False)]


def test_devices_that_only_have_the_name_do_not_count():
    config = make_config('[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'
                         'host_address = "192.0.2.10/24"\n')
    host = (Host().nic("eth1").link("br-lan", "veth")
            .link("kh-lan", "macvlan", parent="eth1"))  # no mark: not kvmhooks' shim
    assert uplink_status(config, host.inventory()) == [
        UplinkStatus("lan", "eth1", True, "br-lan", False, "kh-lan", False)]


def test_uplinks_come_by_name():
    config = make_config('[uplink.wan]\nnic = "eth2"\n[uplink.lan]\nnic = "eth1"\n')
    assert [row.uplink for row in uplink_status(config, Host().inventory())] == ["lan", "wan"]
