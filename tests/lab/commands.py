"""kvmhooks as the tests drive it from outside: its command line, its installed hooks run
as libvirt runs them, and the per-domain records it keeps in its state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

QEMU_HOOK = Path("/etc/libvirt/hooks/qemu.d/kvmhooks")
NETWORK_HOOK = Path("/etc/libvirt/hooks/network.d/kvmhooks")
HOOKS = (QEMU_HOOK, NETWORK_HOOK)
STATE_DIR = Path("/run/kvmhooks")


def kvmhooks(*args: str, check: bool = False,
             stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the kvmhooks command line of this checkout (text output)."""
    return subprocess.run([sys.executable, "-m", "kvmhooks", *args], capture_output=True,
                          text=True, check=check, input=stdin)


def run_hook(domain: str, operation: str, xml: bytes | str,
             sub: str = "begin") -> subprocess.CompletedProcess:
    """Run the installed qemu hook as libvirt does: no environment but PATH, the
    domain XML on stdin."""
    data = xml.encode() if isinstance(xml, str) else xml
    return subprocess.run([str(QEMU_HOOK), domain, operation, sub, "-"], input=data,
                          capture_output=True, env={"PATH": os.environ["PATH"]})


def record(uuid: str) -> dict | None:
    """kvmhooks' record of what prepare built for domain ``uuid``, or None."""
    try:
        with open(STATE_DIR / "domains" / f"{uuid}.json") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None
