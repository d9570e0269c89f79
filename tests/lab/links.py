"""Kernel links and network namespaces: look them up, make them, remove them, ping across.

Every helper that makes something registers its removal in a Cleanup. The machine's
own links (``PROTECTED_LINKS``) are never deleted nor used as a parent.
"""

from __future__ import annotations

import errno
import subprocess
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from .cleanup import Cleanup
from .names import TEST_PREFIX, unique_name

PROTECTED_LINKS = frozenset({"eth0", "lo"})
#: libvirt's macvtap mode names where the kernel's (what link_info reports) differ.
KERNEL_MODE = {"passthrough": "passthru"}


def _ipr(ns: str | None):
    return NetNS(ns, flags=0) if ns else IPRoute()


def link_index(name: str, ns: str | None = None) -> int | None:
    """Index of link ``name`` (in namespace ``ns``), or None."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_exists(name: str, ns: str | None = None) -> bool:
    return link_index(name, ns) is not None


def link_info(name: str, ns: str | None = None) -> dict[str, Any] | None:
    """A plain dict about link ``name``: index, ifname, mac, kind, master
    (name or None), up (bool), operstate, alias, addresses (list of 'a/len'),
    link (parent index, for macvlan/macvtap), mode (macvlan/macvtap mode name).
    None when the link does not exist."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        msg = ipr.get_links(found[0])[0]
        master_idx = msg.get_attr("IFLA_MASTER")
        master = None
        if master_idx:
            m = ipr.get_links(master_idx)
            master = m[0].get_attr("IFLA_IFNAME") if m else None
        addrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])
        ]
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    mode = None
    if linkinfo and kind in ("macvlan", "macvtap"):
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if data is not None:
            mode = data.get_attr("IFLA_MACVLAN_MODE") or data.get_attr("IFLA_MACVTAP_MODE")
    return {
        "index": found[0],
        "ifname": msg.get_attr("IFLA_IFNAME"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "kind": kind,
        "master": master,
        "up": bool(msg["flags"] & 1),
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "alias": msg.get_attr("IFLA_IFALIAS"),
        "addresses": addrs,
        "link": msg.get_attr("IFLA_LINK"),
        "mode": mode,
    }


def all_links() -> set[str]:
    """The names of every link on the host."""
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


def marked_links(prefix: str = "kvmhooks:") -> dict[str, str]:
    """Every link whose alias carries kvmhooks' mark: name -> alias."""
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME"): link.get("IFLA_IFALIAS") for link in ipr.get_links()
                if (link.get("IFLA_IFALIAS") or "").startswith(prefix)}


def host_state(netlink, names: set[str]) -> dict:
    """What fault and undo tests compare, read through kvmhooks' own netlink backend
    (``netlink``): every link of interest, by name, with its parts."""
    inventory = netlink.inventory()
    by_index = {link.index: link.name for link in inventory.links}
    return {link.name: (link.kind, link.mac, link.alias, by_index.get(link.master),
                        by_index.get(link.parent), link.up, link.mode,
                        sorted(link.addresses), sorted(map(repr, link.routes)),
                        sorted(map(repr, link.prefix_routes)))
            for link in inventory.links if link.name in names or link.name.startswith("kh")}


def delete_link(name: str, ns: str | None = None) -> bool:
    """Delete link ``name`` if it exists; True when something was deleted."""
    if ns is None and name in PROTECTED_LINKS:
        raise ValueError(f"refusing to delete {name}")
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except Exception as exc:  # gone in between (a veth peer, a macvtap)
            if getattr(exc, "code", None) == errno.ENODEV:
                return False
            raise
    return True


def delete_link_later(cleanup: Cleanup, *names: str, ns: str | None = None) -> None:
    """Register removal of each of ``names`` (if present at cleanup time): for devices
    that kvmhooks or libvirt create on a test's behalf, such as shared bridges and
    shims, which outlive the guest."""
    for name in names:
        cleanup.add(delete_link, name, ns, _what=f"delete link {name}")


def create_macvtap(
    name: str, parent: str, cleanup: Cleanup, mac: str | None = None, mode: str = "bridge"
) -> int:
    """A macvtap ``name`` on link ``parent`` in ``mode``, removed at cleanup."""
    if parent in PROTECTED_LINKS:
        raise ValueError(f"refusing to put a macvtap on {parent}")
    with IPRoute() as ipr:
        parent_idx = ipr.link_lookup(ifname=parent)[0]
        kw: dict[str, Any] = {}
        if mac:
            kw["address"] = mac
        ipr.link("add", ifname=name, kind="macvtap", link=parent_idx, macvtap_mode=mode, **kw)
        delete_link_later(cleanup, name)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, state="up")
    return idx


def create_bridge(name: str, cleanup: Cleanup, address: str | None = None) -> int:
    """An up Linux bridge ``name`` (optionally with ``address`` 'a/len'), removed at cleanup."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        delete_link_later(cleanup, name)
        idx = ipr.link_lookup(ifname=name)[0]
        if address:
            ip, plen = address.split("/")
            ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")
    return idx


def create_netns(cleanup: Cleanup, name: str | None = None) -> str:
    """A new network namespace (name ``kt...``) with lo up; removed at cleanup."""
    name = name or unique_name(TEST_PREFIX + "ns")
    netns.create(name)
    cleanup.add(remove_netns, name, _what=f"remove netns {name}")
    with NetNS(name, flags=0) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    return name


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def ping(address: str, ns: str | None = None, count: int = 1, timeout: float = 2.0) -> bool:
    """True when ``address`` answers a ping (from the host, or from inside ``ns``)."""
    cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(max(1, int(timeout))), address]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return r.returncode == 0
