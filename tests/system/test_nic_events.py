"""NIC events with a real systemd-udevd running kvmhooks' own rule, a real libvirtd and
booted guests: when the NIC goes and comes back, everything built on it comes back,
with no command from the test."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time

import pytest
import pyudev

from kvmhooks import state
from kvmhooks.names import shim_name
from tests.lab import guest
from tests.lab.daemons import (
    freeze_qemu,
    settle_nic_events,
    start_libvirtd,
    stop_libvirtd,
)
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import (
    all_links,
    create_bridge,
    delete_link,
    link_exists,
    link_index,
    link_info,
)
from tests.lab.names import guest_mac, tap_mac, unique_name
from tests.lab.nic import StandInNic
from tests.lab.ruleflow import installed_event_command
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start, live_target
from tests.lab.wait import wait_for

pytestmark = pytest.mark.system

RECOVERY_SECONDS = 5


def boot(conn, cleanup, ifaces: list[Iface], ips: dict[str, str], pings: list[str]):
    dom, serial = guest.define_guest(conn, cleanup, ifaces, ips, pings)
    dom.create()
    guest.wait_ready(serial, timeout=90)
    for target in pings:
        serial.wait_for_line(guest.ping_line(target), timeout=30)
    return dom, serial


def boot_macvtap_pair(conn, cleanup, uplink: str, nic: str, subnet, native_mode: str):
    """Two booted guests pinging the LAN host on an uplink without a bridge: one with a
    hook-owned macvtap (bridge mode), one with a native macvtap on the NIC."""
    hook_owned = Iface(guest_mac(), "direct", uplink, "bridge")
    native = Iface(guest_mac(), "direct", uplink, native_mode, native=True, source=nic)
    lan = subnet.ip(2)
    _, owned_serial = boot(conn, cleanup, [hook_owned], {hook_owned.mac: subnet.addr(11)},
                           [lan])
    native_dom, native_serial = boot(conn, cleanup, [native], {native.mac: subnet.addr(12)},
                                     [lan])
    return hook_owned, native, lan, owned_serial, native_dom, native_serial


def macvtap_on(name: str | None, parent: str, mac: str) -> bool:
    info = link_info(name) if name else None
    return bool(info and info["kind"] == "macvtap" and info["mac"] == mac
                and info["link"] == link_index(parent))


def pings_again(serial, target: str, mark: int) -> None:
    """A ping that started after the mark and succeeded (one in flight at the mark may
    still report ok, so two are asked for)."""
    serial.wait_for_lines(guest.ping_line(target), timeout=30, after_offset=mark, count=2)


def errors_in(syslog, mark: int) -> list[str]:
    return [text for severity, text in syslog.since(mark) if severity == "error"]


def test_bridged_uplink_comes_back_after_a_flap(libvirt_conn, cleanup, kh_config,
                                                stand_in_nic, subnet, syslog):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    tap, macvtap = Iface(guest_mac(), "bridge", uplink), \
        Iface(guest_mac(), "direct", uplink, "bridge")
    lan = subnet.ip(2)
    _, tap_serial = boot(libvirt_conn, cleanup, [tap], {tap.mac: subnet.addr(11)}, [lan])
    _, mvt_serial = boot(libvirt_conn, cleanup, [macvtap], {macvtap.mac: subnet.addr(12)},
                         [lan])
    log_mark, marks = len(syslog.records), (tap_serial.offset(), mvt_serial.offset())

    stand_in_nic.recreate(host_address="")
    started = time.monotonic()
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == bridge,
             RECOVERY_SECONDS, what="the NIC back on its bridge")
    assert time.monotonic() - started < RECOVERY_SECONDS
    assert link_info(tap.hook_owned_dev)["master"] == bridge
    assert macvtap_on(macvtap.hook_owned_dev, bridge, macvtap.mac), "it hangs off the bridge"
    assert subnet.addr(5) in link_info(f"kh-{uplink}")["addresses"]
    pings_again(tap_serial, lan, marks[0])
    pings_again(mvt_serial, lan, marks[1])
    assert errors_in(syslog, log_mark) == []


@pytest.mark.parametrize("renamed", [False, True], ids=["same-name", "new-name-by-mac"])
def test_macvtap_guests_are_replugged_on_the_new_nic(renamed, libvirt_conn, cleanup,
                                                     kh_config, stand_in_nic, subnet,
                                                     syslog):
    selector = f'mac = "{stand_in_nic.mac}"' if renamed else f'nic = "{stand_in_nic.name}"'
    up = lab_uplink(cleanup, selector=selector, host_address=subnet.addr(5))
    kh_config(up.table)
    hook_owned, native, lan, owned_serial, native_dom, native_serial = boot_macvtap_pair(
        libvirt_conn, cleanup, up.name, stand_in_nic.name, subnet, "private")
    log_mark, marks = len(syslog.records), (owned_serial.offset(), native_serial.offset())

    new_name = unique_name("ktnic") if renamed else None
    stand_in_nic.recreate(name=new_name)
    nic = stand_in_nic.name
    started = time.monotonic()
    wait_for(lambda: macvtap_on(hook_owned.hook_owned_dev, nic, hook_owned.mac)
             and macvtap_on(live_target(native_dom, native.mac), nic, native.mac)
             and link_exists(up.shim)
             and subnet.addr(5) in link_info(up.shim)["addresses"],
             RECOVERY_SECONDS, what="macvtaps and shim on the new NIC")
    assert time.monotonic() - started < RECOVERY_SECONDS
    source = native_dom.XMLDesc(0)
    assert f"<source dev='{nic}' mode='private'/>" in source
    pings_again(owned_serial, lan, marks[0])
    pings_again(native_serial, lan, marks[1])
    assert errors_in(syslog, log_mark) == []


def test_nic_removal_is_logged_as_a_loss(libvirt_conn, cleanup, kh_config, stand_in_nic,
                                         syslog):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    uplink = up.name
    iface = Iface(guest_mac(), "direct", uplink, "bridge")
    dom = define_and_start(libvirt_conn, domain_xml(
        unique_name("kt-dom-"), [iface]), cleanup)
    log_mark = len(syslog.records)
    stand_in_nic.unplug()
    expected = (f"domain {dom.name()} interface {iface.mac}: lost its link (uplink "
                f"'{uplink}', NIC {stand_in_nic.name} remove)")
    wait_for(lambda: ("warning", expected) in [(s, t.split(": ", 1)[-1])
                                               for s, t in syslog.since(log_mark)],
             10, what="the loss in the log")


def test_a_burst_of_events_ends_in_the_right_state(libvirt_conn, cleanup, kh_config,
                                                   stand_in_nic, subnet, syslog):
    up = lab_uplink(cleanup, stand_in_nic.name, host_address=subnet.addr(5))
    kh_config(up.table)
    hook_owned, native, lan, owned_serial, native_dom, native_serial = boot_macvtap_pair(
        libvirt_conn, cleanup, up.name, stand_in_nic.name, subnet, "bridge")
    log_mark = len(syslog.records)

    started = time.monotonic()
    for _ in range(25):  # 50 events: remove and add
        stand_in_nic.unplug()
        stand_in_nic.plug()
    assert time.monotonic() - started < 5, "the burst took longer than 5 s to fire"
    marks = (owned_serial.offset(), native_serial.offset())
    nic = stand_in_nic.name
    # The last events' handlers run in the agent: wait for their result, not for them.
    wait_for(lambda: macvtap_on(hook_owned.hook_owned_dev, nic, hook_owned.mac)
             and macvtap_on(live_target(native_dom, native.mac), nic, native.mac), 60,
             what="both guests re-plugged on the NIC after the burst")
    settle_nic_events(timeout=60)
    macs = [link_info(name)["mac"] for name in lab_links()]
    assert macs.count(hook_owned.mac) == 1 and macs.count(native.mac) == 1, "duplicates"
    assert [name for name in lab_links() if name.startswith("kh-")] == [up.shim]
    assert subnet.addr(5) in link_info(up.shim)["addresses"]
    pings_again(owned_serial, lan, marks[0])
    pings_again(native_serial, lan, marks[1])
    assert errors_in(syslog, log_mark) == []
    assert tap_mac(hook_owned.mac)  # the helper is shared with the bridge test


def lab_links() -> list[str]:
    return sorted(all_links())


@pytest.fixture
def udev_rule_disabled(cleanup):
    """kvmhooks' udev rule moved aside (and back at cleanup), for `kvmhooks watch`."""
    import shutil
    import subprocess
    from pathlib import Path
    rule = Path("/usr/lib/udev/rules.d/90-kvmhooks.rules")
    aside = rule.with_name("90-kvmhooks.rules.kt-aside")
    shutil.move(rule, aside)

    def put_back():
        shutil.move(aside, rule)
        subprocess.run(["udevadm", "control", "--reload"], check=True)

    cleanup.add(put_back, _what="put kvmhooks' udev rule back")
    subprocess.run(["udevadm", "control", "--reload"], check=True)


def test_watch_handles_events_without_the_rule(libvirt_conn, cleanup, kh_config,
                                               stand_in_nic, udev_rule_disabled, syslog):
    import subprocess
    import sys
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    iface = Iface(guest_mac(), "bridge", uplink)
    define_and_start(libvirt_conn, domain_xml(
        unique_name("kt-dom-"), [iface]), cleanup)
    watcher = subprocess.Popen([sys.executable, "-m", "kvmhooks", "watch"])
    cleanup.add(lambda: (watcher.terminate(), watcher.wait(10)), _what="stop kvmhooks watch")
    wait_for(lambda: any(text.endswith("watching NIC events") for _, text in syslog.records),
             10, what="kvmhooks watch to start")

    stand_in_nic.recreate(host_address="")
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == bridge,
             RECOVERY_SECONDS, what="the NIC back on its bridge, by kvmhooks watch")
    assert link_info(iface.hook_owned_dev)["master"] == bridge
    enslaved = f"enslave {stand_in_nic.name} to bridge {bridge}"
    # The step is logged once it is done: the line may arrive just after the NIC is back.
    wait_for(lambda: any(text.startswith(f"kvmhooks[{watcher.pid}]:") and enslaved in text
                         for _, text in syslog.records),
             5, what="the watch process's line for the enslave it did")


# --- names and types: every NIC an uplink may name gets its events --------------------------

def enslaved(nic: str, bridge: str) -> bool:
    info = link_info(nic)
    return bool(info and info["master"] == bridge)


@pytest.mark.parametrize("shape", ["kt-{}-n", "kt.{}.n", "kt+{}+n", "kt_{}-.+n"],
                         ids=["dash", "dot", "plus", "all"])
def test_a_nic_named_with_any_valid_character_is_handled(shape, cleanup, kh_config, subnet):
    nic = StandInNic(cleanup, shape.format(secrets.token_hex(2)), subnet.addr(1),
                     subnet.addr(2))
    up = lab_uplink(cleanup, nic.name, bridge=True)
    kh_config(up.table)
    # Where systemd runs: the command the installed rule and unit make of the event,
    # after udev's substitutions and systemd's escaping (systemd-escape), run as is.
    argv = installed_event_command("add", nic.name, 4711, systemd=True)
    assert argv is not None, f"the rule lets the event of {nic.name} pass"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: enslaved(nic.name, up.bridge), RECOVERY_SECONDS,
             what=f"{nic.name} on its bridge, by the command systemd would run")
    # Where it does not: the real systemd-udevd runs the rule on a real event.
    nic.recreate(host_address="")
    wait_for(lambda: enslaved(nic.name, up.bridge), RECOVERY_SECONDS,
             what=f"{nic.name} back on its bridge after a real event")


def shim_on(shim: str, lower: str, address: str) -> bool:
    info = link_info(shim)
    return bool(info and info["link"] == link_index(lower) and address in info["addresses"])


def udev_properties(name: str) -> dict[str, str]:
    text = subprocess.run(["udevadm", "info", "--query=property", f"/sys/class/net/{name}"],
                          capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_host_nic_whose_name_starts_with_kh_gets_events(cleanup, kh_config, subnet):
    nic = StandInNic(cleanup, unique_name("khkt", 4), subnet.addr(1), subnet.addr(2))
    up = lab_uplink(cleanup, nic.name, bridge=True)
    kh_config(up.table)
    nic.recreate(host_address="")
    wait_for(lambda: enslaved(nic.name, up.bridge), RECOVERY_SECONDS,
             what=f"{nic.name} on its bridge after its event")


def test_an_uplinks_nic_gets_events_whatever_its_device_type(cleanup, kh_config, subnet):
    # The kernel gives a bridge DEVTYPE=bridge, as it gives a VLAN DEVTYPE=vlan (this
    # kernel has no 802.1Q, and udev refuses to set DEVTYPE from a rule: the VLAN case is
    # the unit tests' on the rule text). A bridge may be the NIC of an uplink that has
    # no bridge of its own: macvtaps and the shim hang off it.
    nic = unique_name("ktnb")
    create_bridge(nic, cleanup)
    assert udev_properties(nic).get("DEVTYPE") == "bridge"
    up = lab_uplink(cleanup, nic, host_address=subnet.addr(5))
    kh_config(up.table)
    delete_link(nic)
    create_bridge(nic, cleanup)
    wait_for(lambda: shim_on(up.shim, nic, subnet.addr(5)), RECOVERY_SECONDS,
             what=f"the shim on {nic} after its event")


# --- libvirt away or hanging: the host side comes back regardless ----------------------------

def logged(syslog, mark: int, severity: str, needle: str) -> bool:
    return any(s == severity and needle in text for s, text in syslog.since(mark))


def test_host_side_comes_back_while_libvirt_is_down_and_the_replug_follows(
        libvirt_conn, cleanup, kh_config, stand_in_nic, subnet, syslog):
    up = lab_uplink(cleanup, stand_in_nic.name, host_address=subnet.addr(5))
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "bridge")
    lan = subnet.ip(2)
    _, serial = boot(libvirt_conn, cleanup, [iface], {iface.mac: subnet.addr(11)}, [lan])
    log_mark, mark = len(syslog.records), serial.offset()

    stop_libvirtd(cleanup)
    stand_in_nic.recreate()
    nic = stand_in_nic.name
    wait_for(lambda: shim_on(up.shim, nic, subnet.addr(5)), RECOVERY_SECONDS,
             what="the shim back on the new NIC while libvirt is down")
    wait_for(lambda: logged(syslog, log_mark, "warning", "re-plugs wait for libvirt"), 10,
             what="the log saying the re-plugs wait for libvirt")
    assert not macvtap_on(iface.hook_owned_dev, nic, iface.mac)

    start_libvirtd()
    wait_for(lambda: macvtap_on(iface.hook_owned_dev, nic, iface.mac), 30,
             what="the guest's macvtap rebuilt once libvirt answers")
    pings_again(serial, lan, mark)
    assert logged(syslog, log_mark, "info", "libvirt answers again")
    assert logged(syslog, log_mark, "info", f"re-plugged interface {iface.mac}")
    assert errors_in(syslog, log_mark) == []


def test_nic_events_wait_for_other_handlers_only_with_their_guests(cleanup, kh_config,
                                                                   stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    other = StandInNic(cleanup)  # a NIC no uplink uses
    command = [sys.executable, "-m", "kvmhooks", "nic-event", "add"]
    with state.nic_event_lock(unique_name()) as mine:  # another NIC's handler has its turn
        assert mine
        started = time.monotonic()
        done = subprocess.run([*command, other.name], capture_output=True, text=True,
                              timeout=10)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 5
        handler = subprocess.Popen([*command, stand_in_nic.name], stdout=subprocess.DEVNULL)
        cleanup.add(lambda: (handler.kill(), handler.wait()), _what="stop the handler")
        wait_for(lambda: enslaved(stand_in_nic.name, up.bridge), RECOVERY_SECONDS,
                 what="the NIC on its bridge while its handler waits its turn")
        assert handler.poll() is None, "the guests' part waits for the other handler"
    assert handler.wait(30) == 0


def test_a_burst_of_events_on_one_nic_costs_two_handlers_not_one_per_event(
        cleanup, kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    settle_nic_events()
    command = [sys.executable, "-m", "kvmhooks", "nic-event", "add", stand_in_nic.name]
    handlers: list[subprocess.Popen] = []
    cleanup.add(lambda: [(h.kill(), h.wait()) for h in handlers], _what="stop the handlers")
    with state.host_lock():  # a hook at work: the first handler in line waits for it
        stand_in_nic.recreate(host_address="")  # udev's handler may be first in line
        handlers += [subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                     for _ in range(6)]
        done = wait_for(lambda: (lambda gone: gone if len(gone) >= 5 else None)(
            [h for h in handlers if h.poll() is not None]), 30,
            what="all handlers but the first in line gone")
        for handler in done:
            assert handler.returncode == 0
            assert f"another handler for {stand_in_nic.name} is waiting" in \
                handler.stdout.read()
        assert not enslaved(stand_in_nic.name, up.bridge), "repaired under a held lock"
    wait_for(lambda: enslaved(stand_in_nic.name, up.bridge), RECOVERY_SECONDS,
             what="the NIC on its bridge once the lock is free")
    assert [h.wait(30) for h in handlers] == [0] * len(handlers)


def test_a_hung_replug_is_given_up_and_holds_up_no_other_nic(libvirt_conn, cleanup,
                                                             kh_config, syslog):
    nic_a, nic_b = StandInNic(cleanup), StandInNic(cleanup)
    a, b = lab_uplink(cleanup, nic_a.name), lab_uplink(cleanup, nic_b.name, bridge=True)
    kh_config(a.table + b.table)
    hung = Iface(guest_mac(), "direct", a.name, "bridge")
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [hung]), cleanup)
    freeze_qemu(cleanup, dom.name())  # its monitor answers nothing: the detach hangs
    log_mark = len(syslog.records)
    nic_a.recreate()
    wait_for(lambda: macvtap_on(hung.hook_owned_dev, nic_a.name, hung.mac), RECOVERY_SECONDS,
             what="the macvtap rebuilt before its re-plug")
    time.sleep(1)  # the re-plug is under way, and hangs

    nic_b.recreate()
    wait_for(lambda: enslaved(nic_b.name, b.bridge), RECOVERY_SECONDS,
             what="another uplink's NIC back on its bridge while a re-plug hangs")
    # Re-plugs hold no host lock: a guest starts meanwhile.
    started = time.monotonic()
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                              [Iface(guest_mac(), "bridge", b.name)]), cleanup)
    assert time.monotonic() - started < 10
    from kvmhooks.virt import CALL_TIMEOUT
    given_up = (f"domain {dom.name()}: detach interface {hung.mac}: libvirt did not answer "
                f"within {CALL_TIMEOUT:.0f} s")
    wait_for(lambda: logged(syslog, log_mark, "error", given_up), CALL_TIMEOUT + 15,
             what="the hung re-plug given up")


def test_networkmanager_is_told_to_leave_kvmhooks_devices_alone(libvirt_conn, cleanup,
                                                                kh_config, stand_in_nic,
                                                                subnet):
    """The rule, run by the real udevd, sets NM_UNMANAGED on kvmhooks' guest devices and
    shim, and on nothing else: not on the NIC, nor on the bridge it joins."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    tap, macvtap = (Iface(guest_mac(), "bridge", up.name),
                    Iface(guest_mac(), "direct", up.name, "bridge"))
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [tap, macvtap]),
                     cleanup)
    settle_nic_events()
    context = pyudev.Context()

    def unmanaged(name: str) -> str | None:
        return pyudev.Devices.from_name(context, "net", name).properties.get("NM_UNMANAGED")

    own = [tap.hook_owned_dev, macvtap.hook_owned_dev, shim_name(up.name)]
    assert [unmanaged(name) for name in own] == ["1", "1", "1"]
    assert [unmanaged(name) for name in (stand_in_nic.name, up.bridge)] == [None, None]


def test_an_uplink_taken_out_of_the_config_while_its_handler_waits_is_not_built(
        cleanup, kh_config, stand_in_nic):
    """A handler reads the config again once it holds the host lock: an uplink removed
    meanwhile (and its bridge with it) is not built again from what the file said when
    the event came."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    with state.host_lock():
        handler = subprocess.Popen([sys.executable, "-m", "kvmhooks", "nic-event", "add",
                                    stand_in_nic.name], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        cleanup.add(lambda: (handler.kill(), handler.wait()), _what="stop the handler")
        time.sleep(2)  # it has read the config and waits for the lock
        assert handler.poll() is None, "the handler waits for the host lock"
        kh_config(lab_uplink(cleanup, "ktnic-gone").table)  # the uplink is gone
    _, stderr = handler.communicate(timeout=30)
    assert handler.returncode == 0, stderr
    assert not link_exists(up.bridge) and link_info(stand_in_nic.name)["master"] is None
