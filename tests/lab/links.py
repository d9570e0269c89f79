"""Kernel links and network namespaces: look them up, make them, remove them, ping across.

Every helper that makes something registers its removal in a Cleanup. The machine's
own links (``PROTECTED_LINKS``) are never deleted nor used as a parent.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import netns
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELLINK

from .cleanup import Cleanup
from .names import TEST_PREFIX, random_mac, unique_name
from .rtnl import rtnl, rtnl_decoding_all

PROTECTED_LINKS = frozenset({"eth0", "lo"})
#: libvirt's macvtap mode names where the kernel's (what link_info reports) differ.
KERNEL_MODE = {"passthrough": "passthru"}


def _ipr(ns: str | None):
    return rtnl(ns)


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
    link (parent index, for macvlan/macvtap), mode (macvlan/macvtap mode name), mtu.
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
        "mtu": msg.get_attr("IFLA_MTU"),
    }


def all_links() -> set[str]:
    """The names of every link on the host."""
    with rtnl() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def marked_links(prefix: str = "kvmhooks:") -> dict[str, str]:
    """Every link whose alias carries kvmhooks' mark: name -> alias."""
    with rtnl() as ipr:
        return {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_IFALIAS")
                for link in ipr.get_links()
                if (link.get_attr("IFLA_IFALIAS") or "").startswith(prefix)}


#: Address flags that change on their own while DAD runs: not compared.
IFA_F_TENTATIVE = 0x40
#: Route flags that tell a device's carrier, not the route: not compared.
RTNH_F_DEAD, RTNH_F_LINKDOWN = 0x1, 0x10
FOREVER = 0xFFFFFFFF
#: Lifetimes and expiries count down: two snapshots agree on one when the later value is
#: at most the earlier one (and a second of rounding) and no further below it than the
#: time between them and this.
LIFETIME_SLACK = 2


@dataclass(frozen=True)
class HostState:
    """What fault and undo tests compare (see :func:`host_state`)."""

    links: dict  # name -> {part: value}
    taken: float  # time.monotonic() when it was read


def host_state(names: set[str]) -> HostState:
    """Every link in ``names`` and every ``kh*`` link, read with pyroute2 (not through
    kvmhooks): kind, MAC, mark, master, parent, up, mode and MTU; every address with its
    flags, lifetimes, metric, broadcast, label and protocol; every main-table route through
    it with every property (gateway, metric, source, protocol, scope, flags, TOS, type,
    preference, metrics, expiry). The kernel's IPv6 link-local addresses and routes are
    left out (see _kernels_link_local)."""
    taken = time.monotonic()
    with rtnl_decoding_all() as ipr:
        links = ipr.get_links()
        by_index = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in links}
        wanted = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in links
                  if msg.get_attr("IFLA_IFNAME") in names
                  or msg.get_attr("IFLA_IFNAME", "").startswith("kh")}
        addresses: dict[int, list] = {index: [] for index in wanted}
        for msg in ipr.get_addr():
            if msg["index"] in wanted and not _kernels_link_local(
                    msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")):
                addresses[msg["index"]].append(_address_state(msg, wanted[msg["index"]]))
        routes: dict[int, list] = {index: [] for index in wanted}
        for msg in ipr.get_routes(table=254):
            if msg.get_attr("RTA_OIF") in wanted and msg.get_attr("RTA_TABLE", 254) == 254 \
                    and not _kernels_link_local(msg.get_attr("RTA_DST")):
                routes[msg.get_attr("RTA_OIF")].append(_route_state(msg))
    state = {}
    for msg in links:
        index = msg["index"]
        if index not in wanted:
            continue
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        mode = (data.get_attr("IFLA_MACVLAN_MODE") or data.get_attr("IFLA_MACVTAP_MODE")) \
            if data is not None and kind in ("macvlan", "macvtap") else None
        parent = msg.get_attr("IFLA_LINK") if kind in ("macvlan", "macvtap") else None
        state[wanted[index]] = {
            "kind": kind, "mac": msg.get_attr("IFLA_ADDRESS"),
            "alias": msg.get_attr("IFLA_IFALIAS"),
            "master": by_index.get(msg.get_attr("IFLA_MASTER")), "parent": by_index.get(parent),
            "up": bool(msg["flags"] & 1), "mode": mode, "mtu": msg.get_attr("IFLA_MTU"),
            "addresses": sorted(addresses[index], key=repr),
            "routes": sorted(routes[index], key=repr)}
    return HostState(state, taken)


def _kernels_link_local(address: str | None) -> bool:
    """An IPv6 link-local address or its fe80::/64 route: the kernel makes them when a
    device first has a carrier (a bridge its first port) and keeps them after; kvmhooks
    neither makes nor moves them (netlink.py leaves link-local routes alone)."""
    return address is not None and ":" in address and \
        ipaddress.ip_address(address).is_link_local


def _lifetime(value: int | None) -> int | None:
    return None if value is None or value == FOREVER else value


def _address_state(msg, device: str) -> dict:
    """An address's properties; its label with the device's name as '%', so that one
    address on two devices compares equal."""
    # A struct's fields by [] alone: pyroute2 0.7's get() looks for attributes by that name.
    cache = msg.get_attr("IFA_CACHEINFO")
    local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    label = msg.get_attr("IFA_LABEL")
    if label and label.startswith(device):
        label = "%" + label[len(device):]
    return {"address": f"{local}/{msg['prefixlen']}", "scope": msg["scope"],
            "flags": (msg.get_attr("IFA_FLAGS") or msg["flags"]) & ~IFA_F_TENTATIVE,
            "valid": _lifetime(cache["ifa_valid"]) if cache else None,
            "preferred": _lifetime(cache["ifa_preferred"]) if cache else None,
            "metric": msg.get_attr("IFA_RT_PRIORITY"), "broadcast": msg.get_attr("IFA_BROADCAST"),
            "label": label, "protocol": msg.get_attr("IFA_PROTO")}


def _route_state(msg) -> dict:
    cache = msg.get_attr("RTA_CACHEINFO")
    expires = cache["rta_expires"] if cache else 0
    metrics = msg.get_attr("RTA_METRICS")
    dst = msg.get_attr("RTA_DST")
    return {"dst": f"{dst}/{msg['dst_len']}" if dst else "default",
            "gateway": msg.get_attr("RTA_GATEWAY"), "metric": msg.get_attr("RTA_PRIORITY"),
            "source": msg.get_attr("RTA_PREFSRC"), "protocol": msg["proto"],
            "scope": msg["scope"], "flags": msg["flags"] & ~(RTNH_F_DEAD | RTNH_F_LINKDOWN),
            "tos": msg["tos"],
            "type": msg["type"], "pref": msg.get_attr("RTA_PREF"),
            "metrics": sorted((nla[0], nla[1]) for nla in metrics["attrs"]) if metrics else [],
            # clock_t (1/100 s) left; 0: the route does not expire
            "expires": expires // 100 if expires else None}


def host_differences(before: HostState, after: HostState) -> list[str]:
    """How ``after`` differs from ``before`` (empty: the same host), lifetimes and
    expiries allowed to have counted down for the time between the two."""
    elapsed = after.taken - before.taken + LIFETIME_SLACK
    found = []
    for name in sorted(set(before.links) | set(after.links)):
        old, new = before.links.get(name), after.links.get(name)
        if old is None or new is None:
            found.append(f"{name}: {'appeared' if old is None else 'is gone'}")
            continue
        for part in old:
            if part in ("addresses", "routes"):
                found += entry_differences(f"{name} {part}", old[part], new[part], elapsed)
            elif old[part] != new[part]:
                found.append(f"{name} {part}: {old[part]!r} -> {new[part]!r}")
    return found


_COUNTDOWNS = ("valid", "preferred", "expires")


def entry_differences(what: str, old: list[dict], new: list[dict],
                      elapsed: float) -> list[str]:
    """How the addresses or routes ``new`` differ from ``old`` (empty: the same),
    lifetimes and expiries allowed to have counted down for ``elapsed`` seconds."""
    def fixed(entry: dict) -> dict:
        return {key: value for key, value in entry.items() if key not in _COUNTDOWNS}

    def counted_down(first: int | None, second: int | None) -> bool:
        if first is None or second is None:
            return first == second
        return first - elapsed <= second <= first + 1

    unmatched = list(new)
    found = []
    for entry in old:
        match = next((other for other in unmatched if fixed(other) == fixed(entry) and all(
            counted_down(entry[key], other[key]) for key in _COUNTDOWNS if key in entry)),
            None)
        if match is None:
            found.append(f"{what}: lost or changed {entry}")
        else:
            unmatched.remove(match)
    found += [f"{what}: new {entry}" for entry in unmatched]
    return found


def delete_link(name: str, ns: str | None = None) -> bool:
    """Delete link ``name`` if it exists; True when something was deleted."""
    if ns is None and name in PROTECTED_LINKS:
        raise ValueError(f"refusing to delete {name}")
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            # The request flags spelled out: pyroute2 0.5's "del" is refused by kernels
            # since 5.19 (see kvmhooks.netlink).
            ipr.link((RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK), index=found[0])
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
    with rtnl() as ipr:
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
    """An up Linux bridge ``name`` (optionally with ``address`` 'a/len'), removed at
    cleanup. Its MAC is set, as an administrator's bridge has one (NetworkManager and
    networkd set it): a bridge with a kernel-chosen MAC takes its first port's."""
    with rtnl() as ipr:
        ipr.link("add", ifname=name, kind="bridge", address=random_mac())
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
    with rtnl(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    return name


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def set_mtu(name: str, mtu: int, ns: str | None = None) -> None:
    with _ipr(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], mtu=mtu)


def ping(address: str, ns: str | None = None, count: int = 1, timeout: float = 2.0,
         size: int | None = None) -> bool:
    """True when ``address`` answers a ping (from the host, or from inside ``ns``); with
    ``size``, pings of that many payload bytes that may not be fragmented."""
    cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(max(1, int(timeout))), address]
    if size is not None:
        cmd[1:1] = ["-M", "do", "-s", str(size)]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return r.returncode == 0
