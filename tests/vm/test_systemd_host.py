"""kvmhooks on a host run by systemd: udev under systemd starting kvmhooks-nic@, the agent
and libvirt socket-activated, a NIC that really leaves the PCI bus and comes back, and a
reboot. Nested guests ping the LAN host through what kvmhooks built."""

from __future__ import annotations

import time

import pytest

from tests.lab.domains import Iface
from tests.lab.guest import ping_line
from tests.lab.names import guest_mac
from tests.lab.wait import wait_for

from .conftest import MEASURED
from .host import pinging_again_after
from .image import MANAGED_NIC, STATIC_NIC
from .machine import DHCP_RENEWAL

pytestmark = pytest.mark.vm

NIC = MANAGED_NIC  # QMP device "uplink": NetworkManager runs DHCP on it


def configure(host, cleanup, text: str) -> None:
    """The host config ``text``; the shim of uplink lan, which outlives guests, goes at
    cleanup (a NIC with a macvlan on it cannot join a bridge)."""
    cleanup.add(host.sh, "ip link del kh-lan", _what="remove the shim kh-lan")
    host.configure(text)


def macvtap_uplink(host) -> str:
    """Uplink lan: the VM's NIC, with a shim at .5 so the host reaches its macvtap guests."""
    return f'[uplink.lan]\nnic = "{NIC}"\nhost_address = "{host.lan.subnet.addr(5)}"\n'


BRIDGE = "br-kt"  # a bridge kvmhooks makes in the VM


def configure_bridged(host, cleanup, nic: str, extra: str = "") -> None:
    """The host config: uplink lan on ``nic`` with bridge br-kt (removed at cleanup), and
    ``extra`` TOML."""
    cleanup.add(host.sh, f"ip link del {BRIDGE}", _what=f"remove {BRIDGE}")
    host.configure(f'[uplink.lan]\nnic = "{nic}"\nbridge = "{BRIDGE}"\n{extra}')


def networkmanager_static_nic(host, cleanup) -> str:
    """NetworkManager's profile of the NIC made static, as on a server: address .50 and
    the default route through the LAN host; DHCP again at cleanup. Returns the address."""
    profile = "'Wired connection 1'"
    cleanup.add(host.sh, f"ip link set {NIC} nomaster; "
                f"nmcli connection modify {profile} ipv4.method auto ipv4.addresses '' "
                f"ipv4.gateway '' && nmcli -w 60 connection up {profile} ifname {NIC}",
                _what="give the NIC its DHCP profile back")
    static = host.lan.subnet.addr(50)
    host.check(f"nmcli connection modify {profile} ipv4.method manual ipv4.addresses "
               f"{static} ipv4.gateway {host.lan.host} && "
               f"nmcli -w 30 connection up {profile} ifname {NIC}")
    wait_for(lambda: host.address(NIC) == static, 30, what="the static address on the NIC")
    return static


def holds_the_hosts_address(host, address: str) -> None:
    """The bridge holds ``address`` and the default route; the NIC is its port, bare."""
    assert host.address(BRIDGE) == address and host.address(NIC) is None
    assert f"dev {BRIDGE}" in host.check("ip route show default")
    assert f"master {BRIDGE}" in host.check(f"ip -o link show {NIC}")


def guest_pinging(host, cleanup, iface: Iface, last_octet: int, *,
                  autostart: bool = False):
    """A nested guest with ``iface`` at ``last_octet``, pinging the LAN host."""
    guest = host.start_guest(cleanup, [iface],
                             {iface.mac: host.lan.subnet.addr(last_octet)}, [host.lan.host],
                             autostart=autostart)
    guest.wait_pinging(host.lan.host)
    return guest


def guest_on_macvtap(host, cleanup, last_octet: int):
    """A nested guest on uplink lan (hook-owned macvtap, bridge mode) at ``last_octet``,
    pinging the LAN host."""
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    return iface, guest_pinging(host, cleanup, iface, last_octet)


def guest_on_bridge(host, cleanup, last_octet: int):
    """A nested guest on uplink lan's bridge (hook-owned tap) at ``last_octet``, pinging
    the LAN host."""
    iface = Iface(guest_mac(), "bridge", "lan")
    return iface, guest_pinging(host, cleanup, iface, last_octet)


def active(host, unit: str) -> bool:
    return host.sh(f"systemctl is-active --quiet {unit}").returncode == 0


def nm_state(host, device: str) -> str:
    """NetworkManager's state of ``device``: "10 (unmanaged)", "100 (connected)"..."""
    return host.check(f"nmcli -g GENERAL.STATE device show {device}").strip()


def through_a_networkmanager_restart(host, guests, holds) -> None:
    """``holds()`` before and after `systemctl restart NetworkManager` (given time to
    re-apply what it would), and the guests ping the LAN host again after it."""
    holds()

    def restart() -> None:
        host.check("systemctl restart NetworkManager && nm-online -s -q -t 60 || true")
        time.sleep(10)
        holds()

    pinging_again_after(restart, guests, host.lan.host, 30)


def test_a_tagged_guest_starts_through_socket_activated_libvirt_and_survives_a_hotplug(
        vm_host, cleanup):
    """The first guest start of the boot reaches libvirt and the kvmhooks agent through
    their sockets; then the guest's NIC leaves the PCI bus and comes back, and udev under
    systemd (kvmhooks-nic@) brings back the shim and re-plugs the guest."""
    host = vm_host
    # As the host booted: nothing of libvirt or kvmhooks runs, only their sockets listen.
    assert not active(host, "libvirtd.service")
    assert not active(host, "kvmhooks-agent.service")
    assert active(host, "libvirtd.socket") and active(host, "kvmhooks-agent.socket")
    configure(host, cleanup, macvtap_uplink(host))
    started = time.monotonic()
    iface, guest = guest_on_macvtap(host, cleanup, 11)
    MEASURED["nested guest start to LAN ping"] = time.monotonic() - started
    assert active(host, "libvirtd.service"), "the daemon started on demand"
    assert active(host, "kvmhooks-agent.service"), "the first hook call started the agent"
    assert host.address("kh-lan") == host.lan.subnet.addr(5)
    assert host.lan.ping(host.lan.subnet.ip(11)), "the LAN reaches the guest"
    assert host.sh(f"ping -c 2 -W 2 {host.lan.subnet.ip(11)}").returncode == 0, \
        "the host reaches its macvtap guest through the shim"
    assert [nm_state(host, device) for device in (iface.hook_owned_dev, "kh-lan")] == \
        ["10 (unmanaged)"] * 2, "NetworkManager leaves kvmhooks' devices alone"

    host.vm.unplug("uplink")
    mark = guest.wait_line(ping_line(host.lan.host, ok=False), 30, count=1)
    wait_for(lambda: host.sh(f"test -e /sys/class/net/{NIC}").returncode != 0, 30,
             what=f"{NIC} gone from the VM")
    plugged = time.monotonic()
    host.vm.plug("uplink")
    guest.wait_pinging(host.lan.host, timeout=120, after=mark)
    MEASURED["NIC hotplug to guest pinging again"] = time.monotonic() - plugged
    wait_for(lambda: host.address("kh-lan") == host.lan.subnet.addr(5), 30,
             what="the shim back on the NIC")
    journal = host.check("journalctl -b --no-pager -o cat -u 'kvmhooks-nic@*'")
    assert f"re-plugged interface {iface.mac}" in journal, journal[-2000:]


def agent_starts(host) -> int:
    """How many times systemd has started kvmhooks-agent.service since the boot."""
    return int(host.check("journalctl -b -o cat -u kvmhooks-agent.service _PID=1 "
                          "| grep -c '^Started ' || true").strip() or 0)


def test_stopping_the_agent_mid_run_never_fails_a_guest_operation(vm_host, cleanup):
    host = vm_host
    configure(host, cleanup, macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(13)}, [])
    starts = agent_starts(host)
    # The agent is stopped over and over while the guest stops and starts: each hook
    # call reaches a fresh agent through the socket, or runs in-process.
    cycles = host.sh(
        f"( for i in 1 2 3; do virsh -q destroy {guest.name} && virsh -q start {guest.name}"
        " || exit 1; done ) & cycles=$!; stops=0; "
        "while kill -0 $cycles 2>/dev/null; do systemctl stop kvmhooks-agent.service; "
        "stops=$((stops + 1)); sleep 0.2; done; echo $stops; wait $cycles", timeout=300)
    assert cycles.returncode == 0, cycles.stderr
    assert int(cycles.stdout) >= 10, f"only {cycles.stdout.strip()} stops of the agent"
    assert host.check(f"virsh domstate {guest.name}").strip() == "running"
    assert host.check(f"ip -o link show {iface.hook_owned_dev}")
    assert agent_starts(host) - starts >= 2, \
        "hook calls between the stops started the agent again through its socket"


def test_restarting_libvirt_keeps_every_guest_running_also_without_the_agent(vm_host,
                                                                               cleanup):
    host = vm_host
    cleanup.add(host.sh, f"ip link del {BRIDGE}", _what=f"remove {BRIDGE}")
    configure(host, cleanup, macvtap_uplink(host) + f'\n[uplink.own]\nnic = "{STATIC_NIC}"'
              f'\nbridge = "{BRIDGE}"\n')
    _, on_macvtap = guest_on_macvtap(host, cleanup, 14)
    on_bridge = guest_pinging(host, cleanup, Iface(guest_mac(), "bridge", "own"), 28)
    host.check("systemctl restart libvirtd.service")  # reconnect, through the agent
    cleanup.add(host.check, "systemctl start kvmhooks-agent.socket",
                _what="listen on the agent's socket again")
    host.check("systemctl stop kvmhooks-agent.socket kvmhooks-agent.service")
    host.check("systemctl restart libvirtd.service")  # reconnect, in-process
    host.check("virsh -q list >/dev/null")  # libvirtd has reconnected to its guests
    for guest in (on_macvtap, on_bridge):
        assert host.check(f"virsh domstate {guest.name}").strip() == "running"
        mark = len(guest.serial())
        guest.wait_pinging(host.lan.host, timeout=30, after=mark)


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


# --- NICs that come back under a name of their own ------------------------------------

def renamed_nic(host, cleanup, name: str) -> str:
    """Make the uplink NIC come back as ``name`` (a .link file, then a PCI re-plug), and
    as enp1s0 again at cleanup."""
    mac = host.vm.nics["uplink"].mac
    link = f"/etc/systemd/network/10-kt-{name}.link"
    host.check(f"printf '[Match]\\nMACAddress={mac}\\n\\n[Link]\\nName={name}\\n' >{link} && "
               "udevadm control --reload")

    def restore() -> None:
        host.check(f"rm -f {link} && udevadm control --reload")
        replug(host, NIC)

    cleanup.add(restore, _what=f"name the NIC {NIC} again")
    replug(host, name)
    return name


def replug(host, name: str, device: str = "uplink") -> None:
    """A PCI hot-unplug and plug of QMP ``device``; it comes back as ``name``."""
    host.vm.unplug(device)
    host.vm.plug(device)
    try:
        wait_for(lambda: host.sh(f"test -e /sys/class/net/{name}").returncode == 0, 30,
                 what=f"the NIC back as {name}")
    except TimeoutError as error:
        seen = host.sh("ip -br link; journalctl -b -k --no-pager | tail -n 15").stdout
        raise TimeoutError(f"{error}; in the VM:\n{seen}") from None
    host.settle()  # the handlers of the NIC's events are done


def macvtap_lower(host, dev: str) -> str:
    """The name of the device ``dev`` (a macvtap) sits on, in the VM."""
    out = host.check(f"ip -o link show {dev}")
    return out.split("@", 1)[1].split(":", 1)[0]


def test_a_nic_back_under_a_name_with_a_dash_is_found_by_its_mac(vm_host, cleanup):
    """An uplink selected by MAC; a PCI re-plug brings its NIC back as lan-nic0 (a .link
    file). The NIC's move event reaches kvmhooks-nic@move:lan-nic0:SEQNUM through systemd
    (a `-` in a unit's instance is escaped, and %I gives the name back), which moves the
    macvtap and the shim to the NIC's new name and re-plugs the guest."""
    host = vm_host
    mac = host.vm.nics["uplink"].mac
    configure(host, cleanup, f'[uplink.lan]\nmac = "{mac}"\n'
              f'host_address = "{host.lan.subnet.addr(5)}"\n')
    iface, guest = guest_on_macvtap(host, cleanup, 17)
    assert macvtap_lower(host, iface.hook_owned_dev) == NIC
    name = "lan-nic0"
    pinging_again_after(lambda: renamed_nic(host, cleanup, name), [guest], host.lan.host, 120)
    assert macvtap_lower(host, iface.hook_owned_dev) == name
    assert macvtap_lower(host, "kh-lan") == name
    units = host.check("journalctl -b --no-pager -o cat _COMM=systemd "
                       f"| grep -F 'kvmhooks-nic@move:{name}:' || true")
    assert units, f"no kvmhooks-nic@move:{name}:... unit ran"
    host.remove_guest(guest.name)  # before the cleanup's re-plug, which would move it back


# --- the NIC NetworkManager leaves alone: a bridge, a libvirt network, a VLAN -----------

def test_a_bridged_uplinks_guests_come_back_after_a_nic_hotplug(vm_host, cleanup):
    host = vm_host
    configure_bridged(host, cleanup, STATIC_NIC)
    _, guest = guest_on_bridge(host, cleanup, 18)
    plugged = time.monotonic()
    pinging_again_after(lambda: replug(host, STATIC_NIC, "static"), [guest], host.lan.host,
                        120)
    MEASURED["NIC hotplug to bridged guest pinging again"] = time.monotonic() - plugged
    assert f"master {BRIDGE}" in host.check(f"ip -o link show {STATIC_NIC}")


def test_a_libvirt_network_named_in_the_config_gets_its_bridge(vm_host, cleanup):
    host = vm_host
    configure_bridged(host, cleanup, STATIC_NIC, '\n[network.kt-net]\nuplink = "lan"\n')
    xml = ("<network><name>kt-net</name><forward mode='bridge'/>"
           f"<bridge name='{BRIDGE}'/></network>")
    host.vm.agent.write_file("/root/kt-net.xml", xml.encode())
    cleanup.add(host.sh, "virsh -q net-destroy kt-net; virsh -q net-undefine kt-net",
                _what="remove network kt-net")
    host.check("virsh -q net-define /root/kt-net.xml && virsh -q net-start kt-net")
    assert f"master {BRIDGE}" in host.check(f"ip -o link show {STATIC_NIC}")
    guest = host.start_guest(cleanup, [Iface(guest_mac(), "network", network="kt-net",
                                             native=True)], {}, [])
    assert host.check(f"virsh domstate {guest.name}").strip() == "running"
    host.remove_guest(guest.name)
    host.check("virsh -q net-destroy kt-net")
    assert host.sh(f"ip link show {BRIDGE}").returncode != 0, \
        "kvmhooks made the bridge, so it goes"


def test_a_vlan_uplinks_guests_come_back_after_its_parent_flaps(vm_host, cleanup):
    host = vm_host
    vlan = f"{STATIC_NIC}.10"
    make_vlan = (f"ip link set {STATIC_NIC} up && ip link add link {STATIC_NIC} name {vlan} "
                 f"type vlan id 10 && ip link set {vlan} up")
    cleanup.add(host.sh, f"ip link del {vlan}", _what=f"remove {vlan}")
    host.check(make_vlan)
    host.configure(f'[uplink.vlan10]\nnic = "{vlan}"\n')
    a, b = (Iface(guest_mac(), "direct", "vlan10", "bridge") for _ in range(2))
    subnet = host.lan.subnet
    guest_a = host.start_guest(cleanup, [a], {a.mac: subnet.addr(21)}, [subnet.ip(22)])
    guest_b = host.start_guest(cleanup, [b], {b.mac: subnet.addr(22)}, [subnet.ip(21)])
    guest_a.wait_pinging(subnet.ip(22))

    def flap() -> None:
        replug(host, STATIC_NIC, "static")  # the VLAN device goes with its parent
        host.check(make_vlan)  # as the host's network configuration brings it back

    pinging_again_after(flap, [guest_a], subnet.ip(22), 120)
    guest_b.wait_pinging(subnet.ip(21), timeout=60)
    assert macvtap_lower(host, a.hook_owned_dev) == vlan


# --- NetworkManager: its DHCP NIC, its bridge -------------------------------------------

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
    cleanup.add(host.sh, "nmcli connection delete kt-br-port kt-br; "
                f"nmcli -w 30 connection up 'Wired connection 1' ifname {NIC}",
                _what="give the NIC its own connection back")
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
