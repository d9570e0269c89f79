"""`kvmhooks install`: the files a non-RPM install puts on the host.

Everything to write is computed first (pure), then one thin loop writes it under a root
prefix that tests point at a temporary directory. The RPM ships the same files rendered
for its own layout (hooks/, udev/, packaging/ in the source tree; a unit test keeps them
equal to RPM_LAYOUT's rendering).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .names import IGNORED_NAME_GLOBS, OWN_NAME_GLOBS, REFUSED_NAME_GLOB

HOOK_PATH = "etc/libvirt/hooks/{kind}.d/kvmhooks"
RULE_PATH = "usr/lib/udev/rules.d/90-kvmhooks.rules"
NIC_UNIT_PATH = "usr/lib/systemd/system/kvmhooks-nic@.service"
AGENT_SOCKET_PATH = "usr/lib/systemd/system/kvmhooks-agent.socket"
AGENT_SERVICE_PATH = "usr/lib/systemd/system/kvmhooks-agent.service"
LINK_PATH = "usr/lib/systemd/network/10-kvmhooks.link"


@dataclass(frozen=True)
class Layout:
    """How the installed files reach kvmhooks."""

    interpreter: str  # the Python that has kvmhooks
    client: str  # hookclient.py, run with `-I -S` (standard library only)
    command: str  # the kvmhooks command line


RPM_LAYOUT = Layout("/usr/bin/python3", "/usr/libexec/kvmhooks/hookclient.py",
                    "/usr/bin/kvmhooks")


def local_layout() -> Layout:
    """For the Python running this: a virtualenv, or a pip install without the RPM."""
    client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hookclient.py")
    return Layout(sys.executable, client, f"{sys.executable} -I -m kvmhooks")


# The hooks are shell scripts: libvirt calls the qemu hook five times per start and stop,
# and three of those calls have nothing to do; the rest go to hookclient.py.
QEMU_HOOK = """\
#!/bin/sh
# libvirt qemu hook (installed as /etc/libvirt/hooks/qemu.d/kvmhooks): kvmhooks.
# start, started and stopped have nothing to do: answered before any Python starts.
case "$2" in start|started|stopped) exit 0 ;; esac
exec {interpreter} -I -S {client} qemu "$@"
"""

NETWORK_HOOK = """\
#!/bin/sh
# libvirt network hook (installed as /etc/libvirt/hooks/network.d/kvmhooks): kvmhooks.
case "$2" in start|stopped) ;; *) exit 0 ;; esac
exec {interpreter} -I -S {client} network "$@"
"""

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

# The rule only starts the work: through the service where systemd runs; elsewhere
# through hookclient.py, which hands the event to the agent or handles it in a detached
# process. Each event gets its own service instance (SEQNUM), and the handler collapses
# bursts itself. Devices whose names kvmhooks or libvirt give their own never are uplink
# NICs: ignoring them keeps our own work from making events. No device type is ignored:
# an uplink's NIC may be a VLAN, a bond or a bridge.
#
# The unit takes its instance verbatim (%i): unescaping it (%I) would turn a '-' of the
# name into '/'. systemd carries letters, digits and ':_.-' in a unit name as they are
# (udev cannot escape the others): a name with '+' goes through hookclient.py and the
# agent even where systemd runs.
RULE_TEMPLATE = """\
# kvmhooks: a NIC that appears, is renamed or goes away -> `kvmhooks nic-event`.
# NetworkManager leaves kvmhooks' guest devices and shims unmanaged (on every event: udev
# keeps no property from one event to the next).
SUBSYSTEM=="net", KERNEL=="{own_names}", ENV{{NM_UNMANAGED}}="1"
ACTION!="add|move|remove", GOTO="kvmhooks_end"
SUBSYSTEM!="net", GOTO="kvmhooks_end"
# kvmhooks' and libvirt's own devices, loopback, and names kvmhooks refuses
KERNEL=="{ignored_names}", GOTO="kvmhooks_end"
# names systemd carries in a unit name as they are
TEST=="/run/systemd/system", KERNEL!="{not_unit_name}", \\
  RUN+="{start_service}", \\
  GOTO="kvmhooks_end"
RUN+="{interpreter} -I -S {client} nic-event $env{{ACTION}} %k"
LABEL="kvmhooks_end"
"""

NOT_A_UNIT_NAME_GLOB = "*[!A-Za-z0-9_.-]*"  # ':' is no part of an interface name
START_SERVICE = ("/usr/bin/systemctl --no-block start "
                 "kvmhooks-nic@$env{ACTION}:%k:$env{SEQNUM}.service")

# Type=oneshot has no start timeout unless one is set. The handler bounds each of its
# own waits (every libvirt call, the detach, libvirt's return), and may wait for one
# other handler's turn before its own: this is the backstop above both.
NIC_EVENT_TIMEOUT = 600

NIC_UNIT_TEMPLATE = """\
[Unit]
Description=kvmhooks: bring back what lives on a NIC after its event (%i)
After=libvirtd.service virtqemud.service virtnetworkd.service kvmhooks-agent.socket
# An instance per event (ACTION:IFNAME:SEQNUM): none stays behind, failed or not.
CollectMode=inactive-or-failed

[Service]
Type=oneshot
ExecStart={command} nic-event %i
TimeoutStartSec={timeout}
"""

AGENT_SOCKET_TEXT = """\
[Unit]
Description=kvmhooks agent socket: the fast path of the libvirt hooks

[Socket]
ListenStream=/run/kvmhooks/agent.sock
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""

AGENT_SERVICE_TEMPLATE = """\
[Unit]
Description=kvmhooks agent: the engine, kept warm for libvirt hooks and NIC events
Requires=kvmhooks-agent.socket
After=kvmhooks-agent.socket

[Service]
ExecStart={command} agent
"""


@dataclass(frozen=True)
class InstalledFile:
    path: str  # relative to the root
    text: str
    mode: int


def rule_text(layout: Layout) -> str:
    return RULE_TEMPLATE.format(interpreter=layout.interpreter, client=layout.client,
                                start_service=START_SERVICE,
                                own_names="|".join(OWN_NAME_GLOBS),
                                ignored_names="|".join((*IGNORED_NAME_GLOBS,
                                                        REFUSED_NAME_GLOB)),
                                not_unit_name=NOT_A_UNIT_NAME_GLOB)


def nic_unit_text(layout: Layout) -> str:
    return NIC_UNIT_TEMPLATE.format(command=layout.command, timeout=NIC_EVENT_TIMEOUT)


def planned_files(layout: Layout) -> list[InstalledFile]:
    hook = {"interpreter": layout.interpreter, "client": layout.client}
    return [
        InstalledFile(HOOK_PATH.format(kind="qemu"), QEMU_HOOK.format(**hook), 0o755),
        InstalledFile(HOOK_PATH.format(kind="network"), NETWORK_HOOK.format(**hook), 0o755),
        InstalledFile(RULE_PATH, rule_text(layout), 0o644),
        InstalledFile(NIC_UNIT_PATH, nic_unit_text(layout), 0o644),
        InstalledFile(AGENT_SOCKET_PATH, AGENT_SOCKET_TEXT, 0o644),
        InstalledFile(AGENT_SERVICE_PATH,
                      AGENT_SERVICE_TEMPLATE.format(command=layout.command), 0o644),
        InstalledFile(LINK_PATH, LINK_TEXT, 0o644),
    ]


def install(root: str = "/", layout: Layout | None = None) -> list[str]:
    """Write every file whose content differs; returns one line per file."""
    lines = []
    for item in planned_files(layout or local_layout()):
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
