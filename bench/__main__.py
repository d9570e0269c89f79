"""kvmhooks benchmark: five figures measured side by side in one run, with their targets.

  a  a hook call with nothing to do, against `python -c pass` (the hooks' own interpreter)
  b  prepare of a domain with four tagged interfaces (two bridge, two macvtap), same floor
     a and b are measured twice: on the host, and with EL9's floor (Python 3.9, pyroute2
     0.5.14, lxml 4.6) in the root of scripts/el9-floor-root, timed from inside it
  c  start + destroy of that domain with kvmhooks, against the same domain in native form
     with its shared devices made beforehand and no kvmhooks hook installed
  d  40 tagged domains started 8 at a time, against the same without kvmhooks
  e  a NIC flap with 20 running macvtap guests: time until every guest has its NIC back

Run as root on the lab machine after `make setup`, from the repository root as
`python -m bench` (`make bench` does both). It restarts libvirtd to take the hooks out and
put them back for c and d, and boots 20 tiny TCG guests for e. Everything it makes is
removed at the end, also on failure; the EL9 floor's agent ends with its run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.timing import describe, median_ms, noop_calls, prepares
from tests.lab import guest
from tests.lab.cleanup import Cleanup
from tests.lab.commands import HOOKS, QEMU_HOOK
from tests.lab.config import ConfigFile
from tests.lab.daemons import LIBVIRTD_PIDFILE
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import delete_link_later, link_info
from tests.lab.lock import take_lab_lock
from tests.lab.logcapture import SyslogCapture
from tests.lab.names import guest_mac, pick_subnet, unique_name
from tests.lab.nic import StandInNic
from tests.lab.virt import LIBVIRT_URI, connect, define, destroy_and_undefine
from tests.lab.wait import wait_for

TARGETS = {"a": 1.5, "b": 3.0, "c": 1.10, "d": 1.25, "e": 2.0}
UNTAGGED = domain_xml("kt-bench", metadata="",
                      uuid="6b0d5f8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f").encode()
REPO = Path(__file__).resolve().parents[1]
IN_EL9_FLOOR = REPO / "scripts" / "in-el9-floor"


def interpreter() -> str:
    """The Python the installed hooks run (their exec line)."""
    last = QEMU_HOOK.read_text().strip().splitlines()[-1]
    return last.split()[1]


def host_versions(python: str) -> str:
    found = subprocess.run([python, "-c", "import json, bench.timing as t; "
                            "print(json.dumps(t.versions()))"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    return describe(json.loads(found.stdout))


class FloorFailed(Exception):
    """The EL9-floor run of a figure gave no samples."""


def on_el9_floor(job: dict) -> dict:
    """bench/floor.py's samples for job, measured inside the EL9-floor root; raises
    FloorFailed with its error line."""
    done = subprocess.run([str(IN_EL9_FLOOR), "python3", "-m", "bench.floor"], cwd=REPO,
                          input=json.dumps(job), capture_output=True, text=True, check=False)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise FloorFailed(lines[-1])
    return json.loads(done.stdout)



def report(key: str, ratio: float, text: str) -> bool:
    ok = ratio <= TARGETS[key]
    unit = "s" if key == "e" else "x"
    print(f"{key}  {text}\n   {ratio:.2f}{unit} (target <= {TARGETS[key]}{unit})  "
          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return ok


# --- the lab ----------------------------------------------------------------------------

def restart_libvirtd(hooks_installed: bool) -> None:
    """libvirt reads its hook scripts when it starts: move ours aside or back, restart."""
    for hook in HOOKS:
        aside = hook.with_name(hook.name + ".bench-aside")
        if hooks_installed and aside.exists():
            shutil.move(aside, hook)
        elif not hooks_installed and hook.exists():
            shutil.move(hook, aside)
    pid = int(LIBVIRTD_PIDFILE.read_text())
    os.kill(pid, 15)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, what="libvirtd to stop")
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"],
                                    capture_output=True).returncode == 0,
             30, what="libvirtd to answer")


def four_interfaces(uplink: str, bridge: str, native: bool) -> list[Iface]:
    kinds = [("bridge", None), ("bridge", None), ("direct", "bridge"), ("direct", "private")]
    return [Iface(guest_mac(), kind, uplink, mode, native=native,
                  source=bridge) for kind, mode in kinds]


# --- the figures ------------------------------------------------------------------------

def figure_a(rounds: int, el9_floor: bool) -> list[bool]:
    python, hook = interpreter(), str(QEMU_HOOK)
    met = [report_a(f"host ({host_versions(python)})", python,
                    noop_calls(python, hook, "kt-bench", UNTAGGED, rounds), rounds)]
    if el9_floor:
        job = {"figure": "a", "rounds": rounds, "name": "kt-bench", "xml": UNTAGGED.decode()}
        met.append(floor_report("a", job, report_a, rounds))
    return met


def report_a(tier: str, python: str, samples: dict, rounds: int) -> bool:
    ratio = median_ms(samples["untagged"]) / median_ms(samples["pass"])
    return report("a", ratio, f"{tier}: no-op hook call: prepare of an untagged domain "
                  f"{median_ms(samples['untagged']):.1f} ms, start "
                  f"{median_ms(samples['start']):.1f} ms; `{python} -c pass` "
                  f"{median_ms(samples['pass']):.1f} ms, with -I -S "
                  f"{median_ms(samples['bare']):.1f} ms (median of {rounds})")


def figure_b(cleanup, rounds: int, uplink: str, bridge: str, config: str,
             el9_floor: bool) -> list[bool]:
    python, hook = interpreter(), str(QEMU_HOOK)
    ifaces = four_interfaces(uplink, bridge, native=False)
    devices = [iface.hook_owned_dev for iface in ifaces]
    delete_link_later(cleanup, *devices)  # release removes them; this, when a run breaks
    name = "kt-bench-b"
    xml = domain_xml(name, ifaces, uuid="7c1e2b3a-4d5e-4f60-8172-9a0b1c2d3e4f")
    met = [report_b(f"host ({host_versions(python)})", python,
                    prepares(python, hook, name, xml.encode(), devices, rounds), rounds)]
    if el9_floor:
        # The same domain on the same uplink, whose bridge and shim the host's run built.
        job = {"figure": "b", "rounds": rounds, "name": name, "xml": xml,
               "devices": devices, "config": config}
        met.append(floor_report("b", job, report_b, rounds))
    return met


def report_b(tier: str, python: str, samples: dict, rounds: int) -> bool:
    ratio = median_ms(samples["prepare"]) / median_ms(samples["pass"])
    return report("b", ratio, f"{tier}: prepare, 4 tagged interfaces (2 bridge, 2 macvtap): "
                  f"{median_ms(samples['prepare']):.1f} ms; `{python} -c pass` "
                  f"{median_ms(samples['pass']):.1f} ms (median of {rounds})")


def floor_report(key: str, job: dict, report_tier, rounds: int) -> bool:
    try:
        measured = on_el9_floor(job)
    except FloorFailed as error:
        print(f"{key}  EL9 floor: no figure: {error}\n   FAIL", flush=True)
        return False
    return report_tier(f"EL9 floor ({describe(measured['versions'])})", measured["python"],
                       measured["samples"], rounds)


def cycles(cleanup, xml: str, count: int) -> list[float]:
    # A new connection for each phase: libvirtd restarts in between.
    dom = define(connect(), xml, cleanup)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        dom.create()
        dom.destroy()
        samples.append(time.perf_counter() - start)
    destroy_and_undefine(dom.connect(), dom.name())
    return samples


def figure_c(cleanup, rounds: int, uplink: str, bridge: str) -> bool:
    owned = domain_xml(unique_name("kt-bench-c"), four_interfaces(uplink, bridge, False))
    native = domain_xml(unique_name("kt-bench-n"), four_interfaces(uplink, bridge, True))
    with_hooks, without = [], []
    for _ in range(2):  # two blocks each, so drift hits both sides
        restart_libvirtd(hooks_installed=True)
        with_hooks += cycles(cleanup, owned, rounds // 2)
        restart_libvirtd(hooks_installed=False)
        without += cycles(cleanup, native, rounds // 2)
    restart_libvirtd(hooks_installed=True)
    ratio = median_ms(with_hooks) / median_ms(without)
    return report("c", ratio, f"start + destroy, 4 interfaces: kvmhooks "
                  f"{median_ms(with_hooks):.0f} ms, native without hooks "
                  f"{median_ms(without):.0f} ms (median of {len(with_hooks)} cycles each)")


def start_many(cleanup, xmls: list[str], workers: int) -> tuple[float, int, list]:
    conn = connect()
    doms = [define(conn, xml, cleanup) for xml in xmls]
    failures = []

    def start(dom):
        try:
            dom.create()
        except Exception as error:  # noqa: BLE001 - counted and shown
            failures.append(f"{dom.name()}: {error}")

    begin = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(start, doms))
    wall = time.perf_counter() - begin
    for line in failures[:3]:
        print(f"   failure: {line}")
    return wall, len(failures), doms


def figure_d(cleanup, uplink: str, bridge: str) -> bool:
    owned = [Iface(guest_mac(), "bridge", uplink) for _ in range(40)]
    native = [Iface(guest_mac(), "bridge", uplink, native=True, source=bridge)
              for _ in range(40)]
    restart_libvirtd(hooks_installed=True)
    wall_with, failed_with, doms = start_many(
        cleanup, [domain_xml(unique_name("kt-bench-d"), [i]) for i in owned], 8)
    wrong = [i.mac for i in owned
             if (link_info(i.hook_owned_dev) or {}).get("master") != bridge]
    for dom in doms:
        destroy_and_undefine(dom.connect(), dom.name())
    restart_libvirtd(hooks_installed=False)
    wall_without, failed_without, doms = start_many(
        cleanup, [domain_xml(unique_name("kt-bench-e"), [i]) for i in native], 8)
    for dom in doms:
        destroy_and_undefine(dom.connect(), dom.name())
    restart_libvirtd(hooks_installed=True)
    ratio = wall_with / wall_without
    failures = failed_with + failed_without + len(wrong)
    ok = report("d", ratio, f"40 tagged domains started 8 at a time: kvmhooks {wall_with:.2f} s, "
                f"without {wall_without:.2f} s; failures {failed_with} + {failed_without}, "
                f"wrongly attached {len(wrong)}")
    return ok and failures == 0


def figure_e(cleanup, kh_config, guests: int, show_log: bool) -> bool:
    subnet = pick_subnet()
    nic = StandInNic(cleanup, None, None, subnet.addr(2))
    kh_config(f'[uplink.flap]\nnic = "{nic.name}"\n')
    serials = []
    ifaces = [Iface(guest_mac(), "direct", "flap", "bridge") for _ in range(guests)]
    conn = connect()
    for number, iface in enumerate(ifaces):
        dom, serial = guest.define_guest(conn, cleanup, [iface],
                                         {iface.mac: subnet.addr(10 + number)},
                                         name=unique_name("kt-bench-g"), memory_mib=96)
        dom.create()
        serials.append(serial)
    for serial in serials:
        guest.wait_ready(serial, timeout=300)
    marks = [serial.offset() for serial in serials]
    back: dict[int, float] = {}
    syslog = SyslogCapture() if show_log else None
    nic.recreate()
    flapped, flapped_at = time.perf_counter(), time.monotonic()
    while len(back) < guests and time.perf_counter() - flapped < 60:
        for number, (serial, mark) in enumerate(zip(serials, marks)):
            if number not in back and any(line.startswith("KH nic ") and line.endswith(" up")
                                          for line in serial.lines(mark)):
                back[number] = time.perf_counter() - flapped
        time.sleep(0.02)
    slowest = max(back.values()) if len(back) == guests else float("inf")
    if syslog is not None:
        for at, (_, text) in zip(syslog.times, syslog.records):
            print(f"   log +{at - flapped_at:.2f} s: {text}")
        syslog.close()
    ok = report("e", slowest, f"NIC flap, {guests} running macvtap guests: the last has its "
                f"NIC back {slowest:.2f} s after the NIC (its guest's own report); "
                f"{len(back)}/{guests} back")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--only", default="abcde", help="the figures to measure, e.g. 'e'")
    parser.add_argument("--log", action="store_true",
                        help="print what kvmhooks logged during e, with times")
    parser.add_argument("--host-only", action="store_true",
                        help="measure a and b on the host only, not also on the EL9 floor")
    args = parser.parse_args()
    results = []
    with Cleanup() as cleanup:
        take_lab_lock(cleanup, on_wait=lambda path: print(
            f"waiting for a system test run or the demo to finish ({path})", flush=True))
        config = ConfigFile(cleanup)
        cleanup.add(restart_libvirtd, True, _what="hooks back in, libvirtd restarted")
        subnet = pick_subnet()
        nic = StandInNic(cleanup, None, subnet.addr(1), subnet.addr(2))
        bridge = unique_name("ktbr")
        delete_link_later(cleanup, bridge, "kh-bench")
        uplink = f'[uplink.bench]\nnic = "{nic.name}"\nbridge = "{bridge}"\n'
        config.write(uplink)
        print(f"kvmhooks benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores",
              flush=True)
        if "a" in args.only:
            results += figure_a(args.rounds, not args.host_only)
        if "b" in args.only:
            results += figure_b(cleanup, args.rounds, "bench", bridge, uplink,
                                not args.host_only)
        if "c" in args.only:
            results.append(figure_c(cleanup, args.cycles, "bench", bridge))
        if "d" in args.only:
            results.append(figure_d(cleanup, "bench", bridge))
        if "e" in args.only:
            results.append(figure_e(cleanup, config.write, args.guests, args.log))
    print(f"{sum(results)}/{len(results)} targets met")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
