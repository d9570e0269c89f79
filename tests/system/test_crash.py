"""A hook killed (SIGKILL) in the middle of prepare: `status` shows the orphans kvmhooks
owns, `apply` removes them, and a new start converges with nothing doubled. A plan killed
before any one of its netlink changes (prepare, NIC event): the next plan converges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback

import pytest

from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.planner import plan_prepare, plan_uplinks
from kvmhooks.resolve import resolve_affected
from tests.lab.commands import QEMU_HOOK, kvmhooks
from tests.lab.domains import Iface, domain_xml
from tests.lab.faults import InterceptedIPRoute
from tests.lab.links import (
    delete_link_later,
    host_differences,
    host_state,
    link_exists,
    link_info,
    marked_links,
)
from tests.lab.names import guest_mac, pick_subnet, pick_subnet6, unique_name
from tests.lab.nic import NicAddress, NicRoute, StandInNic
from tests.lab.plans import planned_domain
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define

pytestmark = pytest.mark.system


def kill_in_the_middle(name: str, xml: str, devices: list[str], attempts: int = 8) -> list[str]:
    """Run prepare as libvirt would (in-process: no agent), freeze it once it has built
    some but not all devices, kill it; returns the devices it left."""
    for _ in range(attempts):
        hook = subprocess.Popen([QEMU_HOOK, name, "prepare", "begin", "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hook.stdin.write(xml.encode())
        hook.stdin.close()
        deadline = time.monotonic() + 30
        # Past the first device, so that at least one is complete when the kill comes.
        while sum(os.path.exists(f"/sys/class/net/{d}") for d in devices) < 2:
            if hook.poll() is not None or time.monotonic() > deadline:
                break
        hook.send_signal(signal.SIGSTOP)
        hook.kill()
        hook.wait()
        # After the kill: a tap caught before it was made persistent goes with its process.
        left = [d for d in devices if os.path.exists(f"/sys/class/net/{d}")]
        if 0 < len(left) < len(devices):
            return left
        subprocess.run([QEMU_HOOK, name, "release", "end", "-"], input=xml.encode(), check=True)
    pytest.fail(f"no attempt stopped prepare half way in {attempts} tries")


def orphan_rows(name: str) -> list[dict]:
    rows = json.loads(kvmhooks("status", "--json").stdout)
    return [row for row in rows if row["domain"] == name and row["state"] == "orphan"]


def test_killed_prepare_leaves_orphans_that_apply_removes_and_a_start_converges(
        libvirt_conn, cleanup, kh_config, stand_in_nic, no_agent):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink = up.name
    ifaces = [Iface(guest_mac(), "bridge", uplink) for _ in range(6)] + \
        [Iface(guest_mac(), "direct", uplink, "bridge") for _ in range(6)]
    devices = [iface.hook_owned_dev for iface in ifaces]
    for device in devices:
        delete_link_later(cleanup, device)
    name = unique_name("kt-dom-")
    xml = domain_xml(name, ifaces)
    dom = define(libvirt_conn, xml, cleanup)

    left = kill_in_the_middle(name, xml, devices)
    orphans = orphan_rows(name)
    assert sorted(row["device"] for row in orphans) == sorted(left)
    applied = kvmhooks("apply")
    assert applied.returncode == 0, applied.stderr
    assert not any(link_exists(device) for device in left)
    assert orphan_rows(name) == []

    kill_in_the_middle(name, xml, devices)
    dom.create()  # a new start over what the killed one left
    for iface in ifaces:
        info = link_info(iface.hook_owned_dev)
        assert info is not None and info["alias"] == f"kvmhooks:guest:{dom.UUIDString()}"
    macs = [link_info(n)["mac"] for n in marked_links(f"kvmhooks:guest:{dom.UUIDString()}")]
    assert len(macs) == len(ifaces) == len(set(macs)), "nothing doubled"
    assert orphan_rows(name) == []
    dom.destroy()
    assert not marked_links(f"kvmhooks:guest:{dom.UUIDString()}")


# --- a plan killed between any two of its netlink changes ---------------------------------

def _apply(make_plan, config, context: str, intercept=None) -> tuple:
    """Plan on the host as it is and apply, as a hook or NIC event would (host lock,
    creation journal); returns the plan and the number of changes it made."""
    with HostSession(context) as session, session.locked():
        plan = make_plan(session.scan(config))
        counter = InterceptedIPRoute(session.netlink.ipr, *(intercept or (None, None)))
        session.netlink.ipr = counter
        session.apply(plan.actions)
    return plan, counter.changes


def _killed_at(make_plan, config, kill_at: int) -> int:
    """Run the plan in a child killed (SIGKILL) just before its change kill_at; returns
    0 when the plan ended before that change, the signal otherwise."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _apply(make_plan, config, "killed",
                   (kill_at, lambda _: os.kill(os.getpid(), signal.SIGKILL)))
            code = 0
        except BaseException:  # noqa: BLE001 - the parent reports the exit status
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status)
    assert os.WEXITSTATUS(status) == 0, f"the plan failed before change {kill_at}"
    return 0


@pytest.mark.floor
@pytest.mark.parametrize("trigger", ["prepare", "nic-event"])
def test_a_plan_killed_between_any_two_changes_converges_at_the_next(
        trigger, cleanup, subnet, tmp_path, monkeypatch):
    """Enslaving (addresses, routes, the NIC), the bridge, the shim and guest devices:
    after a kill before any one netlink change, the next plan for the host as the kill
    left it ends where an uninterrupted plan ends. For a NIC event, the NIC came back
    holding the addresses its bridge holds."""
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path / "state"))
    v6, other = pick_subnet6(), pick_subnet()
    route = NicRoute(str(other.network), subnet.ip(254))
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2), routes=(route,),
                     addresses=(NicAddress(v6.addr(1), valid=4000, preferred=3000),))
    up = lab_uplink(cleanup, nic.name, bridge=True, host_address=subnet.addr(5))
    config = parse(up.table.encode(), "killed.toml")
    ifaces = [Iface(guest_mac(), "bridge", up.name), Iface(guest_mac(), "bridge", up.name),
              Iface(guest_mac(), "direct", up.name, "bridge")]
    domain = planned_domain(cleanup, ifaces)
    names = {nic.name, up.bridge, *(iface.hook_owned_dev for iface in ifaces)}

    def prepare(inventory):
        return plan_prepare(domain, config, inventory)

    def nic_event(inventory):
        return plan_uplinks(resolve_affected(config, inventory, nic.name), config, inventory)

    make_plan = prepare
    if trigger == "nic-event":
        _apply(prepare, config, "bridge first")
        nic.recreate(routes=())  # with its addresses; its route is the bridge's now
        make_plan = nic_event
    initial = host_state(names)
    plan, total = _apply(make_plan, config, "uninterrupted")
    final = host_state(names)
    assert host_differences(initial, final) != []

    def reset():
        with HostSession("reset") as session, session.locked():
            session.apply([action.undo() for action in reversed(plan.actions)])
        assert host_differences(initial, host_state(names)) == [], "reset"

    reset()
    for kill_at in range(1, total + 2):
        if _killed_at(make_plan, config, kill_at) == 0:
            break
        _apply(make_plan, config, f"after a kill before change {kill_at}")
        differences = host_differences(final, host_state(names))
        assert differences == [], f"killed before change {kill_at} of {total}: " + \
            "; ".join(differences)
        reset()
    assert kill_at == total + 1, "every change was reached"
