"""`kvmhooks status --prometheus` against a real libvirtd and real links, read back with
prometheus_client's parser (the one Prometheus' own Python client uses for the text
format): interface states, the uplinks' shared devices, and the counts of NIC events
and re-plugs, which this checkout's command line keeps in the state directory."""

from __future__ import annotations

import libvirt
import pytest

from kvmhooks.domain import NAMESPACE
from tests.lab.commands import kvmhooks
from tests.lab.daemons import settle_nic_events
from tests.lab.domains import Iface, domain_xml
from tests.lab.names import guest_mac, unique_name
from tests.lab.uplinks import lab_uplink
from tests.lab.virt import define_and_start, live_target

pytestmark = pytest.mark.system

STATES = ("ok", "missing", "stale", "orphan")


def scrape() -> list:
    """The samples of `kvmhooks status --prometheus`, as Prometheus would read them;
    the families' types checked on the way."""
    # Imported here, not at the top: the EL9-floor tier collects this module for its
    # floor tests and has no prometheus_client (it runs none of these tests).
    from prometheus_client.parser import text_string_to_metric_families
    done = kvmhooks("status", "--prometheus")
    assert done.returncode == 0, done.stderr
    families = list(text_string_to_metric_families(done.stdout))
    types = {family.name: family.type for family in families}
    assert types == {
        "kvmhooks_interface_state": "gauge", "kvmhooks_uplink_nic_present": "gauge",
        "kvmhooks_uplink_bridge_present": "gauge", "kvmhooks_uplink_shim_present": "gauge",
        "kvmhooks_unreadable_domains": "gauge",
        # the parser names a counter's family without _total; its sample keeps it
        "kvmhooks_nic_events": "counter", "kvmhooks_replugs": "counter"}
    return [sample for family in families for sample in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    """The value of the one sample called name with these labels (and no others)."""
    (found,) = [sample.value for sample in samples
                if sample.name == name and sample.labels == labels]
    return found


def states(samples: list, **labels: str) -> dict[str, float]:
    """An interface's state set: state -> value."""
    found = {sample.labels["state"]: sample.value for sample in samples
             if sample.name == "kvmhooks_interface_state"
             and {key: sample.labels[key] for key in labels} == labels}
    assert len(found) == len(STATES) and sum(found.values()) == 1, found
    return found


def counts(samples: list) -> tuple[float, float]:
    return value(samples, "kvmhooks_nic_events_total"), value(samples, "kvmhooks_replugs_total")


def test_a_running_guest_and_its_uplinks_devices(libvirt_conn, cleanup, kh_config,
                                                 stand_in_nic, subnet):
    up = lab_uplink(cleanup, stand_in_nic.name, bridge=True, host_address=subnet.addr(7))
    kh_config(up.table)
    iface = Iface(guest_mac(), "bridge", up.name)
    dom = define_and_start(libvirt_conn, domain_xml(unique_name("kt-dom-"), [iface]),
                           cleanup)
    nic = stand_in_nic.name

    samples = scrape()
    assert states(samples, domain=dom.name(), mac=iface.mac, uplink=up.name, nic=nic,
                  device=iface.hook_owned_dev)["ok"] == 1
    assert value(samples, "kvmhooks_uplink_nic_present", uplink=up.name, nic=nic) == 1
    assert value(samples, "kvmhooks_uplink_bridge_present", uplink=up.name,
                 bridge=up.bridge) == 1
    assert value(samples, "kvmhooks_uplink_shim_present", uplink=up.name, shim=up.shim) == 1

    stand_in_nic.unplug()  # the bridge and the shim on it stay; the guest's uplink is gone
    samples = scrape()
    assert states(samples, domain=dom.name(), mac=iface.mac)["missing"] == 1
    assert value(samples, "kvmhooks_uplink_nic_present", uplink=up.name, nic=nic) == 0
    assert value(samples, "kvmhooks_uplink_bridge_present", uplink=up.name,
                 bridge=up.bridge) == 1
    assert value(samples, "kvmhooks_uplink_shim_present", uplink=up.name, shim=up.shim) == 1


def test_nic_events_and_replugs_are_counted(libvirt_conn, cleanup, kh_config, stand_in_nic):
    up = lab_uplink(cleanup, stand_in_nic.name)  # no bridge: the macvtaps hang off the NIC
    kh_config(up.table)
    plugged = Iface(guest_mac(), "direct", up.name, "bridge")
    cut_short = Iface(guest_mac(), "direct", up.name, "bridge")
    name = unique_name("kt-dom-")
    dom = define_and_start(libvirt_conn, domain_xml(name, [plugged]), cleanup)
    # A re-plug cut short between its detach and its attach: the metadata and the
    # definition have the interface, the running guest does not. The next event of the
    # NIC attaches it (a guest idle in its BIOS takes an attach; a detach it never ends).
    libvirt_conn.defineXML(domain_xml(name, [plugged, cut_short], uuid=dom.UUIDString()))
    entries = "".join(f'<interface mac="{i.mac}" type="direct" uplink="{up.name}" '
                      'mode="bridge"/>' for i in (plugged, cut_short))
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<net>{entries}</net>", "kh",
                    NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    settle_nic_events()
    before = counts(scrape())

    handled = kvmhooks("nic-event", "add", stand_in_nic.name)
    assert handled.returncode == 0, handled.stderr
    assert f"re-plugged interface {cut_short.mac}" in handled.stdout, handled.stdout
    assert live_target(dom, cut_short.mac) == cut_short.hook_owned_dev
    samples = scrape()
    assert counts(samples) == (before[0] + 1, before[1] + 1)
    assert states(samples, domain=name, mac=cut_short.mac)["ok"] == 1

    ignored = kvmhooks("nic-event", "add", "lo")  # no uplink's NIC: not counted
    assert (ignored.returncode, ignored.stdout) == (0, "")
    again = kvmhooks("nic-event", "add", stand_in_nic.name)  # nothing left to re-plug
    assert again.returncode == 0 and "re-plugged" not in again.stdout, again.stdout
    assert counts(scrape()) == (before[0] + 2, before[1] + 1)


def test_output_writes_the_textfile_collectors_file(libvirt_conn, cleanup, kh_config,
                                                    stand_in_nic, tmp_path):
    up = lab_uplink(cleanup, stand_in_nic.name)
    kh_config(up.table)
    target = tmp_path / "kvmhooks.prom"
    done = kvmhooks("status", "--prometheus", "--output", str(target))
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    text = target.read_text()
    assert f'kvmhooks_uplink_nic_present{{uplink="{up.name}",nic="{stand_in_nic.name}"}} 1\n' \
        in text
    assert [path.name for path in tmp_path.iterdir()] == ["kvmhooks.prom"]
