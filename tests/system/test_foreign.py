"""Foreign devices and the allowlist: kvmhooks never deletes or alters a device without its
mark, and a domain the config does not allow on an uplink never gets there, whichever way
it comes in (hook, NIC event, command line)."""

from __future__ import annotations

import time

import pytest

from tests.lab.commands import kvmhooks, run_hook
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import create_bridge, create_macvtap, link_exists, link_info
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define, define_and_start
from tests.lab.wait import wait_for

pytestmark = pytest.mark.system


def snapshot(name: str) -> dict:
    info = link_info(name)
    return {key: info[key] for key in ("index", "kind", "mac", "alias", "master", "link",
                                       "mode", "up", "addresses")}


def test_a_foreign_device_with_the_target_name_is_refused_and_untouched(
        libvirt_conn, cleanup, kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "private")
    create_macvtap(iface.hook_owned_dev, stand_in_nic.name, cleanup, mode="vepa")
    before = snapshot(iface.hook_owned_dev)
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    assert f"device {iface.hook_owned_dev}: exists without kvmhooks' mark" in str(refused.value)
    assert snapshot(iface.hook_owned_dev) == before
    result = run_hook(dom.name(), "release", dom.XMLDesc(0), sub="end")
    assert result.returncode == 0
    assert kvmhooks("apply").returncode == 0
    assert snapshot(iface.hook_owned_dev) == before, "release and apply leave it alone"


def test_a_foreign_shim_is_refused_and_untouched(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic, subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, host_address=subnet.addr(5))
    kh_config(up.table)
    uplink = up.name
    create_macvtap(f"kh-{uplink}", stand_in_nic.name, cleanup, mode="bridge")
    before = snapshot(f"kh-{uplink}")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [
        Iface(guest_mac(), "direct", uplink, "bridge")]), cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    assert f"device kh-{uplink}: exists without kvmhooks' shim mark" in str(refused.value)
    assert snapshot(f"kh-{uplink}") == before


def test_an_administrators_bridge_is_used_and_never_removed(libvirt_conn, cleanup, kh_config,
                                                            stand_in_nic):
    bridge = unique_name("ktbr")
    create_bridge(bridge, cleanup)
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=bridge)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "bridge", uplink)
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    assert link_info(iface.hook_owned_dev)["master"] == bridge
    assert link_info(stand_in_nic.name)["master"] == bridge
    dom.destroy()
    assert kvmhooks("apply").returncode == 0
    info = link_info(bridge)
    assert info is not None and info["alias"] is None, "kept, and not marked"


def test_the_allowlist_holds_on_the_command_line(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name, extra='domains = ["web-*"]\n')
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "bridge", native=True, source="ktnic-old")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)
    refusal = f"domain {dom.name()}: may not use uplink '{uplink}'"
    for args in (["explain", dom.name()], ["apply", dom.name()],
                 ["attach", dom.name(), "--mac", guest_mac(), "--uplink", uplink,
                  "--type", "direct"]):
        result = kvmhooks(*args)
        assert result.returncode == 2, args
        assert result.stderr.splitlines() == [f"kvmhooks: {refusal} (not matched by "
                                              f"uplink.{uplink}.domains in "
                                              f"/etc/kvmhooks/kvmhooks.toml)"], args
    assert "ktnic-old" in dom.XMLDesc(0x2), "apply did not rewrite the definition"


def test_the_allowlist_holds_on_nic_events(libvirt_conn, cleanup, kh_config, stand_in_nic,
                                           syslog):
    up = lab_uplink(cleanup, stand_in_nic.name)
    allowed = up.table
    kh_config(allowed)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "bridge")
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    kh_config(allowed + 'domains = ["web-*"]\n')  # no longer allowed on that uplink
    mark = len(syslog.records)
    stand_in_nic.recreate()
    refusal = f"domain {dom.name()}: may not use uplink '{uplink}'"
    wait_for(lambda: any(refusal in text for _, text in syslog.since(mark)), 15,
             what="the NIC handler's refusal in the log")
    time.sleep(0.5)
    assert not link_exists(iface.hook_owned_dev), "no macvtap rebuilt for it"
