"""Hook calls (hookclient triage, then dispatch) on paths that need neither config nor
netlink nor libvirt."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from .builders import MAC1, domain_xml, meta, native_bridge
from .hookcalls import hook_call


class Unreadable(io.BytesIO):
    def read(self, *args):
        raise AssertionError("the hook read stdin")


@pytest.mark.parametrize("operation", ["start", "started", "stopped"])
def test_nothing_to_do_returns_without_reading_stdin(operation, capsys):
    stdout = io.BytesIO()
    assert hook_call("qemu", ["web1", operation, "begin", "-"], Unreadable(), stdout) == 0
    assert stdout.getvalue() == b""
    assert capsys.readouterr() == ("", "")


HEAVY = ("lxml", "pyroute2", "libvirt", "pyudev", "kvmhooks.netlink", "kvmhooks.virt",
         "kvmhooks.engine", "kvmhooks.dispatch")


@pytest.mark.parametrize("trigger, name, operations", [
    ("qemu", "web1", ("start", "started", "stopped")),
    ("network", "default", ("started", "port-created", "port-deleted", "updated")),
])
def test_calls_with_nothing_to_do_import_nothing_heavy(trigger, name, operations):
    script = (
        "import sys\n"
        "from kvmhooks import hookclient\n"
        f"for op in {operations!r}:\n"
        f"    assert hookclient.main([{trigger!r}, {name!r}, op, 'begin', '-']) == 0\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("operation", ["migrate", "restore"])
def test_untagged_domain_gets_no_output(operation, capsys):
    # libvirt takes any output, even its own XML echoed, as a rewrite and taints the domain.
    xml = domain_xml(native_bridge(MAC1, "br0")).encode()
    stdout = io.BytesIO()
    assert hook_call("qemu", ["web1", operation, "begin", "-"], io.BytesIO(xml), stdout) == 0
    assert stdout.getvalue() == b""
    assert capsys.readouterr().err == ""


def test_unknown_operation_exits_0_with_one_line(capsys):
    assert hook_call("qemu", ["web1", "teleport", "begin", "-"], Unreadable(), io.BytesIO()) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "teleport" in err and "web1" in err


@pytest.mark.parametrize("argv", [[], ["web1"]])
def test_missing_arguments_exit_2(argv, capsys):
    assert hook_call("qemu", argv, Unreadable(), io.BytesIO()) == 2
    assert capsys.readouterr().err.startswith("kvmhooks: usage:")


def test_release_of_untagged_domain_without_record_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    stdout = io.BytesIO()
    xml = domain_xml(native_bridge(MAC1, "br0")).encode()
    assert hook_call("qemu", ["web1", "release", "end", "-"], io.BytesIO(xml), stdout) == 0
    assert stdout.getvalue() == b"" and capsys.readouterr() == ("", "")


def test_tagged_domain_without_native_changes_gets_no_output(capsys):
    xml = domain_xml(native_bridge(MAC1, "br0")).replace(
        "<devices>", '<metadata><k:net xmlns:k="urn:kvmhooks:net:1"/></metadata><devices>')
    stdout = io.BytesIO()
    assert hook_call("qemu", ["web1", "restore", "begin", "-"], io.BytesIO(xml.encode()),
                     stdout) == 0
    assert stdout.getvalue() == b""


def test_prepare_of_untagged_domain_does_nothing(capsys):
    xml = domain_xml(native_bridge(MAC1, "br0")).encode()
    assert hook_call("qemu", ["web1", "prepare", "begin", "-"], io.BytesIO(xml), io.BytesIO()) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("operation, status", [
    ("prepare", 2), ("migrate", 2), ("reconnect", 0), ("attach", 0)])
def test_bad_metadata_is_one_line_and_reconnect_never_fails(operation, status, capsys,
                                                            monkeypatch):
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")
    xml = domain_xml(meta(MAC1, "bridge"), native_bridge(MAC1, "br0")).encode()
    stdout = io.BytesIO()
    assert hook_call("qemu", ["web1", operation, "begin", "-"], io.BytesIO(xml), stdout) == status
    err = capsys.readouterr().err
    assert err == f"kvmhooks: domain web1 interface {MAC1}: type 'bridge' needs uplink\n"
    assert stdout.getvalue() == b""


# --- the network hook ---------------------------------------------------------------------

HOOK_DATA = (b'<hookData><network><name>host-bridge</name><forward mode="bridge"/>'
             b'<bridge name="br-lan"/></network></hookData>')


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    """A host without a kvmhooks config, and no syslog: nothing reaches netlink."""
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")


@pytest.mark.parametrize("operation", ["started", "port-created", "port-deleted", "updated",
                                       "plugged", "teleport"])
def test_network_operations_other_than_start_and_stopped_read_nothing(operation, capsys):
    assert hook_call("network", ["host-bridge", operation, "begin", "-"], Unreadable()) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("argv", [[], ["host-bridge"]])
def test_network_hook_missing_arguments_exit_2(argv, capsys):
    assert hook_call("network", argv, Unreadable()) == 2
    assert capsys.readouterr().err.startswith("kvmhooks: usage: network ")


@pytest.mark.parametrize("operation, sub", [("start", "begin"), ("stopped", "end")])
@pytest.mark.parametrize("name, data", [
    ("host-bridge", HOOK_DATA),
    ("default", b'<hookData><network><name>default</name><forward mode="nat"/>'
                b'<bridge name="virbr0"/></network></hookData>'),
])
def test_host_without_config_is_left_alone(operation, sub, name, data, no_config, capsys):
    assert hook_call("network", [name, operation, sub, "-"], io.BytesIO(data)) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("operation, sub, status", [("start", "begin", 2),
                                                    ("stopped", "end", 0)])
def test_malformed_hook_data_is_one_line(operation, sub, status, no_config, tmp_path,
                                         monkeypatch, capsys):
    config = tmp_path / "kvmhooks.toml"
    config.write_text('[uplink.lan]\nnic = "eth1"\nbridge = "br-lan"\n'
                      '[network.host-bridge]\nuplink = "lan"\n')
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(config))
    data = io.BytesIO(b"<hookData><network><name>host-bridge</name>")
    assert hook_call("network", ["host-bridge", operation, sub, "-"], data) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("kvmhooks: network host-bridge: malformed XML")


@pytest.mark.parametrize("broken", ['[uplink.lan]\nnic = "eth1"\nbrige = "br-lan"\n',
                                    '[uplink.lan]\nnic = [\n'], ids=["typo", "syntax"])
@pytest.mark.parametrize("operation, sub", [("start", "begin"), ("stopped", "end")])
def test_a_broken_config_fails_only_the_networks_it_names(broken, operation, sub, no_config,
                                                          tmp_path, monkeypatch, capsys):
    config = tmp_path / "kvmhooks.toml"
    config.write_text(broken + '\n[network.host-bridge]\nuplink = "lan"\n')
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(config))
    default = (b'<hookData><network><name>default</name><forward mode="nat"/>'
               b'<bridge name="virbr0"/></network></hookData>')
    assert hook_call("network", ["default", operation, sub, "-"], io.BytesIO(default)) == 0
    assert capsys.readouterr() == ("", "")
    status = hook_call("network", ["host-bridge", operation, sub, "-"], io.BytesIO(HOOK_DATA))
    err = capsys.readouterr().err
    assert status == (2 if operation == "start" else 0)
    if operation == "start":
        assert err.count("\n") == 1 and err.startswith(f"kvmhooks: {config}")
