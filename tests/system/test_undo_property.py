"""Property, on the real kernel: for generated hosts and domains, applying the prepare plan
and then the undo of each step in reverse brings the host's links, addresses and routes
back exactly to what they were."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmhooks.apply import apply
from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.planner import plan_prepare
from tests.lab.cleanup import Cleanup
from tests.lab.domains import Iface
from tests.lab.links import create_bridge, delete_link_later, host_state
from tests.lab.names import guest_mac, pick_subnet, unique_name
from tests.lab.nic import StandInNic
from tests.lab.plans import planned_domain
from tests.lab.uplinks import lab_uplink

pytestmark = pytest.mark.system

hosts = st.fixed_dictionaries({
    "bridged": st.booleans(),
    "bridge_exists": st.booleans(),
    "nic_address": st.booleans(),
    "route": st.booleans(),
    "shim": st.booleans(),
    "nic_down": st.booleans(),
})
attachments = st.lists(st.sampled_from([("bridge", None), ("direct", "bridge"),
                                        ("direct", "private"), ("direct", "vepa")]),
                       min_size=0, max_size=4)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(host=hosts, wanted=attachments)
def test_apply_then_undo_restores_the_host(libvirt_conn, host, wanted):
    if not host["bridged"]:
        wanted = [a for a in wanted if a[0] != "bridge"]
    with Cleanup() as cleanup:
        subnet, other = pick_subnet(), pick_subnet()
        nic = StandInNic(cleanup, None, subnet.addr(1) if host["nic_address"] else None,
                         subnet.addr(2))
        bridge = unique_name("ktbr")
        delete_link_later(cleanup, bridge)
        up = lab_uplink(cleanup, nic.name, bridge=host["bridged"] and bridge,
                        host_address=subnet.addr(5) if host["shim"] else None)
        uplink = up.name
        config = parse(up.table.encode(), "property.toml")
        ifaces = [Iface(guest_mac(), kind, uplink, mode) for kind, mode in wanted]
        domain = planned_domain(cleanup, ifaces)
        names = {nic.name, bridge, *(i.hook_owned_dev for i in ifaces)}
        with HostSession("property") as session:
            netlink = session.netlink
            if host["route"] and host["nic_address"]:
                netlink.ipr.route("add", dst=str(other.network), gateway=subnet.ip(2),
                                  oif=netlink.index(nic.name))
            if host["bridged"] and host["bridge_exists"]:
                create_bridge(bridge, cleanup)
            if host["nic_down"]:
                netlink.set_state(nic.name, False)
            before = host_state(netlink, names)
            plan = plan_prepare(domain, config, session.scan(config))
            done = apply(plan.actions, netlink, "property")
            assert done == list(plan.actions)
            apply([action.undo() for action in reversed(done)], netlink, "property undo")
            assert host_state(netlink, names) == before
