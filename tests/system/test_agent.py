"""The hooks' two paths with a real libvirtd: through the agent, and in-process where no
agent listens; both do the same work."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import libvirt
import pytest

from kvmhooks import state
from tests.lab.daemons import AGENT_SOCKET, agent_pid, process_gone, start_agent, waits_for_a_lock
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_exists, link_info
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define, define_and_start
from tests.lab.wait import wait_for

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


def test_a_stopped_agent_answers_the_call_in_hand_before_it_leaves(libvirt_conn, cleanup,
                                                                  kh_config, stand_in_nic):
    """SIGTERM, what `systemctl stop` and an upgrade's restart send, lands while the agent
    runs a guest's prepare: the start succeeds, the agent leaves once it has answered,
    and calls made meanwhile run in-process."""
    pid = agent_pid()
    assert pid, "the lab runs an agent (scripts/lab-setup starts it)"
    cleanup.add(lambda: agent_pid() or start_agent(), _what="start the kvmhooks agent again")
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "private")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]), cleanup)
    failures: list[libvirt.libvirtError] = []

    def start() -> None:
        try:
            dom.create()
        except libvirt.libvirtError as error:
            failures.append(error)

    starting = threading.Thread(target=start)
    with state.host_lock():  # the agent's prepare waits here: the stop lands mid-call
        starting.start()
        host_lock = os.path.join(state.state_directory(), "lock")
        wait_for(lambda: waits_for_a_lock(pid, host_lock), 30,
                 what="the agent's prepare waiting for the host lock")
        os.kill(pid, signal.SIGTERM)
        time.sleep(1)
        assert not process_gone(pid), "the agent left with a call in hand"
        assert not AGENT_SOCKET.exists(), "new calls must not reach the leaving agent"
    starting.join(120)
    assert not starting.is_alive() and failures == []
    assert dom.isActive()
    assert link_info(iface.hook_owned_dev)["mode"] == "private"
    wait_for(lambda: process_gone(pid), 30, what="the agent to leave after answering")
    dom.destroy()  # release, in-process
    assert not link_exists(iface.hook_owned_dev)
