"""What the leak check in conftest.py looks for: links (``kt*`` made by the lab, ``kh*``
made by kvmhooks), namespaces and domains (``kt*``); and removing the lab's own
leftovers of an interrupted run."""

from __future__ import annotations

import errno

from pyroute2 import netns

from .links import delete_link, remove_netns
from .names import TEST_PREFIX
from .rtnl import rtnl
from .virt import destroy_and_undefine

#: Link name prefixes the leak check looks at: lab-made and kvmhooks-made.
LEAK_LINK_PREFIXES = (TEST_PREFIX, "kh")


def leftover_links() -> list[str]:
    with rtnl() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if n and n.startswith(LEAK_LINK_PREFIXES))


def leftover_netns() -> list[str]:
    try:
        return sorted(n for n in netns.listnetns() if n.startswith(TEST_PREFIX))
    except FileNotFoundError:
        return []


def leftover_domains(conn) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(TEST_PREFIX))


def snapshot(conn) -> dict[str, set[str]]:
    """What the leak check compares before and after a session (``conn``: a libvirt
    connection, or None where there is none)."""
    return {
        "links": set(leftover_links()),
        "namespaces": set(leftover_netns()),
        "domains": set(leftover_domains(conn)) if conn is not None else set(),
    }


def purge_stale(conn, snap: dict[str, set[str]]) -> list[str]:
    """Remove the lab-named (kt...) leftovers in ``snap`` of an earlier, interrupted run
    (links named kh..., kvmhooks' own, are left alone). Returns what it removed."""
    removed = []
    for name in sorted(snap["domains"]):
        destroy_and_undefine(conn, name)
        removed.append(f"domain {name}")
    for name in sorted(snap["links"]):
        if name.startswith(TEST_PREFIX) and delete_link(name):
            removed.append(f"link {name}")
    for name in sorted(snap["namespaces"]):
        try:
            remove_netns(name)
        except OSError as error:
            # The EL9-floor tier runs in a private mount namespace: a namespace that an
            # interrupted host-side run left mounted there cannot be unlinked from here.
            # A host-side session removes it; this one only must not count it as a leak.
            if error.errno != errno.EBUSY:
                raise
            continue
        removed.append(f"netns {name}")
    return removed
