"""kvmhooks beside NetworkManager owning the uplink's NIC: its static profile on a bridged
uplink's NIC (through a restart of NetworkManager and a reboot of the host), its DHCP
profile (never enslaved), and its own bridge with kvmhooks' guests on it (through lease
renewals, a restart and a NIC hotplug)."""

from __future__ import annotations

import time

import pytest

from tests.lab.domains import Iface
from tests.lab.names import guest_mac
from tests.lab.wait import wait_for

from .conftest import MEASURED
from .host import pinging_again_after
from .image import STATIC_NIC
from .machine import DHCP_RENEWAL
from .steps import (
    BRIDGE,
    NIC,
    configure_bridged,
    guest_on_bridge,
    guest_on_macvtap,
    guest_pinging,
    macvtap_lower,
    nm_state,
    replug,
)

pytestmark = pytest.mark.vm


PROFILE = "'Wired connection 1'"  # NetworkManager's DHCP profile of the NIC, as booted


def lease_back(host) -> None:
    """The NIC's DHCP profile up again, and its lease on the NIC: as the VM booted."""
    host.check(f"nmcli -w 60 connection up {PROFILE} ifname {NIC}")
    wait_for(lambda: host.address(NIC), 60, what=f"a DHCP lease on {NIC} again")


def networkmanager_static_nic(host, cleanup) -> str:
    """NetworkManager's profile of the NIC made static, as on a server: address .50 and
    the default route through the LAN host; DHCP again at cleanup. Returns the address."""

    def dhcp_again() -> None:
        host.sh(f"ip link set {NIC} nomaster")
        host.check(f"nmcli connection modify {PROFILE} ipv4.method auto ipv4.addresses '' "
                   "ipv4.gateway ''")
        lease_back(host)

    cleanup.add(dhcp_again, _what="give the NIC its DHCP profile back")
    static = host.lan.subnet.addr(50)
    host.check(f"nmcli connection modify {PROFILE} ipv4.method manual ipv4.addresses "
               f"{static} ipv4.gateway {host.lan.host} && "
               f"nmcli -w 30 connection up {PROFILE} ifname {NIC}")
    wait_for(lambda: host.address(NIC) == static, 30, what="the static address on the NIC")
    return static


def holds_the_hosts_address(host, address: str) -> None:
    """The bridge holds ``address`` and the default route; the NIC is its port, bare."""
    assert host.address(BRIDGE) == address and host.address(NIC) is None
    assert f"dev {BRIDGE}" in host.check("ip route show default")
    assert f"master {BRIDGE}" in host.check(f"ip -o link show {NIC}")


def through_a_networkmanager_restart(host, guests, holds) -> None:
    """``holds()`` before and after `systemctl restart NetworkManager` (given time to
    re-apply what it would), and the guests ping the LAN host again after it."""
    holds()

    def restart() -> None:
        host.check("systemctl restart NetworkManager && nm-online -s -q -t 60 || true")
        time.sleep(10)
        holds()

    pinging_again_after(restart, guests, host.lan.host, 30)


def test_a_networkmanager_static_nic_stays_bridged_through_its_restart_and_a_reboot(
        vm_host, cleanup):
    """A host as it is run: NetworkManager's static profile on the bridged uplink's NIC, a
    macvtap uplink with a shim on the other NIC, a guest on each set to autostart.

    The first start enslaves the NIC: its noprefixroute address, its own prefix route and
    the default route through the LAN move to the bridge kvmhooks makes (in an order the
    kernel takes), and NetworkManager, restarted, puts nothing back on the port. After
    `systemctl reboot` both guests run and ping the LAN, the bridge holds the host's
    address and the NIC is its port, and the shim is back: nothing done by hand."""
    host = vm_host
    static = networkmanager_static_nic(host, cleanup)
    cleanup.add(host.sh, "ip link del kh-own", _what="remove the shim kh-own")
    configure_bridged(host, cleanup, NIC, f'\n[uplink.own]\nnic = "{STATIC_NIC}"\n'
                      f'host_address = "{host.lan.subnet.addr(5)}"\n')
    bridged = Iface(guest_mac(), "bridge", "lan")
    direct = Iface(guest_mac(), "direct", "own", "bridge")
    guests = [guest_pinging(host, cleanup, iface, last_octet, autostart=True)
              for iface, last_octet in ((bridged, 15), (direct, 16))]

    def on_the_bridge() -> None:
        holds_the_hosts_address(host, static)
        assert nm_state(host, bridged.hook_owned_dev) == "10 (unmanaged)"
        assert host.sh(f"ping -c 1 -W 2 {host.lan.host}").returncode == 0

    through_a_networkmanager_restart(host, guests, on_the_bridge)
    started = time.monotonic()
    MEASURED["reboot to multi-user"] = host.vm.reboot()
    for guest in guests:
        wait_for(lambda g=guest: host.sh(f"virsh domstate {g.name}").stdout.strip()
                 == "running", 120, what=f"{guest.name} running again after the reboot")
        guest.wait_pinging(host.lan.host, timeout=120)
    MEASURED["reboot to both guests pinging the LAN"] = time.monotonic() - started
    holds_the_hosts_address(host, static)
    assert f"master {BRIDGE}" in host.check(f"ip -o link show {bridged.hook_owned_dev}")
    assert macvtap_lower(host, direct.hook_owned_dev) == STATIC_NIC
    assert host.address("kh-own") == host.lan.subnet.addr(5)


def test_a_networkmanager_dhcp_nic_is_never_enslaved(vm_host, cleanup):
    """Its DHCP client would stay on the port and lose the lease moved to the bridge when
    the lease ends: the start is refused with one line, and the NIC keeps its lease and
    the default route."""
    host = vm_host
    lease = host.address(NIC)
    assert lease, f"NetworkManager's lease on {NIC}"
    configure_bridged(host, cleanup, NIC)
    guest = host.define_guest(cleanup, [Iface(guest_mac(), "bridge", "lan")], {}, [])
    refused = host.sh(f"virsh -q start {guest.name}")
    assert refused.returncode != 0
    assert f"uplink 'lan': NIC {NIC} holds the DHCP lease {lease} (valid " in refused.stderr
    assert host.address(NIC) == lease
    assert f"dev {NIC}" in host.check("ip route show default")
    assert host.sh(f"ip link show {BRIDGE}").returncode != 0, "nothing is half-built"


def test_a_networkmanager_bridge_keeps_its_lease_and_kvmhooks_guests(vm_host, cleanup):
    """The README's way on a NetworkManager host: NetworkManager owns the bridge and its
    DHCP client, kvmhooks puts guests on it (a tap, and a macvtap on the bridge). Through
    lease renewals, a restart of NetworkManager and a hotplug of the NIC the host keeps
    its address and route, and the guests their devices."""
    host = vm_host
    cleanup.add(lease_back, host, _what="give the NIC its own connection back")
    cleanup.add(host.sh, "nmcli connection delete kt-br-port kt-br",
                _what="remove NetworkManager's bridge kt-br")
    host.check("nmcli connection add type bridge ifname br-nm con-name kt-br bridge.stp no "
               "ipv6.method disabled && "
               f"nmcli connection add type bridge-slave ifname {NIC} master br-nm "
               "con-name kt-br-port && "
               "nmcli -w 60 connection up kt-br && nmcli -w 60 connection up kt-br-port")
    wait_for(lambda: host.address("br-nm"), 60, what="the bridge's DHCP lease")
    lease = host.address("br-nm")
    host.configure(f'[uplink.lan]\nnic = "{NIC}"\nbridge = "br-nm"\n')
    on_tap, guest = guest_on_bridge(host, cleanup, 19)
    # Renewals counted from here: the bridge has a port of kvmhooks' own from now on.
    acks = host.lan.acks(lease)
    on_macvtap, direct_guest = guest_on_macvtap(host, cleanup, 29)
    guests = [guest, direct_guest]

    def host_as_it_was() -> None:
        assert host.address("br-nm") == lease
        assert host.address(NIC) is None, "no lease on the bridge's port"
        assert "dev br-nm" in host.check("ip route show default")
        assert "master br-nm" in host.check(f"ip -o link show {NIC}")
        assert "master br-nm" in host.check(f"ip -o link show {on_tap.hook_owned_dev}")
        assert macvtap_lower(host, on_macvtap.hook_owned_dev) == "br-nm"
        for dev in (on_tap.hook_owned_dev, on_macvtap.hook_owned_dev):
            assert nm_state(host, dev) == "10 (unmanaged)", dev
        assert host.sh(f"ping -c 1 -W 2 {host.lan.host}").returncode == 0

    wait_for(lambda: host.lan.acks(lease) - acks >= 2, 3 * DHCP_RENEWAL + 30,
             what=f"two renewals of {lease}, {DHCP_RENEWAL} s apart")
    through_a_networkmanager_restart(host, guests, host_as_it_was)
    pinging_again_after(lambda: replug(host, NIC), guests, host.lan.host, 60)
    wait_for(lambda: "master br-nm" in host.check(f"ip -o link show {NIC}"), 30,
             what=f"NetworkManager's port profile putting {NIC} back on br-nm")
    host_as_it_was()
