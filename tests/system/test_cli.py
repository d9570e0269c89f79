"""The command line against a real libvirtd: explain, attach, apply, status, install."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from kvmhooks import __version__
from kvmhooks.domain import NAMESPACE
from tests.lab.commands import kvmhooks, record, run_hook
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import (
    create_bridge,
    delete_link,
    delete_link_later,
    link_exists,
    link_index,
    link_info,
    marked_links,
)
from tests.lab.names import guest_mac, tap_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define, define_and_start, live_interface, live_target

pytestmark = pytest.mark.system


def test_explain_shows_exactly_what_prepare_does(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic, subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(7))
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    ifaces = [Iface(guest_mac(), "bridge", uplink), Iface(guest_mac(), "direct", uplink, "vepa"),
              Iface(guest_mac(), "direct", uplink, "private", native=True, source=bridge)]
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), ifaces), cleanup)

    explained = kvmhooks("explain", dom.name(), "--json")
    assert explained.returncode == 0, explained.stderr
    plan = json.loads(explained.stdout)
    kinds = [action["action"] for action in plan["actions"]]
    assert kinds[0] == "create_bridge" and "create_shim" in kinds
    assert kinds.count("create_tap") == 1 and kinds.count("create_macvtap") == 1
    assert plan["sources"] == []

    dom.create()
    assert record(dom.UUIDString()) == plan
    for action in plan["actions"]:
        if action["action"].startswith("create_"):
            assert link_exists(action["name"]), action
    text = kvmhooks("explain", dom.name())
    assert text.returncode == 0 and "nothing to create" in text.stdout


def test_explain_incoming_is_a_preflight_for_a_migration(cleanup, kh_config, stand_in_nic):
    """`virsh dumpxml --migratable` on the source, `explain --incoming --xml -` here: what
    this host's migrate hook would write and build, or the line it would refuse with."""
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    native = Iface(guest_mac(), "direct", up.name, "bridge", native=True, source="enp9s0")
    hook_owned = Iface(guest_mac(), "direct", up.name, "private")
    name = unique_name("kt-dom-")
    xml = domain_xml(name, [native, hook_owned])
    before = marked_links()

    preflight = kvmhooks("explain", "--incoming", "--xml", "-", stdin=xml)
    assert preflight.returncode == 0, preflight.stderr
    lines = preflight.stdout.splitlines()
    written = lines.index("  native sources the migrate or restore hook writes for this host:")
    assert lines[written + 1] == (f"  write interface {native.mac}: type='direct' "
                                  f"<source dev='{stand_in_nic.name}' mode='bridge'/>")
    assert any(line.startswith(f"  create macvtap {hook_owned.hook_owned_dev}")
               for line in lines[:written]), lines
    rewritten = etree.fromstring(run_hook(name, "migrate", xml).stdout)
    (source,) = rewritten.xpath(f"devices/interface[mac/@address='{native.mac}']/source")
    assert source.get("dev") == stand_in_nic.name, "the hook writes what the preflight says"

    elsewhere = Iface(guest_mac(), "direct", "uplink-of-another-host", "bridge")
    refused = kvmhooks("explain", "--incoming", "--xml", "-",
                       stdin=domain_xml(name, [hook_owned, elsewhere]))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and name in refused.stderr \
        and "'uplink-of-another-host'" in refused.stderr, refused.stderr
    assert marked_links() == before, "a preflight changes nothing"


def test_attach_writes_hook_owned_and_native_forms(libvirt_conn, cleanup, kh_config,
                                                   stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [], metadata=""),
                 cleanup)
    tap, macvtap = guest_mac(), guest_mac()
    first = kvmhooks("attach", dom.name(), "--mac", tap.upper(), "--uplink", uplink,
                     "--type", "bridge")
    assert first.returncode == 0, first.stderr
    second = kvmhooks("attach", dom.name(), "--mac", macvtap, "--uplink", uplink,
                      "--type", "direct", "--mode", "private", "--native")
    assert second.returncode == 0, second.stderr

    dom.create()
    device = link_info("kh" + tap.replace(":", ""))
    assert (device["kind"], device["master"], device["mac"]) == ("tun", bridge, tap_mac(tap))
    source = live_interface(dom, macvtap).find("source")
    assert (source.get("dev"), source.get("mode")) == (bridge, "private")
    assert link_info(live_target(dom, macvtap))["link"] == link_index(bridge)

    refused = kvmhooks("attach", dom.name(), "--mac", guest_mac(), "--uplink", "nosuch",
                       "--type", "bridge")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "unknown uplink 'nosuch'" in refused.stderr


def test_attach_a_libvirt_network_and_the_usage_lines(libvirt_conn, cleanup, kh_config,
                                                      stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [], metadata=""), cleanup)
    mac = guest_mac()
    attached = kvmhooks("attach", dom.name(), "--mac", mac, "--type", "network",
                        "--network", "kt-net")
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == f"domain {dom.name()}: interface {mac} attached to network " \
                              "kt-net (native)\n"
    definition = etree.fromstring(dom.XMLDesc(0x2).encode())
    (interface,) = definition.xpath(f"devices/interface[mac/@address='{mac}']")
    assert (interface.get("type"), interface.find("source").get("network")) == \
        ("network", "kt-net")
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == dom.name())
    assert (row["uplink"], row["state"]) == ("network:kt-net", "ok")

    before = dom.XMLDesc(0x2)
    for args, line in [
        (("--type", "network"), "--type network takes --network NAME and no --uplink"),
        (("--type", "network", "--network", "n", "--uplink", up.name),
         "--type network takes --network NAME and no --uplink"),
        (("--type", "bridge"), "--type bridge takes --uplink NAME and no --network"),
        (("--type", "direct", "--uplink", up.name, "--network", "n"),
         "--type direct takes --uplink NAME and no --network"),
    ]:
        refused = kvmhooks("attach", dom.name(), "--mac", guest_mac(), *args)
        assert (refused.returncode, refused.stderr) == (2, f"kvmhooks: {line}\n"), args
    assert dom.XMLDesc(0x2) == before
    version = kvmhooks("--version")
    assert (version.returncode, version.stdout) == (0, f"kvmhooks {__version__}\n")


def test_attach_with_vlans_and_their_usage_lines(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    plain = lab_uplink(cleanup, stand_in_nic.name)  # the same NIC, without a bridge
    kh_config(up.table + "\n" + plain.table)
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [], metadata=""), cleanup)
    mac = guest_mac()

    def entries() -> list[dict]:
        """The persistent definition's kvmhooks metadata entries."""
        definition = etree.fromstring(dom.XMLDesc(0x2).encode())
        return [dict(entry.attrib) for entry in definition.xpath(
            "metadata/kh:net/kh:interface", namespaces={"kh": NAMESPACE})]

    attached = kvmhooks("attach", dom.name(), "--mac", mac, "--uplink", up.name,
                        "--type", "bridge", "--vlan", "10", "--trunk", "21,20")
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == f"domain {dom.name()}: interface {mac} attached to uplink " \
                              f"{up.name} (bridge, vlan 10, trunk 20-21, hook-owned)\n"
    assert entries() == [{"mac": mac, "uplink": up.name, "type": "bridge", "vlan": "10",
                          "trunk": "20-21"}]
    (interface,) = etree.fromstring(dom.XMLDesc(0x2).encode()).xpath(
        f"devices/interface[mac/@address='{mac}']")
    assert (interface.get("type"), interface.find("target").get("managed")) == \
        ("ethernet", "no")

    before = dom.XMLDesc(0x2)
    for args, line in [
        (("--type", "bridge", "--uplink", up.name, "--vlan", "10", "--native"),
         f"domain {dom.name()} interface {mac}: VLANs on type 'bridge' take the hook-owned "
         "form <interface type='ethernet'> with <target dev='NAME' managed='no'/> (kvmhooks "
         "sets them on the tap it builds; libvirt makes its own tap after the prepare hook)"),
        (("--type", "direct", "--uplink", up.name, "--trunk", "20"),
         "--trunk applies only to --type bridge"),
        (("--type", "network", "--network", "kt-net", "--vlan", "10"),
         "--vlan applies only to --type bridge or direct"),
        (("--type", "bridge", "--uplink", up.name, "--vlan", "4095"),
         f"domain {dom.name()} interface {mac}: vlan '4095' is not a VLAN ID (1-4094)"),
        (("--type", "bridge", "--uplink", up.name, "--trunk", "30-20"),
         f"domain {dom.name()} interface {mac}: trunk range '30-20' runs backwards"),
        (("--type", "direct", "--uplink", up.name, "--vlan", "30"),
         f"domain {dom.name()} interface {mac}: vlan on type 'direct' needs an uplink "
         f"without a bridge (a macvtap sits on the NIC's VLAN sub-interface, and uplink "
         f"'{up.name}' has its NIC on bridge {up.bridge}); use type 'bridge' with vlan"),
    ]:
        refused = kvmhooks("attach", dom.name(), "--mac", mac, *args)
        assert (refused.returncode, refused.stderr) == (2, f"kvmhooks: {line}\n"), args
    assert dom.XMLDesc(0x2) == before

    again = kvmhooks("attach", dom.name(), "--mac", mac, "--uplink", plain.name,
                     "--type", "direct", "--vlan", "30")
    assert again.returncode == 0, again.stderr
    assert entries() == [{"mac": mac, "uplink": plain.name, "type": "direct",
                          "mode": "bridge", "vlan": "30"}], \
        "the entry is replaced whole: no trunk stays"


def test_apply_rewrites_a_definition_for_this_host(libvirt_conn, cleanup, kh_config,
                                                   stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "bridge", native=True, source="ktnic-elsewhere",
                  source_mode="vepa")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)

    status = json.loads(kvmhooks("status", "--json").stdout)
    row = next(r for r in status if r["domain"] == dom.name())
    assert (row["state"], row["nic"], row["device"]) == ("stale", stand_in_nic.name, "-")

    applied = kvmhooks("apply", dom.name())
    assert applied.returncode == 0, applied.stderr
    assert f"dev='{stand_in_nic.name}' mode='bridge'" in applied.stdout
    dom.create()
    assert link_info(live_target(dom, iface.mac))["link"] == stand_in_nic.index
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == dom.name())
    assert row["state"] == "ok" and row["device"] == live_target(dom, iface.mac)

    again = kvmhooks("apply", dom.name())
    assert again.returncode == 0 and again.stdout == ""


def test_apply_moves_a_running_guest_to_this_hosts_bridge(libvirt_conn, cleanup, kh_config,
                                                          stand_in_nic):
    old, new = unique_name("ktbr"), unique_name("ktbr")
    create_bridge(old, cleanup)
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=old)
    kh_config(up.table)
    uplink = up.name
    delete_link_later(cleanup, new)
    iface = Iface(guest_mac(), "bridge", uplink, native=True, source=old)
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    # The host's uplink moves to another bridge: release the NIC from the old one.
    delete_link(old)
    kh_config(f'[uplink.{uplink}]\nnic = "{stand_in_nic.name}"\nbridge = "{new}"\n')
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == dom.name())
    assert row["state"] == "stale"

    applied = kvmhooks("apply", dom.name())
    assert applied.returncode == 0, applied.stderr
    assert link_info(stand_in_nic.name)["master"] == new
    assert link_info(live_target(dom, iface.mac))["master"] == new
    inactive = etree.fromstring(dom.XMLDesc(0x2).encode())
    assert inactive.find("devices/interface/source").get("bridge") == new


def test_a_running_guests_definition_from_another_host_is_stale_until_apply(
        libvirt_conn, cleanup, kh_config, stand_in_nic):
    """What a --persistent migration leaves: the live XML is this host's, the persistent
    definition the source host's (libvirt's migrate hook sees the live XML only)."""
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    here = Iface(guest_mac(), "direct", up.name, "bridge", native=True,
                 source=stand_in_nic.name)
    name = unique_name("kt-dom-")
    dom = define_and_start(libvirt_conn, domain_xml(name, [here]), cleanup)
    target = live_target(dom, here.mac)
    elsewhere = Iface(here.mac, "direct", up.name, "bridge", native=True, source="enp9s0")
    libvirt_conn.defineXML(domain_xml(name, [elsewhere], uuid=dom.UUIDString()))

    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == name)
    assert (row["state"], row["device"]) == ("stale", target), row
    assert row["reason"].startswith("definition: ") and "enp9s0" in row["reason"], row

    applied = kvmhooks("apply", name)
    assert (applied.returncode, applied.stderr) == (0, "")
    assert applied.stdout == (f"domain {name}: definition: write interface {here.mac}: "
                              f"type='direct' <source dev='{stand_in_nic.name}' "
                              "mode='bridge'/>\n")
    assert dom.isActive() and live_target(dom, here.mac) == target, "the guest is left alone"
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == name)
    assert (row["state"], row["reason"]) == ("ok", "")


def test_status_reports_missing_devices(libvirt_conn, cleanup, kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "bridge")
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == dom.name())
    assert (row["state"], row["device"]) == ("ok", iface.hook_owned_dev)
    stand_in_nic.unplug()  # the macvtap dies with its NIC
    row = next(r for r in json.loads(kvmhooks("status", "--json").stdout)
               if r["domain"] == dom.name())
    assert row["state"] == "missing" and "no NIC on this host" in row["reason"]
    table = kvmhooks("status").stdout
    assert dom.name() in table and "missing" in table
    assert not marked_links(f"kvmhooks:guest:{dom.UUIDString()}")


def test_check_config_and_install(tmp_path, cleanup):
    good = tmp_path / "good.toml"
    good.write_text('[uplink.lan]\nnic = "eth9"\n')
    result = kvmhooks("check-config", str(good))
    assert result.returncode == 0 and "ok (1 uplink, 0 networks)" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[uplink.lan]\nnic = "eth9"\ncolour = "red"\n')
    result = kvmhooks("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr == (f"kvmhooks: {bad}:3: uplink.lan.colour: unknown key "
                             "(expected one of: bridge, domains, host_address, mac, mtu, "
                             "nic, path, vlan_filtering)\n")
    root = tmp_path / "root"
    first = kvmhooks("install", "--root", str(root))
    second = kvmhooks("install", "--root", str(root))
    assert first.returncode == second.returncode == 0
    assert "installed" in first.stdout and "installed" not in second.stdout
    assert (root / "etc/libvirt/hooks/qemu.d/kvmhooks").stat().st_mode & 0o111
