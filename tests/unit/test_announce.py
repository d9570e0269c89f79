"""announce.announcement: the frames that tell a LAN where the shim's address is."""

from __future__ import annotations

import struct

from kvmhooks.announce import announcement

MAC = "02:11:22:33:44:55"
MAC_BYTES = bytes.fromhex("021122334455")


def test_gratuitous_arp():
    frame = announcement(MAC, "198.18.5.5/24")
    ip = bytes([198, 18, 5, 5])
    assert len(frame) == 60 and frame[:6] == b"\xff" * 6 and frame[6:12] == MAC_BYTES
    assert frame[12:14] == b"\x08\x06"
    # Ethernet, IPv4, request; sender and target are the address itself.
    assert frame[14:22] == bytes.fromhex("0001080006040001")
    assert frame[22:28] == MAC_BYTES and frame[28:32] == ip
    assert frame[32:38] == bytes(6) and frame[38:42] == ip


def test_unsolicited_neighbour_advertisement():
    frame = announcement(MAC, "2001:2::5/64")
    target = bytes.fromhex("20010002000000000000000000000005")
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == MAC_BYTES
    assert frame[12:14] == b"\x86\xdd"
    header, icmp = frame[14:54], frame[54:]
    assert header[0] >> 4 == 6 and struct.unpack("!H", header[4:6])[0] == len(icmp) == 32
    assert header[6] == 58 and header[7] == 255
    assert header[8:24] == target and header[24:40] == all_nodes
    assert icmp[0] == 136 and icmp[1] == 0
    assert struct.unpack("!I", icmp[4:8])[0] == 0x20000000  # override, not solicited
    assert icmp[8:24] == target and icmp[24:32] == b"\x02\x01" + MAC_BYTES
    pseudo = header[8:40] + struct.pack("!I3xB", len(icmp), 58)
    words = struct.unpack("!36H", pseudo + icmp)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF, "the checksum"
