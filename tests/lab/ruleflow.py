"""What kvmhooks' udev rule makes of a NIC event: the command line that ends up handling
it, where systemd runs (the rule's `TEST=="/run/systemd/system"` branch: systemctl
starts kvmhooks-nic@INSTANCE.service) or elsewhere (the rule's own RUN).

No systemd runs as PID 1 on the lab machines, so the systemd branch is followed here,
step by step, with systemd's own escaping applied by `systemd-escape` (installed with
the systemd package whether or not systemd runs):

- udev goes through the rule's lines in order: a line whose matches all hold applies its
  RUN and GOTO; `KEY=="a|b"` holds when one of the shell globs matches (fnmatch), `!=`
  when none does;
- udev substitutes `$env{ACTION}`, `$env{SEQNUM}` and `%k` (the kernel name) in a RUN
  command and splits it at white space (the names kvmhooks accepts hold none);
- systemctl starts a unit whose name is not valid as `systemd-escape --mangle` turns it;
- in the unit, `%i` is the instance verbatim and `%I` the instance unescaped
  (`systemd-escape --unescape --instance`); ExecStart is split at white space.

The real systemd-udevd runs the rule's other branch on real events in the system tests.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

from kvmhooks.install import NIC_UNIT_PATH, RULE_PATH

SYSTEMD_TEST_PATH = "/run/systemd/system"
_TERM = re.compile(r'([A-Z]+(?:\{[^}]*\})?)\s*(==|!=|\+=|=)\s*"([^"]*)"')


def systemd_escape(*args: str) -> str:
    return subprocess.run(["systemd-escape", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _logical_lines(rule_text: str) -> list[str]:
    lines, pending = [], ""
    for line in rule_text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    return lines


def _holds(value: str, patterns: str) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns.split("|"))


def _applied(rule_text: str, action: str, ifname: str, seqnum: int, *, systemd: bool,
             devtype: str | None = None) -> list[list[tuple[str, str, str]]]:
    """The terms of each line the rule applies for a `net` event on ifname."""
    properties = {"ACTION": action, "SUBSYSTEM": "net", "KERNEL": ifname,
                  "ENV{DEVTYPE}": devtype or "", "ENV{SEQNUM}": str(seqnum)}
    applied, skip_to = [], None
    for line in _logical_lines(rule_text):
        terms = _TERM.findall(line)
        if skip_to is not None:
            if ("LABEL", "=", skip_to) in terms:
                skip_to = None
            continue
        holds = True
        for key, operator, value in terms:
            if key == "TEST" and operator == "==":
                assert value == SYSTEMD_TEST_PATH, f"unknown TEST in the rule: {value}"
                holds = holds and systemd
            elif operator in ("==", "!="):
                holds = holds and (_holds(properties[key], value) == (operator == "=="))
        if not holds:
            continue
        applied.append(terms)
        skip_to = next((value for key, _operator, value in terms if key == "GOTO"), None)
    return applied


def rule_runs(rule_text: str, action: str, ifname: str, seqnum: int, *,
              systemd: bool, devtype: str | None = None) -> list[list[str]]:
    """The commands (argv) the rule runs for a `net` event on ifname."""
    return [value.replace("$env{ACTION}", action).replace("$env{SEQNUM}", str(seqnum))
            .replace("%k", ifname).split()
            for terms in _applied(rule_text, action, ifname, seqnum, systemd=systemd,
                                  devtype=devtype)
            for key, _operator, value in terms if key == "RUN"]


def rule_env(rule_text: str, action: str, ifname: str) -> dict[str, str]:
    """The udev properties (ENV{...}) the rule sets for a `net` event on ifname."""
    return {key[4:-1]: value
            for terms in _applied(rule_text, action, ifname, 1, systemd=True)
            for key, operator, value in terms if key.startswith("ENV{") and operator == "="}


def unit_command(unit_text: str, unit_name: str) -> list[str]:
    """The ExecStart argv of the unit systemctl starts as unit_name."""
    started = systemd_escape("--mangle", unit_name)
    instance = started.partition("@")[2].rpartition(".")[0]
    exec_start = next(line.partition("=")[2] for line in unit_text.splitlines()
                      if line.startswith("ExecStart="))
    return exec_start.replace("%i", instance) \
        .replace("%I", systemd_escape("--unescape", "--instance", started)).split()


def event_command(rule_text: str, unit_text: str, action: str, ifname: str, seqnum: int,
                  *, systemd: bool, devtype: str | None = None) -> list[str] | None:
    """The argv that handles the event in the end (the unit's ExecStart where the rule
    starts the unit), or None when the rule lets the event pass."""
    runs = rule_runs(rule_text, action, ifname, seqnum, systemd=systemd, devtype=devtype)
    assert len(runs) <= 1, f"the rule runs several commands: {runs}"
    if not runs:
        return None
    argv = runs[0]
    if argv[0].endswith("/systemctl"):
        assert argv[1:3] == ["--no-block", "start"] and len(argv) == 4, argv
        return unit_command(unit_text, argv[3])
    return argv


def installed_event_command(action: str, ifname: str, seqnum: int, *, systemd: bool,
                            devtype: str | None = None) -> list[str] | None:
    """event_command for the rule and unit `kvmhooks install` put on this machine."""
    return event_command((Path("/") / RULE_PATH).read_text(),
                         (Path("/") / NIC_UNIT_PATH).read_text(), action, ifname, seqnum,
                         systemd=systemd, devtype=devtype)
