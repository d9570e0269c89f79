"""planner.plan_prepare / plan_repair / plan_release on hand-built hosts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvmhooks.actions import (
    AddAddress,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    DelAddress,
    DeleteLink,
    DelRoute,
    MarkLink,
    MoveRoute,
    SetMaster,
    SetMtu,
    SetRouteMetric,
    SetUp,
)
from kvmhooks.devices import shim_address, shim_mac
from kvmhooks.errors import ForeignDevice, HostError, LeaseOnNic, MetadataError, NotAllowed
from kvmhooks.inventory import (
    IFA_F_NOPREFIXROUTE,
    RT_SCOPE_LINK,
    RTPROT_KERNEL,
    Address,
    Route,
    with_creating_marks,
)
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
SHIM_MAC = shim_mac("lan", NIC_MAC)
SHIM_ADDRESS = shim_address("198.18.5.2/24")
MTU = 1500  # what every hand-made link has, unless a test says otherwise


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
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), MTU),
        AddAddress("br-lan", Address(ADDRESS)),
        MoveRoute(DEFAULT, "eth1", "br-lan"),
        MoveRoute(OTHER_NET, "eth1", "br-lan"),
        SetMaster("eth1", "br-lan", None),
        DelAddress("eth1", Address(ADDRESS)),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
    )


def test_bridge_in_place_means_no_shared_action():
    assert prepare(LAN_BRIDGE, bridged_host(), *tap_on_bridge()).actions == (
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),)


def test_existing_bridge_down_and_nic_down_are_set_up():
    host = Host().nic("eth1", master="br-lan", up=False).bridge("br-lan", up=False)
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == (
        SetUp("br-lan"), SetUp("eth1"), CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU))


def test_two_interfaces_on_one_uplink_share_the_bridge_steps():
    plan = prepare(LAN_BRIDGE, Host().nic("eth1"), *tap_on_bridge(),
                   meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.actions == (
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), MTU),
        SetMaster("eth1", "br-lan", None),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
        CreateMacvtap(TAP2, MAC2, "br-lan", "bridge", MARK, MTU),
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
    assert actions[0] == CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), MTU)
    assert actions[1] == DeleteLink("kh-lan", "shim moves to the bridge")
    assert SetMaster("eth1", "br-lan", None) in actions
    shims = [a for a in actions if isinstance(a, CreateShim)]
    assert shims == [CreateShim("kh-lan", "br-lan", (SHIM_ADDRESS,), shim_mark("lan"),
                                SHIM_MAC, MTU)]
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
        CreateShim("kh-lan", parent, (SHIM_ADDRESS,), shim_mark("lan"), SHIM_MAC, MTU),
        CreateMacvtap(TAP1, MAC1, parent, "bridge", MARK, MTU),
    )


def _shim_host(**fields) -> Host:
    spec = {"parent": "eth1", "mode": "bridge", "alias": shim_mark("lan"),
            "addresses": ("198.18.5.2/24",), "mac": SHIM_MAC, **fields}
    return Host().nic("eth1").link("kh-lan", "macvlan", **spec)


@pytest.mark.parametrize("fields, expected", [
    ({}, ()),
    ({"addresses": ()}, (AddAddress("kh-lan", SHIM_ADDRESS),)),
    ({"up": False}, (SetUp("kh-lan"),)),
    ({"mode": "private"}, (DeleteLink("kh-lan", "shim of uplink 'lan' is not a bridge-mode "
                                      "macvlan on eth1"),
                           CreateShim("kh-lan", "eth1", (SHIM_ADDRESS,), shim_mark("lan"),
                                      SHIM_MAC, MTU))),
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

@pytest.mark.parametrize("mode, config_text, host, parent", [
    (mode, *uplink) for mode in ("bridge", "private", "vepa", "passthrough")
    for uplink in ((LAN, Host().nic("eth1"), "eth1"), (LAN_BRIDGE, bridged_host(), "br-lan"))
    if not (mode == "passthrough" and uplink[0] == LAN_BRIDGE)  # refused, see below
])
def test_hook_owned_direct_builds_a_macvtap(mode, config_text, host, parent):
    plan = prepare(config_text, host, meta(MAC1, "direct", uplink="lan", mode=mode),
                   hook_owned(MAC1))
    assert plan.actions == (CreateMacvtap(TAP1, MAC1, parent, mode, MARK, MTU),)
    assert plan.sources == ()


@pytest.mark.parametrize("device", [hook_owned(MAC1),
                                    native_direct(MAC1, "br-lan", "passthrough")],
                         ids=["hook-owned", "native"])
def test_passthrough_needs_an_uplink_without_a_bridge(device):
    """A passthrough macvtap on the bridge would take the host's own address (on the
    bridge) off the network (DESIGN section 4)."""
    with pytest.raises(MetadataError) as refused:
        prepare(LAN_BRIDGE, bridged_host(),
                meta(MAC1, "direct", uplink="lan", mode="passthrough"), device)
    assert str(refused.value).startswith(
        f"domain web1 interface {MAC1}: mode 'passthrough' needs an uplink without a "
        "bridge: uplink 'lan' has bridge br-lan")


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
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),
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
    (LAN, meta(MAC1, "direct", uplink="lan", mode="passthrough"),
     native_direct(MAC1, "eth1", "passthrough")),
    (LAN, meta(MAC1, "network", network="default"), native_network(MAC1, "default")),
])
def test_native_source_that_agrees_is_not_planned(config_text, entry, device):
    host = bridged_host() if "bridge =" in config_text else Host().nic("eth1")
    assert prepare(config_text, host, entry, device).sources == ()


def test_native_bridge_gets_its_bridge_built():
    plan = prepare(LAN_BRIDGE, Host().nic("eth1"), meta(MAC1, "bridge", uplink="lan"),
                   native_bridge(MAC1, "br-lan"))
    assert plan.actions == (CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), MTU),
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

# The kernel's prefix route for 198.18.5.1/24, as netlink.py reads it.
PREFIX_ROUTE = Route("198.18.5.0/24", 2, source="198.18.5.1", protocol=2, scope=253)


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
    assert step.undo() == SetRouteMetric(replace(PREFIX_ROUTE, priority=1024), "eth1", 0)


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


# --- enslaving converges from every state its own steps leave -------------------------

V6 = Address("2001:2:0:5::10/64", flags=0x300, valid=4000, preferred=3000)  # mngtmpaddr,
# noprefixroute
ONLINK = Route("198.19.9.0/24", 2, gateway="198.19.200.1", priority=50, protocol=16,
               flags=0x4)


def test_moved_addresses_and_routes_keep_their_properties():
    address = Address(ADDRESS, metric=100, broadcast="198.18.5.255", label=":1")
    host = Host().nic("eth1", addresses=(address, V6), routes=(ONLINK,))
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions[1:6] == (
        AddAddress("br-lan", address), AddAddress("br-lan", V6),
        MoveRoute(ONLINK, "eth1", "br-lan"), SetMaster("eth1", "br-lan", None),
        DelAddress("eth1", V6))


def test_routes_through_a_gateway_move_after_the_route_that_reaches_it():
    """NetworkManager's static address: a noprefixroute address, and the prefix route NM
    adds itself (protocol kernel), which the kernel lists after the default route."""
    static = Address(ADDRESS, flags=IFA_F_NOPREFIXROUTE)
    own_prefix = Route("198.18.5.0/24", 2, priority=100, source="198.18.5.10",
                       protocol=RTPROT_KERNEL, scope=RT_SCOPE_LINK)
    default = Route("default", 2, gateway="198.18.5.1", priority=100, protocol=16)
    host = Host().nic("eth1", addresses=(static,), routes=(default, own_prefix))
    moves = [action for action in prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions
             if isinstance(action, MoveRoute)]
    assert moves == [MoveRoute(own_prefix, "eth1", "br-lan"),
                     MoveRoute(default, "eth1", "br-lan")]


def test_a_nic_holding_a_dhcp_lease_is_not_enslaved():
    """An IPv4 address with an end is a DHCP client's lease: on the bridge nothing would
    renew it. IPv6 addresses with lifetimes (SLAAC) move."""
    lease = Address(ADDRESS, flags=IFA_F_NOPREFIXROUTE, valid=3000, preferred=3000)
    host = Host().nic("eth1", addresses=(V6, lease), routes=(DEFAULT,))
    with pytest.raises(LeaseOnNic, match=r"^uplink 'lan': NIC eth1 holds the DHCP lease "
                       r"198\.18\.5\.10/24 \(valid 3000 s, preferred 3000 s\); its DHCP "
                       r"client cannot renew it once eth1 is a port of br-lan"):
        prepare(LAN_BRIDGE, host, *tap_on_bridge())
    assert AddAddress("br-lan", V6) in prepare(
        LAN_BRIDGE, Host().nic("eth1", addresses=(V6,)), *tap_on_bridge()).actions


def test_a_nic_that_returns_holding_the_bridges_address_only_gives_it_up():
    """NetworkManager re-applied the NIC's address after a driver reload; or a kill came
    between the routes and the enslaving."""
    host = Host().nic("eth1", addresses=(ADDRESS,)).bridge(
        "br-lan", alias=bridge_mark("lan"), addresses=(ADDRESS,), routes=(DEFAULT,))
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == (
        SetMaster("eth1", "br-lan", None), DelAddress("eth1", Address(ADDRESS)),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU))


def test_an_enslaved_nic_that_still_holds_addresses_gives_them_to_the_bridge():
    """A kill came between the enslaving and the removal of the NIC's addresses, or a
    network manager put an address back on the port."""
    host = bridged_host().nic("eth1", master="br-lan", addresses=(ADDRESS, V6),
                              routes=(ONLINK,))
    host.specs["br-lan"]["addresses"] = (Address(ADDRESS),)
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions == (
        AddAddress("br-lan", V6), MoveRoute(ONLINK, "eth1", "br-lan"),
        DelAddress("eth1", V6), DelAddress("eth1", Address(ADDRESS)),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU))


def test_secondary_addresses_are_removed_before_their_primary():
    """The kernel removes an IPv4 primary's secondaries with it (promote_secondaries
    off); the undo adds the primary back first."""
    secondary = Address("198.18.5.11/24", flags=0x1)
    host = Host().nic("eth1", addresses=(ADDRESS, secondary))
    actions = prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions
    assert [a for a in actions if isinstance(a, DelAddress)] == [
        DelAddress("eth1", secondary), DelAddress("eth1", Address(ADDRESS))]


def test_temporary_addresses_move_and_go_first():
    """The kernel removes a mngtmpaddr address's temporary addresses with it: they are
    removed from the NIC before it (and moved, with their lifetimes, before that)."""
    temporary = Address("2001:2:0:5:1234:5678:9abc:def0/64", flags=0x1, valid=3000,
                        preferred=1000)
    host = Host().nic("eth1", addresses=(temporary, V6))
    actions = prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions
    assert [a for a in actions if isinstance(a, (AddAddress, DelAddress))] == [
        AddAddress("br-lan", temporary), AddAddress("br-lan", V6),
        DelAddress("eth1", temporary), DelAddress("eth1", V6)]


DYNAMIC6 = Address("2001:2:0:5::10/64", valid=4000, preferred=3000)
DYNAMIC6_ROUTE = Route("2001:2:0:5::/64", 10, priority=256, protocol=2, expires=3999)


def test_a_route_the_bridge_has_already_only_leaves_the_nic():
    """A kill came between the address and its left-behind route, or a network manager
    put the bridge's route on the NIC as well."""
    host = bridged_host().nic("eth1", master="br-lan", routes=(DYNAMIC6_ROUTE, DEFAULT))
    host.specs["br-lan"].update(addresses=(DYNAMIC6,), prefix_routes=(DYNAMIC6_ROUTE,))
    assert prepare(LAN_BRIDGE, host, *tap_on_bridge()).actions[:2] == (
        DelRoute(DYNAMIC6_ROUTE, "eth1"), MoveRoute(DEFAULT, "eth1", "br-lan"))


@pytest.mark.parametrize("name, host", [
    ("br-lan", Host().nic("eth1", master="br-lan").bridge("br-lan", up=False)),
    ("kh-lan", bridged_host().link("kh-lan", "macvlan", parent="br-lan", mode="bridge",
                                   mac=SHIM_MAC, addresses=("198.18.5.2/24",))),
    (TAP1, bridged_host().link(TAP1, "tun", mac=TAP1_MAC, master="br-lan")),
], ids=["bridge", "shim", "tap"])
def test_a_device_a_kill_left_without_its_mark_gets_it(name, host):
    """Killed between creating it and marking it: the creation journal claims it, the
    next plan marks it."""
    marks = {"br-lan": bridge_mark("lan"), "kh-lan": shim_mark("lan"), TAP1: MARK}
    inventory = with_creating_marks(host.inventory(), {name: marks[name]})
    plan = plan_prepare(domain(*tap_on_bridge()), make_config(LAN_BRIDGE_SHIM), inventory)
    assert MarkLink(name, marks[name]) in plan.actions
    assert not [a for a in plan.actions if isinstance(a, (CreateTap, CreateShim,
                                                          CreateBridge, DeleteLink))
                and a.name == name], "kept, not rebuilt"


def test_a_route_a_kill_left_with_both_metrics_keeps_the_shims_preference():
    """Killed between adding the demoted route and removing the old one."""
    demoted = replace(PREFIX_ROUTE, priority=1024)
    host = Host().nic("eth1", addresses=("198.18.5.1/24",),
                      prefix_routes=(PREFIX_ROUTE, demoted))
    actions = prepare(LAN_SHIM, host, meta(MAC1, "direct", uplink="lan"),
                      hook_owned(MAC1)).actions
    assert DelRoute(PREFIX_ROUTE, "eth1") in actions
    assert not [a for a in actions if isinstance(a, SetRouteMetric)]


# --- MTU --------------------------------------------------------------------------------

def test_devices_take_their_lower_devices_mtu():
    """A new bridge takes its NIC's MTU and a tap its bridge's: a bridge takes the
    smallest MTU of its ports, so a tap made at 1500 would drag a jumbo bridge down."""
    host = Host().nic("eth1", mtu=9000)
    plan = prepare(LAN_BRIDGE_SHIM, host, *tap_on_bridge(),
                   meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.actions[0] == CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), 9000)
    assert CreateShim("kh-lan", "br-lan", (SHIM_ADDRESS,), shim_mark("lan"), SHIM_MAC,
                      9000) in plan.actions
    assert plan.actions[-2:] == (CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, 9000),
                                 CreateMacvtap(TAP2, MAC2, "br-lan", "bridge", MARK, 9000))


def test_uplink_mtu_sets_the_nic_the_bridge_and_everything_on_them():
    host = bridged_host().link("kh-lan", "macvlan", parent="br-lan", mode="bridge",
                               alias=shim_mark("lan"), mac=SHIM_MAC,
                               addresses=("198.18.5.2/24",)).tap(TAP1, TAP1_MAC, "br-lan")
    plan = prepare(LAN_BRIDGE_SHIM + "mtu = 9000\n", host, *tap_on_bridge(),
                   meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2))
    assert plan.actions == (
        SetMtu("eth1", 9000, 1500), SetMtu("br-lan", 9000, 1500),
        SetMtu("kh-lan", 9000, 1500), SetMtu(TAP1, 9000, 1500),
        CreateMacvtap(TAP2, MAC2, "br-lan", "bridge", MARK, 9000))


# --- the shim's MAC ---------------------------------------------------------------------

def test_the_shims_mac_is_stable_local_unicast_and_its_own():
    assert shim_mac("lan", NIC_MAC) == SHIM_MAC
    assert int(SHIM_MAC[:2], 16) & 0x3 == 0x2
    assert len({SHIM_MAC, shim_mac("wan", NIC_MAC), shim_mac("lan", "02:00:00:00:00:99")}) == 3


def test_the_shim_is_named_by_the_nics_permanent_mac():
    host = Host().nic("eth1", mac="02:aa:00:00:00:01", permanent_mac=NIC_MAC)
    actions = prepare(LAN_SHIM, host, meta(MAC1, "direct", uplink="lan"),
                      hook_owned(MAC1)).actions
    assert actions[0].mac == SHIM_MAC


def test_a_shim_with_another_mac_is_rebuilt():
    """Made by an earlier kvmhooks with a random MAC: rebuilt with its own, and
    announced."""
    actions = prepare(LAN_SHIM, _shim_host(mac="02:00:00:00:00:42"),
                      meta(MAC1, "direct", uplink="lan"), native_direct(MAC1, "eth1", "bridge"))
    assert actions.actions == (
        DeleteLink("kh-lan", f"shim of uplink 'lan' has MAC 02:00:00:00:00:42, not its own "
                             f"{SHIM_MAC}"),
        CreateShim("kh-lan", "eth1", (SHIM_ADDRESS,), shim_mark("lan"), SHIM_MAC, MTU))


def _away_host(bridge_mac: str) -> Host:
    """The NIC is away; the bridge (of another MAC than its NIC's, as a bridge kvmhooks
    did not create may have) and the shim built while the NIC was there stay."""
    return Host().bridge("br-lan", mac=bridge_mac, alias=bridge_mark("lan")).link(
        "kh-lan", "macvlan", parent="br-lan", mode="bridge", alias=shim_mark("lan"),
        addresses=("198.18.5.2/24",), mac=SHIM_MAC)


def test_a_shim_keeps_its_mac_while_its_nic_is_away():
    """Not rebuilt twice per NIC flap: the bridge's MAC says nothing of the NIC's."""
    plan = prepare(LAN_BRIDGE_SHIM, _away_host("02:00:00:00:00:77"), *tap_on_bridge())
    assert plan.resolutions[0].nic is None
    assert plan.actions == (CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU),)


def test_a_shim_built_while_its_nic_is_away_is_named_by_the_bridges_mac():
    host = Host().bridge("br-lan", alias=bridge_mark("lan"))
    plan = prepare(LAN_BRIDGE_SHIM, host, *tap_on_bridge())
    assert plan.actions[0] == CreateShim("kh-lan", "br-lan", (SHIM_ADDRESS,), shim_mark("lan"),
                                         SHIM_MAC, MTU)


def test_an_ipv6_shim_address_skips_duplicate_address_detection():
    assert shim_address("2001:2::5/64").flags == 0x2 and shim_address("198.18.5.2/24").flags == 0


# --- multi-queue taps -------------------------------------------------------------------

def multi_queue_tap(queues: str = "4") -> str:
    """The hook-owned form of MAC1 with <driver queues=...>."""
    return hook_owned(MAC1).replace('<model type="virtio"/>',
                                    f'<model type="virtio"/>\n      <driver queues="{queues}"/>')


def test_a_tap_for_several_queues_is_made_multi_queue():
    plan = prepare(LAN_BRIDGE, bridged_host(), meta(MAC1, "bridge", uplink="lan"),
                   multi_queue_tap())
    assert plan.actions == (CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU, True),)
    assert plan.actions[0].describe().endswith(", multi-queue")


def test_one_queue_is_a_plain_tap():
    plan = prepare(LAN_BRIDGE, bridged_host(), meta(MAC1, "bridge", uplink="lan"),
                   multi_queue_tap("1"))
    assert plan.actions == (CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU, False),)


@pytest.mark.parametrize("made_multi_queue, queues", [(False, "4"), (True, "1")])
def test_a_left_tap_with_the_other_queue_flag_is_rebuilt(made_multi_queue, queues):
    # qemu cannot open a persistent tap with another queue flag than it was made with.
    host = bridged_host().tap(TAP1, TAP1_MAC, "br-lan", multi_queue=made_multi_queue)
    plan = prepare(LAN_BRIDGE, host, meta(MAC1, "bridge", uplink="lan"),
                   multi_queue_tap(queues))
    assert plan.actions == (
        DeleteLink(TAP1, "left from an earlier start, rebuilt"),
        CreateTap(TAP1, TAP1_MAC, "br-lan", MARK, MTU, queues != "1"),
    )


def test_a_left_tap_whose_queue_flag_is_unknown_is_kept():
    host = bridged_host().tap(TAP1, TAP1_MAC, "br-lan")
    plan = prepare(LAN_BRIDGE, host, meta(MAC1, "bridge", uplink="lan"), multi_queue_tap())
    assert plan.actions == ()


def test_queues_that_are_not_a_number_are_refused():
    with pytest.raises(MetadataError, match=r"domain web1 .*52:54:00:6b:3c:01.*"
                                            r"<driver queues='four'> is not a positive number"):
        prepare(LAN_BRIDGE, bridged_host(), meta(MAC1, "bridge", uplink="lan"),
                multi_queue_tap("four"))


# --- a dual-stack shim ------------------------------------------------------------------

LAN_DUAL_STACK = LAN + 'host_address = ["198.18.5.2/24", "2001:db8:5::2/64"]\n'
SHIM_ADDRESS6 = shim_address("2001:db8:5::2/64")
# The kernel's prefix route for 2001:db8:5::1/64 on the NIC, as netlink.py reads it.
PREFIX_ROUTE6 = Route("2001:db8:5::/64", 10, priority=256, protocol=2, scope=0)


def test_a_dual_stack_shim_carries_both_addresses():
    plan = prepare(LAN_DUAL_STACK, Host().nic("eth1"), meta(MAC1, "direct", uplink="lan"),
                   hook_owned(MAC1))
    assert plan.actions[0] == CreateShim("kh-lan", "eth1", (SHIM_ADDRESS, SHIM_ADDRESS6),
                                         shim_mark("lan"), SHIM_MAC, MTU)
    assert plan.actions[0].describe() == (
        f"create shim kh-lan (macvlan bridge mode) on eth1 with MAC {SHIM_MAC} and "
        f"198.18.5.2/24, 2001:db8:5::2/64, MTU {MTU}, announced")


def test_a_shim_gains_the_ipv6_address_the_config_added():
    plan = prepare(LAN_DUAL_STACK, _shim_host(), meta(MAC1, "direct", uplink="lan"),
                   native_direct(MAC1, "eth1", "bridge"))
    assert plan.actions == (AddAddress("kh-lan", SHIM_ADDRESS6),)


def test_the_lower_devices_ipv6_route_for_the_shims_prefix_is_demoted():
    host = Host().nic("eth1", addresses=("198.18.5.1/24", "2001:db8:5::1/64"),
                      prefix_routes=(PREFIX_ROUTE, PREFIX_ROUTE6))
    actions = prepare(LAN_DUAL_STACK, host, meta(MAC1, "direct", uplink="lan"),
                      hook_owned(MAC1)).actions
    assert SetRouteMetric(PREFIX_ROUTE, "eth1", 1024) in actions
    assert SetRouteMetric(PREFIX_ROUTE6, "eth1", 1024 + 256) in actions


def test_an_ipv6_prefix_the_plan_moves_to_a_new_bridge_is_demoted_there():
    host = Host().nic("eth1", addresses=("2001:db8:5::1/64",), prefix_routes=(PREFIX_ROUTE6,))
    actions = prepare(LAN_BRIDGE + 'host_address = "2001:db8:5::2/64"\n', host,
                      *tap_on_bridge()).actions
    assert SetRouteMetric(PREFIX_ROUTE6, "br-lan", 1024 + 256) in actions
