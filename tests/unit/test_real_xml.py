"""Real domain XML (tests/real-xml/, from libvirt's and virt-manager's own test data)
through every rewrite kvmhooks makes, judged by libvirt's own parser.

For each document, each of its interfaces and each tag kvmhooks could apply (bridge,
direct in each mode, network; native, or hook-owned through attach), wherever libvirt's
test driver (in-process, no daemon) accepts the tagged input it must accept what kvmhooks
writes from it, or kvmhooks must refuse with its one line naming the domain (and the
interface and element concerned, tested below). The rewrites are the ones the flows make:
- restore: the migrate and restore hooks' rewrite, and `kvmhooks apply` on a definition
  (plan_sources, write_sources);
- replug: `kvmhooks apply` and NIC events on a running guest (replugged_interface);
- attach: `kvmhooks attach` (hook-owned), and attach-native: `kvmhooks attach --native`.

Golden cases (golden/type-change/) say what each child of an interface whose meaning
depends on its type does when kvmhooks changes the type: carried, dropped or refused.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from kvmhooks.domain import Attachment, domain_from_tree, domain_tree, read_domain
from kvmhooks.errors import BadInput, KvmhooksError
from kvmhooks.planner import plan_sources
from kvmhooks.rewrite import (
    attach_interface,
    find_interface,
    replugged_interface,
    set_attachment,
    write_sources,
)
from kvmhooks.xmlsafe import parse, serialize

from .builders import LAN, LAN_BRIDGE, Host, make_config
from .hookcalls import hook_call

REAL = Path(__file__).resolve().parents[1] / "real-xml"
INVENTORY = Host().nic("eth1", master="br-lan").bridge("br-lan").inventory()

TAGS = {  # tag -> (its metadata entry without a MAC, the host config it is resolved with)
    "bridge": (Attachment("", "bridge", uplink="lan"), LAN_BRIDGE),
    "direct-bridge": (Attachment("", "direct", uplink="lan", mode="bridge"), LAN),
    "direct-private": (Attachment("", "direct", uplink="lan", mode="private"), LAN),
    "direct-vepa": (Attachment("", "direct", uplink="lan", mode="vepa"), LAN),
    "direct-passthrough": (Attachment("", "direct", uplink="lan", mode="passthrough"), LAN),
    "network": (Attachment("", "network", network="default"), LAN),
}


class LibvirtParser:
    """libvirt's own judges of domain XML, in this process: its test driver on an empty
    node (libvirt's domain parser and validation, which every driver runs before its own
    checks) and its RELAX NG schema, as `virsh define --validate` applies it (libxml2;
    compiled here once, where libvirt compiles it at every call). One connection for the
    whole run."""

    SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")  # libvirt0's
    CHECKS = ("define", "schema")

    def __init__(self, node: Path):
        libvirt.registerErrorHandler(lambda _context, _error: None, None)
        self.conn = libvirt.open(f"test://{node}")
        self.schema = etree.RelaxNG(file=str(self.SCHEMA))

    def refusals(self, xml: str) -> dict[str, str]:
        """libvirt's error for this document, by check; empty when both take it."""
        errors = {}
        try:
            self.conn.defineXML(xml).undefine()
        except libvirt.libvirtError as error:
            errors["define"] = error.get_error_message()
        if not self.schema.validate(etree.fromstring(xml.encode())):
            errors["schema"] = str(self.schema.error_log.last_error)
        return errors

    def refusal(self, xml: str) -> str | None:
        """libvirt's first error for this document; None when it takes it."""
        return next(iter(self.refusals(xml).values()), None)

    def newly_refused(self, before: str, after: str) -> dict[str, str]:
        """The checks that before passes and after fails, with libvirt's error."""
        passed = set(self.CHECKS) - self.refusals(before).keys()
        return {check: error for check, error in self.refusals(after).items()
                if check in passed}


@pytest.fixture(scope="module")
def libvirt_parser(tmp_path_factory):
    node = tmp_path_factory.mktemp("testdriver") / "node.xml"
    node.write_text("<node/>\n")  # no predefined domains whose names could clash
    parser = LibvirtParser(node)
    yield parser
    parser.conn.close()


def documents() -> list[str]:
    return sorted(path.name for path in REAL.glob("*.xml"))


def interface_macs(root: etree._Element) -> list[str]:
    return [mac.get("address").lower() for mac in root.findall("devices/interface/mac")]


def tagged(root: etree._Element, attachment: Attachment) -> str:
    """The document with the kvmhooks metadata entry for attachment."""
    root = etree.fromstring(serialize(root))
    set_attachment(root, attachment)
    return serialize(root)


# --- the rewrites, as the flows make them ---------------------------------------------------

def restore(xml: str, attachment: Attachment, config) -> str:
    root, domain = read_domain(xml)
    return serialize(write_sources(root, plan_sources(domain, config, INVENTORY).sources))


def replug(xml: str, attachment: Attachment, config) -> str:
    root, domain = read_domain(xml)
    for change in plan_sources(domain, config, INVENTORY).sources:
        live = find_interface(root, change.mac)
        live.getparent().replace(live, replugged_interface(live, change.wanted))
    return serialize(root)


def attach(xml: str, attachment: Attachment, config, native: bool = False) -> str:
    root = domain_tree(xml)
    attach_interface(root, root.findtext("name"), attachment, native, config, INVENTORY)
    return serialize(root)


def attach_native(xml: str, attachment: Attachment, config) -> str:
    return attach(xml, attachment, config, native=True)


FLOWS: dict[str, tuple[Callable, bool]] = {  # flow -> (rewrite, whether its input is tagged)
    "restore": (restore, True),
    "replug": (replug, True),
    "attach": (attach, False),
    "attach-native": (attach_native, False),
}


def cases() -> list[tuple[str, str, str]]:
    """(document, tag, flow); attach writes bridge and direct only."""
    return [(document, tag, flow) for document in documents() for tag in sorted(TAGS)
            for flow in sorted(FLOWS)
            if not (flow.startswith("attach") and TAGS[tag][0].kind == "network")]


@pytest.mark.parametrize("document, tag, flow", cases())
def test_libvirt_accepts_what_kvmhooks_writes_or_kvmhooks_refuses(libvirt_parser, document,
                                                                   tag, flow):
    rewrite, input_is_tagged = FLOWS[flow]
    template, config_text = TAGS[tag]
    config = make_config(config_text)
    root = parse((REAL / document).read_bytes())
    name = root.findtext("name")
    for mac in interface_macs(root):
        attachment = dataclasses.replace(template, mac=mac)
        source = tagged(root, attachment) if input_is_tagged else serialize(root)
        if len(libvirt_parser.refusals(source)) == len(LibvirtParser.CHECKS):
            continue  # libvirt refuses the input itself: nothing to hold kvmhooks to
        try:
            written = rewrite(source, attachment, config)
        except KvmhooksError as error:
            line = str(error)
            assert isinstance(error, BadInput), f"{mac}: {line}"
            assert "\n" not in line and line.startswith(f"domain {name}"), line
            continue
        refused = libvirt_parser.newly_refused(source, written)
        assert not refused, f"{document} {mac} {tag} {flow}: libvirt refuses what " \
                            f"kvmhooks wrote: {refused}"


def test_the_corpus_has_every_interface_type():
    types = {element.get("type") for name in documents()
             for element in parse((REAL / name).read_bytes()).findall("devices/interface")}
    assert types >= {"user", "ethernet", "bridge", "network", "direct", "hostdev",
                     "vhostuser", "server", "mcast", "vdpa"}


# --- the restore hook itself -----------------------------------------------------------------

@pytest.fixture
def host_config(tmp_path, monkeypatch):
    """A host whose uplink 'lan' is the loopback device (there on every host) with a bridge
    br-lan; no syslog, an empty state directory."""
    config = tmp_path / "kvmhooks.toml"
    config.write_text('[uplink.lan]\nnic = "lo"\nbridge = "br-lan"\n')
    monkeypatch.setenv("KVMHOOKS_CONFIG", str(config))
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("kvmhooks.logsetup.SYSLOG_SOCKET", "/nonexistent/log")


@pytest.mark.parametrize("operation", ["migrate", "restore"])
def test_restore_of_a_network_interface_with_a_floor_tagged_bridge_is_refused(
        operation, host_config, libvirt_parser, capsys):
    """libvirt gives a bandwidth floor to type network alone: written as type bridge, the
    restore would fail with libvirt's error. The hook refuses it with its own line."""
    root = parse((REAL / "libvirt-net-bandwidth2.xml").read_bytes())
    mac = "52:54:00:24:a5:9f"
    xml = tagged(root, Attachment(mac, "bridge", uplink="lan")).encode()
    assert libvirt_parser.refusal(xml.decode()) is None
    stdout = io.BytesIO()
    status = hook_call("qemu", ["f14-60", operation, "begin", "-"], io.BytesIO(xml), stdout)
    err = capsys.readouterr().err
    assert (status, stdout.getvalue()) == (2, b""), libvirt_parser.refusal(
        stdout.getvalue().decode())
    assert err.count("\n") == 1
    assert err.startswith(f"kvmhooks: domain f14-60 interface {mac}: ")
    assert "<bandwidth><inbound floor>" in err


# --- golden: what each child does when the type changes ----------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "type-change"
REGEN = os.environ.get("KVMHOOKS_REGEN_GOLDEN") == "1"
MAC = "52:54:00:6b:3c:01"
ATTACH_CASES = {  # case -> (what `kvmhooks attach` is given, --native)
    "attach-floor-hook-owned": (Attachment(MAC, "bridge", uplink="lan"), False),
    "attach-virtualport-hook-owned": (
        Attachment(MAC, "direct", uplink="lan", mode="private"), False),
    "attach-isolated-native-bridge": (Attachment(MAC, "bridge", uplink="lan"), True),
    "attach-hostdev-hook-owned": (Attachment(MAC, "bridge", uplink="lan"), False),
    "attach-user-passt-hook-owned": (Attachment(MAC, "direct", uplink="lan", mode="bridge"),
                                     False),
}


def golden_cases() -> list[str]:
    return sorted(path.name[:-len("-in.xml")] for path in GOLDEN.glob("*-in.xml"))


def rewritten(case: str, xml: bytes) -> str:
    """The case's input as the restore hook (or, for attach-* cases, `kvmhooks attach`)
    writes it on a host whose uplink 'lan' is eth1 (on bridge br-lan for type bridge)."""
    root = parse(xml)
    if case in ATTACH_CASES:
        attachment, native = ATTACH_CASES[case]
        attach_interface(root, case, attachment, native, config_for(attachment), INVENTORY)
        return serialize(root)
    domain = domain_from_tree(root)
    plan = plan_sources(domain, config_for(domain.tagged[0].attachment), INVENTORY)
    return serialize(write_sources(root, plan.sources))


def config_for(attachment: Attachment):
    """Type bridge takes an uplink with a bridge; macvtaps go on the NIC of one without."""
    return make_config(LAN_BRIDGE if attachment.kind == "bridge" else LAN)


def compare(path: Path, actual: str | None) -> None:
    """actual: the expected file's text; None: the file must not exist."""
    if REGEN:
        if actual is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(actual + "\n")
    if actual is None:
        assert not path.exists(), f"{path} should not exist (KVMHOOKS_REGEN_GOLDEN=1 removes)"
    else:
        assert actual + "\n" == path.read_text(), \
            f"{path} differs (KVMHOOKS_REGEN_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("case", golden_cases())
def test_type_change_golden(case, libvirt_parser):
    """<case>-in.xml rewritten is <case>-out.xml, or refused with the one line in
    <case>-refused.txt; libvirt accepts the output wherever it accepts the input."""
    xml = (GOLDEN / f"{case}-in.xml").read_bytes()
    try:
        written, line = rewritten(case, xml), None
    except KvmhooksError as error:
        assert isinstance(error, BadInput)
        written, line = None, str(error)
    compare(GOLDEN / f"{case}-out.xml", written)
    compare(GOLDEN / f"{case}-refused.txt", line)
    if written is not None:
        assert not libvirt_parser.newly_refused(xml.decode(), written)
    if written is not None and case not in ATTACH_CASES:  # a second rewrite changes nothing
        assert rewritten(case, written.encode()) == written
    if line is not None:
        assert line.startswith(f"domain {case} interface {MAC}: <")
