"""NIC events: resolve.resolve_affected, planner.plan_uplinks / plan_reconnect, names.is_candidate
and the argument forms of `kvmhooks nic-event` that are refused before any host work."""

from __future__ import annotations

import logging

import pytest

from kvmhooks import cli
from kvmhooks.actions import (
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    DeleteLink,
    SetMaster,
    SetUp,
)
from kvmhooks.devices import shim_address, shim_mac
from kvmhooks.errors import NotAllowed
from kvmhooks.names import bridge_mark, guest_mark, is_candidate, shim_mark
from kvmhooks.planner import Replug, plan_reconnect, plan_uplinks
from kvmhooks.resolve import Resolution, resolve_affected
from kvmhooks.sources import DirectSource

from .builders import (
    LAN,
    LAN_BRIDGE,
    MAC1,
    MAC2,
    MAC3,
    NIC_MAC,
    UUID,
    Host,
    domain,
    hook_owned,
    interface,
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
WAN_MAC = "02:00:c6:12:05:02"
LAN_BY_MAC = f'[uplink.lan]\nmac = "{NIC_MAC}"\n'
WAN = '[uplink.wan]\nnic = "eth2"\n'


def bridged_host() -> Host:
    return Host().nic("eth1", master="br-lan").bridge("br-lan", alias=bridge_mark("lan"))


# --- resolve_affected -------------------------------------------------------------------

def test_affected_by_nic_name():
    config = make_config(LAN_BRIDGE + WAN)
    inventory = Host().nic("eth1").nic("eth2", mac=WAN_MAC).inventory()
    assert resolve_affected(config, inventory, "eth1") == [Resolution("lan", "eth1", "br-lan")]
    assert resolve_affected(config, inventory, "eth2") == [Resolution("wan", "eth2", None)]


def test_affected_by_mac_after_a_rename():
    config = make_config(LAN_BY_MAC + WAN)
    inventory = Host().nic("ens5").nic("eth2", mac=WAN_MAC).inventory()
    assert resolve_affected(config, inventory, "ens5") == [Resolution("lan", "ens5", None)]


def test_affected_by_path():
    config = make_config('[uplink.lan]\npath = "pci-0000:03:00.0"\n')
    inventory = Host().nic("enp3s0", id_path="pci-0000:03:00.0").inventory()
    assert resolve_affected(config, inventory, "enp3s0") == [Resolution("lan", "enp3s0", None)]


def test_uplinks_on_other_nics_are_not_affected():
    config = make_config(LAN_BRIDGE + WAN)
    inventory = Host().nic("eth1").nic("eth2", mac=WAN_MAC).nic("eth3", mac=MAC3).inventory()
    assert resolve_affected(config, inventory, "eth3") == []


def test_absent_nic_is_no_error():
    config = make_config(LAN_BY_MAC + WAN)
    inventory = Host().nic("eth2", mac=WAN_MAC).inventory()  # neither eth1 nor NIC_MAC
    assert resolve_affected(config, inventory, "eth2") == [Resolution("wan", "eth2", None)]
    assert resolve_affected(config, inventory, "eth1") == []


# --- plan_uplinks -----------------------------------------------------------------------

def test_shared_actions_of_several_uplinks():
    config = make_config(LAN_BRIDGE + WAN + 'host_address = "198.18.7.2/24"\n')
    inventory = Host().nic("eth1").nic("eth2", mac=WAN_MAC, up=False).inventory()
    resolutions = [Resolution("lan", "eth1", "br-lan"), Resolution("wan", "eth2", None)]
    plan = plan_uplinks(resolutions, config, inventory)
    assert plan.actions == (
        CreateBridge("br-lan", NIC_MAC, bridge_mark("lan"), 1500),
        SetMaster("eth1", "br-lan", None),
        SetUp("eth2"),
        CreateShim("kh-wan", "eth2", shim_address("198.18.7.2/24"), shim_mark("wan"),
                   shim_mac("wan", WAN_MAC), 1500),
    )
    assert plan.resolutions == tuple(resolutions)


def test_uplinks_in_place_need_nothing():
    config = make_config(LAN_BRIDGE + WAN)
    inventory = bridged_host().nic("eth2", mac=WAN_MAC).inventory()
    plan = plan_uplinks(resolve_affected(config, inventory, "eth1"), config, inventory)
    assert plan.actions == ()
    assert plan_uplinks([], config, inventory).actions == ()


# --- plan_reconnect ---------------------------------------------------------------------

def reconnect(config_text: str, host: Host, *parts, nic: str = "eth1", name: str = "web1",
              unplugged: frozenset = frozenset()):
    config, inventory = make_config(config_text), host.inventory()
    resolutions = resolve_affected(config, inventory, nic)
    assert resolutions, "the test's NIC must be an uplink's"
    return plan_reconnect(domain(*parts, name=name), resolutions, config, inventory, unplugged)


def tap_guest() -> tuple:
    return meta(MAC1, "bridge", uplink="lan"), hook_owned(MAC1)


def test_hook_owned_tap_that_lost_its_bridge_is_reenslaved():
    plan, replugs = reconnect(LAN_BRIDGE, bridged_host().tap(TAP1, TAP1_MAC, None),
                              *tap_guest())
    assert plan.actions == (SetMaster(TAP1, "br-lan", None),)
    assert replugs == ()


def test_libvirt_tap_of_a_native_bridge_interface_is_reenslaved():
    host = bridged_host().link("vnet3", "tun", mac=TAP1_MAC)
    live = interface(MAC1, "bridge", {"bridge": "br-lan"}, {"dev": "vnet3"})
    plan, replugs = reconnect(LAN_BRIDGE, host, meta(MAC1, "bridge", uplink="lan"), live)
    assert plan.actions == (SetMaster("vnet3", "br-lan", None),)
    assert replugs == ()


def test_taps_in_place_need_nothing():
    host = bridged_host().tap(TAP1, TAP1_MAC, "br-lan").link("vnet3", "tun", mac=MAC2,
                                                              master="br-lan")
    live = interface(MAC2, "bridge", {"bridge": "br-lan"}, {"dev": "vnet3"})
    plan, replugs = reconnect(LAN_BRIDGE, host, *tap_guest(),
                              meta(MAC2, "bridge", uplink="lan"), live)
    assert plan.actions == () and replugs == ()


def direct_guest(mode: str = "private") -> tuple:
    return meta(MAC1, "direct", uplink="lan", mode=mode), hook_owned(MAC1)


@pytest.mark.parametrize("config_text, host, lower", [
    (LAN, Host().nic("eth1"), "eth1"),
    (LAN_BRIDGE, bridged_host(), "br-lan"),
])
def test_hook_owned_macvtap_that_died_is_rebuilt_and_replugged(config_text, host, lower):
    plan, replugs = reconnect(config_text, host, *direct_guest())
    assert plan.domain == "web1" and plan.uuid == UUID
    assert plan.actions == (CreateMacvtap(TAP1, MAC1, lower, "private", MARK, 1500),)
    assert replugs == (Replug(MAC1, None, True),)


def test_stale_marked_macvtap_is_deleted_then_rebuilt():
    # Left on another device (the NIC came back as a new link): rebuilt on the lower.
    host = Host().nic("eth1").nic("eth7", mac=MAC3).macvtap(TAP1, MAC1, "eth7", "private")
    plan, replugs = reconnect(LAN, host, *direct_guest())
    assert plan.actions == (DeleteLink(TAP1, "left from an earlier start, rebuilt"),
                            CreateMacvtap(TAP1, MAC1, "eth1", "private", MARK, 1500))
    assert replugs == (Replug(MAC1, None, True),)


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthrough"])
def test_native_macvtap_that_died_is_replugged_on_the_new_lower(mode):
    # The uplink names its NIC by MAC; the NIC came back as ens5.
    live = interface(MAC1, "direct", {"dev": "eth1", "mode": mode}, {"dev": "macvtap0"})
    plan, replugs = reconnect(LAN_BY_MAC, Host().nic("ens5"),
                              meta(MAC1, "direct", uplink="lan", mode=mode), live, nic="ens5")
    assert plan.actions == ()
    assert replugs == (Replug(MAC1, DirectSource("ens5", mode), True),)


def test_native_macvtap_on_a_bridged_uplink_is_replugged_on_the_bridge():
    live = interface(MAC1, "direct", {"dev": "br-lan", "mode": "bridge"}, {"dev": "macvtap0"})
    plan, replugs = reconnect(LAN_BRIDGE, bridged_host(),
                              meta(MAC1, "direct", uplink="lan"), live)
    assert plan.actions == ()
    assert replugs == (
        Replug(MAC1, DirectSource("br-lan", "bridge"), True),)


def test_healthy_macvtaps_need_nothing():
    host = (Host().nic("eth1").macvtap(TAP1, MAC1, "eth1", "private")
            .link("macvtap0", "macvtap", mac=MAC2, parent="eth1", mode="bridge"))
    live = interface(MAC2, "direct", {"dev": "eth1", "mode": "bridge"}, {"dev": "macvtap0"})
    plan, replugs = reconnect(LAN, host, *direct_guest(), meta(MAC2, "direct", uplink="lan"),
                              live)
    assert plan.actions == () and replugs == ()


def test_macvtap_of_the_wrong_kind_is_not_healthy():
    host = Host().nic("eth1").tap(TAP1, TAP1_MAC, None)  # a tap where a macvtap belongs
    plan, replugs = reconnect(LAN, host, *direct_guest())
    assert plan.actions == (DeleteLink(TAP1, "left from an earlier start, rebuilt"),
                            CreateMacvtap(TAP1, MAC1, "eth1", "private", MARK, 1500))
    assert replugs == (Replug(MAC1, None, True),)


def test_interfaces_on_other_uplinks_are_left_alone():
    # eth2 (uplink wan) came back; the guest's lan interfaces are broken, and not ours.
    host = Host().nic("eth1", master="br-lan").bridge("br-lan").nic("eth2", mac=WAN_MAC) \
        .tap(TAP1, TAP1_MAC, None)
    plan, replugs = reconnect(
        LAN_BRIDGE + WAN, host, *tap_guest(),
        meta(MAC2, "direct", uplink="lan"), hook_owned(MAC2),
        meta(MAC3, "network", network="default"), native_network(MAC3, "default"), nic="eth2")
    assert plan.actions == () and replugs == ()


def test_only_the_affected_uplinks_interfaces_are_replugged():
    host = Host().nic("eth1").nic("eth2", mac=WAN_MAC)
    plan, replugs = reconnect(
        LAN + WAN, host, *direct_guest(),
        meta(MAC2, "direct", uplink="wan"), hook_owned(MAC2), nic="eth2")
    assert plan.actions == (CreateMacvtap(TAP2, MAC2, "eth2", "bridge", MARK, 1500),)
    assert replugs == (Replug(MAC2, None, True),)


def test_unplugged_hook_owned_interface_is_attached_only():
    # A re-plug cut short between its detach and its attach: the device may be fine,
    # the guest has no interface; attach it without detaching.
    host = Host().nic("eth1").macvtap(TAP1, MAC1, "eth1", "private")
    plan, replugs = reconnect(LAN, host, *direct_guest(), unplugged=frozenset({MAC1}))
    assert plan.actions == ()
    assert replugs == (Replug(MAC1, None, False),)


def test_unplugged_hook_owned_interface_without_device_is_rebuilt_and_attached():
    plan, replugs = reconnect(LAN, Host().nic("eth1"), *direct_guest(),
                              unplugged=frozenset({MAC1}))
    assert plan.actions == (CreateMacvtap(TAP1, MAC1, "eth1", "private", MARK, 1500),)
    assert replugs == (Replug(MAC1, None, False),)


def test_unplugged_native_interface_is_attached_only():
    definition = native_direct(MAC1, "eth1", "vepa")
    plan, replugs = reconnect(LAN, Host().nic("eth1"),
                              meta(MAC1, "direct", uplink="lan", mode="vepa"), definition,
                              unplugged=frozenset({MAC1}))
    assert plan.actions == ()
    assert replugs == (
        Replug(MAC1, DirectSource("eth1", "vepa"), False),)


@pytest.mark.parametrize("parts", [
    tap_guest(),
    (meta(MAC1, "bridge", uplink="lan"), native_bridge(MAC1, "br-lan")),
    (meta(MAC1, "direct", uplink="lan"), hook_owned(MAC1)),
])
def test_allowlist_holds(parts):
    config_text = LAN_BRIDGE + 'domains = ["db*"]\n'
    host = bridged_host().tap(TAP1, TAP1_MAC, None)
    with pytest.raises(NotAllowed, match="domain web1: may not use uplink 'lan'"):
        reconnect(config_text, host, *parts)
    plan, _ = reconnect(config_text, host, *tap_guest(), name="db1")
    assert plan.actions == (SetMaster(TAP1, "br-lan", None),)


def test_allowlist_does_not_hold_for_other_uplinks():
    config_text = LAN + WAN + 'domains = ["db*"]\n'
    host = Host().nic("eth1").nic("eth2", mac=WAN_MAC)
    plan, replugs = reconnect(config_text, host, *direct_guest(),
                              meta(MAC2, "direct", uplink="wan"), hook_owned(MAC2), nic="eth1")
    assert plan.actions == (CreateMacvtap(TAP1, MAC1, "eth1", "private", MARK, 1500),)
    assert replugs == (Replug(MAC1, None, True),)


# --- names.is_candidate -------------------------------------------------------------------

@pytest.mark.parametrize("ifname", [
    "kh5254006b3c01", "kh-lan", "vnet0", "vnet12", "macvtap0", "macvtap3", "virbr0",
    "virbr1-nic", "lo", ""])
def test_own_and_virtual_devices_are_ignored(ifname):
    assert not is_candidate(ifname, None)


@pytest.mark.parametrize("devtype", ["bridge", "vlan"])
def test_bridges_and_vlans_are_ignored(devtype):
    assert not is_candidate("eth0", devtype)
    assert not is_candidate("br-lan", devtype)


@pytest.mark.parametrize("ifname", ["eth0", "eth1", "eno1", "ens32", "enp3s0f1",
                                    "ktnic0", "k0", "bond0", "team0"])
def test_nics_are_candidates(ifname):
    assert is_candidate(ifname, None)


# --- kvmhooks nic-event: forms refused before any host work -------------------------------

@pytest.fixture
def cli_guard(monkeypatch, tmp_path):
    """Keep the command line off this host even if a bad form got through, and keep
    its log handlers from outliving the test's captured stderr."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("nic-event reached the handler")
    monkeypatch.setattr("kvmhooks.engine.nic.handle", must_not_run)
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")
    logger = logging.getLogger("kvmhooks")
    handlers = list(logger.handlers)
    yield
    logger.handlers[:] = handlers


@pytest.mark.parametrize("words, needle", [
    (["change", "eth0"], "nic-event takes ACTION IFNAME"),
    (["change:eth0:42"], "nic-event takes ACTION IFNAME"),
    (["add"], "nic-event takes ACTION IFNAME"),
    (["add", "eth0", "42", "x"], "nic-event takes ACTION IFNAME"),
    (["add:eth0:42:x"], "nic-event takes ACTION IFNAME"),
    (["add", "eth0/1"], "is not a valid interface name"),
    (["move:a/b:7"], "is not a valid interface name"),
    (["remove", "abcdefghijklmnop"], "is longer than 15 characters"),
    (["add:abcdefghijklmnop:12"], "is longer than 15 characters"),
    (["add", "../eth1"], "is not a valid interface name"),
    (["add:"], "is not a valid interface name"),
])
def test_bad_nic_event_forms_exit_2_with_one_line(words, needle, cli_guard, capsys):
    assert cli.main(["nic-event", *words]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("kvmhooks: nic-event") and needle in err
