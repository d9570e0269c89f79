"""`kvmhooks install`: the files a non-RPM install puts on the host.

Everything to write is computed first (pure), then one thin loop writes it under a root
prefix that tests point at a temporary directory.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

HOOK_KINDS = {"qemu": "qemu_main"}
HOOK_PATH = "etc/libvirt/hooks/{kind}.d/kvmhooks"
LINK_PATH = "usr/lib/systemd/network/10-kvmhooks.link"
# udev's default MACAddressPolicy=persistent gives a new virtual link a MAC of its own
# unless userspace set one first; a tap gets its MAC only after it exists, so udev
# could overwrite it. kvmhooks' devices are named kh*; udev leaves their MACs alone.
LINK_TEXT = """\
# Installed by kvmhooks: udev keeps its hands off the MACs of kvmhooks' devices.
[Match]
OriginalName=kh*

[Link]
MACAddressPolicy=none
"""


@dataclass(frozen=True)
class InstalledFile:
    path: str  # relative to the root
    text: str
    mode: int


def hook_shim(kind: str, interpreter: str) -> str:
    """The hook executable: a few lines that hand argv and stdin to kvmhooks.hooks."""
    return (f"#!{interpreter} -I\n"
            f'"""libvirt {kind} hook (installed as /{HOOK_PATH.format(kind=kind)})."""\n'
            "import sys\n\n"
            f"from kvmhooks.hooks import {HOOK_KINDS[kind]}\n\n"
            f"sys.exit({HOOK_KINDS[kind]}(sys.argv[1:]))\n")


def planned_files(interpreter: str) -> list[InstalledFile]:
    hooks = [InstalledFile(HOOK_PATH.format(kind=kind), hook_shim(kind, interpreter), 0o755)
             for kind in HOOK_KINDS]
    return hooks + [InstalledFile(LINK_PATH, LINK_TEXT, 0o644)]


def install(root: str = "/", interpreter: str | None = None) -> list[str]:
    """Write every file whose content differs; returns one line per file."""
    lines = []
    for item in planned_files(interpreter or sys.executable):
        path = os.path.join(root, item.path)
        try:
            with open(path, encoding="utf-8") as stream:
                same = stream.read() == item.text and (os.stat(path).st_mode & 0o777) == item.mode
        except FileNotFoundError:
            same = False
        if same:
            lines.append(f"unchanged {path}")
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        temporary = path + ".kvmhooks-new"
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(item.text)
        os.chmod(temporary, item.mode)
        os.replace(temporary, path)
        lines.append(f"installed {path}")
    return lines
