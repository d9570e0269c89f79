"""The engine every trigger uses: parse, take the host lock, snapshot, plan, apply.

Hooks, the udev handler and the command line are thin layers over these functions.
"""

from __future__ import annotations

import logging

from lxml import etree

from . import config as config_module
from . import state
from .apply import apply, apply_best_effort
from .config import Config
from .domain import Domain, domain_from_tree
from .errors import ApplyError, MetadataError, SourceMismatch
from .inventory import Inventory, with_creating_marks
from .netlink import Netlink
from .network import NetworkDef
from .planner import (
    Plan,
    current_source,
    plan_network_start,
    plan_network_stop,
    plan_orphans,
    plan_prepare,
    plan_release,
    plan_repair,
    plan_sources,
    source_difference,
)
from .rewrite import write_sources
from .xmlsafe import UnsafeXml, parse, serialize

log = logging.getLogger("kvmhooks")


def read_domain(xml: bytes | str, name_hint: str = "?") -> tuple[etree._Element, Domain]:
    try:
        root = parse(xml)
    except UnsafeXml as error:
        raise MetadataError(name_hint, str(error)) from None
    return root, domain_from_tree(root, name_hint)


def scan(netlink: Netlink, config: Config | None = None) -> Inventory:
    """Snapshot the host; udev is asked only when an uplink names its NIC by path."""
    id_paths = None
    if config is not None and any(uplink.path for uplink in config.uplinks.values()):
        from .udev import id_paths as udev_id_paths
        id_paths = udev_id_paths()
    return with_creating_marks(netlink.inventory(id_paths), state.creating_marks())


def explain(domain: Domain, config: Config) -> Plan:
    with Netlink() as netlink:
        return plan_prepare(domain, config, scan(netlink, config))


def refuse_mismatch(domain: Domain, plan: Plan) -> None:
    """A native source that disagrees with this host's resolution fails the start."""
    for wanted in plan.sources:
        tagged = next(t for t in domain.tagged if t.mac == wanted.mac)
        raise SourceMismatch(domain.name, wanted.mac,
                             source_difference(current_source(tagged), wanted))


PREPARE_ATTEMPTS = 3


def prepare(domain: Domain, call: str) -> Plan | None:
    """Build what the domain needs before it starts; undo everything on failure.

    A NIC that goes away or comes back while the plan runs makes a step fail; the plan
    is undone, made again for the host as it is then, and run again."""
    if not domain.tagged:
        return None
    config = config_module.load()
    with state.host_lock(), Netlink() as netlink:
        for attempt in range(1, PREPARE_ATTEMPTS + 1):
            inventory = scan(netlink, config)
            state.forget_creating({link.name for link in inventory.links})
            plan = plan_prepare(domain, config, inventory)
            refuse_mismatch(domain, plan)
            try:
                apply(plan.actions, netlink, f"domain {domain.name} {call}",
                      state.CreationJournal())
                break
            except ApplyError:
                if attempt == PREPARE_ATTEMPTS or \
                        not _nics_changed(plan, inventory, scan(netlink, config)):
                    raise
        for resolution in plan.resolutions:
            if resolution.nic is None:
                log.warning("domain %s %s: uplink '%s': its NIC is away; the guest goes on "
                            "bridge %s and reaches the LAN when the NIC comes back",
                            domain.name, call, resolution.uplink, resolution.bridge)
        state.write_record(domain.uuid, plan.as_dict())
    return plan


def _nics_changed(plan: Plan, before: Inventory, after: Inventory) -> bool:
    def index(inventory: Inventory, name: str | None) -> int | None:
        link = inventory.by_name(name) if name else None
        return link.index if link else None
    return any(index(before, r.nic) != index(after, r.nic) for r in plan.resolutions)


def repair(domain: Domain, call: str) -> Plan | None:
    """Verify and repair the shared devices of a running guest."""
    if not domain.tagged:
        return None
    config = config_module.load()
    with state.host_lock(), Netlink() as netlink:
        plan = plan_repair(domain, config, scan(netlink, config))
        apply(plan.actions, netlink, f"domain {domain.name} {call}", state.CreationJournal())
    return plan


def release(name: str, uuid: str, call: str) -> list[str]:
    """Remove this domain's per-guest devices; returns what could not be removed."""
    with state.host_lock(), Netlink() as netlink:
        plan = plan_release(name, uuid, scan(netlink))
        failures = apply_best_effort(plan.actions, netlink, f"domain {name} {call}",
                                     state.CreationJournal())
        state.drop_record(uuid)
    return failures


def rewrite_for_host(xml: bytes, name_hint: str) -> bytes:
    """The domain XML with native tagged interfaces written for this host."""
    root, domain = read_domain(xml, name_hint)
    if not domain.tagged:
        return xml
    config = config_module.load()
    with Netlink() as netlink:
        plan = plan_sources(domain, config, scan(netlink, config))
    if not plan.sources:
        return xml
    for source in plan.sources:
        log.info("domain %s: %s", domain.name, source.describe())
    return serialize(write_sources(root, plan.sources)).encode("utf-8")


def network_start(network: NetworkDef, call: str) -> Plan | None:
    """Before a libvirt network named in the config starts: its devices, or a refusal."""
    config = config_module.load_if_present()
    if config is None or network.name not in config.networks:
        return None
    with state.host_lock(), Netlink() as netlink:
        plan = plan_network_start(network, config, scan(netlink, config))
        apply(plan.actions, netlink, f"network {network.name} {call}",
              state.CreationJournal())
    return plan


def network_stopped(network: NetworkDef, call: str) -> list[str]:
    """After a network stopped: remove what kvmhooks created for it."""
    if config_module.load_if_present() is None:
        return []
    with state.host_lock(), Netlink() as netlink:
        plan = plan_network_stop(network.name, scan(netlink))
        return apply_best_effort(plan.actions, netlink, f"network {network.name} {call}",
                                 state.CreationJournal())


def remove_orphans(running_uuids: set[str]) -> list[str]:
    """Delete the per-guest devices of domains that do not run; returns what was done.
    Under the host lock: a domain starting now is running already while its prepare
    builds its devices."""
    with state.host_lock(), Netlink() as netlink:
        inventory = scan(netlink)
        state.forget_creating({link.name for link in inventory.links})
        plan = plan_orphans(inventory, running_uuids)
        failures = apply_best_effort(plan.actions, netlink, "apply", state.CreationJournal())
    return [action.describe() for action in plan.actions] + failures
