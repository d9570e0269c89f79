"""Names kvmhooks gives and checks: kernel interface names, MACs, and its device marks."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

# hookclient.py runs alone under `python3 -I -S` and checks names too: the rule lives there.
from .hookclient import IFNAME

IFNAMSIZ_MAX = 15  # the kernel's IFNAMSIZ (16) less the terminating NUL
MARK_PREFIX = "kvmhooks:"

# The names kvmhooks gives its own devices, as shell globs: hook-owned guest devices (`kh`
# and a MAC's 12 hex digits, see hook_owned_name) and shims (`kh-UPLINK`). The udev rule
# tells NetworkManager to leave them unmanaged.
OWN_NAME_GLOBS = ("kh" + "[0-9a-f]" * 12, "kh-*")
# Those, and the names libvirt gives its own devices: taps, macvtaps and NAT bridges (vnetN,
# macvtapN, virbrN and virbrN-nic), and loopback. They are never an uplink's NIC: NIC
# events on them are ignored, by the udev rule and by `kvmhooks watch` alike, so our own
# work makes none. Nothing else is, whatever its name or type: an uplink may name any NIC,
# a VLAN (`ens32.100`), a bond or a bridge.
IGNORED_NAME_GLOBS = (*OWN_NAME_GLOBS, "vnet[0-9]*", "macvtap[0-9]*", "virbr[0-9]*", "lo")
# A name with a character kvmhooks refuses (see IFNAME), as a shell glob.
REFUSED_NAME_GLOB = "*[!A-Za-z0-9_.+-]*"

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalize_mac(text: str) -> str | None:
    """The MAC in lower case, or None when text is not a MAC."""
    mac = text.strip().lower()
    return mac if _MAC.match(mac) else None


def ifname_problem(name: str) -> str | None:
    """Why name cannot be a kernel interface name, or None when it can."""
    if len(name) > IFNAMSIZ_MAX:
        return f"'{name}' is longer than {IFNAMSIZ_MAX} characters"
    if name in (".", "..") or not IFNAME.match(name):
        return f"'{name}' is not a valid interface name (letters, digits, '_.+-')"
    return None


def is_candidate(ifname: str) -> bool:
    """Whether a udev event on this interface can concern an uplink (the rule file
    applies the same filter, from the same globs, before it starts anything)."""
    return ifname_problem(ifname) is None and \
        not any(fnmatch.fnmatchcase(ifname, glob) for glob in IGNORED_NAME_GLOBS)


def hook_owned_name(mac: str) -> str:
    """The device name for a hook-owned interface: 'kh' and the MAC's 12 hex digits."""
    return "kh" + mac.replace(":", "")


def shim_name(uplink: str) -> str:
    return f"kh-{uplink}"


@dataclass(frozen=True)
class Mark:
    """The interface alias kvmhooks gives every device it creates, `kvmhooks:KIND:SUBJECT`:
    a bridge or shim of an uplink, a guest's device (subject: the domain's UUID), or a
    network's bridge. kvmhooks deletes or alters no device without one."""

    kind: str
    subject: str

    def __str__(self) -> str:
        return f"{MARK_PREFIX}{self.kind}:{self.subject}"


def parse_mark(alias: str | None) -> Mark | None:
    """The mark an interface alias carries, or None when it is not kvmhooks'. Any alias
    with the prefix is kvmhooks' (a kind this version does not know included)."""
    if not alias or not alias.startswith(MARK_PREFIX):
        return None
    kind, _, subject = alias[len(MARK_PREFIX):].partition(":")
    return Mark(kind, subject)


def bridge_mark(uplink: str) -> str:
    return str(Mark("bridge", uplink))


def shim_mark(uplink: str) -> str:
    return str(Mark("shim", uplink))


def guest_mark(domain_uuid: str) -> str:
    return str(Mark("guest", domain_uuid))


def network_mark(network: str) -> str:
    return str(Mark("network", network))


def vlan_mark(uplink: str) -> str:
    """A VLAN sub-interface kvmhooks made on an uplink's NIC for macvtap guests."""
    return str(Mark("vlan", uplink))


def vlan_device_name(parent: str, vlan: int) -> str:
    """The 802.1Q sub-interface of parent for a VLAN, named as iproute2 and ifupdown do."""
    return f"{parent}.{vlan}"

