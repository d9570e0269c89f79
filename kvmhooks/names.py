"""Names kvmhooks gives and checks: kernel interface names, MACs, and its device mark."""

from __future__ import annotations

import re

from .hookclient import IFNAME

IFNAMSIZ_MAX = 15  # the kernel's IFNAMSIZ (16) less the terminating NUL
MARK_PREFIX = "kvmhooks:"

# Devices that are never an uplink's NIC: kvmhooks' own (kh*), libvirt's taps and
# macvtaps, its NAT bridges, loopback, and any bridge or VLAN. NIC events on them are
# ignored, by the udev rule and by `kvmhooks watch` alike, so our own work makes none.
IGNORED_NAME_GLOBS = ("kh*", "vnet*", "macvtap*", "virbr*", "lo")
IGNORED_DEVTYPES = ("bridge", "vlan")

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


def hook_owned_name(mac: str) -> str:
    """The device name for a hook-owned interface: 'kh' and the MAC's 12 hex digits."""
    return "kh" + mac.replace(":", "")


def shim_name(uplink: str) -> str:
    return f"kh-{uplink}"


def bridge_mark(uplink: str) -> str:
    return f"{MARK_PREFIX}bridge:{uplink}"


def shim_mark(uplink: str) -> str:
    return f"{MARK_PREFIX}shim:{uplink}"


def guest_mark(domain_uuid: str) -> str:
    return f"{MARK_PREFIX}guest:{domain_uuid}"


def network_mark(network: str) -> str:
    return f"{MARK_PREFIX}network:{network}"
