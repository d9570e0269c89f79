"""A libvirt network's definition, as the network hook gets it in <hookData> (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInput
from .xmlsafe import UnsafeXml, parse


@dataclass(frozen=True)
class NetworkDef:
    name: str
    forward_mode: str | None  # None: an isolated network
    bridge: str | None  # <bridge name>
    forward_devs: tuple[str, ...]  # <forward dev> and each <forward><interface dev>


def parse_hook_data(xml: bytes, name_hint: str) -> NetworkDef:
    try:
        root = parse(xml)
    except UnsafeXml as error:
        raise BadInput(f"network {name_hint}: {error}") from None
    network = root if root.tag == "network" else root.find("network")
    if network is None:
        raise BadInput(f"network {name_hint}: no <network> in the hook's input")
    forward = network.find("forward")
    devs: list[str] = []
    if forward is not None:
        if forward.get("dev"):
            devs.append(forward.get("dev"))
        devs += [i.get("dev") for i in forward.findall("interface")
                 if i.get("dev") and i.get("dev") not in devs]
    bridge = network.find("bridge")
    return NetworkDef(
        name=(network.findtext("name") or name_hint).strip(),
        forward_mode=forward.get("mode", "nat") if forward is not None else None,
        bridge=bridge.get("name") if bridge is not None else None,
        forward_devs=tuple(devs))
