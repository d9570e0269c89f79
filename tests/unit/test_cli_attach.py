"""`kvmhooks attach` on the command line, with the engine's attach replaced: the usage
lines, and the Attachment and the line of a success. tests/system/test_cli.py runs the real
command against libvirtd."""

from __future__ import annotations

import logging

import pytest

from kvmhooks import cli
from kvmhooks.domain import Attachment

from .builders import MAC1


@pytest.fixture
def attached(monkeypatch):
    """What the command line hands the engine's attach: (domain, attachment, native)."""
    calls = []
    monkeypatch.setattr("kvmhooks.engine.admin.attach",
                        lambda *args: calls.append(args))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")
    logger = logging.getLogger("kvmhooks")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield calls
    logger.handlers[:], logger.propagate = handlers, propagate


@pytest.mark.parametrize("args, attachment, line", [
    (["--type", "bridge", "--uplink", "lan", "--vlan", "10", "--trunk", "21,20"],
     Attachment(MAC1, "bridge", uplink="lan", vlan=10, trunk=(20, 21)),
     "(bridge, vlan 10, trunk 20-21, hook-owned)"),
    (["--type", "bridge", "--uplink", "lan", "--trunk", "30,20-22,4094"],
     Attachment(MAC1, "bridge", uplink="lan", trunk=(20, 21, 22, 30, 4094)),
     "(bridge, trunk 20-22,30,4094, hook-owned)"),
    (["--type", "direct", "--uplink", "lan", "--mode", "private", "--vlan", "4094",
      "--native"],
     Attachment(MAC1, "direct", uplink="lan", mode="private", vlan=4094),
     "(direct, mode private, vlan 4094, native)"),
    (["--type", "bridge", "--uplink", "lan"], Attachment(MAC1, "bridge", uplink="lan"),
     "(bridge, hook-owned)"),
])
def test_vlans_reach_the_attachment_and_the_line(attached, capsys, args, attachment, line):
    assert cli.main(["attach", "web1", "--mac", MAC1, *args]) == 0
    assert attached == [("web1", attachment, "--native" in args)]
    assert capsys.readouterr().out == \
        f"domain web1: interface {MAC1} attached to uplink lan {line}\n"


@pytest.mark.parametrize("args, line", [
    (["--type", "direct", "--uplink", "lan", "--trunk", "20"],
     "--trunk applies only to --type bridge"),
    (["--type", "network", "--network", "default", "--trunk", "20"],
     "--trunk applies only to --type bridge"),
    (["--type", "network", "--network", "default", "--vlan", "10"],
     "--vlan applies only to --type bridge or direct"),
    (["--type", "bridge", "--uplink", "lan", "--vlan", "4095"],
     f"domain web1 interface {MAC1}: vlan '4095' is not a VLAN ID (1-4094)"),
    (["--type", "bridge", "--uplink", "lan", "--trunk", "10,,20"],
     f"domain web1 interface {MAC1}: trunk '' is not a VLAN ID (1-4094)"),
    (["--type", "bridge", "--uplink", "lan", "--trunk", "10-5"],
     f"domain web1 interface {MAC1}: trunk range '10-5' runs backwards"),
    (["--type", "bridge", "--uplink", "lan", "--vlan", "10", "--trunk", "5-15"],
     f"domain web1 interface {MAC1}: VLAN 10 is both the access VLAN (vlan) and in the "
     "trunk"),
])
def test_bad_vlans_are_one_usage_line_and_exit_2(attached, capsys, args, line):
    assert cli.main(["attach", "web1", "--mac", MAC1, *args]) == 2
    assert attached == [], "refused before the engine is called"
    assert capsys.readouterr() == ("", f"kvmhooks: {line}\n")
