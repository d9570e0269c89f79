"""`kvmhooks status --prometheus`: metrics.exposition (the text format), and the command
line's options and file output.

No prometheus_client here (the EL9-floor tier has none): the text is compared whole; the
system test parses the real command's output with prometheus_client's parser."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from kvmhooks import cli
from kvmhooks.errors import NicAbsent
from kvmhooks.metrics import escape_label, exposition
from kvmhooks.state import Counters
from kvmhooks.status import HostStatus, InterfaceStatus, UplinkStatus

from .builders import MAC1, MAC2

TAP1 = "kh5254006b3c01"

SMALL = HostStatus(
    interfaces=(InterfaceStatus("web1", MAC1, "lan", "eth1", TAP1, "ok"),
                InterfaceStatus("db1", MAC2, "lan", "-", "-", "missing", "no NIC")),
    uplinks=(UplinkStatus("lan", "eth1", True, "br-lan", True, "kh-lan", False),
             UplinkStatus("wan", "", False)),
    errors=(NicAbsent("wan", 'mac = "x"'),))

SMALL_TEXT = f"""\
# HELP kvmhooks_interface_state State of a tagged interface (ok, missing, stale, orphan): \
1 for the interface's state, 0 for the others.
# TYPE kvmhooks_interface_state gauge
kvmhooks_interface_state{{domain="web1",mac="{MAC1}",uplink="lan",nic="eth1",device="{TAP1}",\
state="ok"}} 1
kvmhooks_interface_state{{domain="web1",mac="{MAC1}",uplink="lan",nic="eth1",device="{TAP1}",\
state="missing"}} 0
kvmhooks_interface_state{{domain="web1",mac="{MAC1}",uplink="lan",nic="eth1",device="{TAP1}",\
state="stale"}} 0
kvmhooks_interface_state{{domain="web1",mac="{MAC1}",uplink="lan",nic="eth1",device="{TAP1}",\
state="orphan"}} 0
kvmhooks_interface_state{{domain="db1",mac="{MAC2}",uplink="lan",nic="",device="",\
state="ok"}} 0
kvmhooks_interface_state{{domain="db1",mac="{MAC2}",uplink="lan",nic="",device="",\
state="missing"}} 1
kvmhooks_interface_state{{domain="db1",mac="{MAC2}",uplink="lan",nic="",device="",\
state="stale"}} 0
kvmhooks_interface_state{{domain="db1",mac="{MAC2}",uplink="lan",nic="",device="",\
state="orphan"}} 0
# HELP kvmhooks_uplink_nic_present Whether the uplink's NIC is on this host.
# TYPE kvmhooks_uplink_nic_present gauge
kvmhooks_uplink_nic_present{{uplink="lan",nic="eth1"}} 1
kvmhooks_uplink_nic_present{{uplink="wan",nic=""}} 0
# HELP kvmhooks_uplink_bridge_present Whether the uplink's bridge exists (uplinks with a bridge).
# TYPE kvmhooks_uplink_bridge_present gauge
kvmhooks_uplink_bridge_present{{uplink="lan",bridge="br-lan"}} 1
# HELP kvmhooks_uplink_shim_present Whether kvmhooks' shim of the uplink exists (uplinks with \
a host_address).
# TYPE kvmhooks_uplink_shim_present gauge
kvmhooks_uplink_shim_present{{uplink="lan",shim="kh-lan"}} 0
# HELP kvmhooks_unreadable_domains Domains whose XML or kvmhooks metadata could not be read: \
their interfaces are missing from kvmhooks_interface_state.
# TYPE kvmhooks_unreadable_domains gauge
kvmhooks_unreadable_domains 1
# HELP kvmhooks_nic_events_total NIC events (add, move, remove) on an uplink's NIC handled \
since boot.
# TYPE kvmhooks_nic_events_total counter
kvmhooks_nic_events_total 7
# HELP kvmhooks_replugs_total Live detach and attach of a guest's interface done since boot \
(by NIC events and kvmhooks apply).
# TYPE kvmhooks_replugs_total counter
kvmhooks_replugs_total 2
"""


# --- metrics.exposition ------------------------------------------------------------------

def test_a_small_host_in_the_text_format():
    assert exposition(SMALL, Counters(nic_events=7, replugs=2)) == SMALL_TEXT


def test_nothing_to_report_still_names_every_metric():
    text = exposition(HostStatus(), Counters())
    assert [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")] == [
        "kvmhooks_interface_state", "kvmhooks_uplink_nic_present",
        "kvmhooks_uplink_bridge_present", "kvmhooks_uplink_shim_present",
        "kvmhooks_unreadable_domains", "kvmhooks_nic_events_total", "kvmhooks_replugs_total"]
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == ["kvmhooks_unreadable_domains 0", "kvmhooks_nic_events_total 0",
                       "kvmhooks_replugs_total 0"]


@pytest.mark.parametrize("state", ["ok", "missing", "stale", "orphan"])
def test_one_state_of_the_set_is_1(state):
    row = InterfaceStatus("web1", MAC1, "lan", "eth1", TAP1, state)
    samples = [line for line in exposition(HostStatus(interfaces=(row,)), Counters())
               .splitlines() if line.startswith("kvmhooks_interface_state{")]
    assert len(samples) == 4
    assert [line for line in samples if line.endswith(" 1")] == [
        f'kvmhooks_interface_state{{domain="web1",mac="{MAC1}",uplink="lan",nic="eth1",'
        f'device="{TAP1}",state="{state}"}} 1']


def test_an_orphan_row_has_empty_labels_where_the_table_shows_a_dash():
    row = InterfaceStatus("6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab", "-", "-", "-", TAP1,
                          "orphan", "kvmhooks made it for a domain that does not run")
    text = exposition(HostStatus(interfaces=(row,)), Counters())
    assert ('kvmhooks_interface_state{domain="6f1c5e2a-0d1b-4c3e-9a8f-0123456789ab",mac="",'
            f'uplink="",nic="",device="{TAP1}",state="orphan"}} 1\n') in text


@pytest.mark.parametrize("value, written", [
    ('say "hi"', 'say \\"hi\\"'),
    ("back\\slash", "back\\\\slash"),
    ("two\nlines", "two\\nlines"),
    ('\\"\n', '\\\\\\"\\n'),
    ("tab\there, é, {x}=1,", "tab\there, é, {x}=1,"),
    ("", ""),
])
def test_label_values_are_escaped_as_the_text_format_says(value, written):
    assert escape_label(value) == written


def test_a_domain_with_odd_characters_stays_on_its_line():
    row = InterfaceStatus('we"b\\1\nx', MAC1, "lan", "eth1", TAP1, "ok")
    lines = exposition(HostStatus(interfaces=(row,)), Counters()).splitlines()
    sample = next(line for line in lines if line.startswith("kvmhooks_interface_state{"))
    assert sample.startswith('kvmhooks_interface_state{domain="we\\"b\\\\1\\nx",mac=')
    assert len([line for line in lines if line.startswith("kvmhooks_interface_state{")]) == 4


# --- the command line ---------------------------------------------------------------------

@pytest.fixture
def host_status(monkeypatch, tmp_path):
    """`kvmhooks status` on SMALL, its counters 7 and 2, off this host."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(state_dir))
    monkeypatch.setattr("kvmhooks.engine.admin.status", lambda: SMALL)
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")
    (state_dir / "counters.json").write_text('{"nic_events": 7, "replugs": 2}')
    logger = logging.getLogger("kvmhooks")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield
    logger.handlers[:], logger.propagate = handlers, propagate


def test_prometheus_goes_to_standard_output_and_errors_to_standard_error(host_status, capsys):
    assert cli.main(["status", "--prometheus"]) == 0
    out, err = capsys.readouterr()
    assert out == SMALL_TEXT
    assert err == "kvmhooks: uplink 'wan': no NIC on this host matches mac = \"x\"\n"


def test_output_replaces_the_file_whole(host_status, tmp_path, capsys):
    target = tmp_path / "textfile" / "kvmhooks.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    assert cli.main(["status", "--prometheus", "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text() == SMALL_TEXT
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "node_exporter must read it"
    assert os.listdir(target.parent) == ["kvmhooks.prom"], "no temporary file is left"


def test_output_into_a_missing_directory_fails_with_one_line(host_status, tmp_path, capsys):
    target = tmp_path / "nowhere" / "kvmhooks.prom"
    assert cli.main(["status", "--prometheus", "--output", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"kvmhooks: {target}: No such file or directory"


def test_json_and_prometheus_are_one_or_the_other(host_status, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["status", "--json", "--prometheus"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prometheus: not allowed with argument --json" in err


@pytest.mark.parametrize("form", [[], ["--json"]])
def test_output_is_for_prometheus_only(form, host_status, capsys):
    assert cli.main(["status", *form, "--output", "x.prom"]) == 2
    assert capsys.readouterr() == (
        "", "kvmhooks: status: --output applies only to --prometheus\n")
