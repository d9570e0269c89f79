"""Unique names, MACs and subnets for what the lab makes.

Every kernel link, network namespace and libvirt domain the lab makes starts with
``TEST_PREFIX`` (``kt``); the leak check looks for those. Addresses come only from
/24s of 198.18.0.0/15 that no route or address on the machine covers
(:func:`pick_subnet`).
"""

from __future__ import annotations

import ipaddress
import random
import secrets
from dataclasses import dataclass

from .rtnl import rtnl

TEST_PREFIX = "kt"
IFNAMSIZ = 15  # the longest kernel link name
LAB_SUPERNET = ipaddress.ip_network("198.18.0.0/15")
#: IPv6's benchmarking range (RFC 5180), as 198.18.0.0/15 is IPv4's.
LAB_SUPERNET6 = ipaddress.ip_network("2001:2::/48")


def random_mac(first_octet: int | None = None) -> str:
    """A random locally administered unicast MAC (02:..., or ``first_octet``)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = first_octet if first_octet is not None else (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def guest_mac() -> str:
    """A random MAC in QEMU's 52:54:00 range, as libvirt gives guests."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def tap_mac(mac: str) -> str:
    """The MAC of the host end of a guest's tap: libvirt puts 0xfe in the first octet."""
    return "fe" + mac[2:]


def unique_name(prefix: str = TEST_PREFIX, hexdigits: int = 6) -> str:
    """``prefix`` + random hex, at most 15 characters (a kernel link name).

    Uses fewer hex digits (but at least 4) when the prefix is long.
    """
    room = IFNAMSIZ - len(prefix)
    if room < 4:
        raise ValueError(f"prefix {prefix!r} too long for a unique 15-character name")
    n = min(hexdigits, room)
    return prefix + secrets.token_hex((n + 1) // 2)[:n]


def uplink_name() -> str:
    """A unique uplink name, so its shim (kh-NAME) never meets another test's."""
    return "u" + secrets.token_hex(3)


@dataclass(frozen=True)
class Subnet:
    """A /24 out of 198.18.0.0/15. ``addr(1)`` -> '198.18.7.1/24', ``ip(1)`` -> '198.18.7.1'."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def ip(self, host: int) -> str:
        return str(self.network[host])

    def addr(self, host: int) -> str:
        return f"{self.network[host]}/{self.network.prefixlen}"

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def __str__(self) -> str:
        return str(self.network)


_handed_out: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()


def _routed_networks(family: int = 2) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    with rtnl() as ipr:
        for table in (254, 255):  # main (what `ip route` shows) and local
            for r in ipr.get_routes(family=family, table=table):
                dst = r.get_attr("RTA_DST")
                plen = r["dst_len"]
                if dst is None or plen == 0:
                    continue  # the default route covers nothing specific
                nets.append(ipaddress.ip_network(f"{dst}/{plen}", strict=False))
        for a in ipr.get_addr(family=family):
            nets.append(
                ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            )
    return nets


def pick_subnet() -> Subnet:
    """A random /24 in 198.18.0.0/15 that overlaps no route or address here
    and was not handed out before in this process."""
    used = _routed_networks()
    candidates = list(LAB_SUPERNET.subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if net in _handed_out:
            continue
        if any(net.overlaps(u) for u in used):
            continue
        _handed_out.add(net)
        return Subnet(net)
    raise RuntimeError("no free /24 left in 198.18.0.0/15")


def pick_subnet6() -> Subnet:
    """A random /64 in 2001:2::/48 that overlaps no route or address here and was not
    handed out before in this process. ``addr(1)`` -> '2001:2:0:7a3c::1/64'."""
    used = _routed_networks(family=10)
    for _ in range(1000):
        net = ipaddress.ip_network(f"2001:2:0:{random.randrange(1, 0x10000):x}::/64")
        if net in _handed_out or any(net.overlaps(u) for u in used):
            continue
        _handed_out.add(net)
        return Subnet(net)
    raise RuntimeError("no free /64 found in 2001:2::/48")
