"""qemu hook prepare/release with a real libvirtd: every attachment, both forms."""

from __future__ import annotations

import threading

import pytest

from tests.lab.commands import kvmhooks
from tests.lab.domains import Iface, domain_xml
from tests.lab.links import (
    KERNEL_MODE,
    link_exists,
    link_index,
    link_info,
    marked_links,
    ping,
)
from tests.lab.names import guest_mac, tap_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import connect, define, define_and_start, live_target

pytestmark = pytest.mark.system

ATTACHMENTS = [("bridge", None), ("direct", "bridge"), ("direct", "private"),
               ("direct", "vepa"), ("direct", "passthrough")]
# type="bridge" needs an uplink with a bridge; passthrough one without (it would take
# the host's own address on the bridge off the network).
CASES = [(kind, mode, with_bridge, native)
         for kind, mode in ATTACHMENTS
         for with_bridge in (True, False)
         for native in (False, True)
         if not (kind == "bridge" and not with_bridge)
         and not (mode == "passthrough" and with_bridge)]


def case_id(case) -> str:
    kind, mode, with_bridge, native = case
    return (f"{kind}{'-' + mode if mode else ''}-"
            f"{'bridged' if with_bridge else 'nic'}-{'native' if native else 'hook-owned'}")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_start_builds_device_and_stop_removes_it(case, libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic, subnet):
    kind, mode, with_bridge, native = case
    # A passthrough macvtap must be alone on its parent: no shim beside it.
    shim = mode != "passthrough"
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=with_bridge,
                    host_address=subnet.addr(5) if shim else None)
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    lower = bridge if with_bridge else stand_in_nic.name
    mac = guest_mac()
    iface = Iface(mac, kind, uplink, mode, native=native,
                  source=bridge if kind == "bridge" else lower)
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)

    device = iface.hook_owned_dev if not native else live_target(dom, mac)
    info = link_info(device)
    assert info is not None, f"no host device {device}"
    if kind == "bridge":
        assert (info["kind"], info["master"], info["mac"]) == ("tun", bridge, tap_mac(mac))
        assert info["up"]
    else:
        assert info["kind"] == "macvtap"
        assert info["mode"] == KERNEL_MODE.get(mode, mode)
        assert info["link"] == link_index(lower)
        assert info["mac"] == mac
    if with_bridge:
        assert link_info(stand_in_nic.name)["master"] == bridge
    if shim:
        shim_info = link_info(f"kh-{uplink}")
        assert (shim_info["kind"], shim_info["mode"]) == ("macvlan", "bridge")
        assert shim_info["link"] == link_index(lower)
        assert subnet.addr(5) in shim_info["addresses"]
    if not native:
        assert info["alias"] == f"kvmhooks:guest:{dom.UUIDString()}"

    dom.destroy()
    assert not link_exists(device), "the per-guest device outlived the guest"
    assert not marked_links(f"kvmhooks:guest:{dom.UUIDString()}")
    if with_bridge:
        assert link_info(bridge)["kind"] == "bridge"
        assert link_info(stand_in_nic.name)["master"] == bridge
    if shim:
        assert link_exists(f"kh-{uplink}")


def test_missing_bridge_is_created_with_the_nic_and_its_address(libvirt_conn, cleanup,
                                                                 kh_config, stand_in_nic,
                                                                 subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    assert not link_exists(bridge)
    nic_mac = stand_in_nic.read_mac()
    mac = guest_mac()
    define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"),
                                              [Iface(mac, "bridge", uplink)]), cleanup)
    bridge_info, nic_info = link_info(bridge), link_info(stand_in_nic.name)
    assert bridge_info["kind"] == "bridge" and bridge_info["up"]
    assert bridge_info["mac"] == nic_mac
    assert bridge_info["alias"] == f"kvmhooks:bridge:{uplink}"
    assert nic_info["master"] == bridge
    assert subnet.addr(1) in bridge_info["addresses"]
    assert subnet.addr(1) not in nic_info["addresses"]
    assert ping(subnet.ip(2)), "the host lost its LAN when the NIC was enslaved"


def test_two_domains_starting_at_once_share_one_bridge(libvirt_conn, cleanup, kh_config,
                                                       stand_in_nic, subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    doms = [define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [
        Iface(guest_mac(), "bridge", uplink),
        Iface(guest_mac(), "direct", uplink, "bridge")]), cleanup) for _ in range(2)]
    errors: list[Exception] = []
    barrier = threading.Barrier(len(doms))

    def start(dom):
        connection = connect()  # one connection per thread, as two virsh would
        try:
            barrier.wait()
            connection.lookupByName(dom.name()).create()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(dom,)) for dom in doms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert all(dom.isActive() for dom in doms)
    marks = marked_links()
    assert list(marks.values()).count(f"kvmhooks:bridge:{uplink}") == 1
    assert list(marks.values()).count(f"kvmhooks:shim:{uplink}") == 1
    assert link_info(stand_in_nic.name)["master"] == bridge
    assert link_info(bridge)["addresses"].count(subnet.addr(1)) == 1
    for dom in doms:
        assert len(marked_links(f"kvmhooks:guest:{dom.UUIDString()}")) == 2


def test_failed_prepare_undoes_everything_it_built(libvirt_conn, cleanup, kh_config,
                                                  stand_in_nic, subnet):
    """The second macvtap carries the NIC's MAC, which the bridge took: the kernel refuses
    it (EADDRINUSE) after the bridge, the enslavement and the first macvtap were built."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True)
    kh_config(up.table)
    uplink, bridge = up.name, up.bridge
    before = link_info(stand_in_nic.name)
    first, second = Iface(guest_mac(), "direct", uplink, "bridge"), \
        Iface(stand_in_nic.read_mac(), "direct", uplink, "bridge")
    dom = define(libvirt_conn, domain_xml(unique_name("kt-dom-"), [first, second]),
                 cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    message = str(refused.value)
    assert f"create macvtap {second.hook_owned_dev}" in message
    assert "earlier steps were undone" in message
    assert not link_exists(bridge)
    assert not link_exists(first.hook_owned_dev)
    after = link_info(stand_in_nic.name)
    assert after["master"] is None
    assert after["addresses"] == before["addresses"]
    assert ping(subnet.ip(2))


@pytest.mark.parametrize("native", [False, True], ids=["hook-owned", "native"])
def test_passthrough_on_an_uplink_with_a_bridge_is_refused(native, libvirt_conn, cleanup,
                                                           kh_config, stand_in_nic, subnet,
                                                           tmp_path):
    """A passthrough macvtap on the bridge would take the host's own address (which lives
    on the bridge) off the network: explain and prepare refuse it in one line naming the
    uplink, and build nothing."""
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(5))
    kh_config(up.table)
    iface = Iface(guest_mac(), "direct", up.name, "passthrough", native=native,
                  source=up.bridge)
    xml = domain_xml(unique_name("kt-dom-"), [iface])
    path = tmp_path / "domain.xml"
    path.write_text(xml)

    explained = kvmhooks("explain", "--xml", str(path))
    assert explained.returncode == 2 and explained.stdout == ""
    line = explained.stderr
    assert line.count("\n") == 1 and f"uplink '{up.name}'" in line and "passthrough" in line
    assert iface.mac in line

    dom = define(libvirt_conn, xml, cleanup)
    with pytest.raises(Exception) as refused:
        dom.create()
    assert line.strip() in str(refused.value)
    assert not link_exists(up.bridge) and not link_exists(up.shim)
    assert link_info(stand_in_nic.name)["master"] is None
    assert not link_exists(iface.hook_owned_dev)
