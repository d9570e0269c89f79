"""20 domains sharing one uplink, started and destroyed concurrently for 10 rounds while
the uplink's NIC flaps: no failure, and every round ends in the right state."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.lab.daemons import settle_udev
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import link_index, link_info, marked_links
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import connect, define
from tests.lab.wait import wait_for

pytestmark = pytest.mark.system

DOMAINS, ROUNDS = 20, 10


def test_concurrent_starts_and_stops_while_the_nic_flaps(libvirt_conn, cleanup, kh_config,
                                                        stand_in_nic, subnet, syslog):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    guests = []
    for _ in range(DOMAINS):
        ifaces = [Iface(guest_mac(), "bridge", uplink),
                  Iface(guest_mac(), "direct", uplink, "bridge")]
        guests.append((define(libvirt_conn, domain_xml(unique_name("kt-dom-"), ifaces),
                              cleanup), ifaces))
    # The flapping starts once the uplink's bridge exists (the NIC's add event builds it):
    # a guest start then finds the NIC or, while it is away, the bridge. With neither
    # (a first start during the first flap), refusing it is right.
    stand_in_nic.recreate(host_address="")
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == bridge, 30,
             what="the NIC on its bridge before the flapping")
    log_mark = len(syslog.records)
    stop_flapping = threading.Event()

    def flap():
        while not stop_flapping.is_set():
            stand_in_nic.recreate(host_address="")
            # As fast as udev follows, no faster: a backlog of thousands of events keeps
            # udevd busy for minutes (it compares each queued event with all earlier ones).
            settle_udev(30)
            time.sleep(0.3)

    flapper = threading.Thread(target=flap)
    flapper.start()
    cleanup.add(lambda: (stop_flapping.set(), flapper.join(30)), _what="stop the flapping")
    failures: list[str] = []

    def each(call):
        def run(guest):
            try:
                call(connect().lookupByName(guest[0].name()))
            except Exception as error:  # noqa: BLE001 - collected, asserted below
                failures.append(f"{guest[0].name()}: {error}")
        return run

    with ThreadPoolExecutor(max_workers=DOMAINS) as pool:
        for round_number in range(ROUNDS):
            list(pool.map(each(lambda dom: dom.create()), guests))
            assert not failures, f"round {round_number}: {failures[:3]}"
            for _dom, ifaces in guests:
                tap = link_info(ifaces[0].hook_owned_dev)
                macvtap = link_info(ifaces[1].hook_owned_dev)
                assert tap["master"] == bridge and tap["kind"] == "tun"
                assert macvtap["link"] == link_index(bridge) and macvtap["mac"] == \
                    ifaces[1].mac
            list(pool.map(each(lambda dom: dom.destroy()), guests))
            assert not failures, f"round {round_number}: {failures[:3]}"
            left = [a for a in marked_links().values() if a.startswith("kvmhooks:guest:")]
            assert left == [], (f"round {round_number}: per-guest devices outlived their "
                                f"guests: {left}; kvmhooks warned: {warnings(syslog, log_mark)}")
    stop_flapping.set()
    flapper.join(30)
    # The last events' handlers run in the agent: wait for their result, not for them.
    wait_for(lambda: link_info(stand_in_nic.name)["master"] == bridge, 30,
             what="the NIC on its bridge after the last flap")
    assert list(marked_links().values()).count(f"kvmhooks:bridge:{uplink}") == 1
    assert list(marked_links().values()).count(f"kvmhooks:shim:{uplink}") == 1
    assert [text for severity, text in syslog.since(log_mark) if severity == "error"] == []


def warnings(syslog, mark: int) -> list[str]:
    return [text for severity, text in syslog.since(mark) if severity in ("error", "warning")]
