"""Two host VMs on one LAN, linked for migrations: uplink lan is enp1s0 on host a and
enp2s0 on host b. Nested guests pinging the LAN host are live-migrated from a to b with
`virsh migrate --live --persistent` over the migration link; the preflight on b
(`kvmhooks explain --incoming --xml -` fed with a's `virsh dumpxml --migratable`) says
beforehand what b will write and build, or why it refuses."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.lab.domains import Iface, serial_log_path
from tests.lab.names import guest_mac

from .conftest import MEASURED
from .image import MANAGED_NIC, STATIC_NIC

pytestmark = pytest.mark.vm

A_NIC, B_NIC = MANAGED_NIC, STATIC_NIC
_PING = re.compile(r"^KH t=([0-9.]+) ping (\S+) (ok|fail)$")
CONFIG_TASK = "Write the host config, checked by kvmhooks check-config first"


def uplink_lan(nic: str) -> str:
    return f'[uplink.lan]\nnic = "{nic}"\n'


def pings(host, name: str, target: str) -> list[tuple[float, bool]]:
    """The guest's pings of ``target`` in its serial log on ``host``: its uptime at each
    (the guest's clock goes on across the migration) and whether it was answered."""
    lines = host.check(f"cat {serial_log_path(name)} 2>/dev/null || true").splitlines()
    return [(float(seen[1]), seen[3] == "ok") for seen in map(_PING.match, lines)
            if seen and seen[2] == target]


def preflight(source, destination, name: str):
    """What the destination answers for the guest, before any migration."""
    xml = source.check(f"virsh dumpxml --migratable {name}")
    # At the path remove_guest deletes, on either host.
    destination.vm.agent.write_file(f"/root/{name}.xml", xml.encode())
    return destination.sh(f"kvmhooks explain --incoming --xml - </root/{name}.xml")


def migrate(source, destination, name: str):
    """`virsh migrate --live --persistent --undefinesource` over the migration link (the
    destination's hostname resolves nowhere: --migrateuri names its address)."""
    address = destination.migration_address
    return source.sh(f"virsh migrate --live --persistent --undefinesource {name} "
                     f"qemu+tcp://{address}/system --migrateuri tcp://{address}", timeout=600)


def domstate(host, name: str) -> str:
    return host.sh(f"virsh domstate {name}").stdout.strip()


def pinging_guest(two_hosts, cleanup, iface: Iface, last_octet: int):
    """A nested guest on host a pinging the LAN host; its removal from host b too is
    registered."""
    a, b = two_hosts.a, two_hosts.b
    guest = a.start_guest(cleanup, [iface], {iface.mac: a.lan.subnet.addr(last_octet)},
                          [a.lan.host])
    cleanup.add(b.remove_guest, guest.name, _what=f"remove {guest.name} from host b")
    guest.wait_pinging(a.lan.host)
    return guest


def migrated_live(two_hosts, guest, what: str) -> None:
    """Migrate ``guest`` from a to b; it runs on b, is defined there only, and loses at
    most one LAN ping across the move: the one in flight when it paused on a, whose answer
    went to a (every later ping leaves through b's device, which was there before the
    guest resumed). A count, not a time: a slow machine stretches the guest's ping loop."""
    a, b = two_hosts.a, two_hosts.b
    started = time.monotonic()
    migrated = migrate(a, b, guest.name)
    assert migrated.returncode == 0, migrated.stderr
    MEASURED[f"live migration, {what}: the migration"] = time.monotonic() - started
    assert domstate(b, guest.name) == "running"
    assert a.sh(f"virsh dominfo {guest.name}").returncode != 0, "still defined on host a"
    assert "Persistent:     yes" in b.check(f"virsh dominfo {guest.name}")
    target = a.lan.host
    on_a = pings(a, guest.name, target)
    deadline = time.monotonic() + 30
    while sum(ok for _, ok in pings(b, guest.name, target)) < 3:
        assert time.monotonic() < deadline, "the guest pings no more after the migration"
        time.sleep(1)
    on_b = pings(b, guest.name, target)
    last_on_a = max(i for i, (_, ok) in enumerate(on_a) if ok)
    first_on_b = min(i for i, (_, ok) in enumerate(on_b) if ok)
    lost = on_a[last_on_a + 1:] + on_b[:first_on_b]
    gap = on_b[first_on_b][0] - on_a[last_on_a][0]
    MEASURED[f"live migration, {what}: longest time between two LAN pings"] = gap
    assert len(lost) <= 1, (f"{len(lost)} pings lost across the migration, {gap:.2f} s "
                            f"between the last answered on a and the first on b")


def in_line_on(host, name: str, mac: str) -> None:
    """`kvmhooks apply` has nothing to do for the domain and `status` calls it ok."""
    applied = host.sh(f"kvmhooks apply {name}")
    assert (applied.returncode, applied.stdout, applied.stderr) == (0, "", ""), applied
    rows = [line.split() for line in host.check("kvmhooks status").splitlines()]
    assert [row[-1] for row in rows if row[:2] == [name, mac]] == ["ok"], rows


def config_digest(host) -> str:
    return host.check("sha256sum /etc/kvmhooks/kvmhooks.toml").split()[0]


# First in the module: the tests after it configure the hosts their own way.
def test_the_role_configures_both_hosts_and_a_second_run_changes_nothing(two_hosts):
    a, b = two_hosts.a, two_hosts.b
    first = two_hosts.first_run
    assert first.returncode == 0, first.output
    assert first.changed("kvmhost-a") > 0 and first.changed("kvmhost-b") > 0, first.recap
    for host, uplinks in ((a, "2 uplinks"), (b, "1 uplink,")):
        assert uplinks in host.check("kvmhooks check-config")
        assert host.check("systemctl is-enabled kvmhooks-agent.socket").strip() == "enabled"
        host.check("test -x /etc/libvirt/hooks/qemu.d/kvmhooks && "
                   "test -f /usr/lib/udev/rules.d/90-kvmhooks.rules")
    config_b = b.check("cat /etc/kvmhooks/kvmhooks.toml")
    assert f'mac = "{b.vm.nics["b-uplink"].mac}"' in config_b, config_b

    second = two_hosts.play("site.yml")
    assert second.returncode == 0, second.output
    assert (second.changed("kvmhost-a"), second.changed("kvmhost-b")) == (0, 0), second.output

    before = config_digest(b)
    typo = json.dumps({"kvmhooks_uplinks": {"lan": {"nic": B_NIC, "brdge": "br-lan"}}})
    # From the config's task on: the tasks before it were run twice just above.
    broken = two_hosts.play("site.yml", "--limit", "kvmhost-b", "-e", typo,
                            "--start-at-task", CONFIG_TASK)
    assert broken.returncode != 0 and broken.failed("kvmhost-b") == 1, broken.output
    assert "uplink.lan.brdge: unknown key" in broken.output, broken.output
    assert config_digest(b) == before, "a config check-config refuses never replaces one"


def test_the_preflight_playbook_answers_for_the_destination(two_hosts, cleanup):
    a = two_hosts.a
    going = Iface(guest_mac(), "direct", "lan", "private")
    guest = a.define_guest(cleanup, [going], {going.mac: a.lan.subnet.addr(24)}, [])
    answer = two_hosts.play("preflight.yml", "-e", f"domain={guest.name}",
                            "-e", "source=kvmhost-a", "-e", "destination=kvmhost-b")
    assert answer.returncode == 0, answer.output
    assert re.search(rf"create macvtap {going.hook_owned_dev} .* on {B_NIC}, mode private",
                     answer.output), answer.output

    stuck = Iface(guest_mac(), "direct", "storage", "bridge")  # an uplink only a has
    guest = a.define_guest(cleanup, [stuck], {stuck.mac: a.lan.subnet.addr(25)}, [])
    refused = two_hosts.play("preflight.yml", "-e", f"domain={guest.name}",
                             "-e", "source=kvmhost-a", "-e", "destination=kvmhost-b")
    assert refused.returncode != 0 and refused.failed("kvmhost-b") == 1, refused.output
    assert "uplink 'storage'" in refused.output and guest.name in refused.output, \
        refused.output


@pytest.fixture
def configured(two_hosts):
    """Uplink lan on each host: a's NIC enp1s0, b's NIC enp2s0."""
    two_hosts.a.configure(uplink_lan(A_NIC))
    two_hosts.b.configure(uplink_lan(B_NIC))
    return two_hosts


def test_a_hook_owned_macvtap_guest_migrates_live_once_the_destination_has_its_uplink(
        two_hosts, cleanup):
    """Refused first, by a destination without uplink lan: the guest stays on host a and
    pings on. Once host b has the uplink, the same guest migrates live."""
    a, b = two_hosts.a, two_hosts.b
    a.configure(uplink_lan(A_NIC))
    b.configure(f'[uplink.other]\nnic = "{B_NIC}"\n')
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    guest = pinging_guest(two_hosts, cleanup, iface, 21)
    answer = preflight(a, b, guest.name)
    assert answer.returncode == 2 and answer.stdout == "", answer
    assert "uplink 'lan'" in answer.stderr and guest.name in answer.stderr, answer.stderr

    refused = migrate(a, b, guest.name)
    assert refused.returncode != 0
    assert "uplink 'lan'" in refused.stderr, refused.stderr
    assert domstate(a, guest.name) == "running"
    assert domstate(b, guest.name) != "running"
    assert b.sh(f"ip link show {iface.hook_owned_dev}").returncode != 0, "b left nothing"
    guest.wait_pinging(a.lan.host, timeout=30, after=len(guest.serial()))

    b.configure(uplink_lan(B_NIC))
    answer = preflight(a, b, guest.name)
    assert answer.returncode == 0, answer.stderr
    assert f"uplink lan: NIC {B_NIC}" in answer.stdout
    assert re.search(rf"create macvtap {iface.hook_owned_dev} .* on {B_NIC}, mode bridge",
                     answer.stdout), answer.stdout

    migrated_live(two_hosts, guest, "hook-owned macvtap")
    assert "kvmhooks:guest:" in b.check(f"ip -d -o link show {iface.hook_owned_dev}"), \
        "host b's prepare built the macvtap"
    assert f"@{B_NIC}:" in b.check(f"ip -o link show {iface.hook_owned_dev}")
    assert a.sh(f"ip link show {iface.hook_owned_dev}").returncode != 0, \
        "host a's release removed its own"
    in_line_on(b, guest.name, iface.mac)


def test_a_native_direct_guest_migrates_live_onto_the_destinations_nic(configured, cleanup):
    a, b = configured.a, configured.b
    iface = Iface(guest_mac(), "direct", "lan", "bridge", native=True, source=A_NIC)
    guest = pinging_guest(configured, cleanup, iface, 22)
    answer = preflight(a, b, guest.name)
    assert answer.returncode == 0, answer.stderr
    assert "native sources the migrate or restore hook writes for this host:" in answer.stdout
    assert f"write interface {iface.mac}: type='direct' <source dev='{B_NIC}' " \
           "mode='bridge'/>" in answer.stdout, answer.stdout

    migrated_live(configured, guest, "native type='direct'")
    live = b.check(f"virsh dumpxml {guest.name}")
    assert f"<source dev='{B_NIC}' mode='bridge'/>" in live, "host b's migrate hook rewrote it"
    # libvirt persists the source's definition as it was: the hook sees the live XML only.
    persistent = b.check(f"virsh dumpxml --inactive {guest.name}")
    assert f"<source dev='{A_NIC}' mode='bridge'/>" in persistent
    assert b.check(f"kvmhooks apply {guest.name}") == (
        f"domain {guest.name}: definition: write interface {iface.mac}: type='direct' "
        f"<source dev='{B_NIC}' mode='bridge'/>\n")
    in_line_on(b, guest.name, iface.mac)
    persistent = b.check(f"virsh dumpxml --inactive {guest.name}")
    assert f"<source dev='{B_NIC}' mode='bridge'/>" in persistent
