"""The hooks' two paths with a real libvirtd: through the agent, and in-process where no
agent listens; both do the same work."""

from __future__ import annotations

import os
import socket

import pytest

from tests.lab.daemons import AGENT_SOCKET, agent_pid
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_exists, link_info
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start

pytestmark = pytest.mark.system


def start_tagged_guest(libvirt_conn, cleanup, kh_config, nic):
    up = lab_uplink(cleanup, nic.name)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "private")
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    return dom, iface


def prepare_records(syslog, mark: int, dom) -> list[str]:
    return [text for _, text in syslog.since(mark)
            if f"domain {dom.name()} qemu prepare: create macvtap" in text]


def test_hooks_go_through_the_agent(libvirt_conn, cleanup, kh_config, stand_in_nic, syslog):
    mark = len(syslog.records)
    dom, iface = start_tagged_guest(libvirt_conn, cleanup, kh_config, stand_in_nic)
    assert link_info(iface.hook_owned_dev)["mode"] == "private"
    records = prepare_records(syslog, mark, dom)
    assert records and records[0].startswith(f"kvmhooks[{agent_pid()}]:"), records
    dom.destroy()
    assert not link_exists(iface.hook_owned_dev)


def test_hooks_work_in_process_without_the_agent(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic, syslog, no_agent):
    mark = len(syslog.records)
    dom, iface = start_tagged_guest(libvirt_conn, cleanup, kh_config, stand_in_nic)
    assert link_info(iface.hook_owned_dev)["mode"] == "private"
    records = prepare_records(syslog, mark, dom)
    assert len(records) == 1, records
    dom.destroy()
    assert not link_exists(iface.hook_owned_dev)


def test_the_agent_socket_is_root_only():
    assert oct(os.stat(AGENT_SOCKET).st_mode & 0o777) == "0o600"
    child = os.fork()
    if child == 0:  # as nobody: the connection is refused
        status = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(AGENT_SOCKET))
        except PermissionError:
            status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 3
