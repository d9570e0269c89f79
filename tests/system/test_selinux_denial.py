"""The agent's socket denied, as SELinux denies it on an EL host: the hook client runs the
call with the engine in its own process, builds and removes the same devices, and says so
in one line of the log; libvirt sees exit 0 and nothing on stdout or stderr.

The denial is real: the client runs as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
(setpriv drops them from its bounding and inheritable sets) against a socket of mode 0000,
so the kernel refuses connect(2) with EACCES, the errno a policy denial of the socket file's
write or of connectto gives. A connection that breaks off while the call is being sent is
real too: a listener that accepts and closes without reading, and a call larger than the
socket's buffer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from kvmhooks import hookclient
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import delete_link_later, link_exists, link_info, marked_links
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink

pytestmark = pytest.mark.system

CLIENT = hookclient.__file__
WITHOUT_DAC_OVERRIDE = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
                        "--bounding-set=-dac_override,-dac_read_search")


def run_client(state: str, name: str, operation: str, xml: str, sub: str = "begin",
               wrapper: tuple[str, ...] = ()) -> tuple[int, subprocess.CompletedProcess]:
    """The hook client as the installed qemu hook runs it (`python3 -I -S`, no environment
    but PATH and the state directory); returns its PID with the result."""
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-I", "-S", CLIENT, "qemu", name, operation, sub, "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "KVMHOOKS_STATE_DIR": state})
    stdout, stderr = process.communicate(xml.encode(), timeout=120)
    return process.pid, subprocess.CompletedProcess(process.args, process.returncode,
                                                    stdout, stderr)


def lines_of(syslog, mark: int, pid: int) -> list[tuple[str, str]]:
    return [(severity, text) for severity, text in syslog.since(mark)
            if text.startswith(f"kvmhooks[{pid}]: ")]


def agent_lines(syslog, mark: int, pid: int) -> list[tuple[str, str]]:
    return [(severity, text) for severity, text in lines_of(syslog, mark, pid)
            if "kvmhooks agent" in text]


@pytest.fixture
def state(tmp_path):
    """A state directory of the test's own (root-only, as kvmhooks wants it)."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


def listening_socket(cleanup, path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cleanup.add(listener.close)
    listener.bind(path)
    listener.listen(8)
    return listener


def tagged_domain(cleanup, kh_config, nic, subnet, padding: int = 0):
    """An uplink with a bridge and a shim, a domain with a tap and a macvtap on it."""
    up = lab_uplink(cleanup, nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    tap = Iface(guest_mac(), "bridge", up.name)
    macvtap = Iface(guest_mac(), "direct", up.name, "private")
    delete_link_later(cleanup, tap.hook_owned_dev, macvtap.hook_owned_dev)
    xml = domain_xml(unique_name("kt-dom-"), [tap, macvtap])
    if padding:  # a comment: the engine reads elements only
        xml = xml.replace("<devices>", f"<!-- {'x' * padding} -->\n  <devices>", 1)
    return up, tap, macvtap, xml


def test_a_denied_agent_socket_runs_every_call_in_process(cleanup, kh_config, stand_in_nic,
                                                         subnet, syslog, state):
    up, tap, macvtap, xml = tagged_domain(cleanup, kh_config, stand_in_nic, subnet)
    name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
    path = os.path.join(state, hookclient.AGENT_SOCKET)
    listener = listening_socket(cleanup, path)
    os.chmod(path, 0)

    mark = len(syslog.records)
    pids = {}
    for operation, sub in (("prepare", "begin"), ("reconnect", "begin"), ("attach", "begin")):
        pids[operation], result = run_client(state, name, operation, xml, sub,
                                             WITHOUT_DAC_OVERRIDE)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), \
            (operation, result.stderr.decode())
        assert link_info(tap.hook_owned_dev)["master"] == up.bridge
        assert link_info(macvtap.hook_owned_dev)["mode"] == "private"
    marks = marked_links()
    for device in (tap.hook_owned_dev, macvtap.hook_owned_dev, up.bridge, up.shim):
        assert device in marks, device

    pids["release"], result = run_client(state, name, "release", xml, "end",
                                         WITHOUT_DAC_OVERRIDE)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), \
        result.stderr.decode()
    assert not link_exists(tap.hook_owned_dev) and not link_exists(macvtap.hook_owned_dev)
    assert link_exists(up.bridge) and link_exists(up.shim)  # shared: kept

    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing got through to the socket
        listener.accept()
    prepared = [text for _, text in lines_of(syslog, mark, pids["prepare"])
                if f"domain {name} qemu prepare: create" in text]
    assert prepared, syslog.since(mark)
    for operation, pid in pids.items():
        said = agent_lines(syslog, mark, pid)
        assert len(said) == 1, (operation, said)
        severity, text = said[0]
        assert severity == "warning"
        assert f"domain {name}: qemu {operation}: " in text
        assert path in text and "Permission denied" in text


def test_a_call_broken_off_while_being_sent_runs_in_process_once(cleanup, kh_config,
                                                                stand_in_nic, subnet, syslog,
                                                                state):
    # Larger than a Unix socket's send buffer: the client is still sending when the
    # listener closes the connection unread, so the agent can never have had the call.
    up, tap, macvtap, xml = tagged_domain(cleanup, kh_config, stand_in_nic, subnet,
                                          padding=1024 * 1024)
    name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
    path = os.path.join(state, hookclient.AGENT_SOCKET)
    listener = listening_socket(cleanup, path)
    listener.settimeout(60)
    accepted = []

    def accept_and_close():
        connection, _ = listener.accept()
        accepted.append(connection.recv(1))  # the call had begun to arrive
        connection.close()
    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()

    mark = len(syslog.records)
    pid, result = run_client(state, name, "prepare", xml)
    thread.join(60)
    assert accepted == [b"{"]
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), \
        result.stderr.decode()
    assert link_info(tap.hook_owned_dev)["master"] == up.bridge
    assert link_info(macvtap.hook_owned_dev)["mode"] == "private"
    said = agent_lines(syslog, mark, pid)
    assert len(said) == 1 and said[0][0] == "warning", said
    assert f"domain {name}: qemu prepare: " in said[0][1] and path in said[0][1]
    created = [text for _, text in syslog.since(mark)
               if f"domain {name} qemu prepare: create" in text]
    assert created and all(text.startswith(f"kvmhooks[{pid}]: ") for text in created), created

    listener.close()  # no agent listens now: release runs in process, and says nothing of it
    pid, result = run_client(state, name, "release", xml, "end")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), \
        result.stderr.decode()
    assert not link_exists(tap.hook_owned_dev) and not link_exists(macvtap.hook_owned_dev)
    assert agent_lines(syslog, mark, pid) == []
