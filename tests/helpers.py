"""Small helpers shared by the system tests."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import lab
from lxml import etree

HOOK = "/etc/libvirt/hooks/qemu.d/kvmhooks"
STATE_DIR = "/run/kvmhooks"
KERNEL_MODE = {"passthrough": "passthru"}


def guest_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def tap_mac(mac: str) -> str:
    return "fe" + mac[2:]


def uplink_name() -> str:
    """A unique uplink name, so its shim (kh-NAME) never meets another test's."""
    return "u" + secrets.token_hex(3)


def live_target(dom, mac: str) -> str | None:
    """The host device libvirt reports for the interface with this MAC."""
    root = etree.fromstring(dom.XMLDesc(0).encode())
    for interface in root.findall("devices/interface"):
        if interface.find("mac").get("address") == mac:
            target = interface.find("target")
            return target.get("dev") if target is not None else None
    return None


def live_interface(dom, mac: str) -> etree._Element:
    root = etree.fromstring(dom.XMLDesc(0).encode())
    return next(i for i in root.findall("devices/interface")
                if i.find("mac").get("address") == mac)


def kvmhooks(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the kvmhooks command line of this checkout."""
    return subprocess.run([sys.executable, "-m", "kvmhooks", *args], capture_output=True,
                          text=True, check=check)


def run_hook(domain: str, operation: str, xml: bytes | str,
             sub: str = "begin") -> subprocess.CompletedProcess:
    """Run the installed qemu hook as libvirt does."""
    data = xml.encode() if isinstance(xml, str) else xml
    return subprocess.run([HOOK, domain, operation, sub, "-"], input=data,
                          capture_output=True, env={"PATH": os.environ["PATH"]})


def record(uuid: str) -> dict | None:
    try:
        with open(f"{STATE_DIR}/domains/{uuid}.json") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None


def marked_links(prefix: str = "kvmhooks:") -> dict[str, str]:
    """Every link whose alias carries kvmhooks' mark: name -> alias."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME"): link.get("IFLA_IFALIAS") for link in ipr.get_links()
                if (link.get("IFLA_IFALIAS") or "").startswith(prefix)}


def all_links() -> set[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


def forget_bridge_later(cleanup: lab.Cleanup, *names: str) -> None:
    """Shared devices kvmhooks creates outlive the guest; the test removes them."""
    for name in names:
        lab.delete_link_later(cleanup, name)


def host_state(netlink, names: set[str]) -> dict:
    """What the test compares: every link of interest, by name, with its parts."""
    inventory = netlink.inventory()
    by_index = {link.index: link.name for link in inventory.links}
    return {link.name: (link.kind, link.mac, link.alias, by_index.get(link.master),
                        by_index.get(link.parent), link.up, link.mode,
                        sorted(link.addresses), sorted(map(repr, link.routes)),
                        sorted(map(repr, link.prefix_routes)))
            for link in inventory.links if link.name in names or link.name.startswith("kh")}
