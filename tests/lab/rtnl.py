"""The lab's rtnetlink sockets: pyroute2's, with their dumps read again when the kernel
says its tables changed during one (NLM_F_DUMP_INTR), which pyroute2 0.7 raises as an
error. Tests read links while kvmhooks changes them; kvmhooks reads again the same way
(kvmhooks.netlink)."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink import exceptions

from kvmhooks.netlink import route_socket

_INTERRUPTED = getattr(exceptions, "NetlinkDumpInterrupted", ())  # 0.5 has none
_DUMPS = frozenset({"get_links", "get_addr", "get_routes", "get_neighbours", "link_lookup"})
ATTEMPTS = 10


class Rereading:
    """Wraps an IPRoute or NetNS; a context manager that closes it."""

    def __init__(self, socket):
        self._socket = socket

    def __enter__(self) -> Rereading:
        return self

    def __exit__(self, *exc) -> None:
        self._socket.close()

    def __getattr__(self, name):
        method = getattr(self._socket, name)
        if name not in _DUMPS:
            return method

        def read(*args, **kwargs):
            for _ in range(ATTEMPTS - 1):
                try:
                    return list(method(*args, **kwargs))
                except _INTERRUPTED:
                    continue
            return list(method(*args, **kwargs))
        return read


T = TypeVar("T")


def made_in_netns(ns: str, make: Callable[[], T]) -> T:
    """``make()`` run with this thread in network namespace ``ns``, then back home.

    A socket keeps the namespace it was made in, and setns(2) switches only the calling
    thread. pyroute2's NetNS forks instead, which deadlocks now and then in a test
    process whose other threads (libvirt calls, a flapping NIC) hold locks at the fork."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(ns, flags=0)
        try:
            return make()
        finally:
            netns.setns(home)
    finally:
        os.close(home)


def rtnl(ns: str | None = None) -> Rereading:
    """A socket on the host, or inside network namespace ``ns``."""
    return Rereading(made_in_netns(ns, IPRoute) if ns else IPRoute())


def rtnl_decoding_all() -> Rereading:
    """A host socket that also reads the address attributes old pyroute2 releases leave
    unnamed (metric, protocol), as kvmhooks reads them."""
    return Rereading(route_socket())
