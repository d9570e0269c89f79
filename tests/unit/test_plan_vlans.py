"""Per-guest VLANs in plans: bridge VLAN filtering with the tap's PVID and trunk and the
NIC's port carrying them; 802.1Q sub-interfaces for macvtap guests; what release takes
back. The kernel side runs in the systemd host VM's tier (tests/vm/test_vlans.py)."""

from __future__ import annotations

import pytest

from kvmhooks.actions import (
    AddPortVlan,
    CreateBridge,
    CreateMacvtap,
    CreateTap,
    CreateVlan,
    DeleteLink,
    DelPortVlan,
    SetDown,
    SetMaster,
    SetPortVlans,
    SetUp,
    SetVlanFiltering,
)
from kvmhooks.devices import joining_vlans
from kvmhooks.errors import ForeignDevice, HostError, MetadataError
from kvmhooks.inventory import PortVlans
from kvmhooks.names import bridge_mark, guest_mark, vlan_mark
from kvmhooks.planner import plan_reconnect, plan_release, plan_uplinks
from kvmhooks.resolve import resolve_affected
from kvmhooks.status import domain_status

from .builders import (
    LAN,
    LAN_BRIDGE,
    MAC1,
    MAC2,
    NIC_MAC,
    OTHER_UUID,
    UUID,
    Host,
    domain,
    hook_owned,
    make_config,
    meta,
    native_direct,
)
from .test_plan import MARK, MTU, TAP1, TAP1_MAC, TAP2, prepare

ACCESS_10 = PortVlans(10, (10,), (10,))
DEFAULT_PORT_VLANS = joining_vlans(None)  # VLAN 1, untagged: the kernel's default_pvid
NIC_PORT = DEFAULT_PORT_VLANS  # a NIC just enslaved: the bridge's default VLAN, untagged


def own_bridge(filtering: bool = False, nic_vlans: PortVlans | None = None) -> Host:
    """br-lan is kvmhooks' (marked), eth1 its port."""
    return Host().nic("eth1", master="br-lan",
                      vlans=nic_vlans or (NIC_PORT if filtering else None)) \
        .bridge("br-lan", alias=bridge_mark("lan"), vlan_filtering=filtering)


def on_vlan(mac: str = MAC1, **attrs: str) -> tuple:
    return meta(mac, "bridge", uplink="lan", **attrs), hook_owned(mac)


# --- type bridge ------------------------------------------------------------------------

def test_an_access_vlan_turns_filtering_on_and_the_nic_port_carries_it_tagged():
    assert prepare(LAN_BRIDGE, own_bridge(), *on_vlan(vlan="10")).actions == (
        SetVlanFiltering("br-lan", True),
        AddPortVlan("eth1", 10),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
        SetPortVlans(TAP1, ACCESS_10, DEFAULT_PORT_VLANS),
    )


def test_a_new_bridge_filters_before_the_nic_is_enslaved():
    actions = prepare(LAN_BRIDGE, Host().nic("eth1"), *on_vlan(vlan="10")).actions
    assert actions[:4] == (
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), MTU),
        SetVlanFiltering("br-lan", True),
        SetMaster("eth1", "br-lan", None),
        AddPortVlan("eth1", 10),
    )


def test_access_vlan_and_trunk():
    actions = prepare(LAN_BRIDGE, own_bridge(filtering=True),
                      *on_vlan(vlan="10", trunk="20-21")).actions
    assert actions == (
        AddPortVlan("eth1", 10), AddPortVlan("eth1", 20), AddPortVlan("eth1", 21),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
        SetPortVlans(TAP1, PortVlans(10, (10,), (10, 20, 21)), DEFAULT_PORT_VLANS),
    )
    assert actions[-1].describe() == (f"set VLANs of bridge port {TAP1}: PVID 10 untagged, "
                                       "tagged 20-21 (was PVID 1 untagged)")


def test_a_trunk_alone_keeps_the_default_vlan_untagged():
    actions = prepare(LAN_BRIDGE, own_bridge(filtering=True), *on_vlan(trunk="20")).actions
    assert actions == (
        AddPortVlan("eth1", 20),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
        SetPortVlans(TAP1, PortVlans(1, (1,), (1, 20)), DEFAULT_PORT_VLANS),
    )


def test_the_nic_port_keeps_what_it_has_and_gains_only_what_is_new():
    host = own_bridge(filtering=True, nic_vlans=PortVlans(1, (1,), (1, 10, 30))) \
        .tap(TAP2, "fe:54:00:6b:3c:02", "br-lan", uuid=OTHER_UUID,
             vlans=PortVlans(30, (30,), (30,)))
    actions = prepare(LAN_BRIDGE, host, *on_vlan(vlan="10", trunk="40")).actions
    assert [a for a in actions if isinstance(a, (AddPortVlan, DelPortVlan))] == \
        [AddPortVlan("eth1", 40)]


def test_a_guest_without_vlans_changes_nothing_on_a_filtering_bridge():
    assert prepare(LAN_BRIDGE, own_bridge(filtering=True), *on_vlan()).actions == (
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),)


def test_an_administrators_bridge_filters_only_when_the_uplink_says_so():
    host = Host().nic("eth1", master="br-lan").bridge("br-lan")
    with pytest.raises(HostError, match=r"uplink 'lan': bridge br-lan filters no VLANs and "
                                        r"is not kvmhooks'; set vlan_filtering = true"):
        prepare(LAN_BRIDGE, host, *on_vlan(vlan="10"))
    actions = prepare(LAN_BRIDGE + "vlan_filtering = true\n", host,
                      *on_vlan(vlan="10")).actions
    assert actions[0] == SetVlanFiltering("br-lan", True)


def test_a_left_tap_on_other_vlans_gets_its_own():
    """The NIC's port is planned from the taps as they are, so it also gains the VLAN the
    left tap is leaving; release takes such a VLAN back."""
    host = own_bridge(filtering=True, nic_vlans=PortVlans(1, (1,), (1, 10))) \
        .tap(TAP1, TAP1_MAC, "br-lan", vlans=PortVlans(20, (20,), (20,)))
    assert prepare(LAN_BRIDGE, host, *on_vlan(vlan="10")).actions == (
        AddPortVlan("eth1", 20), SetPortVlans(TAP1, ACCESS_10, PortVlans(20, (20,), (20,))))


def test_a_nic_that_comes_back_carries_the_vlans_of_the_bridges_taps_again():
    host = Host().nic("eth1").bridge("br-lan", alias=bridge_mark("lan"), vlan_filtering=True) \
        .tap(TAP1, TAP1_MAC, "br-lan", vlans=PortVlans(10, (10,), (10, 20)))
    config, inventory = make_config(LAN_BRIDGE), host.inventory()
    plan = plan_uplinks(resolve_affected(config, inventory, "eth1"), config, inventory)
    assert plan.actions == (SetMaster("eth1", "br-lan", None), AddPortVlan("eth1", 10),
                            AddPortVlan("eth1", 20))


def test_a_tap_put_back_on_its_bridge_is_down_until_it_has_its_vlans_again():
    """After its bridge was made again, a running guest's tap joins on the default VLAN:
    it carries no frame until it is on its own."""
    host = own_bridge(filtering=True).tap(TAP1, TAP1_MAC, None)
    config, inventory = make_config(LAN_BRIDGE), host.inventory()
    plan, replugs = plan_reconnect(domain(*on_vlan(vlan="10")),
                                   resolve_affected(config, inventory, "eth1"), config,
                                   inventory)
    assert plan.actions == (SetDown(TAP1), SetMaster(TAP1, "br-lan", None),
                            SetPortVlans(TAP1, ACCESS_10, DEFAULT_PORT_VLANS), SetUp(TAP1))
    assert replugs == ()


def test_a_bridge_with_another_default_vlan_is_read_as_such():
    host = Host().nic("eth1", master="br-lan", vlans=PortVlans(5, (5,), (5,))) \
        .bridge("br-lan", alias=bridge_mark("lan"), vlan_filtering=True, default_pvid=5)
    actions = prepare(LAN_BRIDGE, host, *on_vlan(vlan="10")).actions
    assert actions[-1] == SetPortVlans(TAP1, ACCESS_10, PortVlans(5, (5,), (5,)))


def test_release_keeps_the_vlans_the_host_itself_is_on():
    host = own_bridge(filtering=True, nic_vlans=PortVlans(1, (1,), (1, 10, 50))) \
        .tap(TAP1, TAP1_MAC, "br-lan", vlans=ACCESS_10)
    host.specs["br-lan"]["vlans"] = PortVlans(1, (1,), (1, 50))  # br-lan.50: the host's
    assert plan_release("web1", UUID, host.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"), DelPortVlan("eth1", 10))


def test_release_takes_back_the_vlans_no_guest_is_on_any_more():
    host = own_bridge(filtering=True, nic_vlans=PortVlans(1, (1,), (1, 10, 20))) \
        .tap(TAP1, TAP1_MAC, "br-lan", vlans=PortVlans(10, (10,), (10, 20))) \
        .tap(TAP2, "fe:54:00:6b:3c:02", "br-lan", uuid=OTHER_UUID,
             vlans=PortVlans(20, (20,), (20,)))
    assert plan_release("web1", UUID, host.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"), DelPortVlan("eth1", 10))


def test_release_leaves_the_vlans_of_a_bridge_kvmhooks_did_not_create():
    host = Host().nic("eth1", master="br-lan", vlans=PortVlans(1, (1,), (1, 10))) \
        .bridge("br-lan", vlan_filtering=True) \
        .tap(TAP1, TAP1_MAC, "br-lan", vlans=ACCESS_10)
    assert plan_release("web1", UUID, host.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"),)


def test_status_names_a_tap_on_the_wrong_vlans():
    host = own_bridge(filtering=True).tap(TAP1, TAP1_MAC, "br-lan",
                                          vlans=PortVlans(20, (20,), (20,)))
    (row,) = domain_status(domain(*on_vlan(vlan="10")), True, make_config(LAN_BRIDGE),
                           host.inventory())
    assert (row.state, row.reason) == (
        "stale", f"{TAP1} has VLANs PVID 20 untagged, metadata says PVID 10 untagged")


# --- type direct ------------------------------------------------------------------------

VLAN_DEV = "eth1.10"


def on_vlan_direct(mac: str = MAC1) -> tuple:
    return meta(mac, "direct", uplink="lan", vlan="10"), hook_owned(mac)


def test_a_macvtap_on_a_vlan_sits_on_the_nics_sub_interface():
    assert prepare(LAN, Host().nic("eth1"), *on_vlan_direct()).actions == (
        CreateVlan(VLAN_DEV, "eth1", 10, vlan_mark("lan"), MTU),
        CreateMacvtap(TAP1, MAC1, VLAN_DEV, "bridge", MARK, MTU),
    )


def test_a_sub_interface_someone_made_is_used_and_one_that_is_not_a_vlan_is_foreign():
    host = Host().nic("eth1").link(VLAN_DEV, "vlan", parent="eth1", vlan_id=10)
    assert prepare(LAN, host, *on_vlan_direct()).actions == (
        CreateMacvtap(TAP1, MAC1, VLAN_DEV, "bridge", MARK, MTU),)
    host = Host().nic("eth1").link(VLAN_DEV, "vlan", parent="eth1", vlan_id=11)
    with pytest.raises(ForeignDevice, match=f"device {VLAN_DEV}: exists and is not the VLAN "
                                            "10 sub-interface of eth1"):
        prepare(LAN, host, *on_vlan_direct())


def test_a_native_macvtap_on_a_vlan_has_the_sub_interface_as_its_source():
    plan = prepare(LAN, Host().nic("eth1"), meta(MAC1, "direct", uplink="lan", vlan="10"),
                   native_direct(MAC1, VLAN_DEV, "bridge"))
    assert plan.actions == (CreateVlan(VLAN_DEV, "eth1", 10, vlan_mark("lan"), MTU),)
    assert plan.sources == ()
    moved = prepare(LAN, Host().nic("eth1"), meta(MAC1, "direct", uplink="lan", vlan="10"),
                    native_direct(MAC1, "eth1", "bridge"))
    assert moved.sources[0].difference() == \
        f"source dev is 'eth1', this host's uplink device is '{VLAN_DEV}'"


def test_vlan_on_a_macvtap_needs_an_uplink_without_a_bridge():
    with pytest.raises(MetadataError, match="vlan on type 'direct' needs an uplink without a "
                                            "bridge"):
        prepare(LAN_BRIDGE, own_bridge(), *on_vlan_direct())


def test_a_sub_interface_name_longer_than_the_kernel_takes_is_refused():
    config = '[uplink.lan]\nnic = "ktnic12345678"\n'
    host = Host().nic("ktnic12345678")
    with pytest.raises(MetadataError, match="VLAN 10 sub-interface of NIC ktnic12345678: "
                                            ".*longer than 15 characters"):
        prepare(config, host, *on_vlan_direct())


def test_release_removes_the_sub_interface_with_its_last_macvtap():
    host = Host().nic("eth1").link(VLAN_DEV, "vlan", parent="eth1", vlan_id=10,
                                   alias=vlan_mark("lan")) \
        .macvtap(TAP1, MAC1, VLAN_DEV, "bridge")
    assert plan_release("web1", UUID, host.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"), DeleteLink(VLAN_DEV, "VLAN 10 has no guest left"))
    shared = host.macvtap(TAP2, MAC2, VLAN_DEV, "bridge", uuid=OTHER_UUID)
    assert plan_release("web1", UUID, shared.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"),)


def test_release_leaves_a_sub_interface_kvmhooks_did_not_make():
    host = Host().nic("eth1").link(VLAN_DEV, "vlan", parent="eth1", vlan_id=10) \
        .macvtap(TAP1, MAC1, VLAN_DEV, "bridge")
    assert plan_release("web1", UUID, host.inventory()).actions == (
        DeleteLink(TAP1, "guest web1 stopped"),)


def test_guest_marks_differ_from_vlan_marks():
    assert vlan_mark("lan") != guest_mark(UUID) and vlan_mark("lan").startswith("kvmhooks:")
