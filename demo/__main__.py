"""kvmhooks demo: a guest tagged "uplink lan, bridge" and "uplink lan, macvtap private".

Builds a stand-in NIC (a veth whose peer sits in a netns: the LAN), writes a host config
for uplink `lan` on it, starts a tiny tagged domain, shows the devices kvmhooks' qemu hook
built for it and `kvmhooks status`, stops it, and removes everything it made (also on
failure or Ctrl-C). Run as root after `make setup`; `make demo` does both.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from pyroute2 import IPRoute, netns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import lab  # noqa: E402
import tagged  # noqa: E402

HOOK = Path("/etc/libvirt/hooks/qemu.d/kvmhooks")
LAB_LOCK = Path("/run/lock/kvmhooks-system-tests.lock")  # shared with the system tests
UPLINK, SHIM = "lan", "kh-lan"
SETUP = "; run `make setup` (as root)"
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


def kvmhooks(number: int, *args: str) -> None:
    """Run the kvmhooks command line and show what it prints."""
    say(number, "$ kvmhooks " + " ".join(args))
    run = subprocess.run([sys.executable, "-m", "kvmhooks", *args], capture_output=True,
                         text=True, check=False)
    for line in run.stdout.splitlines():
        say(number, "  " + line)
    expect(run.returncode == 0, f"kvmhooks {args[0]} exited {run.returncode}: "
                                f"{' '.join(run.stderr.split())}")


def link_name(index: int | None) -> str:
    with IPRoute() as ipr:
        links = ipr.get_links(index) if index else []
    return links[0].get_attr("IFLA_IFNAME") if links else "-"


def show_link(number: int, name: str) -> dict:
    """Two lines about a host link, read with pyroute2; returns lab.link_info's dict."""
    info = lab.link_info(name)
    expect(info, f"{name} does not exist")
    info["addresses"] = [a for a in info["addresses"] if not a.startswith("fe80:")]
    text = f"  {name:<15} {'tap' if info['kind'] == 'tun' else info['kind']:<8} {info['mac']}"
    if info["master"]:
        text += f", port of {info['master']}"
    if info["mode"]:
        text += f", {info['mode']} mode on {link_name(info['link'])}"
    say(number, text + "".join(", " + address for address in info["addresses"]))
    say(number, f"  {'':<15} mark {info['alias'] or '- (not made by kvmhooks)'}")
    return info


def check_host():
    """Step 1: root, libvirtd, the hook, and a libvirtd that has read the hook."""
    expect(os.geteuid() == 0, "the demo must run as root" + SETUP)
    try:
        import libvirt
    except ImportError:
        raise Failed("libvirt-python is not importable" + SETUP) from None
    try:
        conn = lab.connect()
    except libvirt.libvirtError as error:
        raise Failed(f"libvirtd does not answer on {lab.LIBVIRT_URI} "
                     f"({error.get_error_message() or error})" + SETUP) from None
    expect(HOOK.is_file(), f"the hook {HOOK} is missing" + SETUP)
    expect(lab.daemon_started_after(HOOK) is not False,
           f"libvirtd started before {HOOK} was written, so it ignores it" + SETUP)
    expect(not lab.link_exists(SHIM), f"{SHIM} exists: this host has an uplink "
           f"'{UPLINK}' of its own, which the demo would take over")
    version = conn.getLibVersion()
    say(1, f"root; libvirtd {version // 1000000}.{version // 1000 % 1000}.{version % 1000} "
           f"answers on {lab.LIBVIRT_URI}")
    say(1, f"hook {HOOK} present, and libvirtd started after it")
    return conn


def guest_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def demo(cleanup: lab.Cleanup, made: list[str]) -> None:
    conn = check_host()
    cleanup.add(conn.close, _what="close libvirt connection")
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # system tests share the config
    cleanup.add(os.close, lock, _what="release the lab lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(1, f"waiting for a system test run to finish ({LAB_LOCK})")
        fcntl.flock(lock, fcntl.LOCK_EX)

    subnet = lab.pick_subnet()
    nic = lab.StandInNic(cleanup, lab.unique_name("ktnic"), subnet.addr(1), subnet.addr(2))
    made += [f"link {nic.name}", f"netns {nic.ns}"]
    say(2, f"stand-in NIC {nic.name} (veth, MAC {nic.mac}), host address {subnet.addr(1)}")
    say(2, f"its LAN: netns {nic.ns}, LAN host {subnet.addr(2)} on {nic.PEER}")
    expect(lab.ping(subnet.ip(2)), f"the host cannot ping the LAN host {subnet.ip(2)}")
    say(2, f"host pings {subnet.ip(2)}: ok")

    bridge = lab.unique_name("ktbr-demo", 4)
    lab.delete_link_later(cleanup, bridge)  # shared devices outlive guests: the demo
    lab.delete_link_later(cleanup, SHIM)  # removes them after its domain
    made += [f"link {bridge}", f"link {SHIM}", f"config {lab.CONFIG_PATH} "
             + ("restored" if lab.CONFIG_PATH.exists() else "removed")]
    text = (f'[uplink.{UPLINK}]\nnic = "{nic.name}"\nbridge = "{bridge}"\n'
            f'host_address = "{subnet.addr(5)}"\n')
    lab.ConfigFile(cleanup).write(text)
    say(3, f"wrote {lab.CONFIG_PATH}:")
    for line in text.splitlines():
        say(3, "  " + line)
    kvmhooks(3, "check-config")

    name = lab.unique_name("kt-demo-", 4)
    bridged = tagged.Iface(guest_mac(), "bridge", UPLINK)
    direct = tagged.Iface(guest_mac(), "direct", UPLINK, "private")
    dom = lab.define(conn, tagged.domain_xml(name, [bridged, direct]), cleanup)
    made.insert(0, f"domain {name}")
    say(4, f"defined {name} (type kvm, no disk: it starts, it need not boot), tagged:")
    for iface in (bridged, direct):
        say(4, f"  {iface.metadata()}")
        say(4, f"    <interface type='ethernet'> <target dev='{iface.hook_owned_dev}' "
               "managed='no'/>")
    kvmhooks(4, "explain", name)

    dom.create()
    tap, macvtap, uuid = bridged.hook_owned_dev, direct.hook_owned_dev, dom.UUIDString()
    say(5, f"started {name}; its prepare hook built (read with pyroute2):")
    br, port, tp, mv, sh = (show_link(5, n) for n in (bridge, nic.name, tap, macvtap, SHIM))
    expect(br["kind"] == "bridge" and br["alias"] == f"kvmhooks:bridge:{UPLINK}",
           f"{bridge} is not a bridge marked by kvmhooks")
    expect(port["master"] == bridge and subnet.addr(1) in br["addresses"]
           and not port["addresses"], f"{nic.name} is not enslaved with its address moved")
    expect(tp["master"] == bridge and tp["mac"] == "fe" + bridged.mac[2:]
           and tp["alias"] == f"kvmhooks:guest:{uuid}", f"{tap} is not the guest's tap")
    expect(mv["kind"] == "macvtap" and mv["mode"] == "private" and mv["mac"] == direct.mac
           and mv["link"] == br["index"] and mv["alias"] == f"kvmhooks:guest:{uuid}",
           f"{macvtap} is not the guest's private macvtap on {bridge}")
    expect(sh["kind"] == "macvlan" and subnet.addr(5) in sh["addresses"]
           and sh["alias"] == f"kvmhooks:shim:{UPLINK}", f"{SHIM} is not the shim")
    with IPRoute() as ipr:
        via = link_name(ipr.route("get", dst=subnet.ip(2))[0].get_attr("RTA_OIF"))
    expect(lab.ping(subnet.ip(2)), f"the host lost its LAN host {subnet.ip(2)}")
    say(5, f"host still pings {subnet.ip(2)}, via {via}: ok")
    kvmhooks(5, "status")

    dom.destroy()
    say(6, f"stopped {name}; its release hook removed the per-guest devices:")
    for device in (tap, macvtap):
        expect(not lab.link_exists(device), f"{device} outlived the guest")
        say(6, f"  {device}: gone")
    expect(lab.link_exists(SHIM) and lab.link_info(nic.name)["master"] == bridge,
           f"the shared {bridge} or {SHIM} went away with the guest")
    say(6, f"  shared devices stay: {bridge} (with {nic.name} enslaved), {SHIM}")


def still_there(thing: str) -> bool:
    kind, name = thing.split()[:2]
    if kind == "link":
        return lab.link_exists(name)
    if kind == "netns":
        return name in netns.listnetns()
    if kind == "domain":
        return subprocess.run(["virsh", "-c", lab.LIBVIRT_URI, "domstate", name],
                              capture_output=True, check=False).returncode == 0
    return False  # the config: lab.ConfigFile put it back


def interrupted(signum: int, _frame) -> None:
    if os.getpid() != DEMO_PID:  # a child pyroute2 forked (to enter a netns): just exit
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main() -> int:
    argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    cleanup, made, status = lab.Cleanup(), [], 0
    try:
        demo(cleanup, made)
    except KeyboardInterrupt:
        print(f"demo: interrupted in step {step}; cleaning up", file=sys.stderr)
        status = 130
    except Exception as error:  # noqa: BLE001 - every failure is one line, then cleanup
        print(f"demo: FAILED in step {step}: {' '.join(str(error).split())}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        errors = cleanup.run()
    for what, error in errors:
        print(f"demo: cleanup: {what} failed: {error}", file=sys.stderr)
    left = [thing for thing in made if still_there(thing)]
    if errors or left:
        print("demo: FAILED to clean up" + "".join(", left " + thing for thing in left),
              file=sys.stderr)
        return 1
    if made:
        for line in textwrap.wrap("cleaned up: " + ", ".join(made), 88, subsequent_indent="  "):
            say(6, line)
    if status == 0:
        print("demo: ok, nothing left behind")
    return status


if __name__ == "__main__":
    sys.exit(main())
