"""hookclient: triage without imports, the agent's wire format, and one call served by
the agent over a socket pair (no root, no netlink)."""

from __future__ import annotations

import io
import os
import socket
import threading

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
    assert qemu("migrate", UNTAGGED) == Answer(stdout=UNTAGGED)
    assert qemu("restore", UNTAGGED) == Answer(stdout=UNTAGGED)


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
