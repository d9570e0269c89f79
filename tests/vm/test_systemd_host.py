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

pytestmark = pytest.mark.vm

NIC = "enp1s0"  # the uplink NIC on root port 1, as udev names it


def macvtap_uplink(host) -> str:
    """Uplink lan: the VM's NIC, with a shim at .5 so the host reaches its macvtap guests."""
    return f'[uplink.lan]\nnic = "{NIC}"\nhost_address = "{host.lan.subnet.addr(5)}"\n'


def active(host, unit: str) -> bool:
    return host.sh(f"systemctl is-active --quiet {unit}").returncode == 0


def test_a_tagged_guest_starts_through_socket_activated_libvirt_and_agent(vm_host, cleanup):
    host = vm_host
    # As the host booted: nothing of libvirt or kvmhooks runs, only their sockets listen.
    assert not active(host, "libvirtd.service")
    assert not active(host, "kvmhooks-agent.service")
    assert active(host, "libvirtd.socket") and active(host, "kvmhooks-agent.socket")
    host.configure(macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    started = time.monotonic()
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(11)},
                             [host.lan.host])
    guest.wait_pinging(host.lan.host)
    MEASURED["nested guest start to LAN ping"] = time.monotonic() - started
    assert active(host, "libvirtd.service"), "the daemon started on demand"
    assert active(host, "kvmhooks-agent.service"), "the first hook call started the agent"
    assert host.address("kh-lan") == host.lan.subnet.addr(5)
    assert host.lan.ping(host.lan.subnet.ip(11)), "the LAN reaches the guest"
    assert host.sh(f"ping -c 2 -W 2 {host.lan.subnet.ip(11)}").returncode == 0, \
        "the host reaches its macvtap guest through the shim"


def test_a_nic_hot_unplugged_and_plugged_again_brings_its_guests_back(vm_host, cleanup):
    host = vm_host
    host.configure(macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(12)},
                             [host.lan.host])
    guest.wait_pinging(host.lan.host)
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


def test_stopping_the_agent_mid_run_never_fails_a_guest_operation(vm_host, cleanup):
    host = vm_host
    host.configure(macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(13)}, [])
    # The agent is stopped over and over while the guest stops and starts: each hook
    # call reaches a fresh agent through the socket, or runs in-process.
    cycles = host.sh(
        "( for i in $(seq 40); do systemctl stop kvmhooks-agent.service; sleep 0.2; done ) &"
        f" for i in 1 2 3; do virsh -q destroy {guest.name} && virsh -q start {guest.name}"
        " || exit 1; done; wait", timeout=300)
    assert cycles.returncode == 0, cycles.stderr
    assert host.check(f"virsh domstate {guest.name}").strip() == "running"
    assert host.check(f"ip -o link show {iface.hook_owned_dev}")


def test_restarting_libvirt_keeps_every_guest_running_also_without_the_agent(vm_host,
                                                                               cleanup):
    host = vm_host
    host.configure(macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(14)},
                             [host.lan.host])
    guest.wait_pinging(host.lan.host)
    host.check("systemctl restart libvirtd.service")  # reconnect, through the agent
    cleanup.add(host.check, "systemctl start kvmhooks-agent.socket",
                _what="listen on the agent's socket again")
    host.check("systemctl stop kvmhooks-agent.socket kvmhooks-agent.service")
    host.check("systemctl restart libvirtd.service")  # reconnect, in-process
    host.check("virsh -q list >/dev/null")  # libvirtd has reconnected to its guests
    assert host.check(f"virsh domstate {guest.name}").strip() == "running"
    mark = len(guest.serial())
    guest.wait_pinging(host.lan.host, timeout=30, after=mark)


def test_after_a_reboot_an_autostarted_guest_runs_with_its_devices(vm_host, cleanup):
    host = vm_host
    host.configure(macvtap_uplink(host))
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface], {iface.mac: host.lan.subnet.addr(15)},
                             [host.lan.host], autostart=True)
    guest.wait_pinging(host.lan.host)
    started = time.monotonic()
    MEASURED["reboot to multi-user"] = host.vm.reboot()
    wait_for(lambda: host.sh(f"virsh domstate {guest.name}").stdout.strip() == "running",
             120, what=f"{guest.name} running again after the reboot")
    guest.wait_pinging(host.lan.host, timeout=120)
    MEASURED["reboot to guest pinging the LAN"] = time.monotonic() - started
    assert host.address("kh-lan") == host.lan.subnet.addr(5)
    assert host.check(f"ip -o link show {iface.hook_owned_dev}")


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


def replug(host, name: str) -> None:
    host.vm.unplug("uplink")
    host.vm.plug("uplink")
    try:
        wait_for(lambda: host.sh(f"test -e /sys/class/net/{name}").returncode == 0, 30,
                 what=f"the NIC back as {name}")
    except TimeoutError as error:
        seen = host.sh("ip -br link; journalctl -b -k --no-pager | tail -n 15").stdout
        raise TimeoutError(f"{error}; in the VM:\n{seen}") from None


def guest_on_macvtap(host, cleanup, last_octet: int):
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = host.start_guest(cleanup, [iface],
                             {iface.mac: host.lan.subnet.addr(last_octet)}, [host.lan.host])
    guest.wait_pinging(host.lan.host)
    return iface, guest


def macvtap_lower(host, dev: str) -> str:
    """The name of the device ``dev`` (a macvtap) sits on, in the VM."""
    out = host.check(f"ip -o link show {dev}")
    return out.split("@", 1)[1].split(":", 1)[0]


def test_a_nic_named_with_a_dash_gets_its_events_through_systemd(vm_host, cleanup):
    host = vm_host
    name = renamed_nic(host, cleanup, "lan-nic0")
    host.configure(f'[uplink.lan]\nnic = "{name}"\n'
                   f'host_address = "{host.lan.subnet.addr(5)}"\n')
    iface, guest = guest_on_macvtap(host, cleanup, 16)
    mark = len(guest.serial())
    replug(host, name)
    guest.wait_pinging(host.lan.host, timeout=120, after=mark)
    assert macvtap_lower(host, iface.hook_owned_dev) == name
    units = host.check("journalctl -b --no-pager -o cat _COMM=systemd "
                       f"| grep -F 'kvmhooks-nic@move:{name}:' || true")
    assert units, f"no kvmhooks-nic@move:{name}:... unit ran"


def test_a_nic_that_comes_back_under_another_name_is_found_by_its_mac(vm_host, cleanup):
    host = vm_host
    mac = host.vm.nics["uplink"].mac
    host.configure(f'[uplink.lan]\nmac = "{mac}"\n'
                   f'host_address = "{host.lan.subnet.addr(5)}"\n')
    iface, guest = guest_on_macvtap(host, cleanup, 17)
    assert macvtap_lower(host, iface.hook_owned_dev) == NIC
    mark = len(guest.serial())
    name = renamed_nic(host, cleanup, "uplink7")
    guest.wait_pinging(host.lan.host, timeout=120, after=mark)
    assert macvtap_lower(host, iface.hook_owned_dev) == name
    assert macvtap_lower(host, "kh-lan") == name
