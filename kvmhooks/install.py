"""`kvmhooks install`: the files a non-RPM install puts on the host.

Everything to write is computed first (pure), then one thin loop writes it under a root
prefix that tests point at a temporary directory. The RPM ships the same files, rendered
for /usr/bin (hooks/, udev/, packaging/ in the source tree; a unit test keeps them equal).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .names import IGNORED_DEVTYPES, IGNORED_NAME_GLOBS

HOOK_ENTRY_POINTS = {"qemu": "qemu_main", "network": "network_main"}
HOOK_PATH = "etc/libvirt/hooks/{kind}.d/kvmhooks"
RULE_PATH = "usr/lib/udev/rules.d/90-kvmhooks.rules"
UNIT_PATH = "usr/lib/systemd/system/kvmhooks-nic@.service"
LINK_PATH = "usr/lib/systemd/network/10-kvmhooks.link"
RPM_INTERPRETER = "/usr/bin/python3"
RPM_COMMAND = "/usr/bin/kvmhooks"

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

# The rule only starts the work: through the service where systemd runs, as a detached
# process where it does not. Each event gets its own service instance (SEQNUM), and the
# handler collapses bursts itself. kvmhooks' own devices, libvirt's taps and macvtaps
# and bridges never are uplink NICs: ignoring them keeps our own work from making events.
RULE_TEMPLATE = """\
# kvmhooks: a NIC that appears, is renamed or goes away -> `kvmhooks nic-event`.
ACTION!="add|move|remove", GOTO="kvmhooks_end"
SUBSYSTEM!="net", GOTO="kvmhooks_end"
KERNEL=="{ignored_names}", GOTO="kvmhooks_end"
ENV{{DEVTYPE}}=="{ignored_devtypes}", GOTO="kvmhooks_end"
TEST=="/run/systemd/system", \\
  RUN+="{start_service}", \\
  GOTO="kvmhooks_end"
RUN+="{command} nic-event --detach $env{{ACTION}} %k"
LABEL="kvmhooks_end"
"""

START_SERVICE = ("/usr/bin/systemctl --no-block start "
                 "kvmhooks-nic@$env{ACTION}:%k:$env{SEQNUM}.service")

UNIT_TEMPLATE = """\
[Unit]
Description=kvmhooks: bring back what lives on a NIC after its event (%I)
Documentation=man:kvmhooks(1)
After=libvirtd.service virtqemud.service virtnetworkd.service

[Service]
Type=oneshot
ExecStart={command} nic-event %I
"""


@dataclass(frozen=True)
class InstalledFile:
    path: str  # relative to the root
    text: str
    mode: int


def hook_shim(kind: str, interpreter: str) -> str:
    """The hook executable: a few lines that hand argv and stdin to kvmhooks.hooks."""
    entry = HOOK_ENTRY_POINTS[kind]
    return (f"#!{interpreter} -I\n"
            f'"""libvirt {kind} hook (installed as /{HOOK_PATH.format(kind=kind)})."""\n'
            "import sys\n\n"
            f"from kvmhooks.hooks import {entry}\n\n"
            f"sys.exit({entry}(sys.argv[1:]))\n")


def rule_text(command: str) -> str:
    return RULE_TEMPLATE.format(command=command, start_service=START_SERVICE,
                                ignored_names="|".join(IGNORED_NAME_GLOBS),
                                ignored_devtypes="|".join(IGNORED_DEVTYPES))


def planned_files(interpreter: str, command: str) -> list[InstalledFile]:
    """command runs the kvmhooks command line: /usr/bin/kvmhooks, or INTERPRETER -m."""
    hooks = [InstalledFile(HOOK_PATH.format(kind=kind), hook_shim(kind, interpreter), 0o755)
             for kind in HOOK_ENTRY_POINTS]
    return hooks + [
        InstalledFile(RULE_PATH, rule_text(command), 0o644),
        InstalledFile(UNIT_PATH, UNIT_TEMPLATE.format(command=command), 0o644),
        InstalledFile(LINK_PATH, LINK_TEXT, 0o644),
    ]


def install(root: str = "/", interpreter: str | None = None) -> list[str]:
    """Write every file whose content differs; returns one line per file."""
    interpreter = interpreter or sys.executable
    lines = []
    for item in planned_files(interpreter, f"{interpreter} -I -m kvmhooks"):
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
