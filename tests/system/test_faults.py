"""Fault injection with the real kernel: the Nth netlink change of an apply fails, for every
N; afterwards the host's links, addresses and routes are exactly as before (with every
property: lifetimes, flags, metrics, route protocols and flags, MTUs), and the error names
the step that failed."""

from __future__ import annotations

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from kvmhooks.apply import apply
from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.errors import ApplyError
from kvmhooks.planner import plan_prepare, plan_uplinks
from kvmhooks.resolve import resolve_affected
from tests.lab.domains import Iface
from tests.lab.faults import InterceptedIPRoute
from tests.lab.links import host_differences, host_state
from tests.lab.names import guest_mac, pick_subnet, pick_subnet6
from tests.lab.nic import (
    IFA_F_MANAGETEMPADDR,
    IFA_F_NOPREFIXROUTE,
    RTPROT_DHCP,
    RTPROT_RA,
    NicAddress,
    NicRoute,
    StandInNic,
)
from tests.lab.plans import planned_domain
from tests.lab.uplinks import lab_uplink

pytestmark = [pytest.mark.system, pytest.mark.floor]



def fail(change: int) -> None:
    raise NetlinkError(95, f"injected failure of change {change}")


@pytest.mark.parametrize("trigger", ["prepare", "nic-event"])
def test_every_failed_step_leaves_the_host_as_it_was(trigger, cleanup, subnet):
    """prepare: a bridge made over a jumbo NIC that carries an IPv6 address with lifetimes
    and NetworkManager's flags, a gateway route, an onlink route and a router's route; a
    shim and guest devices. nic-event: that NIC came back holding its addresses, which its
    bridge holds."""
    other, v6 = pick_subnet(), pick_subnet6()
    routes = (NicRoute(str(other.network), subnet.ip(254)),
              NicRoute(str(pick_subnet().network), other.ip(1), onlink=True,
                       proto=RTPROT_DHCP, metric=50),
              NicRoute(str(v6.network), proto=RTPROT_RA, metric=100))
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2), mtu=9000, routes=routes,
                     addresses=(NicAddress(v6.addr(1), valid=4000, preferred=3000,
                                           flags=IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE),))
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
        if trigger == "nic-event":
            apply(plan_prepare(domain, config, session.scan(config)).actions, netlink,
                  "bridge first")
            nic.recreate(routes=())  # with its addresses; its routes are the bridge's now
            inventory = session.scan(config)
            plan = plan_uplinks(resolve_affected(config, inventory, nic.name), config,
                                inventory)
        else:
            plan = plan_prepare(domain, config, session.scan(config))
        before = host_state(names)
        real = netlink.ipr
        counting = InterceptedIPRoute(real, None, fail)
        netlink.ipr = counting
        apply(plan.actions, netlink, "count")
        netlink.ipr = real
        total = counting.changes
        assert host_differences(before, host_state(names)) != []
        for action in reversed(plan.actions):  # back to the start by the plan's own undo
            apply([action.undo()], netlink, "reset")
        assert host_differences(before, host_state(names)) == []

        failed_steps = set()
        for fail_at in range(1, total + 1):
            netlink.ipr = InterceptedIPRoute(real, fail_at, fail)
            with pytest.raises(ApplyError) as failure:
                apply(plan.actions, netlink, f"fault {fail_at}")
            netlink.ipr = real
            assert f"injected failure of change {fail_at}" in str(failure.value)
            assert failure.value.failed_step in [a.describe() for a in plan.actions]
            assert str(failure.value).startswith(f"{failure.value.failed_step} failed: ")
            assert failure.value.undo_failures == ()
            assert host_differences(before, host_state(names)) == [], \
                f"after a failure at change {fail_at}"
            failed_steps.add(failure.value.failed_step)
    if trigger == "prepare":
        assert total >= len(plan.actions) + 10, "creates are several changes each"
    assert failed_steps == {a.describe() for a in plan.actions}, "every step failed once"
