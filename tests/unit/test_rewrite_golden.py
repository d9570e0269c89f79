"""Golden XML: the migrate/restore rewrite (plan_sources + write_sources) and the edits
of `kvmhooks attach` (set_attachment + set_hook_owned / set_native).

golden/<group>/<case>-in.xml is the input, <case>-out.xml the expected output.
KVMHOOKS_REGEN_GOLDEN=1 rewrites the -out files (then read every diff before keeping it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmhooks.domain import Attachment, domain_from_tree
from kvmhooks.errors import MetadataError
from kvmhooks.planner import plan_sources
from kvmhooks.rewrite import (
    attach_interface,
    set_attachment,
    set_hook_owned,
    set_native,
    write_sources,
)
from kvmhooks.sources import BridgeSource, DirectSource, NetworkSource
from kvmhooks.xmlsafe import parse, serialize

from .builders import LAN, LAN_BRIDGE, MAC1, Host, make_config

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("KVMHOOKS_REGEN_GOLDEN") == "1"
INVENTORY = Host().nic("eth1", master="br-lan").bridge("br-lan").inventory()


def compare(group: str, case: str, actual: str) -> None:
    out = GOLDEN / group / f"{case}-out.xml"
    if REGEN:
        out.write_text(actual + "\n")
    assert actual + "\n" == out.read_text(), f"{out} differs (KVMHOOKS_REGEN_GOLDEN=1 rewrites)"


def read_in(group: str, case: str):
    return parse((GOLDEN / group / f"{case}-in.xml").read_bytes())


REWRITE_CASES = {  # case -> (config, whether the XML changes)
    "native-bridge": (LAN_BRIDGE, True),
    "direct-bridge": (LAN, True),
    "direct-private": (LAN, True),
    "direct-vepa": (LAN, True),
    "direct-passthrough": (LAN, True),
    "direct-on-bridge-uplink": (LAN_BRIDGE, True),
    "bridge-to-direct": (LAN, True),
    "direct-to-bridge": (LAN_BRIDGE, True),
    "network-renamed": (LAN, True),
    "hook-owned-untouched": (LAN_BRIDGE, True),  # only the native interface changes
    "untagged": (LAN, False),
    "already-correct": (LAN_BRIDGE, False),
}


@pytest.mark.parametrize("case", sorted(REWRITE_CASES))
def test_rewrite(case):
    config_text, changes = REWRITE_CASES[case]
    config = make_config(config_text)
    root = read_in("rewrite", case)
    plan = plan_sources(domain_from_tree(root), config, INVENTORY)
    assert bool(plan.sources) == changes
    compare("rewrite", case, serialize(write_sources(root, plan.sources)))
    # The output is a fixed point: a second rewrite on the same host changes nothing.
    again = parse(serialize(root))
    assert plan_sources(domain_from_tree(again), config, INVENTORY).sources == ()


ATTACH_CASES = {
    "hook-owned-existing": (Attachment(MAC1, "direct", uplink="lan", mode="private"), None),
    "hook-owned-new": (Attachment(MAC1, "bridge", uplink="lan"), None),
    "native-existing": (Attachment(MAC1, "direct", uplink="lan", mode="private"),
                        DirectSource("eth1", "private")),
    "native-new": (Attachment(MAC1, "bridge", uplink="lan"),
                   BridgeSource("br-lan")),
    "network-existing": (Attachment(MAC1, "network", network="default"),
                         NetworkSource("default")),
    "hook-owned-vlan": (Attachment(MAC1, "bridge", uplink="lan", vlan=10), None),
    "hook-owned-vlan-trunk": (Attachment(MAC1, "bridge", uplink="lan", vlan=10,
                                         trunk=(20, 21, 22, 30, 4094)), None),
    "hook-owned-direct-vlan": (Attachment(MAC1, "direct", uplink="lan", mode="bridge",
                                          vlan=4094), None),
    # The native source of a direct VLAN is the NIC's VLAN sub-interface NIC.ID.
    "native-direct-vlan": (Attachment(MAC1, "direct", uplink="lan", mode="private", vlan=10),
                           DirectSource("eth1.10", "private")),
}


@pytest.mark.parametrize("case", sorted(ATTACH_CASES))
def test_attach(case):
    attachment, native = ATTACH_CASES[case]
    root = read_in("attach", case)
    set_attachment(root, attachment)
    if native is None:
        set_hook_owned(root, attachment.mac)
    else:
        set_native(root, attachment.mac, native)
    compare("attach", case, serialize(root))
    tagged = {t.mac: t for t in domain_from_tree(parse(serialize(root))).tagged}
    assert tagged[MAC1].attachment == attachment
    assert tagged[MAC1].hook_owned is (native is None)


def test_attach_without_vlans_drops_the_old_entrys_vlans():
    root = read_in("attach", "hook-owned-vlan-trunk")
    set_attachment(root, Attachment(MAC1, "bridge", uplink="lan"))
    tagged = domain_from_tree(parse(serialize(root))).tagged
    assert [t.attachment.vlans for t in tagged] == [(), (100, 101, 300)]


def test_attach_native_type_bridge_with_vlans_is_refused():
    """attach relies on the metadata parser's check of the form (domain.check_form)."""
    root = read_in("attach", "hook-owned-vlan")
    attachment = Attachment(MAC1, "bridge", uplink="lan", vlan=10)
    with pytest.raises(MetadataError) as caught:
        attach_interface(root, "web1", attachment, True, make_config(LAN_BRIDGE), INVENTORY)
    assert str(caught.value).startswith(
        f"domain attach-hook-owned-vlan interface {MAC1}: VLANs on type 'bridge' take the "
        "hook-owned form <interface type='ethernet'>")
