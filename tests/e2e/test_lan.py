"""End to end: booted guests attached by their metadata send real packets to a LAN host,
the host and each other, through what kvmhooks built. The README's matrix of what each
attachment allows comes from these tests."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from tests.lab import guest
from tests.lab.domains import Iface
from tests.lab.links import ping, set_mtu
from tests.lab.names import guest_mac, pick_subnet6, unique_name
from tests.lab.nic import NicAddress, StandInNic
from tests.lab.uplinks import lab_uplink

pytestmark = [pytest.mark.system, pytest.mark.e2e]

LAN_HOST = 2
SHIM = 5
IFF_MULTI_QUEUE = 0x100
IFA_F_NODAD = 0x02


class Uplink:
    """A stand-in NIC, its LAN namespace and an uplink for it in the config."""

    def __init__(self, cleanup, kh_config, subnet, bridge: bool, shim: bool,
                 nic_address: bool = True, mtu: int | None = None, extra: str = "",
                 lan_addresses: tuple[str, ...] = (), host_addresses: tuple[str, ...] = (),
                 nic_addresses: tuple[NicAddress, ...] = ()):
        """``host_addresses``: the shim's, as a list in the config (``shim``: its IPv4
        one alone); ``nic_addresses``: the NIC's besides its IPv4 one."""
        self.subnet = subnet
        self.nic = StandInNic(cleanup, None, subnet.addr(1) if nic_address else None,
                              subnet.addr(LAN_HOST), mtu=mtu, lan_addresses=lan_addresses,
                              addresses=nic_addresses)
        up = lab_uplink(cleanup, self.nic.name, bridge=bridge,
                        host_address=subnet.addr(SHIM) if shim else None,
                        host_addresses=host_addresses, extra=extra)
        self.name, self.bridge = up.name, up.bridge
        kh_config(up.table)
        self.lan = subnet.ip(LAN_HOST)

    def iface(self, kind: str, mode: str | None = None) -> Iface:
        return Iface(guest_mac(), kind, self.name, mode)


class Guest:
    def __init__(self, dom, serial, iface: Iface, address: str):
        self.dom, self.serial, self.iface, self.address = dom, serial, iface, address


def boot(conn, cleanup, ifaces_and_addresses: list[tuple[Iface, str | tuple[str, ...]]],
         pings: list[str], mtu: int | None = None) -> list[Guest]:
    """Define and start one guest per interface, all at once, then wait until each is up;
    an address may be an IPv4 one, or a tuple of an IPv4 one and IPv6 ones. With ``mtu``,
    each guest sets it on its NIC. Guest.address is the IPv4 one."""
    started = []
    for iface, addresses in ifaces_and_addresses:
        address = addresses if isinstance(addresses, str) else addresses[0]
        dom, serial = guest.define_guest(conn, cleanup, [iface], {iface.mac: addresses},
                                         [p for p in pings if p != address.split("/")[0]],
                                         name=unique_name("kt-e2e-"),
                                         mtus={iface.mac: mtu} if mtu else None)
        dom.create()
        started.append(Guest(dom, serial, iface, address.split("/")[0]))
    for each in started:
        guest.wait_ready(each.serial, timeout=120)
    return started


def reaches(each: Guest, target: str, timeout: float = 30) -> bool:
    """The guest reports a successful ping to target."""
    try:
        each.serial.wait_for_line(guest.ping_line(target), timeout)
        return True
    except TimeoutError:
        return False


def never_reaches(each: Guest, target: str, rounds: int = 4) -> bool:
    """Several rounds of pings from the guest to target, all failed."""
    each.serial.wait_for_lines(guest.ping_line(target, ok=False), timeout=60, count=rounds)
    return not any(line.endswith(f"ping {target} ok") for line in each.serial.lines())


JUMBO = 9000
JUMBO_PING = JUMBO - 28  # payload of an unfragmented IPv4 ping of 9000 bytes

ATTACHMENTS = [("bridge", None), ("direct", "bridge"), ("direct", "private"),
               ("direct", "vepa"), ("direct", "passthrough")]


@pytest.mark.parametrize("kind, mode", ATTACHMENTS,
                         ids=[f"{k}{'-' + m if m else ''}" for k, m in ATTACHMENTS])
def test_guest_and_lan_host_reach_each_other(kind, mode, libvirt_conn, cleanup, kh_config,
                                             subnet):
    uplink = Uplink(cleanup, kh_config, subnet, bridge=kind == "bridge", shim=False)
    (one,) = boot(libvirt_conn, cleanup, [(uplink.iface(kind, mode), subnet.addr(11))],
                  [uplink.lan])
    assert reaches(one, uplink.lan), "guest -> LAN host"
    assert uplink.nic.lan_ping(one.address, count=3, timeout=2), "LAN host -> guest"


@pytest.mark.parametrize("bridged", [True, False], ids=["bridged-uplink", "nic-uplink"])
@pytest.mark.parametrize("shim", [True, False], ids=["with-host-address", "without"])
def test_host_reaches_macvtap_guest_only_through_the_shim(bridged, shim, libvirt_conn,
                                                          cleanup, kh_config, subnet):
    uplink = Uplink(cleanup, kh_config, subnet, bridge=bridged, shim=shim)
    (one,) = boot(libvirt_conn, cleanup, [(uplink.iface("direct", "bridge"),
                                           subnet.addr(11))], [uplink.lan])
    assert reaches(one, uplink.lan)
    assert ping(uplink.lan), "the host still reaches its LAN"
    assert ping(one.address, count=3, timeout=2) == shim


HOST_TO_OTHER_GUESTS = [
    ("tap-guest-via-the-bridge-address", True, False, ("bridge", None), True),
    ("private-macvtap-even-with-the-shim", False, True, ("direct", "private"), False),
    ("vepa-macvtap-even-with-the-shim", False, True, ("direct", "vepa"), False),
]


@pytest.mark.parametrize("bridged, shim, attachment, reach",
                         [case[1:] for case in HOST_TO_OTHER_GUESTS],
                         ids=[case[0] for case in HOST_TO_OTHER_GUESTS])
def test_host_to_other_guests(bridged, shim, attachment, reach, libvirt_conn, cleanup,
                              kh_config, subnet):
    uplink = Uplink(cleanup, kh_config, subnet, bridge=bridged, shim=shim)
    (one,) = boot(libvirt_conn, cleanup, [(uplink.iface(*attachment), subnet.addr(11))],
                  [uplink.lan])
    assert reaches(one, uplink.lan)
    assert ping(one.address, count=3, timeout=2) == reach


GUEST_PAIRS = [
    ("macvtap-bridge-pair", False, ("direct", "bridge"), ("direct", "bridge"), True),
    ("macvtap-private-pair", False, ("direct", "private"), ("direct", "private"), False),
    ("macvtap-vepa-pair", False, ("direct", "vepa"), ("direct", "vepa"), False),
    ("bridge-pair", True, ("bridge", None), ("bridge", None), True),
    ("bridge-and-macvtap", True, ("bridge", None), ("direct", "bridge"), True),
]


@pytest.mark.parametrize("bridged, first, second, reach",
                         [case[1:] for case in GUEST_PAIRS], ids=[c[0] for c in GUEST_PAIRS])
def test_guests_on_one_host(bridged, first, second, reach, libvirt_conn, cleanup, kh_config,
                            subnet):
    uplink = Uplink(cleanup, kh_config, subnet, bridge=bridged, shim=False)
    addresses = [subnet.addr(11), subnet.addr(12)]
    guests = boot(libvirt_conn, cleanup, [(uplink.iface(*first), addresses[0]),
                                          (uplink.iface(*second), addresses[1])],
                  [a.split("/")[0] for a in addresses] + [uplink.lan])
    for one in guests:
        assert reaches(one, uplink.lan), "each guest reaches the LAN host"
    one, other = guests
    if reach:
        assert reaches(one, other.address) and reaches(other, one.address)
    else:
        assert never_reaches(one, other.address) and never_reaches(other, one.address)


@pytest.mark.parametrize("with_address", [False, True],
                         ids=["nic-returns-bare", "nic-returns-holding-its-address"])
def test_both_guests_ping_again_after_an_uplink_flap(with_address, libvirt_conn, cleanup,
                                                      kh_config, subnet):
    """The NIC comes back bare, or holding the address its bridge holds (a network manager
    re-applied it before kvmhooks' handler looked)."""
    uplink = Uplink(cleanup, kh_config, subnet, bridge=True, shim=True)
    guests = boot(libvirt_conn, cleanup, [(uplink.iface("bridge"), subnet.addr(11)),
                                          (uplink.iface("direct", "bridge"), subnet.addr(12))],
                  [uplink.lan])
    for one in guests:
        assert reaches(one, uplink.lan)
    marks = [one.serial.offset() for one in guests]
    uplink.nic.recreate(host_address=subnet.addr(1) if with_address else "",
                        hold_events=with_address)
    flapped = time.monotonic()
    for one, mark in zip(guests, marks):
        remaining = 10 - (time.monotonic() - flapped)
        one.serial.wait_for_lines(guest.ping_line(uplink.lan), timeout=max(remaining, 0.1),
                                  after_offset=mark, count=2)
    assert time.monotonic() - flapped < 10
    assert ping(uplink.lan), "the host reaches its LAN through the bridge"


def test_restored_guest_reaches_the_lan_of_another_nic(libvirt_conn, cleanup, kh_config,
                                                       subnet, tmp_path):
    first = Uplink(cleanup, kh_config, subnet, bridge=False, shim=False, nic_address=False)
    # The second NIC's LAN is the same subnet in another namespace, its host at .3.
    second = StandInNic(cleanup, None, None, subnet.addr(3))
    native = Iface(guest_mac(), "direct", first.name, "bridge", native=True,
                   source=first.nic.name)
    (one,) = boot(libvirt_conn, cleanup, [(native, subnet.addr(11))],
                  [subnet.ip(2), subnet.ip(3)])
    assert reaches(one, subnet.ip(2))
    image = str(tmp_path / "guest.save")
    cleanup.add(lambda: os.path.exists(image) and os.unlink(image), _what="remove image")
    one.dom.save(image)
    kh_config(f'[uplink.{first.name}]\nnic = "{second.name}"\n')
    mark = one.serial.offset()
    libvirt_conn.restore(image)
    one.serial.wait_for_lines(guest.ping_line(subnet.ip(3)), timeout=30, after_offset=mark,
                              count=2)
    assert second.lan_ping(one.address, count=3, timeout=2)


JUMBO_CASES = [
    # every device kvmhooks builds takes its NIC's MTU
    *[(f"nic-is-jumbo-{kind}{'-' + mode if mode else ''}", kind, mode, JUMBO, "")
      for kind, mode in ATTACHMENTS],
    # the NIC is not; the uplink's mtu sets it
    *[(f"uplink-mtu-{kind}{'-' + mode if mode else ''}", kind, mode, None, f"mtu = {JUMBO}\n")
      for kind, mode in ATTACHMENTS[:2]],
]


@pytest.mark.parametrize("kind, mode, nic_mtu, extra", [case[1:] for case in JUMBO_CASES],
                         ids=[case[0] for case in JUMBO_CASES])
def test_jumbo_frames_between_a_guest_and_the_lan(kind, mode, nic_mtu, extra, libvirt_conn,
                                                  cleanup, kh_config, subnet):
    """9000-byte frames, unfragmented, both ways: the guest's own pings with 8972 bytes of
    payload at MTU 9000, and the LAN host's `ping -M do -s 8972`, answered by the guest."""
    uplink = Uplink(cleanup, kh_config, subnet, bridge=kind == "bridge", shim=False,
                    mtu=JUMBO, extra=extra)
    if nic_mtu is None:
        set_mtu(uplink.nic.name, 1500)  # the LAN takes jumbo frames, the NIC is not set so
    (one,) = boot(libvirt_conn, cleanup, [(uplink.iface(kind, mode), subnet.addr(11))],
                  [f"{uplink.lan}@{JUMBO_PING}"], mtu=JUMBO)
    assert reaches(one, f"{uplink.lan}@{JUMBO_PING}"), "guest -> LAN host, 9000 bytes"
    assert uplink.nic.lan_ping(one.address, count=3, timeout=2, size=JUMBO_PING), \
        "LAN host -> guest, 9000 bytes, do not fragment"
    assert not uplink.nic.lan_ping(one.address, timeout=2, size=JUMBO_PING + 1), \
        "a frame over 9000 bytes does not pass: the path is 9000, not more"


def test_a_four_queue_guest_on_a_hook_owned_tap(libvirt_conn, cleanup, kh_config, subnet):
    uplink = Uplink(cleanup, kh_config, subnet, bridge=True, shim=False)
    iface = replace(uplink.iface("bridge"), queues=4)
    (one,) = boot(libvirt_conn, cleanup, [(iface, subnet.addr(11))], [uplink.lan])
    with open(f"/sys/class/net/{iface.hook_owned_dev}/tun_flags") as flags:
        assert int(flags.read(), 16) & IFF_MULTI_QUEUE
    assert reaches(one, uplink.lan), "guest -> LAN host"
    assert uplink.nic.lan_ping(one.address, count=3, timeout=2), "LAN host -> guest"


@pytest.mark.parametrize("kind, mode", ATTACHMENTS,
                         ids=[f"{k}{'-' + m if m else ''}" for k, m in ATTACHMENTS])
def test_guest_and_lan_host_reach_each_other_over_ipv6(kind, mode, libvirt_conn, cleanup,
                                                       kh_config, subnet):
    """Neighbour discovery through what kvmhooks built. The LAN host asks first, while
    the guest has sent it nothing: its solicitation for the guest's address is multicast,
    which a macvtap passes only when it takes all multicast (kvmhooks makes its macvtaps
    so)."""
    subnet6 = pick_subnet6()
    uplink = Uplink(cleanup, kh_config, subnet, bridge=kind == "bridge", shim=False,
                    lan_addresses=(subnet6.addr(LAN_HOST),))
    (one,) = boot(libvirt_conn, cleanup,
                  [(uplink.iface(kind, mode), (subnet.addr(11), subnet6.addr(11)))], [])
    assert uplink.nic.lan_ping(subnet6.ip(11), count=3, timeout=2), \
        "LAN host -> guest over IPv6"
    assert uplink.nic.lan_ping(one.address, count=3, timeout=2), "and over IPv4"


def test_host_reaches_a_macvtap_guest_over_ipv6_through_a_dual_stack_shim(
        libvirt_conn, cleanup, kh_config, subnet):
    """The NIC holds addresses in both of the shim's prefixes: its routes for them step
    back behind the shim's, IPv6 as IPv4 (a macvtap never hears its lower device)."""
    subnet6 = pick_subnet6()
    uplink = Uplink(cleanup, kh_config, subnet, bridge=False, shim=False,
                    lan_addresses=(subnet6.addr(LAN_HOST),),
                    host_addresses=(subnet.addr(SHIM), subnet6.addr(SHIM)),
                    nic_addresses=(NicAddress(subnet6.addr(1), flags=IFA_F_NODAD),))
    (one,) = boot(libvirt_conn, cleanup,
                  [(uplink.iface("direct", "bridge"), (subnet.addr(11), subnet6.addr(11)))],
                  [])
    assert ping(subnet6.ip(11), count=3, timeout=2), "host -> guest over IPv6, via the shim"
    assert ping(one.address, count=3, timeout=2), "and over IPv4"
    assert ping(subnet6.ip(LAN_HOST)), "the host still reaches its LAN over IPv6"
    assert uplink.nic.lan_ping(subnet6.ip(SHIM)), "the LAN reaches the shim over IPv6"
