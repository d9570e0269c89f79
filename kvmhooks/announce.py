"""The frame that announces an address on a link (pure): a gratuitous ARP for IPv4 (an ARP
announcement, RFC 5227 section 2.3), an unsolicited neighbour advertisement with the
override flag for IPv6 (RFC 4861 section 7.2.6). Hosts and guests that hold a neighbour
entry for the address take the sender's MAC; netlink.py sends it when the shim is built."""

from __future__ import annotations

import ipaddress
import struct

ETH_P_ARP, ETH_P_IP, ETH_P_IPV6 = 0x0806, 0x0800, 0x86DD
ARP_REQUEST = 1
IPPROTO_ICMPV6 = 58
NEIGHBOUR_ADVERTISEMENT = 136
NA_OVERRIDE = 0x20000000
TARGET_LINK_LAYER_ADDRESS = 2
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ETHERNET_MIN = 60  # the shortest Ethernet frame, without its checksum


def announcement(mac: str, address: str) -> bytes:
    """The Ethernet frame that announces ``address`` ('a/len' or 'a') at ``mac``."""
    hardware = bytes.fromhex(mac.replace(":", ""))
    ip = ipaddress.ip_interface(address).ip
    if ip.version == 4:
        return _gratuitous_arp(hardware, ip.packed)
    return _neighbour_advertisement(hardware, ip.packed)


def _gratuitous_arp(hardware: bytes, ip: bytes) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, ARP_REQUEST, hardware, ip,
                      bytes(6), ip)
    frame = b"\xff" * 6 + hardware + struct.pack("!H", ETH_P_ARP) + arp
    return frame.ljust(ETHERNET_MIN, b"\0")


def _neighbour_advertisement(hardware: bytes, ip: bytes) -> bytes:
    option = struct.pack("!BB6s", TARGET_LINK_LAYER_ADDRESS, 1, hardware)
    body = struct.pack("!I16s", NA_OVERRIDE, ip) + option
    destination = ALL_NODES.packed
    pseudo = ip + destination + struct.pack("!I3xB", 4 + len(body), IPPROTO_ICMPV6)
    checksum = _checksum(pseudo + struct.pack("!BBH", NEIGHBOUR_ADVERTISEMENT, 0, 0) + body)
    icmp = struct.pack("!BBH", NEIGHBOUR_ADVERTISEMENT, 0, checksum) + body
    # Hop limit 255: receivers drop neighbour discovery from beyond the link.
    header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, 255, ip,
                         destination)
    multicast = b"\x33\x33" + destination[-4:]
    return multicast + hardware + struct.pack("!H", ETH_P_IPV6) + header + icmp


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
