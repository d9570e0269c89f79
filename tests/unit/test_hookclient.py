"""hookclient: triage without imports, the agent's wire format, and one call served by
the agent over a socket pair (no root, no netlink)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmhooks import agent, hookclient
from kvmhooks.hookclient import Answer, Work, triage

from .hookcalls import hook_call

TAGGED = b"""<domain><name>web1</name><uuid>0f3c4b9e-55a8-4c61-8d2a-7c1e2b3a4d5e</uuid>
<metadata><kh:net xmlns:kh="urn:kvmhooks:net:1">
<kh:interface mac="52:54:00:6b:3c:01" uplink="lan" type="bridge"/></kh:net></metadata>
<devices><interface type="ethernet"><mac address="52:54:00:6b:3c:01"/>
<target dev="kh5254006b3c01" managed="no"/></interface></devices></domain>"""
UNTAGGED = b"<domain><name>web1</name><uuid>0f3c4b9e-55a8-4c61-8d2a-7c1e2b3a4d5e</uuid></domain>"


def qemu(operation: str, data: bytes = b""):
    return triage("qemu", ["web1", operation, "begin", "-"], io.BytesIO(data))


@pytest.mark.parametrize("operation", ["start", "started", "stopped"])
def test_calls_with_nothing_to_do_do_not_read_stdin(operation):
    class Unreadable(io.BytesIO):
        def read(self, *args):
            raise AssertionError("stdin was read")
    assert triage("qemu", ["web1", operation, "begin", "-"], Unreadable()) == Answer()


def test_untagged_domains_need_no_engine():
    assert qemu("prepare", UNTAGGED) == Answer()
    assert qemu("release", UNTAGGED) == Answer()
    assert qemu("migrate", UNTAGGED) == Answer()  # any output would taint the domain
    assert qemu("restore", UNTAGGED) == Answer()


@pytest.mark.parametrize("operation", ["prepare", "release", "migrate", "restore",
                                       "reconnect", "attach"])
def test_tagged_domains_need_the_engine(operation):
    assert qemu(operation, TAGGED) == Work(TAGGED)


def test_release_of_an_untagged_domain_with_a_record_needs_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    (tmp_path / "domains").mkdir()
    (tmp_path / "domains" / "0f3c4b9e-55a8-4c61-8d2a-7c1e2b3a4d5e.json").write_text("{}")
    assert qemu("release", UNTAGGED) == Work(UNTAGGED)
    assert qemu("prepare", UNTAGGED) == Answer()


def test_unknown_operations_and_missing_arguments():
    assert qemu("frobnicate") == Answer(stderr="qemu hook: ignoring unknown operation "
                                               "'frobnicate' for domain web1")
    assert triage("qemu", ["web1"], io.BytesIO()).status == 2
    assert triage("network", [], io.BytesIO()).status == 2
    assert triage("elsewhere", [], io.BytesIO()).status == 2


def test_network_hook_work_is_start_and_stopped_only():
    data = b"<hookData><network><name>lan</name></network></hookData>"
    assert triage("network", ["lan", "start", "begin", "-"], io.BytesIO(data)) == Work(data)
    assert triage("network", ["lan", "stopped", "end", "-"], io.BytesIO(data)) == Work(data)
    assert triage("network", ["lan", "port-created", "begin", "-"], io.BytesIO(data)) == \
        Answer()


@pytest.mark.parametrize("argv, ok", [
    (["add", "eth0"], True), (["remove", "ens32"], True), (["move", "eno1"], True),
    (["plug", "eth0"], False), (["add"], False), (["add", "../eth0"], False),
    (["add", "a-name-much-too-long"], False), (["add", "eth0", "x"], False),
    (["add", "lan-nic"], True), (["add", "ens32.100"], True), (["add", "a+b"], True),
    (["move", "x_y-z.1+2"], True), (["add", "a b"], False), (["add", "a:b"], False)])
def test_nic_events_are_checked_before_anything_runs(argv, ok):
    answer = triage("nic-event", argv, io.BytesIO())
    assert isinstance(answer, Work) == ok
    if not ok:
        assert answer.status == 2


def test_wire_format_round_trip():
    stream = io.BytesIO()
    hookclient.send_message(stream, {"trigger": "qemu", "argv": ["a", "b"]}, b"<x/>\n\0")
    stream.seek(0)
    assert hookclient.read_message(stream) == (
        {"trigger": "qemu", "argv": ["a", "b"], "size": 6}, b"<x/>\n\0")
    assert hookclient.read_message(io.BytesIO()) is None


def test_no_agent_means_no_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    assert hookclient.ask_agent("qemu", ["web1", "prepare"], TAGGED) is None


def test_the_agent_serves_a_call_and_reports_its_error(tmp_path, monkeypatch):
    # The config is missing: the engine refuses the tagged domain with exit status 2.
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", str(tmp_path / "no-log"))
    server, client = socket.socketpair()
    thread = threading.Thread(target=agent._serve_one, args=(server,))
    thread.start()
    with client, client.makefile("rwb") as stream:
        hookclient.send_message(stream, {"trigger": "qemu",
                                         "argv": ["web1", "prepare", "begin", "-"]}, TAGGED)
        header, stdout = hookclient.read_message(stream)
    thread.join(10)
    assert (header["status"], stdout) == (2, b"")
    assert header["stderr"] == f"{tmp_path / 'absent.toml'}: config file not found"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000) | st.builds(
    lambda head, tail: head + hookclient.NAMESPACE.encode() + tail,
    st.binary(max_size=1000), st.binary(max_size=1000)) | st.just(TAGGED),
       operation=st.sampled_from(["reconnect", "attach", "release"]),
       extra=st.lists(st.text(max_size=20), max_size=3))
def test_reconnect_attach_and_release_never_fail(data, operation, extra, tmp_path_factory):
    # No config: whatever gets as far as the engine stops there, before the host.
    state = tmp_path_factory.mktemp("state")
    saved = {key: os.environ.get(key) for key in ("KVMHOOKS_CONFIG", "KVMHOOKS_STATE_DIR")}
    os.environ.update(KVMHOOKS_CONFIG=str(state / "absent.toml"), KVMHOOKS_STATE_DIR=str(state))
    try:
        err = io.StringIO()
        status = hook_call("qemu", ["web1", operation, "begin", *extra], stdin=io.BytesIO(data),
                                 stdout=io.BytesIO(), stderr=err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert status == 0
    assert len(err.getvalue().splitlines()) <= 1 and "Traceback" not in err.getvalue()


# --- the agent failing under the client: never a traceback, never a killed guest ----------

def _serve_once(path, behaviour):
    """A stand-in agent on `path` that accepts one call, reads it, then misbehaves."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run():
        connection, _ = server.accept()
        with connection:
            stream = connection.makefile("rwb")
            hookclient.read_message(stream)
            behaviour(connection, stream)
        server.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _close(connection, stream):
    stream.close()


def _reset(connection, stream):
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _hang(connection, stream):
    time.sleep(2)


def _reply(raw: bytes):
    def write(connection, stream):
        stream.write(raw)
        stream.flush()
    return write


AGENT_FAILURES = {
    "closed": _close,
    "reset": _reset,
    "timeout": _hang,
    "not-json": _reply(b"{status: 0\n"),
    "no-status": _reply(b'{"stderr": "", "size": 0}\n'),
    "status-not-a-number": _reply(b'{"status": "ok", "stderr": "", "size": 0}\n'),
    "short-payload": _reply(b'{"status": 0, "stderr": "", "size": 100}\n<domain/>'),
    "not-an-object": _reply(b'[0]\n'),
}


def _client(argv: list[str], data: bytes, monkeypatch) -> tuple[int, bytes, str]:
    stdin = io.TextIOWrapper(io.BytesIO(data))
    stdout = io.TextIOWrapper(io.BytesIO())
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    status = hookclient.main(argv)
    stdout.flush()
    return status, stdout.buffer.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("failure", sorted(AGENT_FAILURES))
@pytest.mark.parametrize("operation, status", [
    ("reconnect", 0), ("attach", 0), ("release", 0),
    ("prepare", 1), ("migrate", 1), ("restore", 1)])
def test_an_agent_that_fails_costs_one_line_and_never_a_guest(failure, operation, status,
                                                              tmp_path, monkeypatch):
    # A failed reconnect makes libvirt kill the running guest; a traceback is no answer.
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(hookclient, "AGENT_TIMEOUT", 0.5)
    thread = _serve_once(tmp_path / hookclient.AGENT_SOCKET, AGENT_FAILURES[failure])
    code, stdout, stderr = _client(["qemu", "web1", operation, "begin", "-"], TAGGED,
                                   monkeypatch)
    thread.join(5)
    assert (code, stdout) == (status, b"")
    assert len(stderr.splitlines()) == 1 and stderr.startswith("kvmhooks: domain web1: "), \
        stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("operation, status", [
    ("reconnect", 0), ("attach", 0), ("release", 0),
    ("prepare", 1), ("migrate", 1), ("restore", 1)])
def test_a_half_installed_package_costs_one_line_and_never_a_guest(operation, status,
                                                                  tmp_path):
    # The client alone, beside a package that lacks the engine, run by an interpreter
    # that has no kvmhooks of its own: the import of the in-process fallback fails.
    base_python = os.path.join(sys.base_prefix, "bin", "python3")
    package = tmp_path / "kvmhooks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(hookclient.__file__, package / "hookclient.py")
    (tmp_path / "state").mkdir()
    result = subprocess.run(
        [base_python, "-I", "-S", str(package / "hookclient.py"), "qemu", "web1",
         operation, "begin", "-"], input=TAGGED, capture_output=True,
        env={"KVMHOOKS_STATE_DIR": str(tmp_path / "state"), "PATH": os.environ["PATH"]})
    stderr = result.stderr.decode()
    assert (result.returncode, result.stdout) == (status, b""), stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("kvmhooks: domain web1: "), \
        stderr
