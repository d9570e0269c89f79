"""network.parse_hook_data and planner.plan_network_start / plan_network_stop."""

from __future__ import annotations

import pytest

from kvmhooks.actions import (
    AddAddress,
    CreateBridge,
    DelAddress,
    DeleteLink,
    MoveRoute,
    SetMaster,
    SetUp,
)
from kvmhooks.errors import EXIT_BAD_INPUT, BadInput, NetworkRefused, NicAbsent
from kvmhooks.inventory import Address, Route
from kvmhooks.names import bridge_mark, guest_mark, network_mark, shim_mark
from kvmhooks.network import NetworkDef, parse_hook_data
from kvmhooks.planner import plan_network_start, plan_network_stop
from kvmhooks.resolve import Resolution

from .builders import LAN, LAN_BRIDGE, MAC1, NIC_MAC, Host, make_config

NET = "host-bridge"
MARK = network_mark(NET)
ADDRESS = "198.18.5.10/24"
DEFAULT = Route("default", 2, gateway="198.18.5.1")
TAP1 = "kh5254006b3c01"
TAP1_MAC = "fe:54:00:6b:3c:01"
NETWORK_ENTRY = f'[network.{NET}]\nuplink = "lan"\n'


def hook_data(body: str, name: str = NET, wrap: bool = True) -> bytes:
    network = (f"<network><name>{name}</name>"
               "<uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>"
               f"{body}</network>")
    if not wrap:
        return network.encode()
    return (f"<hookData>{network}<networkport><uuid>x</uuid></networkport>"
            "</hookData>").encode()


# --- parse_hook_data --------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [True, False], ids=["hookData", "bare"])
def test_forward_bridge_with_bridge_name(wrap):
    xml = hook_data('<forward mode="bridge"/><bridge name="br-lan"/>', wrap=wrap)
    assert parse_hook_data(xml, NET) == NetworkDef(NET, "bridge", "br-lan", ())


def test_forward_private_with_forward_dev_and_interfaces():
    xml = hook_data('<forward mode="private" dev="eth1">'
                    '<interface dev="eth1"/><interface dev="eth2"/><interface dev="eth3"/>'
                    "</forward>")
    assert parse_hook_data(xml, NET) == NetworkDef(NET, "private", None,
                                                   ("eth1", "eth2", "eth3"))


def test_forward_interfaces_without_forward_dev():
    xml = hook_data('<forward mode="passthrough"><interface dev="eth2"/>'
                    '<interface dev="eth1"/></forward>')
    assert parse_hook_data(xml, NET).forward_devs == ("eth2", "eth1")


def test_no_forward_is_an_isolated_network():
    xml = hook_data('<bridge name="virbr5"/><ip address="192.168.150.1" '
                    'netmask="255.255.255.0"/>', name="isolated")
    assert parse_hook_data(xml, "isolated") == NetworkDef("isolated", None, "virbr5", ())


def test_forward_without_mode_is_nat():
    xml = hook_data('<forward/><bridge name="virbr0"/>', name="default")
    assert parse_hook_data(xml, "default") == NetworkDef("default", "nat", "virbr0", ())


def test_forward_dev_of_a_nat_network():
    xml = hook_data('<forward dev="eth1"/><bridge name="virbr0"/>', name="default")
    assert parse_hook_data(xml, "default").forward_devs == ("eth1",)


def test_name_falls_back_to_the_hint():
    xml = b'<hookData><network><forward mode="bridge"/><bridge name="br-lan"/></network>' \
        b"</hookData>"
    assert parse_hook_data(xml, NET).name == NET


def _refusal(xml: bytes) -> str:
    with pytest.raises(BadInput) as caught:
        parse_hook_data(xml, NET)
    assert caught.value.exit_status == EXIT_BAD_INPUT
    return str(caught.value)


def test_malformed_xml_names_the_network():
    message = _refusal(b"<hookData><network><name>host-bridge</name>")
    assert message.startswith(f"network {NET}: malformed XML")


def test_doctype_is_refused_naming_the_network():
    xml = (b'<!DOCTYPE hookData [<!ENTITY n SYSTEM "file:///etc/hostname">]>'
           b"<hookData><network><name>&n;</name></network></hookData>")
    message = _refusal(xml)
    assert message.startswith(f"network {NET}: ") and "DOCTYPE" in message


def test_hook_data_without_network_is_refused():
    assert _refusal(b"<hookData><networkport/></hookData>") == \
        f"network {NET}: no <network> in the hook's input"


# --- plan_network_start -----------------------------------------------------------------

def start(config_text: str, host: Host, body: str):
    network = parse_hook_data(hook_data(body), NET)
    return plan_network_start(network, make_config(config_text + NETWORK_ENTRY),
                              host.inventory())


def refused(config_text: str, host: Host, body: str) -> str:
    with pytest.raises(NetworkRefused) as caught:
        start(config_text, host, body)
    assert caught.value.exit_status == EXIT_BAD_INPUT
    message = str(caught.value)
    assert message.startswith(f"network {NET}: ") and "\n" not in message
    return message


FORWARD_BRIDGE = '<forward mode="bridge"/><bridge name="br-lan"/>'


def test_forward_bridge_builds_the_bridge_with_the_network_mark():
    host = Host().nic("eth1", addresses=(ADDRESS,), routes=(DEFAULT,))
    plan = start(LAN_BRIDGE, host, FORWARD_BRIDGE)
    assert plan.domain is None  # a network's plan is no domain's; its mark names it
    assert plan.actions == (
        CreateBridge("br-lan", NIC_MAC, MARK, 1500),
        AddAddress("br-lan", Address(ADDRESS)),
        MoveRoute(DEFAULT, "eth1", "br-lan"),
        SetMaster("eth1", "br-lan", None),
        DelAddress("eth1", Address(ADDRESS)),
    )
    assert plan.resolutions == (Resolution("lan", "eth1", "br-lan"),)


def test_forward_bridge_in_place_needs_nothing():
    host = Host().nic("eth1", master="br-lan").bridge("br-lan", alias=bridge_mark("lan"))
    assert start(LAN_BRIDGE, host, FORWARD_BRIDGE).actions == ()


def test_forward_bridge_on_another_bridge_is_refused_naming_both():
    message = refused(LAN_BRIDGE, Host().nic("eth1"),
                      '<forward mode="bridge"/><bridge name="br0"/>')
    assert "br0" in message and "br-lan" in message
    assert "<bridge name='br-lan'/>" in message


def test_forward_bridge_on_an_uplink_without_bridge_is_refused():
    message = refused(LAN, Host().nic("eth1"), FORWARD_BRIDGE)
    assert "uplink 'lan' has no bridge" in message
    assert 'set bridge = "br-lan"' in message


MACVTAP_MODES = ["private", "vepa", "passthrough", "bridge"]


def macvtap_network(mode: str, *devs: str) -> str:
    interfaces = "".join(f'<interface dev="{dev}"/>' for dev in devs)
    return f'<forward mode="{mode}">{interfaces}</forward>'


@pytest.mark.parametrize("mode", MACVTAP_MODES)
@pytest.mark.parametrize("kind", ["macvtap", "macvlan"])
def test_forward_interface_that_is_a_macvtap_is_refused(mode, kind):
    host = Host().nic("eth1").link("macvtap0", kind, parent="eth1", mode="bridge")
    message = refused(LAN, host, macvtap_network(mode, "macvtap0"))
    assert f"forward interface macvtap0 is itself a {kind} device" in message
    assert "physical NIC" in message and "<interface dev='eth1'/>" in message


@pytest.mark.parametrize("mode", [m for m in MACVTAP_MODES if m != "passthrough"])
def test_forward_interface_that_is_a_bridge_port_is_refused_naming_the_bridge(mode):
    host = Host().nic("eth1", master="br-lan").bridge("br-lan")
    message = refused(LAN_BRIDGE, host, macvtap_network(mode, "eth1"))
    assert "forward interface eth1 is a port of bridge br-lan" in message
    assert "<interface dev='br-lan'/>" in message


def test_forward_interface_on_a_foreign_bridge_names_that_bridge():
    host = Host().nic("eth1").nic("eth2", mac="02:00:c6:12:05:02", master="br0").bridge("br0")
    message = refused(LAN, host, macvtap_network("private", "eth1", "eth2"))
    assert "forward interface eth2 is a port of bridge br0" in message


@pytest.mark.parametrize("mode", MACVTAP_MODES)
def test_forward_interface_that_does_not_exist_is_refused(mode):
    message = refused(LAN, Host().nic("eth1"), macvtap_network(mode, "eth9"))
    assert "forward interface eth9 does not exist" in message
    assert "<interface dev='eth1'/>" in message


@pytest.mark.parametrize("mode", MACVTAP_MODES)
def test_forward_interface_that_is_the_nic_is_accepted(mode):
    assert start(LAN, Host().nic("eth1"), macvtap_network(mode, "eth1")).actions == ()
    assert start(LAN, Host().nic("eth1", up=False),
                 macvtap_network(mode, "eth1")).actions == (SetUp("eth1"),)


def test_forward_interface_that_is_the_existing_uplink_bridge_is_accepted():
    host = Host().nic("eth1", master="br-lan").bridge("br-lan", alias=bridge_mark("lan"))
    assert start(LAN_BRIDGE, host, macvtap_network("private", "br-lan")).actions == ()


def test_forward_interface_that_is_the_uplink_bridge_still_to_build_is_accepted():
    # The plan builds br-lan itself; the check must not refuse the one device it then
    # tells the administrator to use ("does not exist; use <interface dev='br-lan'/>").
    plan = start(LAN_BRIDGE, Host().nic("eth1"), macvtap_network("private", "br-lan"))
    assert plan.actions == (CreateBridge("br-lan", NIC_MAC, MARK, 1500),
                            SetMaster("eth1", "br-lan", None))


def test_forward_interface_that_is_the_nic_the_plan_enslaves_is_refused():
    # eth1 is not a port yet, but this very plan enslaves it to br-lan: libvirt's macvtap
    # on it would then fail with EBUSY. The check must judge the host the plan leaves.
    message = refused(LAN_BRIDGE, Host().nic("eth1"), macvtap_network("private", "eth1"))
    assert "br-lan" in message and "<interface dev='br-lan'/>" in message


def test_nic_absent():
    with pytest.raises(NicAbsent, match="uplink 'lan': no NIC on this host matches "
                                        'nic = "eth1"'):
        start(LAN_BRIDGE, Host().nic("eth2"), FORWARD_BRIDGE)


# --- plan_network_stop ------------------------------------------------------------------

def network_bridge(alias: str | None = MARK, **fields) -> Host:
    """br-lan as the network hook built it: eth1 enslaved, addresses and routes moved."""
    return (Host().nic("eth1", master="br-lan")
            .bridge("br-lan", alias=alias, addresses=(ADDRESS,), routes=(DEFAULT,), **fields))


GIVE_BACK = (
    AddAddress("eth1", Address(ADDRESS)),
    MoveRoute(DEFAULT, "br-lan", "eth1"),
    SetMaster("eth1", None, "br-lan"),
    DeleteLink("br-lan", f"network {NET} stopped"),
)


def test_stop_gives_the_nic_back_and_deletes_the_bridge():
    plan = plan_network_stop(NET, network_bridge().inventory())
    assert plan.domain is None  # a network's plan is no domain's; its mark names it
    assert plan.actions == GIVE_BACK


def test_stop_of_a_bridge_without_ports_only_deletes_it():
    host = Host().nic("eth1").bridge("br-lan", alias=MARK)
    assert plan_network_stop(NET, host.inventory()).actions == (
        DeleteLink("br-lan", f"network {NET} stopped"),)


def test_shim_does_not_keep_the_bridge():
    host = network_bridge().link("kh-lan", "macvlan", parent="br-lan", mode="bridge",
                                 alias=shim_mark("lan"))
    assert plan_network_stop(NET, host.inventory()).actions == GIVE_BACK


@pytest.mark.parametrize("host", [
    network_bridge().tap(TAP1, TAP1_MAC, "br-lan"),
    network_bridge().link("vnet0", "tun", mac=TAP1_MAC, master="br-lan"),
    network_bridge().macvtap(TAP1, MAC1, "br-lan", "bridge"),
    network_bridge().link("macvtap0", "macvtap", mac=MAC1, parent="br-lan", mode="bridge"),
    network_bridge().nic("eth2", mac="02:00:c6:12:05:02", master="br-lan"),
], ids=["guest-tap", "libvirt-tap", "guest-macvtap", "libvirt-macvtap", "second-port"])
def test_bridge_still_in_use_is_kept(host):
    assert plan_network_stop(NET, host.inventory()).actions == ()


@pytest.mark.parametrize("alias", [None, bridge_mark("lan"), network_mark("other"),
                                   guest_mark("6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab"),
                                   MARK + "x"])
def test_bridge_without_this_networks_mark_is_untouched(alias):
    assert plan_network_stop(NET, network_bridge(alias=alias).inventory()).actions == ()


@pytest.mark.parametrize("dev", ["br-lan", "eth1"])
def test_passthrough_on_an_uplink_with_a_bridge_is_refused(dev):
    """A passthrough macvtap on the bridge would take the host's own address off the
    network (DESIGN section 4); one on the NIC cannot be (a bridge port)."""
    host = Host().nic("eth1", master="br-lan").bridge("br-lan", alias=bridge_mark("lan"))
    message = refused(LAN_BRIDGE, host, macvtap_network("passthrough", dev))
    assert message == (f"network {NET}: forward mode passthrough needs an uplink without a "
                       "bridge: uplink 'lan' has bridge br-lan, which holds the host's own "
                       "address, and a passthrough macvtap on it would take that address "
                       "off the network")
