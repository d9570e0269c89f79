"""install.planned_files / install.install under a temporary root."""

from __future__ import annotations

import os
from pathlib import Path

from kvmhooks import install

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
