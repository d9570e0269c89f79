"""Fault injection with the real kernel: the Nth netlink change of an apply fails, for every
N; afterwards the host's links, addresses and routes are exactly as before, and the error
names the step that failed."""

from __future__ import annotations

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from kvmhooks.apply import apply
from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.errors import ApplyError
from kvmhooks.planner import plan_prepare
from tests.lab.domains import Iface
from tests.lab.links import host_state
from tests.lab.names import guest_mac, pick_subnet
from tests.lab.nic import StandInNic
from tests.lab.plans import planned_domain
from tests.lab.uplinks import lab_uplink

pytestmark = pytest.mark.system

CHANGES = ("link", "addr", "route")  # the IPRoute calls that change the host


class FailingIPRoute:
    """Passes every call to the real IPRoute, but makes the Nth change fail."""

    def __init__(self, real, fail_at: int | None):
        self.real, self.fail_at, self.changes = real, fail_at, 0

    def __getattr__(self, name):
        method = getattr(self.real, name)
        if name not in CHANGES:
            return method

        def call(command, *args, **kwargs):
            if command in ("dump", "get", "show"):
                return method(command, *args, **kwargs)
            self.changes += 1
            if self.changes == self.fail_at:
                raise NetlinkError(95, f"injected failure of change {self.changes}")
            return method(command, *args, **kwargs)
        return call


def test_every_failed_step_leaves_the_host_as_it_was(cleanup, subnet):
    other = pick_subnet()
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2))
    up = lab_uplink(cleanup, nic.name, bridge=True, host_address=subnet.addr(5))
    uplink, bridge = up.name, up.bridge
    config = parse(up.table.encode(), "faults.toml")
    ifaces = [Iface(guest_mac(), "bridge", uplink), Iface(guest_mac(), "bridge", uplink),
              Iface(guest_mac(), "direct", uplink, "private"),
              Iface(guest_mac(), "direct", uplink, "vepa")]
    domain = planned_domain(cleanup, ifaces)
    names = {nic.name, bridge, *(i.hook_owned_dev for i in ifaces)}

    with HostSession("faults") as session:
        netlink = session.netlink
        # A route through the NIC, which enslaving must move.
        netlink.ipr.route("add", dst=str(other.network), gateway=subnet.ip(2),
                          oif=netlink.index(nic.name))
        before = host_state(netlink, names)
        plan = plan_prepare(domain, config, session.scan(config))
        real = netlink.ipr
        counting = FailingIPRoute(real, None)
        netlink.ipr = counting
        apply(plan.actions, netlink, "count")
        netlink.ipr = real
        total = counting.changes
        assert host_state(netlink, names) != before
        for action in reversed(plan.actions):  # back to the start by the plan's own undo
            apply([action.undo()], netlink, "reset")
        assert host_state(netlink, names) == before

        failed_steps = set()
        for fail_at in range(1, total + 1):
            netlink.ipr = FailingIPRoute(real, fail_at)
            with pytest.raises(ApplyError) as failure:
                apply(plan.actions, netlink, f"fault {fail_at}")
            netlink.ipr = real
            assert f"injected failure of change {fail_at}" in str(failure.value)
            assert failure.value.failed_step in [a.describe() for a in plan.actions]
            assert str(failure.value).startswith(f"{failure.value.failed_step} failed: ")
            assert failure.value.undo_failures == ()
            assert host_state(netlink, names) == before, f"after a failure at change {fail_at}"
            failed_steps.add(failure.value.failed_step)
    assert total >= len(plan.actions) + 10, "creates are several changes each"
    assert failed_steps == {a.describe() for a in plan.actions}, "every step failed once"
