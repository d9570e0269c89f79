"""The engine as the hook client runs it where no agent listens, in this interpreter with
its libraries: the one test file every tier runs whole, the EL9 floor (Python 3.9,
pyroute2 0.5.14, pyudev 0.22) included. Real links on the real kernel and real packets
to a LAN namespace; no libvirtd, installed hook, agent or udev rule takes part: the
config and the state directory are the test's own, which no handler on this host reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmhooks import hookclient
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import KERNEL_MODE, link_exists, link_index, link_info, ping
from tests.lab.names import guest_mac, tap_mac, unique_name
from tests.lab.nic import udev_events_held
from tests.lab.uplinks import lab_uplink
from tests.lab.wait import wait_for

pytestmark = [pytest.mark.system, pytest.mark.floor]

CLIENT = Path(hookclient.__file__)


@pytest.fixture
def engine_env(tmp_path):
    """The environment of a hook call that reads the test's config and keeps its
    records in the test's state directory, where no agent listens."""
    env = {"PATH": os.environ["PATH"], "KVMHOOKS_STATE_DIR": str(tmp_path / "state"),
           "KVMHOOKS_CONFIG": str(tmp_path / "kvmhooks.toml")}
    return env


def write_config(env: dict, table: str) -> None:
    Path(env["KVMHOOKS_CONFIG"]).write_text(table)
    os.chmod(env["KVMHOOKS_CONFIG"], 0o644)


def hook(env: dict, name: str, operation: str, xml: str,
         sub: str = "begin") -> subprocess.CompletedProcess:
    """The qemu hook call, as the installed hook makes it (``-I -S``), in this
    interpreter."""
    return subprocess.run([sys.executable, "-I", "-S", str(CLIENT), "qemu", name, operation,
                           sub, "-"], input=xml.encode(), capture_output=True, env=env)


def nic_event(env: dict, action: str, nic: str) -> subprocess.CompletedProcess:
    """What kvmhooks-nic@.service runs for a NIC event, in this interpreter."""
    return subprocess.run([sys.executable, "-m", "kvmhooks", "nic-event", action, nic],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2])


@pytest.fixture
def started(cleanup, stand_in_nic, subnet, engine_env):
    """A tagged domain prepared through the in-process engine: a bridged uplink with a
    shim, one tap and two macvtaps (bridge and private mode) on its bridge."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    write_config(engine_env, up.table)
    ifaces = [Iface(guest_mac(), "bridge", up.name),
              Iface(guest_mac(), "direct", up.name, "bridge"),
              Iface(guest_mac(), "direct", up.name, "private")]
    name = unique_name("kt-dom-")
    xml = domain_xml(name, ifaces)
    cleanup.add(hook, engine_env, name, "release", xml, "end", _what=f"release {name}")
    prepared = hook(engine_env, name, "prepare", xml)
    assert (prepared.returncode, prepared.stdout, prepared.stderr) == (0, b"", b"")
    return up, ifaces, name, xml


def assert_host_side(up, nic: str, subnet) -> None:
    """The NIC is a port of the uplink's bridge, which holds the NIC's address; the shim
    is on the bridge with the host address; the LAN answers through both."""
    assert link_info(nic)["master"] == up.bridge
    assert subnet.addr(1) in link_info(up.bridge)["addresses"]
    shim = link_info(up.shim)
    assert (shim["kind"], shim["mode"], shim["link"]) == ("macvlan", "bridge",
                                                          link_index(up.bridge))
    assert subnet.addr(5) in shim["addresses"]
    wait_for(lambda: ping(subnet.ip(2)), 10, what="the LAN host to answer the host")


def test_prepare_builds_every_device_and_release_removes_them(started, stand_in_nic, subnet,
                                                               engine_env):
    up, ifaces, name, xml = started
    assert_host_side(up, stand_in_nic.name, subnet)
    tap, bridged, private = (link_info(i.hook_owned_dev) for i in ifaces)
    assert (tap["kind"], tap["master"], tap["mac"], tap["up"]) == (
        "tun", up.bridge, tap_mac(ifaces[0].mac), True)
    for info, iface in ((bridged, ifaces[1]), (private, ifaces[2])):
        assert (info["kind"], info["mode"], info["link"], info["mac"]) == (
            "macvtap", KERNEL_MODE.get(iface.mode, iface.mode), link_index(up.bridge),
            iface.mac)
        assert info["alias"].startswith("kvmhooks:guest:")

    released = hook(engine_env, name, "release", xml, "end")
    assert (released.returncode, released.stderr) == (0, b"")
    assert [i.hook_owned_dev for i in ifaces if link_exists(i.hook_owned_dev)] == []
    # The shared devices stay for the next guest.
    assert_host_side(up, stand_in_nic.name, subnet)


def test_a_nic_flap_is_repaired(started, stand_in_nic, subnet, engine_env):
    up, ifaces, _, _ = started
    # No handler on this host knows the test's uplink; held events keep it that way while
    # the NIC comes back with its address, as a network manager would bring it.
    with udev_events_held():
        stand_in_nic.unplug()
        assert not link_exists(stand_in_nic.name)
        stand_in_nic.plug()
    assert link_info(stand_in_nic.name)["master"] is None

    handled = nic_event(engine_env, "add", stand_in_nic.name)
    assert (handled.returncode, handled.stderr) == (0, "")
    assert_host_side(up, stand_in_nic.name, subnet)
    assert subnet.addr(1) not in link_info(stand_in_nic.name)["addresses"]
    # The guests' devices sat on the bridge all along.
    assert all(link_info(i.hook_owned_dev)["link" if i.kind == "direct" else "master"]
               in (link_index(up.bridge), up.bridge) for i in ifaces)
