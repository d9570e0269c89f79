"""Property, on the real kernel: for generated hosts and domains, applying the prepare plan
and then the undo of each step in reverse brings the host's links, addresses and routes
back exactly to what they were, with every property (lifetimes, flags, route protocols and
flags, metrics, MTUs)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvmhooks.apply import apply
from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.planner import plan_prepare
from tests.lab.cleanup import Cleanup
from tests.lab.domains import Iface
from tests.lab.links import create_bridge, delete_link_later, host_differences, host_state
from tests.lab.names import guest_mac, pick_subnet, pick_subnet6, unique_name
from tests.lab.nic import (
    IFA_F_MANAGETEMPADDR,
    RTPROT_DHCP,
    NicAddress,
    NicRoute,
    StandInNic,
)
from tests.lab.plans import planned_domain
from tests.lab.uplinks import lab_uplink

pytestmark = pytest.mark.system


hosts = st.fixed_dictionaries({
    "bridged": st.booleans(),
    "bridge_exists": st.booleans(),
    "nic_address": st.booleans(),
    "nic_address6": st.booleans(),  # an IPv6 address with lifetimes and flags
    "route": st.booleans(),
    "onlink_route": st.booleans(),
    "shim": st.booleans(),
    "nic_down": st.booleans(),
    "nic_mtu": st.sampled_from([None, 9000]),
    "uplink_mtu": st.sampled_from([None, 1400, 9000]),
    "bridge_holds_address": st.booleans(),  # as after the NIC came back holding it
})
attachments = st.lists(st.sampled_from([("bridge", None), ("direct", "bridge"),
                                        ("direct", "private"), ("direct", "vepa")]),
                       min_size=0, max_size=4)


# By name: the EL9-floor tier's hypothesis (bullseye's 5.43) predates the
# function_scoped_fixture check.
SUPPRESSED = [check for check in HealthCheck
              if check.name in ("function_scoped_fixture", "too_slow")]


@settings(max_examples=15, deadline=None, suppress_health_check=SUPPRESSED)
@given(host=hosts, wanted=attachments)
# An IPv6 address with lifetimes moved to an existing bridge: the kernel leaves its
# prefix route on the bridge when the undo removes it.
@example(host={"bridged": True, "bridge_exists": True, "nic_address": True,
               "nic_address6": True, "route": False, "onlink_route": False, "shim": False,
               "nic_down": False, "nic_mtu": None, "uplink_mtu": None,
               "bridge_holds_address": False}, wanted=[("bridge", None)])
def test_apply_then_undo_restores_the_host(libvirt_conn, host, wanted):
    if not host["bridged"]:
        wanted = [a for a in wanted if a[0] != "bridge"]
    with Cleanup() as cleanup:
        subnet, other = pick_subnet(), pick_subnet()
        routes = []
        if host["route"] and host["nic_address"]:
            routes.append(NicRoute(str(other.network), subnet.ip(2)))
        if host["onlink_route"]:  # a gateway in no subnet of the NIC's
            routes.append(NicRoute(str(other.network[0]) + "/25", other.ip(200),
                                   onlink=True, proto=RTPROT_DHCP, metric=50))
        addresses = (NicAddress(pick_subnet6().addr(1), valid=4000, preferred=3000,
                                flags=IFA_F_MANAGETEMPADDR),) if host["nic_address6"] else ()
        nic = StandInNic(cleanup, None, subnet.addr(1) if host["nic_address"] else None,
                         subnet.addr(2), mtu=host["nic_mtu"], addresses=addresses,
                         routes=tuple(routes))
        bridge = unique_name("ktbr")
        delete_link_later(cleanup, bridge)
        mtu = f"mtu = {host['uplink_mtu']}\n" if host["uplink_mtu"] else ""
        up = lab_uplink(cleanup, nic.name, bridge=host["bridged"] and bridge,
                        host_address=subnet.addr(5) if host["shim"] else None, extra=mtu)
        uplink = up.name
        config = parse(up.table.encode(), "property.toml")
        ifaces = [Iface(guest_mac(), kind, uplink, mode) for kind, mode in wanted]
        domain = planned_domain(cleanup, ifaces)
        names = {nic.name, bridge, *(i.hook_owned_dev for i in ifaces)}
        with HostSession("property") as session:
            netlink = session.netlink
            if host["bridged"] and host["bridge_exists"]:
                held = subnet.addr(1) if host["bridge_holds_address"] and \
                    host["nic_address"] else None
                create_bridge(bridge, cleanup, held)
            if host["nic_down"]:
                netlink.set_state(nic.name, False)
            before = host_state(names)
            plan = plan_prepare(domain, config, session.scan(config))
            done = apply(plan.actions, netlink, "property")
            assert done == list(plan.actions)
            apply([action.undo() for action in reversed(done)], netlink, "property undo")
            assert host_differences(before, host_state(names)) == []
