"""Enslaving a NIC to its uplink's bridge, on the real kernel: what moves keeps its
properties (lifetimes, flags, onlink routes, protocols, metrics, IPv4 and IPv6), and a
NIC that comes back holding the address its bridge holds goes back on the bridge."""

from __future__ import annotations

import time

import libvirt
import pytest

from tests.lab.daemons import settle_nic_events
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import entry_differences, host_state, link_exists, link_info, ping
from tests.lab.names import guest_mac, pick_subnet, pick_subnet6, unique_name
from tests.lab.nic import (
    IFA_F_MANAGETEMPADDR,
    IFA_F_NOPREFIXROUTE,
    IFA_F_TEMPORARY,
    RTPROT_DHCP,
    RTPROT_KERNEL,
    RTPROT_RA,
    NicAddress,
    NicRoute,
    StandInNic,
)
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define, define_and_start
from tests.lab.wait import wait_for

pytestmark = pytest.mark.system



def global_only(entries: list[dict]) -> list[dict]:
    """Addresses or routes without the kernel's own link-local ones."""
    return [entry for entry in entries
            if not (entry.get("address") or entry.get("dst")).startswith("fe80:")]


def errors_in(syslog, mark: int) -> list[str]:
    return [text for severity, text in syslog.since(mark) if severity == "error"]


def enslaved_by_a_guest_start(libvirt_conn, cleanup, kh_config, nic: StandInNic):
    """Start a guest on a new bridged uplink of ``nic``: (host state before, after, the
    uplink); the NIC is on the bridge."""
    up = lab_uplink(cleanup, nic.name, bridge=True)
    kh_config(up.table)
    before = host_state({nic.name})
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                              [Iface(guest_mac(), "bridge", up.name)]),
                     cleanup)
    after = host_state({nic.name, up.bridge})
    assert link_info(nic.name)["master"] == up.bridge
    return before, after, up


def nic_as_networkmanager_sets_it(cleanup, lan, beyond, lifetime: int | None = None):
    """A stand-in NIC on ``lan`` as NetworkManager sets it up: a noprefixroute address
    (.1; a lease of ``lifetime`` seconds, or static), the prefix route NetworkManager adds
    itself (protocol kernel), and a route to ``beyond`` through the LAN host (.2)."""
    return StandInNic(
        cleanup, None, None, lan.addr(2),
        addresses=(NicAddress(lan.addr(1), valid=lifetime, preferred=lifetime,
                              flags=IFA_F_NOPREFIXROUTE),),
        routes=(NicRoute(str(lan.network), proto=RTPROT_KERNEL, metric=100),
                NicRoute(str(beyond.network), lan.ip(2), proto=RTPROT_DHCP, metric=100)))


def test_a_networkmanager_address_moves_with_its_routes_in_an_order_the_kernel_takes(
        libvirt_conn, cleanup, kh_config):
    """NetworkManager's static address, with its own prefix route and a route through a
    gateway that the kernel lists first (its destination sorts lower, as a default
    route's does)."""
    first, second = sorted((pick_subnet(), pick_subnet()), key=lambda s: s.network)
    lan, beyond = second, first  # the gateway route's destination sorts before the LAN's
    nic = nic_as_networkmanager_sets_it(cleanup, lan, beyond)
    before, after, up = enslaved_by_a_guest_start(libvirt_conn, cleanup, kh_config, nic)
    elapsed = after.taken - before.taken + 2
    assert entry_differences("routes", global_only(before.links[nic.name]["routes"]),
                             global_only(after.links[up.bridge]["routes"]), elapsed) == []
    assert ping(lan.ip(2))


def test_a_nic_holding_a_dhcp_lease_is_left_alone(libvirt_conn, cleanup, kh_config,
                                                 subnet):
    """Its DHCP client would stay on the port and never renew the lease on the bridge:
    the start is refused with one line, and the host is as it was, bridge and all."""
    nic = nic_as_networkmanager_sets_it(cleanup, subnet, pick_subnet(), lifetime=3000)
    up = lab_uplink(cleanup, nic.name, bridge=True)
    kh_config(up.table)
    settle_nic_events()
    before = host_state({nic.name})
    name = unique_name("kt-dom-")
    dom = define(libvirt_conn, domain_xml(name, [Iface(guest_mac(), "bridge", up.name)]),
                 cleanup)
    with pytest.raises(libvirt.libvirtError) as refused:
        dom.create()
    assert (f"uplink '{up.name}': NIC {nic.name} holds the DHCP lease {subnet.addr(1)} "
            f"(valid ") in str(refused.value)
    after = host_state({nic.name})
    elapsed = after.taken - before.taken + 2
    for entries in ("addresses", "routes"):
        assert entry_differences(entries, before.links[nic.name][entries],
                                 after.links[nic.name][entries], elapsed) == []
    assert link_info(nic.name)["master"] is None
    assert not link_exists(up.bridge), "nothing is half-built"
    assert ping(subnet.ip(2))


def test_moved_addresses_and_routes_keep_their_properties(libvirt_conn, cleanup,
                                                          kh_config, subnet):
    """An IPv4 address, an IPv6 address with lifetimes and NetworkManager's flags, its
    prefix route, an onlink route with a path MTU and MSS, and a router's route: on
    the bridge as on the NIC."""
    v6, other, other6 = pick_subnet6(), pick_subnet(), pick_subnet6()
    nic = StandInNic(
        cleanup, None, None, subnet.addr(2), lan_addresses=(v6.addr(2),),
        addresses=(NicAddress(subnet.addr(1)),
                   NicAddress(v6.addr(1), valid=4000, preferred=3000,
                              flags=IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE)),
        routes=(NicRoute(str(v6.network), proto=RTPROT_RA, metric=100),
                NicRoute(str(other.network), other.ip(1), onlink=True, proto=RTPROT_DHCP,
                         metric=50, metrics=(("mtu", 1400), ("advmss", 1360))),
                NicRoute(str(other6.network), "fe80::1", proto=RTPROT_RA, metric=1024,
                         expires=1800)))
    before, after, up = enslaved_by_a_guest_start(libvirt_conn, cleanup, kh_config, nic)
    elapsed = after.taken - before.taken + 2
    nic_before, nic_after, bridge = (before.links[nic.name], after.links[nic.name],
                                     after.links[up.bridge])
    assert entry_differences("addresses", global_only(nic_before["addresses"]),
                             global_only(bridge["addresses"]), elapsed) == []
    assert entry_differences("routes", global_only(nic_before["routes"]),
                             global_only(bridge["routes"]), elapsed) == []
    assert global_only(nic_after["addresses"]) == [] and global_only(nic_after["routes"]) == []
    assert ping(subnet.ip(2))
    # The address moved to the bridge runs duplicate address detection there first.
    wait_for(lambda: ping(v6.ip(2)), 10, what="the host to reach the LAN over IPv6")


def test_temporary_addresses_move_with_their_lifetimes(libvirt_conn, cleanup, kh_config,
                                                      subnet):
    """The kernel takes the temporary flag from no one, and removes a temporary address
    with its mngtmpaddr address: the temporary address moves as a plain one that keeps
    its lifetimes (it is not made permanent), the mngtmpaddr address with its flag."""
    v6 = pick_subnet6()
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2), ipv6_privacy=True,
                     addresses=(NicAddress(v6.addr(1), valid=4000, preferred=3000,
                                           flags=IFA_F_MANAGETEMPADDR),))

    def temporaries(state) -> list[dict]:
        return [a for a in state.links[nic.name]["addresses"] if a["flags"] & IFA_F_TEMPORARY]

    def with_temporary():
        state = host_state({nic.name})
        return state if temporaries(state) else None

    before = wait_for(with_temporary, 5, what="the kernel's temporary address on the NIC")
    (temporary,) = temporaries(before)
    up = lab_uplink(cleanup, nic.name, bridge=True)
    kh_config(up.table)
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                              [Iface(guest_mac(), "bridge", up.name)]),
                     cleanup)

    after = host_state({nic.name, up.bridge})
    elapsed = after.taken - before.taken + 2
    on_bridge = {a["address"]: a for a in after.links[up.bridge]["addresses"]}
    moved = on_bridge[temporary["address"]]
    assert entry_differences("temporary", [{**temporary, "flags": 0}],
                             [{**moved, "flags": moved["flags"] & ~IFA_F_TEMPORARY}],
                             elapsed) == [], "its lifetimes and all but the flag"
    assert on_bridge[v6.addr(1)]["flags"] & IFA_F_MANAGETEMPADDR
    assert 3000 - elapsed <= on_bridge[v6.addr(1)]["preferred"] <= 3000
    assert global_only(after.links[nic.name]["addresses"]) == []
    # The kernel leaves a finite address's prefix route behind; on a bridge port it
    # would send the prefix's traffic past the bridge.
    assert global_only(after.links[nic.name]["routes"]) == []


def test_a_nic_that_returns_holding_its_address_goes_back_on_its_bridge(
        libvirt_conn, cleanup, kh_config, stand_in_nic, subnet, syslog):
    """As when NetworkManager, networkd or ifup re-applied the NIC's static address after
    a driver reload: the bridge holds that address already."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                              [Iface(guest_mac(), "bridge", up.name)]),
                     cleanup)
    assert subnet.addr(1) in link_info(up.bridge)["addresses"]
    log_mark = len(syslog.records)

    stand_in_nic.recreate(host_address=subnet.addr(1), hold_events=True)
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == up.bridge, 10,
             what="the NIC back on its bridge")
    settle_nic_events()
    assert subnet.addr(1) not in link_info(stand_in_nic.name)["addresses"]
    assert link_info(up.bridge)["addresses"].count(subnet.addr(1)) == 1
    assert ping(subnet.ip(2))
    assert errors_in(syslog, log_mark) == []

    # And again: the state the first return left is one the next converges from.
    stand_in_nic.recreate(host_address=subnet.addr(1), hold_events=True)
    started = time.monotonic()
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == up.bridge, 10,
             what="the NIC back on its bridge a second time")
    assert time.monotonic() - started < 10
    settle_nic_events()
    assert subnet.addr(1) not in link_info(stand_in_nic.name)["addresses"]
    assert errors_in(syslog, log_mark) == []
