"""The project's Ansible playbooks (deploy/ansible) run from this machine against host VMs
over SSH, inside the LAN's namespace where the hosts' migration link is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .host import PROJECT

PLAYBOOKS = PROJECT / "deploy" / "ansible"
_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


@dataclass(frozen=True)
class PlayRun:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]  # host -> {"ok": n, "changed": n, "failed": n, ...}

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def failed(self, host: str) -> int:
        return self.recap[host]["failed"] + self.recap[host]["unreachable"]


def write_inventory(path: Path, hosts: dict[str, dict], common: dict) -> Path:
    """An inventory (JSON is YAML) with group kvm_hosts: ``hosts`` name -> host vars."""
    path.write_text(json.dumps({"kvm_hosts": {"hosts": hosts, "vars": common}}, indent=2))
    return path


def run_playbook(netns: str, inventory: Path, playbook: str, *extra: str) -> PlayRun:
    command = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
               str(PLAYBOOKS / playbook), *extra]
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"), "ANSIBLE_RETRY_FILES_ENABLED": "0",
           # A module runs over the SSH connection itself, without copying it first.
           "ANSIBLE_PIPELINING": "1"}
    done = subprocess.run(["ip", "netns", "exec", netns, *command], capture_output=True,
                          text=True, env=env, timeout=900)
    recap = {}
    for line in done.stdout.splitlines():
        if found := _RECAP.match(line.strip()):
            recap[found.group(1)] = {key: int(value) for key, value in
                                     (pair.split("=") for pair in found.group(2).split())}
    return PlayRun(done.returncode, done.stdout + done.stderr, recap)
