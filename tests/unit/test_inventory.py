"""inventory: which routes are the kernel's own for a link's addresses, what an address
keeps, and the marks the creation journal gives."""

from __future__ import annotations

import pytest

from kvmhooks import netlink
from kvmhooks.inventory import (
    Address,
    Inventory,
    Link,
    Route,
    is_prefix_route,
    prefix_route,
    with_creating_marks,
)

KERNEL, STATIC = 2, 4
V4 = Address("198.18.5.1/24")
V6 = Address("2001:2:0:5::1/64")


@pytest.mark.parametrize("route, addresses, expected", [
    (Route("198.18.5.0/24", 2, source="198.18.5.1", protocol=KERNEL, scope=253), (V4,), True),
    (Route("2001:2:0:5::/64", 10, priority=256, protocol=KERNEL), (V6,), True),
    # NetworkManager adds its addresses with noprefixroute and their routes itself, of
    # protocol "kernel": those move.
    (Route("198.18.5.0/24", 2, priority=100, protocol=KERNEL, scope=253),
     (Address("198.18.5.1/24", flags=0x200),), False),
    (Route("198.18.5.0/24", 2, protocol=STATIC, scope=253), (V4,), False),
    (Route("198.18.6.0/24", 2, protocol=KERNEL, scope=253), (V4,), False),
    (Route("default", 2, gateway="198.18.5.254", protocol=KERNEL), (V4,), False),
], ids=["ipv4", "ipv6", "noprefixroute", "static", "other-prefix", "gateway"])
def test_prefix_routes_are_the_kernels_for_the_links_addresses(route, addresses, expected):
    assert is_prefix_route(route, addresses) is expected


def test_the_kernels_prefix_route_of_an_address():
    assert prefix_route(V4) == Route("198.18.5.0/24", 2, source="198.18.5.1",
                                     protocol=KERNEL, scope=253)
    assert prefix_route(V6) == Route("2001:2:0:5::/64", 10, priority=256, protocol=KERNEL)
    assert prefix_route(Address("198.18.5.1/24", metric=100)).priority == 100


@pytest.mark.parametrize("address, temporary", [
    (Address("2001:2:0:5:1:2:3:4/64", flags=0x1), True),
    (Address("2001:2:0:5::1/64", flags=0x100), False),  # mngtmpaddr
    (Address("198.18.5.2/24", flags=0x1), False),  # an IPv4 secondary
])
def test_temporary_addresses_are_ipv6s(address, temporary):
    assert address.temporary is temporary


def test_journal_marks_are_pending_until_the_kernel_has_them():
    inventory = Inventory((Link(2, "kh-lan"), Link(3, "br-lan", alias="kvmhooks:bridge:lan")))
    marked = with_creating_marks(inventory, {"kh-lan": "kvmhooks:shim:lan",
                                             "br-lan": "kvmhooks:bridge:x"})
    assert marked.by_name("kh-lan").alias == "kvmhooks:shim:lan"
    assert marked.by_name("kh-lan").mark_pending
    assert marked.by_name("br-lan") == inventory.by_name("br-lan")


@pytest.mark.parametrize("data, expected", [
    # pyroute2 0.5 leaves a tun's IFLA_INFO_DATA undecoded: a dump of a 4-queue tap.
    ("05:00:03:00:02:00:00:00:05:00:04:00:00:00:00:00:05:00:05:00:01:00:00:00:"
     "05:00:06:00:01:00:00:00:05:00:07:00:01:00:00:00:08:00:08:00:04:00:00:00", True),
    ("05:00:03:00:02:00:00:00:05:00:07:00:00:00:00:00", False),
    ("05:00:03:00:02:00:00:00", None),
    ("", None),
    (None, None),
])
def test_the_queue_flag_of_a_tun_from_undecoded_data(data, expected):
    assert netlink._multi_queue(data) is expected
