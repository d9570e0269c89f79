"""Bad input: one clear line naming what is wrong, exit 2 for bad input (1 for an absent
NIC, a host condition), the start refused by libvirt, and no device left behind."""

from __future__ import annotations

import os

import pytest

from tests.lab.commands import run_hook
from tests.lab.config import ConfigFile
from tests.lab.domains import Iface, domain_xml, metadata_xml
from tests.lab.links import all_links, link_info
from tests.lab.names import guest_mac, unique_name, uplink_name
from tests.lab.nic import StandInNic
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define

pytestmark = pytest.mark.system

MAC = "52:54:00:6b:3c:0a"
CONFIG = "/etc/kvmhooks/kvmhooks.toml"


def lab_config(nic: str, uplink: str, bridge: str, **extra: str) -> str:
    lines = [f"[uplink.{uplink}]", f'nic = "{nic}"', f'bridge = "{bridge}"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def bad_cases(nic: str, uplink: str, bridge: str, name: str):
    """(id, config text or None for no file, domain XML, exit status, words in the line)."""
    good = lab_config(nic, uplink, bridge)
    iface = Iface(MAC, "direct", uplink, "private")
    xml = domain_xml(name, [iface])
    return [
        ("malformed-xml", good, xml[: len(xml) // 2], 2, [f"domain {name}", "malformed XML"]),
        ("unknown-attribute", good,
         domain_xml(name, [iface], metadata_xml([iface]).replace(
             'type="direct"', 'type="direct" colour="red"')),
         2, [f"domain {name}", MAC, "unknown attribute 'colour'"]),
        ("unknown-element", good,
         domain_xml(name, [iface], metadata_xml([iface, '<kh:bridge name="x"/>'])),
         2, [f"domain {name}", "unknown element <bridge>"]),
        ("unknown-uplink", good, domain_xml(name, [Iface(MAC, "direct", "nosuch", "bridge")]),
         2, [f"domain {name}", MAC, "unknown uplink 'nosuch'", CONFIG]),
        ("mac-without-interface", good,
         domain_xml(name, [iface], metadata_xml([iface, Iface(guest_mac(), "bridge", uplink)])),
         2, [f"domain {name}", "no <interface> in <devices> has this MAC"]),
        ("invalid-mode", good, domain_xml(name, [Iface(MAC, "direct", uplink, "promisc")]),
         2, [f"domain {name}", MAC, "mode 'promisc' is invalid"]),
        ("not-allowed", lab_config(nic, uplink, bridge, domains='["web-*"]'), xml,
         2, [f"domain {name}", f"may not use uplink '{uplink}'", f"uplink.{uplink}.domains"]),
        ("bridge-name-too-long", lab_config(nic, uplink, "ktbr-much-too-long"), xml,
         2, [f"{CONFIG}:3", f"uplink.{uplink}.bridge", "longer than 15 characters"]),
        ("config-syntax-error", good + "[uplink.broken\n", xml,
         2, [f"{CONFIG}:4", "TOML syntax error"]),
        ("missing-config", None, xml, 2, [CONFIG, "config file not found"]),
        ("nic-absent", lab_config("ktnic-absent", uplink, bridge), xml,
         1, [f"uplink '{uplink}'", 'nic = "ktnic-absent"']),
    ]


CASE_IDS = [case[0] for case in bad_cases("n", "u", "b", "d")]


@pytest.fixture
def config_file(cleanup):
    return ConfigFile(cleanup)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_gets_one_line_and_builds_nothing(case_id, libvirt_conn, cleanup,
                                                   config_file, stand_in_nic):
    uplink, bridge, name = uplink_name(), unique_name("ktbr"), unique_name("kt-dom-")
    _, config, xml, status, words = next(
        case for case in bad_cases(stand_in_nic.name, uplink, bridge, name)
        if case[0] == case_id)
    config_file.write(config or "")
    if config is None:
        os.unlink(CONFIG)  # no file at all; the cleanup puts back what was there
    before = all_links()

    result = run_hook(name, "prepare", xml)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in lines[0]
    assert all_links() == before
    assert link_info(stand_in_nic.name)["master"] is None


def test_libvirt_refuses_the_start_with_the_line(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic):
    uplink = uplink_name()
    kh_config(lab_config(stand_in_nic.name, uplink, unique_name("ktbr"),
                         domains='["web-*"]'))
    before = all_links()
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [
        Iface(guest_mac(), "bridge", uplink)]), cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    assert f"domain {dom.name()}: may not use uplink '{uplink}'" in str(refused.value)
    assert not dom.isActive()
    assert all_links() == before


def test_native_source_that_disagrees_is_refused_with_apply_hint(libvirt_conn, cleanup,
                                                                 kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    uplink = up.name
    other = StandInNic(cleanup)
    iface = Iface(guest_mac(), "direct", uplink, "bridge", native=True, source=other.name)
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    message = str(refused.value)
    assert f"domain {dom.name()} interface {iface.mac}: source dev is '{other.name}'" in message
    assert f"'{stand_in_nic.name}'" in message and f"kvmhooks apply {dom.name()}" in message
