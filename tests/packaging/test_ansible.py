"""deploy/ansible: the playbooks parse, and the role's config template gives every host of
the example inventory a config that `kvmhooks check-config` accepts. (The role runs for
real against two host VMs in the vm tier, tests/vm/test_two_hosts.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.lab.commands import kvmhooks

pytestmark = pytest.mark.system  # where ansible-core is: the current tier's virtualenv

ANSIBLE = Path(__file__).resolve().parents[2] / "deploy" / "ansible"
ROLE = ANSIBLE / "roles" / "kvmhooks"


@pytest.mark.parametrize("playbook", ["site.yml", "preflight.yml"])
def test_the_playbook_parses(playbook):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "--syntax-check",
         "-i", str(ANSIBLE / "inventory.example.yml"), str(ANSIBLE / playbook),
         "-e", "domain=web1 source=kvmhost-a destination=kvmhost-b"],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def render(host: str, host_vars: dict) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                                     trim_blocks=True, keep_trailing_newline=True)
    environment.filters["to_json"] = json.dumps  # Ansible's filter, as the role uses it
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return environment.get_template("kvmhooks.toml.j2").render(
        {"kvmhooks_uplinks": defaults["kvmhooks_uplinks"],
         "kvmhooks_networks": defaults["kvmhooks_networks"], **host_vars,
         "ansible_managed": "Ansible managed", "inventory_hostname": host})


def test_the_example_inventory_gives_each_host_a_valid_config(tmp_path):
    tmp_path.chmod(0o700)  # check-config refuses a file others may replace
    hosts = yaml.safe_load((ANSIBLE / "inventory.example.yml").read_text())["kvm_hosts"]
    assert len(hosts["hosts"]) == 3
    for host, host_vars in hosts["hosts"].items():
        config = tmp_path / f"{host}.toml"
        config.write_text(render(host, host_vars))
        checked = kvmhooks("check-config", str(config))
        assert checked.returncode == 0, f"{host}: {checked.stderr}\n{config.read_text()}"
        uplinks = len(host_vars["kvmhooks_uplinks"])
        assert f"({uplinks} uplink" in checked.stdout, checked.stdout
