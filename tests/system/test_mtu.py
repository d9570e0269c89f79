"""MTU on the real kernel with a real libvirtd: every device kvmhooks builds takes its lower
device's MTU, so a jumbo bridge stays jumbo when guests join it; an uplink's `mtu` sets the
NIC, the bridge and everything on them."""

from __future__ import annotations

import pytest

from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_info, ping, set_mtu
from tests.lab.names import guest_mac, unique_name
from tests.lab.nic import StandInNic
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start

pytestmark = pytest.mark.system

JUMBO = 9000
JUMBO_PING = JUMBO - 28  # payload of an unfragmented IPv4 ping of 9000 bytes


def start_guest(conn, cleanup, uplink: str, bridged: bool) -> list[Iface]:
    ifaces = [Iface(guest_mac(), "direct", uplink, "bridge")]
    if bridged:
        ifaces.append(Iface(guest_mac(), "bridge", uplink))
    define_and_start(conn, domain_xml(unique_name("kt-dom-"), ifaces), cleanup)
    return ifaces


@pytest.mark.parametrize("bridged", [True, False], ids=["bridged-uplink", "nic-uplink"])
def test_a_jumbo_uplink_stays_jumbo_when_guests_join(bridged, libvirt_conn, cleanup,
                                                     kh_config, subnet):
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2), mtu=JUMBO)
    up = lab_uplink(cleanup, nic.name, bridge=bridged, host_address=subnet.addr(5))
    kh_config(up.table)
    ifaces = start_guest(libvirt_conn, cleanup, up.name, bridged)

    built = [up.shim, *(iface.hook_owned_dev for iface in ifaces)]
    shared = [nic.name, *([up.bridge] if bridged else [])]
    assert {name: link_info(name)["mtu"] for name in shared + built} == \
        {name: JUMBO for name in shared + built}
    assert ping(subnet.ip(2), size=JUMBO_PING), "jumbo frames from the host to its LAN"


@pytest.mark.parametrize("bridged", [True, False], ids=["bridged-uplink", "nic-uplink"])
def test_uplink_mtu_sets_the_nic_the_bridge_and_everything_on_them(bridged, libvirt_conn,
                                                                   cleanup, kh_config,
                                                                   subnet):
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2), mtu=JUMBO)
    set_mtu(nic.name, 1500)  # the LAN takes jumbo frames, the NIC is not set for them
    assert not ping(subnet.ip(2), size=JUMBO_PING)
    up = lab_uplink(cleanup, nic.name, bridge=bridged, host_address=subnet.addr(5),
                    extra=f"mtu = {JUMBO}\n")
    kh_config(up.table)
    ifaces = start_guest(libvirt_conn, cleanup, up.name, bridged)

    names = [nic.name, up.shim, *(iface.hook_owned_dev for iface in ifaces),
             *([up.bridge] if bridged else [])]
    assert {name: link_info(name)["mtu"] for name in names} == {name: JUMBO for name in names}
    assert ping(subnet.ip(2), size=JUMBO_PING)
