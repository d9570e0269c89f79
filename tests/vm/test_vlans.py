"""Per-guest VLANs on a kernel that has them (the systemd host VM's: 802.1Q and bridge VLAN
filtering). Inside the VM, a stand-in NIC's LAN is a plain switch (a bridge that filters
nothing, in a namespace) with a host on VLAN 10, a host on VLAN 20, both tagging, and an
untagged one; nested guests show with their own packets who reaches whom."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.lab.cleanup import Cleanup
from tests.lab.domains import Iface
from tests.lab.guest import ping_line
from tests.lab.names import guest_mac

from .host import pinging_again_after

pytestmark = pytest.mark.vm

# One subnet for both VLANs: only the VLAN keeps a guest from a host of the other one.
V10, V20 = "198.18.210", "198.18.220"  # VLAN 10's subnet (for both VLANs), VLAN 20's own
UNTAGGED = "198.18.200"  # the LAN's untagged subnet: the VM's own address on the NIC
NIC, DIRECT_NIC = "ktvnic", "ktvdir"  # the VM's stand-in NICs, both on the switch
BRIDGE = "br-ktv"
LAN_NS = ("ktvsw", "ktv10", "ktv20")  # the switch, the VLAN 10 host, the VLAN 20 host

LAN_SCRIPT = f"""
set -e
for ns in {' '.join(LAN_NS)}; do ip netns add $ns; done
ip -n ktvsw link add sw type bridge
ip -n ktvsw link set sw up
ip -n ktvsw addr add {UNTAGGED}.2/24 dev sw
port() {{  # port VM_END SWITCH_END: a veth from the VM (or a namespace) to the switch
    ip link add "$1" type veth peer name "$2" netns ktvsw
    ip -n ktvsw link set "$2" master sw up
}}
port {NIC} p-nic
port {DIRECT_NIC} p-dir
ip link set {NIC} up
ip link set {DIRECT_NIC} up
ip addr add {UNTAGGED}.1/24 dev {NIC}
host() {{  # host NS VID ADDRESS...: a LAN host that tags its frames with VID
    ip -n ktvsw link add "p-$1" type veth peer name lan netns "$1"
    ip -n ktvsw link set "p-$1" master sw up
    ip -n "$1" link set lan up
    ip -n "$1" link add link lan name "lan.$2" type vlan id "$2"
    ip -n "$1" link set "lan.$2" up
    ns=$1; shift 2
    for address; do ip -n "$ns" addr add "$address" dev "lan.${{ns#ktv}}"; done
}}
host ktv10 10 {V10}.2/24
host ktv20 20 {V10}.3/24 {V20}.3/24
"""


def port_vlans(host, port: str) -> list[int]:
    """The VLANs of a bridge port in the VM, as the kernel has them."""
    shown = json.loads(host.check(f"bridge -j vlan show dev {shlex.quote(port)}") or "[]")
    return sorted(entry["vlan"] for item in shown for entry in item.get("vlans", []))


@pytest.fixture(scope="module")
def vlan_lan(vm_host):
    """The switch, its VLAN hosts and the config, for the module's tests (each leaves
    them as it found them); removed with the bridge and sub-interface kvmhooks made."""
    host = vm_host
    with Cleanup() as module:
        module.add(host.sh, "; ".join([f"ip netns del {ns}" for ns in LAN_NS]
                                      + [f"ip link del {link}" for link in
                                         (NIC, DIRECT_NIC, BRIDGE, f"{DIRECT_NIC}.10")]),
                   _what="remove the VLAN LAN")
        host.check(LAN_SCRIPT)
        host.configure(f'[uplink.vl]\nnic = "{NIC}"\nbridge = "{BRIDGE}"\n\n'
                       f'[uplink.vd]\nnic = "{DIRECT_NIC}"\n')
        yield host


def start(host, cleanup, iface: Iface, address: str, pings: list[str],
          vlans: dict[int, str] | None = None):
    guest = host.define_guest(cleanup, [iface], {iface.mac: address}, pings,
                              vlans={iface.mac: vlans} if vlans else None)
    host.check(f"virsh -q start {guest.name}", timeout=300)
    return guest


def reaches(guest, target: str, timeout: float = 240) -> bool:
    try:
        guest.wait_pinging(target, timeout=timeout)
        return True
    except TimeoutError:
        return False


def never_reaches(guest, target: str) -> bool:
    """Four rounds of failed pings of target, and not one success."""
    guest.wait_line(ping_line(target, ok=False), timeout=240, count=4)
    return not any(line.endswith(f"ping {target} ok") for line in guest.serial())


def test_guests_on_vlans_behind_one_bridge(vlan_lan, cleanup):
    """Two guests on VLAN 10, one on VLAN 20 with an address in VLAN 10's subnet, and a
    trunk guest on both; the NIC's port carries 10 and 20 tagged; the host keeps its
    untagged address; VLAN 20 leaves the NIC's port when its last guest stops."""
    host = vlan_lan
    targets = [f"{V10}.2", f"{V10}.3", f"{V10}.11", f"{V10}.12", f"{V10}.13"]
    on_10 = [Iface(guest_mac(), "bridge", "vl", vlan=10) for _ in range(2)]
    on_20 = Iface(guest_mac(), "bridge", "vl", vlan=20)
    trunk = Iface(guest_mac(), "bridge", "vl", trunk="10,20")
    a = start(host, cleanup, on_10[0], f"{V10}.11/24", targets)
    b = start(host, cleanup, on_10[1], f"{V10}.12/24", [f"{V10}.11"])
    c = start(host, cleanup, on_20, f"{V10}.13/24", targets)
    t = start(host, cleanup, trunk, f"{UNTAGGED}.14/24",
              [f"{V10}.2", f"{V20}.3", f"{UNTAGGED}.2"], vlans={10: f"{V10}.14/24",
                                                                20: f"{V20}.14/24"})

    assert reaches(a, f"{V10}.2"), "VLAN 10 guest -> VLAN 10 LAN host"
    assert reaches(a, f"{V10}.12") and reaches(b, f"{V10}.11"), "the two VLAN 10 guests"
    assert reaches(c, f"{V10}.3"), "VLAN 20 guest -> VLAN 20 LAN host"
    assert never_reaches(a, f"{V10}.3") and never_reaches(a, f"{V10}.13"), \
        "VLAN 10 reaches nothing on VLAN 20"
    assert never_reaches(c, f"{V10}.2") and never_reaches(c, f"{V10}.11"), \
        "VLAN 20 reaches nothing on VLAN 10"
    assert reaches(t, f"{V10}.2") and reaches(t, f"{V20}.3"), "the trunk reaches both"
    assert reaches(t, f"{UNTAGGED}.2"), "and the untagged LAN through its untagged VLAN"

    assert port_vlans(host, NIC) == [1, 10, 20]
    assert port_vlans(host, on_10[0].hook_owned_dev) == [10]
    assert port_vlans(host, trunk.hook_owned_dev) == [1, 10, 20]
    assert host.sh(f"ip netns exec ktvsw ping -c 2 -W 2 {UNTAGGED}.1").returncode == 0, \
        "the host keeps its own untagged address, now on the bridge"

    for guest in (c, t):
        host.remove_guest(guest.name)
    assert port_vlans(host, NIC) == [1, 10], "VLAN 20 left with its last guest"


def test_a_macvtap_guest_on_a_vlan_sits_on_the_nics_sub_interface(vlan_lan, cleanup):
    """And the sub-interface comes back with its NIC, the guest re-plugged onto it; it goes
    with the last guest on it."""
    host = vlan_lan
    iface = Iface(guest_mac(), "direct", "vd", "bridge", vlan=10)
    guest = start(host, cleanup, iface, f"{V10}.16/24", [f"{V10}.2", f"{V10}.3"])
    assert reaches(guest, f"{V10}.2"), "macvtap guest on VLAN 10 -> VLAN 10 LAN host"
    assert never_reaches(guest, f"{V10}.3"), "and not the VLAN 20 one"
    sub = f"{DIRECT_NIC}.10"
    detail = host.check(f"ip -d link show {sub}")
    assert "vlan protocol 802.1Q id 10" in detail and "kvmhooks:vlan:vd" in detail

    def new_nic() -> None:
        host.check(f"ip link del {DIRECT_NIC} && ip link add {DIRECT_NIC} type veth peer "
                   f"name p-dir netns ktvsw && ip -n ktvsw link set p-dir master sw up && "
                   f"ip link set {DIRECT_NIC} up")
        host.settle()

    pinging_again_after(new_nic, [guest], f"{V10}.2", 120)
    assert f"@{sub}:" in host.check(f"ip -o link show {iface.hook_owned_dev}")

    host.remove_guest(guest.name)
    assert host.sh(f"ip link show {sub}").returncode != 0, "the sub-interface went with it"
