"""What the libvirt hook calls do: prepare, repair (reconnect, attach), release, the
migrate and restore rewrite, and the network hook's start and stopped. A hook never calls
libvirt: libvirtd is waiting for it."""

from __future__ import annotations

import logging

from .. import config as config_module
from ..domain import Domain, read_domain
from ..errors import ApplyError, ConfigError, SourceMismatch
from ..inventory import Inventory
from ..network import NetworkDef
from ..planner import (
    Plan,
    plan_network_start,
    plan_network_stop,
    plan_prepare,
    plan_release,
    plan_repair,
    plan_sources,
)
from ..rewrite import write_sources
from ..xmlsafe import serialize
from .session import HostSession

log = logging.getLogger("kvmhooks")
PREPARE_ATTEMPTS = 3


def prepare(domain: Domain, call: str) -> Plan | None:
    """Build what the domain needs before it starts; undo everything on failure.

    A NIC that goes away or comes back while the plan runs makes a step fail; the plan
    is undone, made again for the host as it is then, and run again."""
    if not domain.tagged:
        return None
    config = config_module.load()
    with HostSession(f"domain {domain.name} {call}") as session, session.locked():
        for attempt in range(1, PREPARE_ATTEMPTS + 1):
            inventory = session.scan(config)
            plan = plan_prepare(domain, config, inventory)
            for change in plan.sources:  # a native source that disagrees fails the start
                raise SourceMismatch(domain.name, change.mac, change.difference())
            try:
                session.apply(plan.actions)
                break
            except ApplyError:
                if attempt == PREPARE_ATTEMPTS or \
                        not _nics_changed(plan, inventory, session.scan(config)):
                    raise
        for resolution in plan.resolutions:
            if resolution.nic is None:
                log.warning("domain %s %s: uplink '%s': its NIC is away; the guest goes on "
                            "bridge %s and reaches the LAN when the NIC comes back",
                            domain.name, call, resolution.uplink, resolution.bridge)
        session.write_record(plan)
    return plan


def _nics_changed(plan: Plan, before: Inventory, after: Inventory) -> bool:
    def index(inventory: Inventory, name: str | None) -> int | None:
        link = inventory.by_name(name) if name else None
        return link.index if link else None
    return any(index(before, r.nic) != index(after, r.nic) for r in plan.resolutions)


def repair(domain: Domain, call: str) -> Plan | None:
    """Verify and repair the shared devices of a running guest, and its taps' ports."""
    if not domain.tagged:
        return None
    config = config_module.load()
    with HostSession(f"domain {domain.name} {call}") as session, session.locked():
        plan = plan_repair(domain, config, session.scan(config))
        session.apply(plan.actions)
    return plan


def release(name: str, uuid: str, call: str) -> list[str]:
    """Remove this domain's per-guest devices; returns what could not be removed."""
    with HostSession(f"domain {name} {call}") as session, session.locked():
        failures = session.apply_best_effort(plan_release(name, uuid, session.scan()).actions)
        session.drop_record(uuid)
    return failures


def rewrite_for_host(xml: bytes, name_hint: str) -> bytes:
    """The domain XML with native tagged interfaces written for this host, or nothing
    when nothing changes: libvirt takes any output as a rewrite and taints the domain."""
    root, domain = read_domain(xml, name_hint)
    if not domain.tagged:
        return b""
    config = config_module.load()
    with HostSession(f"domain {domain.name}") as session:
        plan = plan_sources(domain, config, session.scan(config))
    if not plan.sources:
        return b""
    for change in plan.sources:
        log.info("domain %s: %s", domain.name, change.describe())
    return serialize(write_sources(root, plan.sources)).encode("utf-8")


def network_start(network: NetworkDef, call: str) -> Plan | None:
    """Before a libvirt network named in the config starts: its devices, or a refusal.
    A config that does not load refuses only the networks its text names."""
    try:
        config = config_module.load_if_present()
    except ConfigError as error:
        if config_module.names_network(network.name):
            raise
        log.warning("network %s %s: not named in a config that does not load (%s); "
                    "kvmhooks leaves it alone", network.name, call, error)
        return None
    if config is None or network.name not in config.networks:
        return None
    with HostSession(f"network {network.name} {call}") as session, session.locked():
        plan = plan_network_start(network, config, session.scan(config))
        session.apply(plan.actions)
    return plan


def network_stopped(network: NetworkDef, call: str) -> list[str]:
    """After a network stopped: remove what kvmhooks created for it (found by its mark,
    so a config that does not load changes nothing here)."""
    if not config_module.is_present():
        return []
    with HostSession(f"network {network.name} {call}") as session, session.locked():
        return session.apply_best_effort(plan_network_stop(network.name, session.scan()).actions)
