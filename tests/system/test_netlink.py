"""kvmhooks' netlink backend against the real kernel with whatever pyroute2 this tier has
(0.5.14 on the EL9 floor, 0.7.12 on EL10): what it writes it reads back whole, and what
it deletes is gone. pyroute2 before 0.9 names neither an address's metric nor its
protocol, and 0.5 sends deletes that kernels since 5.19 refuse."""

from __future__ import annotations

import socket
import threading

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELLINK

from kvmhooks.inventory import Address, Route
from kvmhooks.netlink import Netlink
from tests.lab.links import create_bridge, delete_link, link_exists
from tests.lab.names import pick_subnet, pick_subnet6, unique_name
from tests.lab.nic import RTPROT_RA

pytestmark = [pytest.mark.system, pytest.mark.floor]

IFA_F_NOPREFIXROUTE = 0x200
RTPROT_STATIC = 4


@pytest.fixture
def netlink():
    backend = Netlink()
    yield backend
    backend.close()


def link(netlink: Netlink, name: str):
    return netlink.inventory().by_name(name)


def test_an_address_keeps_every_property_it_is_added_with(netlink, cleanup):
    bridge = unique_name("ktbr")
    create_bridge(bridge, cleanup)
    v4, v6 = pick_subnet(), pick_subnet6()
    wanted = [Address(v4.addr(1), metric=77, protocol=RTPROT_STATIC, label=":kt",
                      broadcast=v4.ip(255)),
              Address(v6.addr(1), flags=IFA_F_NOPREFIXROUTE, valid=4000, preferred=3000,
                      metric=88, protocol=RTPROT_RA)]
    for address in wanted:
        netlink.add_address(bridge, address)
    held = {a.cidr: a for a in link(netlink, bridge).addresses}
    for address in wanted:
        got = held[address.cidr]
        assert (got.metric, got.protocol, got.label, got.broadcast) == (
            address.metric, address.protocol, address.label, address.broadcast)
        assert got.flags & IFA_F_NOPREFIXROUTE == address.flags & IFA_F_NOPREFIXROUTE
        if address.valid:  # counting down since it was added
            assert address.valid - 5 <= got.valid <= address.valid
            assert address.preferred - 5 <= got.preferred <= address.preferred

    for address in wanted:
        netlink.del_address(bridge, address)
    assert link(netlink, bridge).addresses == ()


def test_a_route_keeps_its_expiry_and_metrics_and_deletes_go_through(netlink, cleanup):
    bridge = unique_name("ktbr")
    create_bridge(bridge, cleanup)
    v6, routed = pick_subnet6(), pick_subnet6()
    netlink.add_address(bridge, Address(v6.addr(1)))
    route = Route(dst=str(routed.network), family=socket.AF_INET6, gateway=v6.ip(9),
                  priority=300, protocol=RTPROT_RA, pref=1, expires=600,
                  metrics=(("RTAX_ADVMSS", 1300), ("RTAX_MTU", 1400)))
    netlink.add_route(route, bridge)
    (got,) = [r for r in link(netlink, bridge).routes if r.dst == route.dst]
    assert 590 <= got.expires <= 600
    assert got == Route(**{**route.__dict__, "expires": got.expires})

    netlink.del_route(got, bridge)
    assert [r for r in link(netlink, bridge).routes if r.dst == route.dst] == []
    netlink.delete_link(bridge)
    assert not link_exists(bridge)


def test_a_snapshot_taken_while_links_come_and_go_succeeds(netlink, cleanup):
    """The kernel flags a dump that its tables changed under (NLM_F_DUMP_INTR), which
    pyroute2 0.7 raises as an error: a NIC event or a start beside other starts must not
    fail for it. Links come and go in a loop here while kvmhooks reads the host."""
    names = [unique_name("ktchurn") for _ in range(3)]
    for name in names:
        cleanup.add(delete_link, name, _what=f"delete {name}")
    churning = threading.Event()
    churning.set()

    churn_errors = []

    def churn() -> None:
        with IPRoute() as ipr:
            while churning.is_set():
                for name in names:
                    try:
                        ipr.link("add", ifname=name, kind="bridge")
                        index = ipr.link("get", ifname=name)[0]["index"]
                        ipr.link((RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK), index=index)
                    except Exception as error:  # noqa: BLE001 - reported below
                        churn_errors.append(error)
                        return

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(300):
            netlink.inventory()
            assert netlink.index("lo") == 1
    finally:
        churning.clear()
        worker.join()
    assert churn_errors == []
