"""kvmhooks on a host run by systemd: udev under systemd starting kvmhooks-nic@, the agent
and libvirt socket-activated, a NIC that really leaves the PCI bus and comes back (also
under another name, and as a VLAN's parent), a libvirt network. Nested guests ping the LAN
host through what kvmhooks built. NetworkManager's own profiles on the uplink's NIC, and
the reboot, are test_uplink_owned_by_networkmanager's."""

from __future__ import annotations

import time

import pytest

from tests.lab.domains import Iface
from tests.lab.guest import ping_line
from tests.lab.names import guest_mac
from tests.lab.wait import wait_for

from .conftest import MEASURED
from .host import pinging_again_after
from .image import STATIC_NIC
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


def configure(host, cleanup, text: str) -> None:
    """The host config ``text``; the shim of uplink lan, which outlives guests, goes at
    cleanup (a NIC with a macvlan on it cannot join a bridge)."""
    cleanup.add(host.sh, "ip link del kh-lan", _what="remove the shim kh-lan")
    host.configure(text)


def macvtap_uplink(host) -> str:
    """Uplink lan: the VM's NIC, with a shim at .5 so the host reaches its macvtap guests."""
    return f'[uplink.lan]\nnic = "{NIC}"\nhost_address = "{host.lan.subnet.addr(5)}"\n'


def active(host, unit: str) -> bool:
    return host.sh(f"systemctl is-active --quiet {unit}").returncode == 0


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
