"""kvmhooks demo: a tiny tagged guest that comes up attached by its metadata and reaches the LAN.

Builds a stand-in NIC (a veth whose peer sits in a netns: the LAN, with a LAN host), writes
a host config for uplink `lan` on it (a bridge, and a shim for the host), defines a tiny
TCG guest whose only interface is tagged "uplink lan, macvtap bridge", starts it, shows the
devices kvmhooks' qemu hook built, and proves them with real packets: guest -> LAN host,
LAN host -> guest, host -> guest through the shim. Then it stops the guest and removes
everything it made (also on failure or Ctrl-C). Run as root after `make setup`; `make demo`
does both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

from pyroute2 import IPRoute, netns

from tests.lab import guest
from tests.lab.cleanup import Cleanup
from tests.lab.commands import QEMU_HOOK, kvmhooks
from tests.lab.config import CONFIG_PATH, ConfigFile
from tests.lab.daemons import daemon_started_after
from tests.lab.domains import Iface
from tests.lab.links import delete_link_later, link_exists, link_info, ping
from tests.lab.lock import take_lab_lock
from tests.lab.names import guest_mac, pick_subnet, unique_name
from tests.lab.nic import StandInNic
from tests.lab.virt import LIBVIRT_URI, connect

UPLINK, SHIM = "lan", "kh-lan"
SETUP = "; run `make setup` (as root)"
BOOT_TIMEOUT, PING_TIMEOUT = 90, 30  # seconds; TCG on a busy lab machine can be slow
DEMO_PID = os.getpid()
step = 1  # the step under way, for the failure line


class Failed(Exception):
    """What went wrong, in one line."""


def say(number: int, text: str) -> None:
    global step
    step = number
    print(f"[{number}] {text}", flush=True)


def expect(ok: object, problem: str) -> None:
    if not ok:
        raise Failed(problem)


def one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def show_kvmhooks(number: int, *args: str) -> None:
    """Run the kvmhooks command line and show what it prints."""
    say(number, "$ kvmhooks " + " ".join(args))
    run = kvmhooks(*args)
    for line in run.stdout.splitlines():
        say(number, "  " + line)
    expect(run.returncode == 0, f"kvmhooks {args[0]} exited {run.returncode}: "
                                f"{one_line(run.stderr)}")


def link_name(index: int | None) -> str:
    with IPRoute() as ipr:
        links = ipr.get_links(index) if index else []
    return links[0].get_attr("IFLA_IFNAME") if links else "-"


def route_dev(address: str) -> str:
    """The device the host sends to ``address`` through (`ip route get`)."""
    with IPRoute() as ipr:
        return link_name(ipr.route("get", dst=address)[0].get_attr("RTA_OIF"))


def show_link(number: int, name: str) -> dict:
    """Two lines about a host link, read with pyroute2; returns links.link_info's dict."""
    info = link_info(name)
    expect(info, f"{name} does not exist")
    info["addresses"] = [a for a in info["addresses"] if not a.startswith("fe80:")]
    text = f"  {name:<15} {'tap' if info['kind'] == 'tun' else info['kind'] or 'veth':<8} "
    text += info["mac"]
    if info["master"]:
        text += f", port of {info['master']}"
    if info["mode"]:
        text += f", {info['mode']} mode on {link_name(info['link'])}"
    say(number, text + "".join(", " + address for address in info["addresses"]))
    say(number, f"  {'':<15} mark {info['alias'] or '- (not made by kvmhooks)'}")
    return info


def check_host():
    """Step 1: root, libvirtd, the hook, a libvirtd that has read it, the guest image."""
    expect(os.geteuid() == 0, "the demo must run as root" + SETUP)
    try:
        import libvirt
    except ImportError:
        raise Failed("libvirt-python is not importable" + SETUP) from None
    try:
        conn = connect()
    except libvirt.libvirtError as error:
        raise Failed(f"libvirtd does not answer on {LIBVIRT_URI} "
                     f"({error.get_error_message() or error})" + SETUP) from None
    expect(QEMU_HOOK.is_file(), f"the hook {QEMU_HOOK} is missing" + SETUP)
    expect(daemon_started_after(QEMU_HOOK) is not False,
           f"libvirtd started before {QEMU_HOOK} was written, so it ignores it" + SETUP)
    expect(not link_exists(SHIM), f"{SHIM} exists: this host has an uplink "
           f"'{UPLINK}' of its own, which the demo would take over")
    version = conn.getLibVersion()
    say(1, f"root; libvirtd {version // 1000000}.{version // 1000 % 1000}.{version % 1000} "
           f"answers on {LIBVIRT_URI}")
    say(1, f"hook {QEMU_HOOK} present, and libvirtd started after it")
    target = guest.CACHE_DIR / f"guest-{guest.image_key()}"
    built = "" if (target / "initrd.gz").is_file() else "built now, "
    if built:
        say(1, f"building the guest image in {target} (apt-get download of "
               f"{guest.KERNEL_METAPACKAGE} and {guest.BUSYBOX_PACKAGE}; once)")
    try:
        guest.ensure_image()
        kernel = json.loads((target / "info.json").read_text())["kernel_version"]
    except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as error:
        raise Failed(f"the guest image cannot be built in {guest.CACHE_DIR}: "
                     f"{one_line(error)}") from None
    say(1, f"guest image ({built}{target}): kernel {kernel} + busybox initramfs")
    return conn


def wait_serial(serial: guest.SerialLog, regex: str, timeout: float, what: str):
    try:
        return serial.wait_for_line(regex, timeout)
    except TimeoutError:
        tail = serial.lines()[-1:] or ["(nothing)"]
        raise Failed(f"the guest printed no {what} within {timeout} s; its last serial "
                     f"line: {one_line(tail[0], 120)} ({serial.path})") from None


def ping_until(address: str, ns: str | None = None, seconds: float = 10) -> float | None:
    """Seconds until ``address`` first answered (from the host or ``ns``); None if never."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if ping(address, ns=ns, timeout=1):
            return time.monotonic() - started
    return None


def demo(cleanup: Cleanup, made: list[str]) -> None:
    conn = check_host()
    cleanup.add(conn.close, _what="close libvirt connection")
    # The system tests replace the same config: one of us at a time.
    take_lab_lock(cleanup, on_wait=lambda path: say(
        1, f"waiting for a system test run to finish ({path})"))

    subnet = pick_subnet()
    lan_host, guest_ip = subnet.ip(2), subnet.ip(11)
    nic = StandInNic(cleanup, unique_name("ktnic"), subnet.addr(1), subnet.addr(2))
    made += [f"link {nic.name}", f"netns {nic.ns}"]
    say(2, f"stand-in NIC {nic.name} (veth, MAC {nic.mac}), host address {subnet.addr(1)}")
    say(2, f"its LAN: netns {nic.ns}, LAN host {subnet.addr(2)} on {nic.PEER}")
    expect(ping(lan_host), f"the host cannot ping the LAN host {lan_host}")
    say(2, f"host -> LAN host {lan_host}: ok")

    bridge = unique_name("ktbr-demo", 4)
    # shared devices outlive guests: the demo removes them after its domain
    delete_link_later(cleanup, bridge, SHIM)
    made += [f"link {bridge}", f"link {SHIM}", f"config {CONFIG_PATH} "
             + ("restored" if CONFIG_PATH.exists() else "removed")]
    text = (f'[uplink.{UPLINK}]\nnic = "{nic.name}"\nbridge = "{bridge}"\n'
            f'host_address = "{subnet.addr(5)}"\n')
    ConfigFile(cleanup).write(text)
    say(3, f"wrote {CONFIG_PATH}:")
    for line in text.splitlines():
        say(3, "  " + line)
    show_kvmhooks(3, "check-config")

    name = unique_name("kt-demo-", 4)
    iface = Iface(guest_mac(), "direct", UPLINK, "bridge")
    dom, serial = guest.define_guest(conn, cleanup, [iface], {iface.mac: subnet.addr(11)},
                                     [lan_host], name=name)
    made.insert(0, f"domain {name}")
    macvtap, uuid = iface.hook_owned_dev, dom.UUIDString()
    say(4, f"defined {name}: TCG, 128 MiB, guest address {subnet.addr(11)}, pings "
           f"{lan_host}; tagged:")
    say(4, f"  {iface.metadata()}")
    say(4, f"  <interface type='ethernet'> <mac address='{iface.mac}'/> "
           f"<target dev='{macvtap}' managed='no'/>")
    show_kvmhooks(4, "explain", name)

    started = time.monotonic()
    dom.create()
    say(5, f"started {name} in {time.monotonic() - started:.1f} s; its prepare hook built "
           "(read with pyroute2):")
    br, port, mv, sh = (show_link(5, n) for n in (bridge, nic.name, macvtap, SHIM))
    expect(br["kind"] == "bridge" and br["alias"] == f"kvmhooks:bridge:{UPLINK}",
           f"{bridge} is not a bridge marked by kvmhooks")
    expect(port["master"] == bridge and subnet.addr(1) in br["addresses"]
           and not port["addresses"], f"{nic.name} is not enslaved with its address moved")
    expect(mv["kind"] == "macvtap" and mv["mode"] == "bridge" and mv["mac"] == iface.mac
           and mv["link"] == br["index"] and mv["alias"] == f"kvmhooks:guest:{uuid}",
           f"{macvtap} is not the guest's bridge-mode macvtap on {bridge}")
    expect(sh["kind"] == "macvlan" and subnet.addr(5) in sh["addresses"]
           and sh["alias"] == f"kvmhooks:shim:{UPLINK}", f"{SHIM} is not the shim")
    routes = subprocess.run(["ip", "-4", "route", "show", str(subnet)], capture_output=True,
                            text=True, check=False).stdout.splitlines()
    say(5, f"host routes for {subnet}:")
    for line in routes:
        say(5, "  " + line.strip())

    ready = wait_serial(serial, r"^KH ready$", BOOT_TIMEOUT, "`KH ready`")
    say(6, f"guest booted: `{ready.group(0)}` on its serial console "
           f"{time.monotonic() - started:.1f} s after the start")
    first = wait_serial(serial, guest.ping_line(lan_host), PING_TIMEOUT,
                        f"`ping {lan_host} ok`")
    fails = sum(1 for line in serial.lines() if re.search(guest.ping_line(lan_host, False),
                                                          line))
    say(6, f"guest -> LAN host: ok   (serial: `{first.group(0)}`"
           + (f", after {fails} fail)" if fails else ")"))
    took = ping_until(guest_ip, ns=nic.ns)
    expect(took is not None, f"the LAN host {lan_host} cannot ping the guest {guest_ip}")
    say(6, f"LAN host -> guest: ok   (ping {guest_ip} from netns {nic.ns}, {took * 1000:.0f} ms)")
    via = route_dev(guest_ip)
    took = ping_until(guest_ip)
    expect(took is not None, f"the host cannot ping the guest {guest_ip} (route via {via}; "
           f"a macvtap never hears what its lower device {bridge} sends)")
    expect(via == SHIM, f"the host reaches the guest {guest_ip} via {via}, not via {SHIM}")
    say(6, f"host -> guest through the shim {via}: ok   (ping {guest_ip}, {took * 1000:.0f} ms)")
    expect(ping(lan_host), f"the host lost its LAN host {lan_host}")
    say(6, f"host -> LAN host {lan_host} still ok, via {route_dev(lan_host)}")
    show_kvmhooks(6, "status")

    dom.destroy()
    say(7, f"stopped {name}; its release hook removed the per-guest device:")
    expect(not link_exists(macvtap), f"{macvtap} outlived the guest")
    say(7, f"  {macvtap}: gone")
    expect(link_exists(SHIM) and link_info(nic.name)["master"] == bridge,
           f"the shared {bridge} or {SHIM} went away with the guest")
    say(7, f"  shared devices stay: {bridge} (with {nic.name} enslaved), {SHIM}")


def still_there(thing: str) -> bool:
    kind, name = thing.split()[:2]
    if kind == "link":
        return link_exists(name)
    if kind == "netns":
        return name in netns.listnetns()
    if kind == "domain":
        return subprocess.run(["virsh", "-c", LIBVIRT_URI, "domstate", name],
                              capture_output=True, check=False).returncode == 0
    return False  # the config: ConfigFile put it back


def interrupted(signum: int, _frame) -> None:
    if os.getpid() != DEMO_PID:  # a child pyroute2 forked (to enter a netns): just exit
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main() -> int:
    argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    cleanup, made, status = Cleanup(), [], 0
    try:
        demo(cleanup, made)
    except KeyboardInterrupt:
        print(f"demo: interrupted in step {step}; cleaning up", file=sys.stderr)
        status = 130
    except Exception as error:  # noqa: BLE001 - every failure is one line, then cleanup
        print(f"demo: FAILED in step {step}: {one_line(error, 600)}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        errors = cleanup.run()
    for what, error in errors:
        print(f"demo: cleanup: {what} failed: {one_line(error)}", file=sys.stderr)
    left = [thing for thing in made if still_there(thing)]
    if errors or left:
        print("demo: FAILED to clean up" + "".join(", left " + thing for thing in left),
              file=sys.stderr)
        return 1
    if made:
        for line in textwrap.wrap("cleaned up: " + ", ".join(made), 88, subsequent_indent="  "):
            say(8 if status == 0 else step, line)
    if status == 0:
        print("demo: ok, nothing left behind")
    return status


if __name__ == "__main__":
    sys.exit(main())
