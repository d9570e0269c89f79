"""planner.plan_prepare / plan_repair / plan_release on hand-built hosts."""

from __future__ import annotations

import pytest

from kvmhooks.actions import (
    AddAddress,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    DelAddress,
    DeleteLink,
    MoveRoute,
    SetMaster,
    SetRouteMetric,
    SetUp,
)
from kvmhooks.errors import ForeignDevice, HostError, MetadataError, NotAllowed
from kvmhooks.inventory import Route
from kvmhooks.names import bridge_mark, guest_mark, shim_mark
from kvmhooks.planner import plan_prepare, plan_release, plan_repair
from kvmhooks.sources import BridgeSource, DirectSource, NetworkSource

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
    native_bridge,
    native_direct,
    native_network,
)

TAP1 = "kh5254006b3c01"  # hook_owned_name(MAC1)
TAP2 = "kh5254006b3c02"
TAP1_MAC = "fe:54:00:6b:3c:01"
MARK = guest_mark(UUID)
ADDRESS = "198.18.5.10/24"
DEFAULT = Route("default", 2, gateway="198.18.5.1")
OTHER_NET = Route("198.19.7.0/24", 2, gateway="198.18.5.254", priority=100)
LAN_SHIM = LAN + 'host_address = "198.18.5.2/24"\n'
LAN_BRIDGE_SHIM = LAN_BRIDGE + 'host_address = "198.18.5.2/24"\n'


def bridged_host() -> Host:
    """br-lan exists, marked, with eth1 enslaved: the shared part is already in place."""
    return Host().nic("eth1", master="br-lan").bridge("br-lan", alias=bridge_mark("lan"))


def tap_on_bridge() -> tuple:
    return meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1)


def prepare(config_text: str, host: Host, *parts, name: str = "web1"):
    return plan_prepare(domain(*parts, name=name), make_config(config_text), host.inventory())


# --- shared devices ---------------------------------------------------------------------

def test_new_bridge_takes_over_the_nic_and_its_addresses_and_routes():
    host = Host().nic("eth1", addresses=(ADDRESS,), routes=(DEFAULT, OTHER_NET))
    plan = prepare(LAN_BRIDGE, host, *tap_on_bridge())
    assert plan.actions == (
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan")),
        AddAddress("br-lan", ADDRESS),
        MoveRoute(DEFAULT, "eth1", "br-lan"),
        MoveRoute(OTHER_NET, "eth1", "br-lan"),
        SetMaster("eth1", "br-lan", None),
        DelAddress("eth1", ADDRESS),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK),
    )


def test_bridge_in_place_means_no_shared_action():
    assert prepare(LAN_BRIDGE, bridged_host(), *tap_on_bridge()).actions == (
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK),)


def test_existing_bridge_down_and_nic_down_are_set_up():
    host = Host().nic("eth1", master="br-lan", up=False).bridge("br-lan", up=False)
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == (
        SetUp("br-lan"), SetUp("eth1"), CreateTap(TAP1, TAP1_MAC, "br-lan", MARK))


def test_two_interfaces_on_one_uplink_share_the_bridge_steps():
    plan = prepare(LAN_BRIDGE, Host().nic("eth1"), *tap_on_bridge(),
                   meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.actions == (
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan")),
        SetMaster("eth1", "br-lan", None),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK),
        CreateMacvtap(TAP2, MAC2, "br-lan", "bridge", MARK),
    )


def test_name_that_is_not_a_bridge_is_foreign():
    host = Host().nic("eth1").link("br-lan", "veth")
    with pytest.raises(ForeignDevice, match="device br-lan: exists and is a veth device"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())


def test_nic_port_of_another_bridge_is_refused():
    host = Host().nic("eth1", master="br0").bridge("br0").bridge("br-lan")
    with pytest.raises(ForeignDevice, match="device eth1: is a port of br0"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())


def test_nic_port_of_a_bridge_cannot_carry_macvtap():
    host = Host().nic("eth1", master="br0").bridge("br0")
    with pytest.raises(HostError, match=r"NIC eth1 is a port of br0.*bridge = \"br0\""):
        prepare(LAN, host, meta(MAC1, "direct", uplink="lan"), hook_owned(MAC1))


def test_nic_with_macvtap_children_cannot_be_enslaved():
    host = Host().nic("eth1").link("macvtap7", "macvtap", parent="eth1", mode="bridge")
    with pytest.raises(HostError, match="NIC eth1 carries macvtap7"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())


def test_own_shim_on_the_nic_moves_to_the_new_bridge():
    # The uplink gained a bridge while its shim still sat on the NIC.
    host = Host().nic("eth1").link("kh-lan", "macvlan", parent="eth1", mode="bridge",
                                   alias=shim_mark("lan"), addresses=("198.18.5.2/24",))
    actions = prepare(LAN_BRIDGE_SHIM, host, *tap_on_bridge()).actions
    assert actions[0] == CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"))
    assert actions[1] == DeleteLink("kh-lan", "shim moves to the bridge")
    assert SetMaster("eth1", "br-lan", None) in actions
    shims = [a for a in actions if isinstance(a, CreateShim)]
    assert shims == [CreateShim("kh-lan", "br-lan", "198.18.5.2/24", shim_mark("lan"))]
    assert actions.index(DeleteLink("kh-lan", "shim moves to the bridge")) < \
        actions.index(SetMaster("eth1", "br-lan", None))


# --- the shim ---------------------------------------------------------------------------

@pytest.mark.parametrize("config_text, host, parent", [
    (LAN_SHIM, Host().nic("eth1"), "eth1"),
    (LAN_BRIDGE_SHIM, bridged_host(), "br-lan"),
])
def test_shim_created_on_the_lower_device(config_text, host, parent):
    plan = prepare(config_text, host, meta(MAC1, "direct", uplink="lan"), hook_owned(MAC1))
    assert plan.actions == (
        CreateShim("kh-lan", parent, "198.18.5.2/24", shim_mark("lan")),
        CreateMacvtap(TAP1, MAC1, parent, "bridge", MARK),
    )


def _shim_host(**fields) -> Host:
    spec = {"parent": "eth1", "mode": "bridge", "alias": shim_mark("lan"),
            "addresses": ("198.18.5.2/24",), **fields}
    return Host().nic("eth1").link("kh-lan", "macvlan", **spec)


@pytest.mark.parametrize("fields, expected", [
    ({}, ()),
    ({"addresses": ()}, (AddAddress("kh-lan", "198.18.5.2/24"),)),
    ({"up": False}, (SetUp("kh-lan"),)),
    ({"mode": "private"}, (DeleteLink("kh-lan", "shim of uplink 'lan' is not a bridge-mode "
                                      "macvlan on eth1"),
                           CreateShim("kh-lan", "eth1", "198.18.5.2/24", shim_mark("lan")))),
])
def test_existing_shim(fields, expected):
    plan = prepare(LAN_SHIM, _shim_host(**fields), meta(MAC1, "direct", uplink="lan"),
                   native_direct(MAC1, "eth1", "bridge"))
    assert plan.actions == expected


def test_unmarked_shim_is_foreign():
    with pytest.raises(ForeignDevice, match="device kh-lan: exists without kvmhooks' shim mark"):
        prepare(LAN_SHIM, _shim_host(alias=None), meta(MAC1, "direct", uplink="lan"),
                native_direct(MAC1, "eth1", "bridge"))


# --- hook-owned devices -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthrough"])
@pytest.mark.parametrize("config_text, host, parent", [
    (LAN, Host().nic("eth1"), "eth1"),
    (LAN_BRIDGE, bridged_host(), "br-lan"),
])
def test_hook_owned_direct_builds_a_macvtap(mode, config_text, host, parent):
    plan = prepare(config_text, host, meta(MAC1, "direct", uplink="lan", mode=mode),
                   hook_owned(MAC1))
    assert plan.actions == (CreateMacvtap(TAP1, MAC1, parent, mode, MARK),)
    assert plan.sources == ()


def test_correct_tap_is_reused():
    host = bridged_host().tap(TAP1, TAP1_MAC, "br-lan")
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == ()


def test_correct_macvtap_is_reused():
    host = Host().nic("eth1").macvtap(TAP1, MAC1, "eth1", "private")
    plan = prepare(LAN, host, meta(MAC1, "direct", uplink="lan", mode="private"),
                   hook_owned(MAC1))
    assert plan.actions == ()


@pytest.mark.parametrize("host", [
    bridged_host().tap(TAP1, TAP1_MAC, None),  # lost its bridge
    bridged_host().tap(TAP1, MAC1, "br-lan"),  # wrong MAC
    bridged_host().macvtap(TAP1, MAC1, "br-lan", "bridge"),  # wrong kind
])
def test_marked_but_wrong_device_is_rebuilt(host):
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == (
        DeleteLink(TAP1, "left from an earlier start, rebuilt"),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK),
    )


def test_unmarked_device_is_foreign():
    host = bridged_host().link(TAP1, "tun", mac=TAP1_MAC, master="br-lan")
    with pytest.raises(ForeignDevice, match=f"device {TAP1}: exists without kvmhooks' mark"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())


def test_device_of_another_domain_is_foreign():
    host = bridged_host().tap(TAP1, TAP1_MAC, "br-lan", uuid=OTHER_UUID)
    with pytest.raises(ForeignDevice, match=f"carries mark '{guest_mark(OTHER_UUID)}'"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())


def test_one_target_dev_for_two_interfaces_is_refused():
    with pytest.raises(MetadataError, match=f"domain web1 interface {MAC2}: target dev"):
        prepare(LAN_BRIDGE, bridged_host(), *tap_on_bridge(),
                meta(MAC2, "bridge", uplink="lan"), hook_owned(MAC2, dev=TAP1))


# --- bad metadata for this config -------------------------------------------------------

def test_type_bridge_needs_an_uplink_with_a_bridge():
    with pytest.raises(MetadataError) as caught:
        prepare(LAN, Host().nic("eth1"), *tap_on_bridge())
    assert str(caught.value).startswith(f"domain web1 interface {MAC1}: type 'bridge' needs")


def test_allowlist_refusal():
    with pytest.raises(NotAllowed, match="domain mail: may not use uplink 'lan'"):
        prepare(LAN_BRIDGE + 'domains = ["web*"]\n', bridged_host(), *tap_on_bridge(),
                name="mail")


def test_allowlist_match():
    plan = prepare(LAN_BRIDGE + 'domains = ["web*"]\n', bridged_host(), *tap_on_bridge())
    assert len(plan.actions) == 1


def test_unknown_uplink():
    with pytest.raises(MetadataError, match=f"interface {MAC1}: unknown uplink 'wan'"):
        prepare(LAN_BRIDGE, bridged_host(), meta(MAC1, "bridge", uplink="wan"),
                hook_owned(MAC1))


# --- native sources ---------------------------------------------------------------------

@pytest.mark.parametrize("config_text, entry, device, wanted", [
    (LAN_BRIDGE, meta(MAC1, "bridge", uplink="lan"), native_bridge(MAC1, "br0"),
     BridgeSource("br-lan")),
    (LAN, meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "ens32", "bridge"),
     DirectSource("eth1", "bridge")),
    (LAN_BRIDGE, meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "eth1", "bridge"),
     DirectSource("br-lan", "bridge")),
    (LAN, meta(MAC1, "direct", uplink="lan", mode="private"),
     native_direct(MAC1, "eth1", "bridge"), DirectSource("eth1", "private")),
    (LAN, meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "eth1"),  # libvirt: vepa
     DirectSource("eth1", "bridge")),
    (LAN_BRIDGE, meta(MAC1, "direct", uplink="lan"), native_bridge(MAC1, "br-lan"),
     DirectSource("br-lan", "bridge")),
    (LAN_BRIDGE, meta(MAC1, "bridge", uplink="lan"), native_direct(MAC1, "br-lan", "bridge"),
     BridgeSource("br-lan")),
    (LAN, meta(MAC1, "network", network="lan-net"), native_network(MAC1, "default"),
     NetworkSource("lan-net")),
    (LAN, meta(MAC1, "network", network="lan-net"), native_bridge(MAC1, "virbr0"),
     NetworkSource("lan-net")),
])
def test_native_source_that_differs_is_planned(config_text, entry, device, wanted):
    host = bridged_host() if "bridge =" in config_text else Host().nic("eth1")
    plan = prepare(config_text, host, entry, device)
    assert [(change.mac, change.wanted) for change in plan.sources] == [(MAC1, wanted)]
    assert plan.actions == ()


@pytest.mark.parametrize("config_text, entry, device", [
    (LAN_BRIDGE, meta(MAC1, "bridge", uplink="lan"), native_bridge(MAC1, "br-lan")),
    (LAN, meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "eth1", "bridge")),
    (LAN, meta(MAC1, "direct", uplink="lan", mode="vepa"), native_direct(MAC1, "eth1")),
    (LAN_BRIDGE, meta(MAC1, "direct", uplink="lan", mode="passthrough"),
     native_direct(MAC1, "br-lan", "passthrough")),
    (LAN, meta(MAC1, "network", network="default"), native_network(MAC1, "default")),
])
def test_native_source_that_agrees_is_not_planned(config_text, entry, device):
    host = bridged_host() if "bridge =" in config_text else Host().nic("eth1")
    assert prepare(config_text, host, entry, device).sources == ()


def test_native_bridge_gets_its_bridge_built():
    plan = prepare(LAN_BRIDGE, Host().nic("eth1"), meta(MAC1, "bridge", uplink="lan"),
                   native_bridge(MAC1, "br-lan"))
    assert plan.actions == (CreateBridge("br-lan", NIC_MAC, bridge_mark("lan")),
                            SetMaster("eth1", "br-lan", None))


# --- repair and release -----------------------------------------------------------------

def repair(host: Host, *parts):
    return plan_repair(domain(*parts), make_config(LAN_BRIDGE), host.inventory())


def test_repair_reenslaves_a_tap_that_lost_its_bridge():
    assert repair(bridged_host().tap(TAP1, TAP1_MAC, None), *tap_on_bridge()).actions == (
        SetMaster(TAP1, "br-lan", None),)


def test_repair_moves_a_tap_from_another_bridge():
    host = bridged_host().bridge("br0").tap(TAP1, TAP1_MAC, "br0")
    assert repair(host, *tap_on_bridge()).actions == (SetMaster(TAP1, "br-lan", "br0"),)


def test_repair_reenslaves_a_returned_nic_and_the_tap():
    host = Host().nic("eth1").bridge("br-lan").tap(TAP1, TAP1_MAC, None)
    assert repair(host, *tap_on_bridge()).actions == (
        SetMaster("eth1", "br-lan", None), SetMaster(TAP1, "br-lan", None))


def test_repair_never_deletes_guest_devices():
    host = (bridged_host().tap(TAP1, MAC1, "br-lan")  # wrong MAC: prepare would rebuild
            .macvtap(TAP2, MAC2, "eth1", "vepa"))  # wrong parent and mode
    plan = repair(host, *tap_on_bridge(), meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.actions == ()


def test_repair_leaves_unmarked_taps_alone():
    host = bridged_host().link(TAP1, "tun", mac=TAP1_MAC)
    assert repair(host, *tap_on_bridge()).actions == ()


def test_release_deletes_exactly_this_guests_devices():
    host = (bridged_host().link("kh-lan", "macvlan", parent="br-lan", alias=shim_mark("lan"))
            .tap(TAP1, TAP1_MAC, "br-lan").macvtap(TAP2, MAC2, "br-lan", "bridge")
            .tap("kh5254006b3c09", "fe:54:00:6b:3c:09", "br-lan", uuid=OTHER_UUID)
            .link("vnet0", "tun", master="br-lan")
            .link("kh5254006b3c0a", "tun", alias=guest_mark(UUID) + "x"))
    plan = plan_release("web1", UUID, host.inventory())
    assert plan.actions == (DeleteLink(TAP1, "guest web1 stopped"),
                            DeleteLink(TAP2, "guest web1 stopped"))


def test_release_with_nothing_marked_is_empty():
    assert plan_release("web1", UUID, bridged_host().inventory()).actions == ()


# --- the shim's subnet goes through the shim ----------------------------------------------

PREFIX_ROUTE = Route("198.18.5.0/24", 2, source="198.18.5.1")


def test_lower_route_for_the_shims_subnet_is_demoted():
    host = Host().nic("eth1", addresses=("198.18.5.1/24",), prefix_routes=(PREFIX_ROUTE,))
    actions = prepare(LAN_SHIM, host, meta(MAC1, "direct", uplink="lan"),
                      hook_owned(MAC1)).actions
    assert SetRouteMetric(PREFIX_ROUTE, "eth1", 1024) in actions
    assert actions.index(SetRouteMetric(PREFIX_ROUTE, "eth1", 1024)) > \
        next(i for i, a in enumerate(actions) if isinstance(a, CreateShim))


def test_route_the_plan_moves_to_a_new_bridge_is_demoted_there():
    host = Host().nic("eth1", addresses=("198.18.5.1/24",), prefix_routes=(PREFIX_ROUTE,))
    actions = prepare(LAN_BRIDGE_SHIM, host, *tap_on_bridge()).actions
    assert SetRouteMetric(PREFIX_ROUTE, "br-lan", 1024) in actions


@pytest.mark.parametrize("host", [
    Host().nic("eth1", addresses=("198.18.5.1/24",),
               prefix_routes=(Route("198.18.5.0/24", 2, priority=1024, source="198.18.5.1"),)),
    Host().nic("eth1", addresses=("198.18.9.1/24",),
               prefix_routes=(Route("198.18.9.0/24", 2, source="198.18.9.1"),)),
    Host().nic("eth1"),
], ids=["already-demoted", "another-subnet", "no-address"])
def test_no_route_change_when_nothing_competes(host):
    actions = prepare(LAN_SHIM, host, meta(MAC1, "direct", uplink="lan"),
                      hook_owned(MAC1)).actions
    assert not [a for a in actions if isinstance(a, SetRouteMetric)]


def test_route_metric_undo_restores_the_kernels_metric():
    step = SetRouteMetric(PREFIX_ROUTE, "eth1", 1024)
    assert step.undo() == SetRouteMetric(Route("198.18.5.0/24", 2, priority=1024,
                                               source="198.18.5.1"), "eth1", 0)


# --- a NIC that is away ------------------------------------------------------------------

def test_guests_go_on_the_bridge_while_its_nic_is_away():
    host = Host().bridge("br-lan", alias=bridge_mark("lan"))
    plan = prepare(LAN_BRIDGE, host, *tap_on_bridge(),
                   meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.resolutions[0].nic is None
    assert [type(a) for a in plan.actions] == [CreateTap, CreateMacvtap]
    assert plan.actions[1].parent == "br-lan"


def test_a_nic_never_seen_still_refuses_the_start():
    from kvmhooks.errors import NicAbsent
    with pytest.raises(NicAbsent, match="uplink 'lan': no NIC on this host matches"):
        prepare(LAN_BRIDGE, Host(), *tap_on_bridge())
    with pytest.raises(NicAbsent):
        prepare(LAN, Host(), meta(MAC1, "direct", uplink="lan"), hook_owned(MAC1))
