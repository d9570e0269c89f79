"""The shim on the real kernel: it keeps one MAC across rebuilds (derived from the host and
the uplink), and announces itself on the LAN when it is built (a gratuitous ARP for IPv4,
an unsolicited neighbour advertisement for IPv6), so LAN hosts and guests never keep a
stale neighbour entry for `host_address`. Seen from the LAN host's side of the stand-in
NIC, in a namespace of the test's own."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from kvmhooks.config import parse
from kvmhooks.engine.session import HostSession
from kvmhooks.planner import plan_uplinks
from kvmhooks.resolve import resolve_affected
from tests.lab.links import link_info
from tests.lab.names import pick_subnet6, random_mac
from tests.lab.nic import StandInNic
from tests.lab.uplinks import lab_uplink
from tests.lab.wait import wait_for

pytestmark = [pytest.mark.system, pytest.mark.floor]

ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
ICMPV6_NEIGHBOUR_ADVERTISEMENT = 136
NA_OVERRIDE = 0x20000000


def build_shim(config, nic: str) -> None:
    """What a NIC event does for the uplink (its shim included), in this process."""
    with HostSession("shim test") as session, session.locked():
        inventory = session.scan(config)
        session.apply(plan_uplinks(resolve_affected(config, inventory, nic), config,
                                   inventory).actions)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def announcements(frames: list[bytes], address: str) -> list[str]:
    """The source MACs of the announcements of ``address`` among ``frames``: gratuitous
    ARP (sender and target address both ``address``), or unsolicited neighbour
    advertisements with the override flag, a correct checksum, hop limit 255 and the
    target link-layer address option."""
    found = []
    ip = ipaddress.ip_address(address)
    for frame in frames:
        source, ethertype = frame[6:12], struct.unpack("!H", frame[12:14])[0]
        if ethertype == ETH_P_ARP and ip.version == 4:
            sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
            if sender_ip == target_ip == ip.packed and sender_mac == source:
                found.append(mac_text(source))
        elif ethertype == ETH_P_IPV6 and ip.version == 6 and frame[20] == 58:
            hop_limit, src, dst = frame[21], frame[22:38], frame[38:54]
            icmp = frame[54:54 + struct.unpack("!H", frame[18:20])[0]]
            if icmp[0] != ICMPV6_NEIGHBOUR_ADVERTISEMENT or icmp[8:24] != ip.packed:
                continue
            flags = struct.unpack("!I", icmp[4:8])[0]
            option = icmp[24:32]
            assert hop_limit == 255 and flags & NA_OVERRIDE
            assert checksum6(src, dst, icmp) == 0
            assert option[:2] == b"\x02\x01" and option[2:] == source
            found.append(mac_text(source))
    return found


def checksum6(src: bytes, dst: bytes, icmp: bytes) -> int:
    """The ICMPv6 checksum over the pseudo-header and the message (0 when it is right)."""
    data = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_a_rebuilt_shim_keeps_its_mac_and_announces_it(family, cleanup, subnet, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path / "state"))
    v6 = pick_subnet6()
    nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2),
                     lan_addresses=(v6.addr(2),))
    host = subnet if family == 4 else v6
    up = lab_uplink(cleanup, nic.name, host_address=host.addr(5))
    config = parse(up.table.encode(), "shim.toml")
    lan = nic.capture()
    build_shim(config, nic.name)
    mac = link_info(up.shim)["mac"]
    assert announcements(lan.read(), host.ip(5)) == [mac], "announced when built"
    assert int(mac[:2], 16) & 0x3 == 0x2, "a locally administered unicast MAC"

    # The NIC goes and comes back, and its shim with it; the LAN host has a neighbour
    # entry for the shim's address that is not its MAC (as a shim of another MAC left).
    nic.recreate()
    nic.set_lan_neighbour(host.ip(5), random_mac())
    lan = nic.capture()
    build_shim(config, nic.name)
    assert link_info(up.shim)["mac"] == mac, "the same MAC after the rebuild"
    assert announcements(lan.read(), host.ip(5)) == [mac], "announced when rebuilt"
    wait_for(lambda: nic.lan_neighbour(host.ip(5)) == mac, 5,
             what="the LAN host's neighbour entry to follow the announcement")
    # The LAN side's own IPv6 address runs duplicate address detection again after the
    # NIC's recreation: the first ping may leave before it can.
    wait_for(lambda: nic.lan_ping(host.ip(5), timeout=1), 10,
             what="the LAN host to reach the rebuilt shim")
