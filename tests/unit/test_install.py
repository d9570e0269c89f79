"""install.planned_files / install.install under a temporary root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kvmhooks import install
from kvmhooks.names import hook_owned_name, is_candidate, shim_name
from tests.lab.ruleflow import event_command, rule_env

REPO = Path(__file__).resolve().parents[2]
QEMU_HOOK = "etc/libvirt/hooks/qemu.d/kvmhooks"


VENV = install.Layout("/opt/venv/bin/python", "/opt/venv/src/kvmhooks/hookclient.py",
                      "/opt/venv/bin/python -I -m kvmhooks")
SYSTEM = install.Layout("/usr/bin/python3", "/usr/lib/kvmhooks/hookclient.py",
                        "/usr/bin/kvmhooks")


def test_install_writes_executable_shell_hooks(tmp_path):
    lines = install.install(root=str(tmp_path), layout=VENV)
    hook = tmp_path / QEMU_HOOK
    assert f"installed {hook}" in lines
    assert os.stat(hook).st_mode & 0o777 == 0o755
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'case "$2" in start|started|stopped) exit 0 ;; esac' in text
    assert text.endswith('exec /opt/venv/bin/python -I -S /opt/venv/src/kvmhooks/hookclient.py '
                         'qemu "$@"\n')
    assert not list(hook.parent.glob("*.kvmhooks-new"))


def test_install_is_idempotent(tmp_path):
    first = install.install(root=str(tmp_path), layout=SYSTEM)
    second = install.install(root=str(tmp_path), layout=SYSTEM)
    assert all(line.startswith("installed ") for line in first)
    assert second == [line.replace("installed ", "unchanged ", 1) for line in first]


def test_install_repairs_mode_and_content(tmp_path):
    install.install(root=str(tmp_path), layout=SYSTEM)
    hook = tmp_path / QEMU_HOOK
    hook.chmod(0o644)
    assert f"installed {hook}" in install.install(root=str(tmp_path), layout=SYSTEM)
    assert os.stat(hook).st_mode & 0o777 == 0o755
    assert f"installed {hook}" in install.install(root=str(tmp_path), layout=VENV)
    assert "/opt/venv/bin/python -I -S" in hook.read_text()


def test_install_leaves_an_administrators_own_qemu_hook_alone(tmp_path):
    own = tmp_path / "etc/libvirt/hooks/qemu"
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\nexit 0\n")
    install.install(root=str(tmp_path), layout=SYSTEM)
    assert own.read_text() == "#!/bin/sh\nexit 0\n"


def test_local_layout_points_at_this_python_and_package():
    layout = install.local_layout()
    assert os.path.isfile(layout.client) and layout.client.endswith("kvmhooks/hookclient.py")
    assert layout.command.endswith("-I -m kvmhooks")


def test_source_tree_files_are_the_rpm_rendering():
    # hooks/, udev/ and packaging/ hold what the RPM installs; `install` renders the same
    # templates for the Python that runs it.
    rendered = {item.path: item for item in install.planned_files(install.RPM_LAYOUT)}
    tree = {
        "etc/libvirt/hooks/qemu.d/kvmhooks": REPO / "hooks" / "qemu",
        "etc/libvirt/hooks/network.d/kvmhooks": REPO / "hooks" / "network",
        install.RULE_PATH: REPO / "udev" / "90-kvmhooks.rules",
        install.NIC_UNIT_PATH: REPO / "packaging" / "kvmhooks-nic@.service",
        install.AGENT_SOCKET_PATH: REPO / "packaging" / "kvmhooks-agent.socket",
        install.AGENT_SERVICE_PATH: REPO / "packaging" / "kvmhooks-agent.service",
        install.LINK_PATH: REPO / "packaging" / "10-kvmhooks.link",
    }
    assert set(tree) == set(rendered)
    for path, source in tree.items():
        assert source.read_text() == rendered[path].text, path
        assert source.stat().st_mode & 0o777 == rendered[path].mode, path


def test_install_renders_commands_for_its_layout(tmp_path):
    install.install(root=str(tmp_path), layout=VENV)
    rule = (tmp_path / install.RULE_PATH).read_text()
    assert ('RUN+="/opt/venv/bin/python -I -S /opt/venv/src/kvmhooks/hookclient.py '
            'nic-event $env{ACTION} %k"') in rule
    unit = (tmp_path / install.NIC_UNIT_PATH).read_text()
    # %i: the instance verbatim (%I would turn a '-' of the NIC's name into '/')
    assert "ExecStart=/opt/venv/bin/python -I -m kvmhooks nic-event %i" in unit
    agent = (tmp_path / install.AGENT_SERVICE_PATH).read_text()
    assert "ExecStart=/opt/venv/bin/python -I -m kvmhooks agent" in agent
    network = (tmp_path / "etc/libvirt/hooks/network.d/kvmhooks").read_text()
    assert 'case "$2" in start|stopped) ;; *) exit 0 ;; esac' in network


# --- the udev rule's filter and names.is_candidate say the same -----------------------------

RULE_PROBES = [
    # kvmhooks' and libvirt's own names, and names kvmhooks refuses
    "kh5254006b3c01", "kh-lan", "kh-", "vnet0", "vnet12", "macvtap3", "virbr0", "virbr1-nic",
    "lo", "a$b", "a*b", "a b", "a\\b", "é0", "a'b", 'a"b',
    # host NICs of every kind, named alike or not
    "eth0", "eno1", "ens32", "ens32.100", "br-lan", "bond0", "ktnic0", "k", "k0", "kh",
    "khan0", "kheth1", "khlan", "kh5254006b3c0", "kh5254006b3c0g", "kh5254006b3c012",
    "vnet", "vnetwork", "vne", "macvtap", "macvtapx", "virb", "virbrick", "lo0", "a+b"]


def _shipped() -> tuple[str, str]:
    files = {item.path: item.text for item in install.planned_files(install.RPM_LAYOUT)}
    return files[install.RULE_PATH], files[install.NIC_UNIT_PATH]


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no-systemd"])
def test_rule_lets_through_exactly_the_candidates(systemd):
    rule, unit = _shipped()
    for name in RULE_PROBES:
        handled = event_command(rule, unit, "add", name, 1, systemd=systemd) is not None
        assert handled == is_candidate(name), name


@pytest.mark.parametrize("action", ["add", "move", "change", "remove"])
def test_rule_makes_exactly_kvmhooks_own_devices_unmanaged_by_networkmanager(action):
    rule, _ = _shipped()
    own = {hook_owned_name("52:54:00:6b:3c:01"), hook_owned_name("fe:00:00:00:00:0a"),
           shim_name("lan"), shim_name("uplink-1"), "kh-"}
    for name in RULE_PROBES + sorted(own):
        unmanaged = rule_env(rule, action, name).get("NM_UNMANAGED") == "1"
        assert unmanaged == (name in own), name


@pytest.mark.parametrize("devtype", ["vlan", "bridge", "bond", "wlan", "team", None])
def test_rule_ignores_no_device_type(devtype):
    # An uplink's NIC may be of any type: `nic = "ens32.100"` names a VLAN.
    rule, unit = _shipped()
    assert "DEVTYPE" not in rule
    for systemd in (True, False):
        assert event_command(rule, unit, "add", "ens32.100", 1, systemd=systemd,
                             devtype=devtype) is not None


def test_nic_unit_gives_up_only_after_the_handlers_own_bounds():
    # Type=oneshot has no start timeout unless one is set; the handler bounds each of
    # its waits, and a handler may wait for one other handler's turn before its own.
    _, unit = _shipped()
    timeouts = re.findall(r"^TimeoutStartSec=(\d+)$", unit, re.MULTILINE)
    assert len(timeouts) == 1, "the NIC unit sets no TimeoutStartSec"
    from kvmhooks import virt
    from kvmhooks.engine import nic
    listing = 3 * virt.CALL_TIMEOUT  # connect, list domains, one domain's XML at worst
    replug = 3 * virt.CALL_TIMEOUT + virt.DETACH_TIMEOUT + virt.CALL_TIMEOUT
    one_turn = nic.LIBVIRT_WAIT + listing + replug
    assert int(timeouts[0]) >= 2 * one_turn
