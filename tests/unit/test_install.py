"""install.planned_files / install.install under a temporary root."""

from __future__ import annotations

import os
import re
from fnmatch import fnmatchcase
from pathlib import Path

from kvmhooks import install
from kvmhooks.names import IGNORED_DEVTYPES, IGNORED_NAME_GLOBS
from kvmhooks.nic import is_candidate

REPO = Path(__file__).resolve().parents[2]
QEMU_HOOK = "etc/libvirt/hooks/qemu.d/kvmhooks"


def test_install_writes_an_executable_qemu_hook(tmp_path):
    lines = install.install(root=str(tmp_path), interpreter="/opt/venv/bin/python")
    hook = tmp_path / QEMU_HOOK
    assert f"installed {hook}" in lines
    assert os.stat(hook).st_mode & 0o777 == 0o755
    text = hook.read_text()
    assert text.startswith("#!/opt/venv/bin/python -I\n")
    assert "from kvmhooks.hooks import qemu_main" in text
    assert not list(hook.parent.glob("*.kvmhooks-new"))


def test_install_is_idempotent(tmp_path):
    first = install.install(root=str(tmp_path), interpreter="/usr/bin/python3")
    second = install.install(root=str(tmp_path), interpreter="/usr/bin/python3")
    assert all(line.startswith("installed ") for line in first)
    assert second == [line.replace("installed ", "unchanged ", 1) for line in first]


def test_install_repairs_mode_and_content(tmp_path):
    install.install(root=str(tmp_path), interpreter="/usr/bin/python3")
    hook = tmp_path / QEMU_HOOK
    hook.chmod(0o644)
    assert f"installed {hook}" in install.install(root=str(tmp_path),
                                                  interpreter="/usr/bin/python3")
    assert os.stat(hook).st_mode & 0o777 == 0o755
    assert f"installed {hook}" in install.install(root=str(tmp_path),
                                                  interpreter="/usr/bin/python3.12")
    assert hook.read_text().startswith("#!/usr/bin/python3.12 -I\n")


def test_install_leaves_an_administrators_own_qemu_hook_alone(tmp_path):
    own = tmp_path / "etc/libvirt/hooks/qemu"
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\nexit 0\n")
    install.install(root=str(tmp_path), interpreter="/usr/bin/python3")
    assert own.read_text() == "#!/bin/sh\nexit 0\n"


def test_repo_hook_is_the_generated_shim():
    assert (REPO / "hooks" / "qemu").read_text() == install.hook_shim("qemu", "/usr/bin/python3")


def test_source_tree_files_are_the_rpm_rendering():
    # hooks/, udev/ and packaging/ hold what the RPM installs; `install` renders the same
    # templates for the Python that runs it.
    rendered = {item.path: item.text for item in install.planned_files(
        install.RPM_INTERPRETER, install.RPM_COMMAND)}
    tree = {
        "etc/libvirt/hooks/qemu.d/kvmhooks": REPO / "hooks" / "qemu",
        "etc/libvirt/hooks/network.d/kvmhooks": REPO / "hooks" / "network",
        install.RULE_PATH: REPO / "udev" / "90-kvmhooks.rules",
        install.UNIT_PATH: REPO / "packaging" / "kvmhooks-nic@.service",
        install.LINK_PATH: REPO / "packaging" / "10-kvmhooks.link",
    }
    assert set(tree) == set(rendered)
    for path, source in tree.items():
        assert source.read_text() == rendered[path], path


def test_install_renders_commands_for_its_interpreter(tmp_path):
    install.install(root=str(tmp_path), interpreter="/opt/venv/bin/python")
    rule = (tmp_path / install.RULE_PATH).read_text()
    assert 'RUN+="/opt/venv/bin/python -I -m kvmhooks nic-event --detach' in rule
    unit = (tmp_path / install.UNIT_PATH).read_text()
    assert "ExecStart=/opt/venv/bin/python -I -m kvmhooks nic-event %I" in unit
    network = tmp_path / "etc/libvirt/hooks/network.d/kvmhooks"
    assert network.read_text().startswith("#!/opt/venv/bin/python -I\n")
    assert network.stat().st_mode & 0o777 == 0o755


# --- the udev rule's filter and nic.is_candidate say the same -----------------------------

def _rule_list(key: str) -> list[str]:
    rule = install.rule_text(install.RPM_COMMAND)
    found = re.findall(r"^" + re.escape(key) + r'=="([^"]*)", GOTO="kvmhooks_end"$', rule,
                       re.MULTILINE)
    assert len(found) == 1, f"one {key}== line expected in the rule"
    return found[0].split("|")


def test_rule_kernel_names_are_the_ignored_names():
    patterns = _rule_list("KERNEL")
    assert patterns == list(IGNORED_NAME_GLOBS)
    # Same meaning too: a name the rule lets through is a candidate, and the reverse.
    probes = {glob.rstrip("*") + tail for glob in IGNORED_NAME_GLOBS
              for tail in ("", "0", "-x")}
    probes |= {"eth0", "eno1", "ens32", "ktnic0", "k", "virb", "vne"}
    for name in sorted(probes):
        rule_ignores = any(fnmatchcase(name, p) for p in patterns)
        assert rule_ignores == (not is_candidate(name, None)), name


def test_rule_devtypes_are_the_ignored_devtypes():
    assert sorted(_rule_list("ENV{DEVTYPE}")) == sorted(IGNORED_DEVTYPES)
