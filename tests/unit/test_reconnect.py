"""NIC events: resolve.resolve_affected, planner.plan_uplinks / plan_reconnect, names.is_candidate
and the argument forms of `kvmhooks nic-event` that are refused before any host work."""

from __future__ import annotations

import io
import logging

import pytest

from kvmhooks import cli, install
from kvmhooks.actions import (
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    DeleteLink,
    SetMaster,
    SetUp,
)
from kvmhooks.devices import shim_address, shim_mac
from kvmhooks.engine.nic import RunningGuest, _replug
from kvmhooks.errors import MetadataError, NotAllowed
from kvmhooks.hookclient import Work, triage
from kvmhooks.names import bridge_mark, guest_mark, is_candidate, shim_mark
from kvmhooks.planner import Replug, plan_reconnect, plan_uplinks
from kvmhooks.resolve import Resolution, resolve_affected
from kvmhooks.sources import DirectSource
from kvmhooks.xmlsafe import parse as parse_xml
from tests.lab.ruleflow import event_command, rule_runs, systemd_escape

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
    domain_xml,
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
        CreateShim("kh-wan", "eth2", (shim_address("198.18.7.2/24"),), shim_mark("wan"),
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


def test_a_replug_whose_interface_cannot_take_its_new_source_fails_alone():
    # The metadata now says private; a <vlan> goes with passthrough alone. The handler
    # gets this guest's failure back and goes on with the others: libvirt is not asked.
    live = interface(MAC1, "direct", {"dev": "eth1", "mode": "passthrough"},
                     {"dev": "macvtap0"}).replace(
        "<model", '<vlan><tag id="42"/></vlan>\n      <model')
    root = parse_xml(domain_xml(live).encode())
    guest = RunningGuest(None, domain(live), {MAC1: root}, frozenset())
    subject, error = _replug(None, guest, Replug(MAC1, DirectSource("eth1", "private")),
                             "domain web1 NIC eth1")
    assert subject == "domain web1 NIC eth1"
    assert isinstance(error, MetadataError) and "<vlan>" in str(error) and MAC1 in str(error)


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
    assert not is_candidate(ifname)


@pytest.mark.parametrize("ifname", ["eth0", "eth1", "eno1", "ens32", "enp3s0f1",
                                    "ktnic0", "k0", "bond0", "team0"])
def test_nics_are_candidates(ifname):
    assert is_candidate(ifname)


# An uplink's NIC may be of any type (a VLAN, a bond, a bridge named by `nic`), and only
# the names kvmhooks and libvirt give their own devices are theirs: `kh` followed by a
# MAC's 12 hex digits, `kh-UPLINK`, `vnetN`, `macvtapN`, `virbrN...`.
@pytest.mark.parametrize("ifname", [
    "ens32.100", "br-lan", "khan0", "kheth1", "kh5254006b3c0", "kh5254006b3c0g",
    "kh5254006b3c012", "khlan", "vnetwork", "macvtapx", "virbrick"])
def test_an_uplinks_nic_is_a_candidate_whatever_its_type_or_name(ifname):
    assert is_candidate(ifname)


@pytest.mark.parametrize("ifname", ["a b", "a$b", "a*b", "a:b", "a/b", "a\\b", "é0"])
def test_names_kvmhooks_refuses_are_no_candidates(ifname):
    assert not is_candidate(ifname)


# --- kvmhooks nic-event: forms refused before any host work -------------------------------

@pytest.fixture
def nic_handler_calls(monkeypatch, tmp_path):
    """The (action, ifname) pairs the command line hands the NIC handler, which stays
    off this host; its log handlers do not outlive the test's captured stderr."""
    calls = []
    monkeypatch.setattr("kvmhooks.engine.nic.handle",
                        lambda action, ifname: calls.append((action, ifname)) or [])
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")
    logger = logging.getLogger("kvmhooks")
    handlers = list(logger.handlers)
    yield calls
    logger.handlers[:] = handlers


@pytest.fixture
def cli_guard(nic_handler_calls):
    """Bad forms never reach the handler."""
    yield
    assert nic_handler_calls == [], "nic-event reached the handler"


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


# --- a NIC event as udev and systemd hand it over ------------------------------------------

# Every character kvmhooks accepts in a name (names.IFNAME): letters, digits, '_.+-'.
EVERY_KIND_OF_NAME = ["lan-nic", "eth0.100", "a_b", "x-y.z", "-", "-eth", "a+b", "en-+.x_1",
                      "A-B", "0", "abcdefghijklm-o", "..a", "vnet-0"]


@pytest.fixture(scope="module")
def shipped_rule_and_unit():
    files = {item.path: item.text for item in install.planned_files(install.RPM_LAYOUT)}
    return files[install.RULE_PATH], files[install.NIC_UNIT_PATH]


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no-systemd"])
@pytest.mark.parametrize("ifname", EVERY_KIND_OF_NAME)
def test_every_valid_name_reaches_the_handler_intact(ifname, systemd, shipped_rule_and_unit,
                                                      nic_handler_calls, capsys):
    # The rule and unit as shipped, udev's substitutions, systemctl's and the unit's
    # escaping as systemd-escape applies them, then the resulting command line.
    rule, unit = shipped_rule_and_unit
    for action in ("add", "move", "remove"):
        argv = event_command(rule, unit, action, ifname, 4711, systemd=systemd)
        assert argv is not None, f"the rule lets {action} of {ifname} pass"
        words = argv[argv.index("nic-event"):]
        if argv[0] == install.RPM_LAYOUT.command:
            assert cli.main(words) == 0, capsys.readouterr().err
            assert nic_handler_calls.pop() == (action, ifname)
        else:
            assert argv[:4] == [install.RPM_LAYOUT.interpreter, "-I", "-S",
                                install.RPM_LAYOUT.client]
            assert triage("nic-event", words[1:], io.BytesIO()) == Work()
            assert words[1:] == [action, ifname]


@pytest.mark.parametrize("ifname", EVERY_KIND_OF_NAME)
def test_systemd_starts_the_unit_by_the_name_udev_gives_it(ifname, shipped_rule_and_unit):
    # systemctl would mangle a name with characters units cannot carry ('+'), and the
    # unit's %i would hold the escape: such names go through hookclient.py instead.
    rule, _ = shipped_rule_and_unit
    [argv] = rule_runs(rule, "add", ifname, 4711, systemd=True)
    if argv[0].endswith("/systemctl"):
        assert systemd_escape("--mangle", argv[-1]) == argv[-1]
        assert argv[-1] == f"kvmhooks-nic@add:{ifname}:4711.service"
    else:
        assert "+" in ifname
