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
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from kvmhooks.domain import Attachment, domain_from_tree, domain_tree, read_domain
from kvmhooks.errors import BadInput, KvmhooksError
from kvmhooks.planner import plan_sources
from kvmhooks.resolve import resolve, resolve_all, uplink_for
from kvmhooks.rewrite import (
    find_interface,
    replugged_interface,
    set_attachment,
    set_hook_owned,
    set_native,
    write_sources,
)
from kvmhooks.sources import wanted_source
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
    """libvirt's test driver on an empty node: it parses and validates domain XML as
    libvirtd's drivers do, in this process. One connection for the whole run."""

    def __init__(self, node: Path):
        libvirt.registerErrorHandler(lambda _context, _error: None, None)
        self.conn = libvirt.open(f"test://{node}")

    def refusal(self, xml: str) -> str | None:
        """libvirt's error for this document; None when it defines it."""
        try:
            self.conn.defineXML(xml).undefine()
        except libvirt.libvirtError as error:
            return error.get_error_message()
        return None


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
    set_attachment(root, attachment)
    set_hook_owned(root, attachment.mac)
    domain = domain_from_tree(root)
    resolve_all(domain, config, INVENTORY)
    if native:
        entry = next(t for t in domain.tagged if t.mac == attachment.mac)
        resolution = resolve(uplink_for(entry, domain, config), INVENTORY)
        set_native(root, attachment.mac, wanted_source(entry, resolution))
        domain_from_tree(root)
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
        if libvirt_parser.refusal(source) is not None:
            continue  # libvirt refuses the input itself: nothing to hold kvmhooks to
        try:
            written = rewrite(source, attachment, config)
        except KvmhooksError as error:
            line = str(error)
            assert isinstance(error, BadInput), f"{mac}: {line}"
            assert "\n" not in line and line.startswith(f"domain {name}"), line
            continue
        refusal = libvirt_parser.refusal(written)
        assert refusal is None, f"{document} {mac} {tag} {flow}: libvirt refuses " \
                                f"what kvmhooks wrote: {refusal}"


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
