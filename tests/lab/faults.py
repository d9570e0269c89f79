"""Fault injection at kvmhooks' netlink socket: a stand-in for its IPRoute that passes
every call on, counts the calls that change the host, and does something of the test's
own just before the Nth of them (raise an error, or kill the process)."""

from __future__ import annotations

from typing import Callable

#: The IPRoute methods through which kvmhooks changes the host (other commands of these
#: methods, such as "dump", only read). nlm_request: addresses on pyroute2 before 0.9
#: (see kvmhooks.netlink).
CHANGES = ("link", "addr", "route", "nlm_request")
_READS = ("dump", "get", "show")


class InterceptedIPRoute:
    """Wraps ``real``; calls ``before_change(n)`` before the n-th change, and ``at`` only
    for ``n == at`` when ``at`` is given (``None``: count only)."""

    def __init__(self, real, at: int | None, before_change: Callable[[int], None]):
        self.real, self.at, self.before_change, self.changes = real, at, before_change, 0

    def __getattr__(self, name):
        method = getattr(self.real, name)
        if name not in CHANGES:
            return method

        def call(command, *args, **kwargs):
            if command in _READS:
                return method(command, *args, **kwargs)
            self.changes += 1
            if self.changes == self.at:
                self.before_change(self.changes)
            return method(command, *args, **kwargs)
        return call
