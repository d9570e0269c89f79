"""What the command line does to domains: explain, attach, apply (definitions, running
guests, orphans) and status. These run outside hooks and may call libvirt, never under the
host lock."""

from __future__ import annotations

import sys
import time

from .. import config as config_module
from .. import state
from ..domain import Attachment, Domain, domain_tree, parse_domain, read_domain
from ..errors import KvmhooksError, UsageError
from ..planner import Plan, plan_orphans, plan_prepare, plan_sources
from ..rewrite import (
    attach_interface,
    find_interface,
    replugged_interface,
    retargeted_interface,
    write_sources,
)
from ..status import (
    HostStatus,
    InterfaceStatus,
    domain_status,
    orphan_status,
    uplink_status,
)
from ..xmlsafe import serialize
from . import hooks
from .session import HostSession

RECORD_CLOCK_MARGIN_NS = 1_000_000_000


def explain(name: str | None = None, xml_file: str | None = None) -> tuple[Domain, Plan]:
    """The plan a start of this domain (by libvirt name, or from an XML file, '-' for
    standard input) would run on this host; changes nothing. An untagged domain's plan
    is empty."""
    with HostSession("explain") as session:
        if xml_file is not None:
            domain = parse_domain(_read_file(xml_file), xml_file)
        else:
            virt = session.virt
            domain = parse_domain(virt.definition(virt.domain(name)), name)
        if not domain.tagged:
            return domain, Plan(domain=domain.name, uuid=domain.uuid)
        config = config_module.load()
        return domain, plan_prepare(domain, config, session.scan(config))


def _read_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror}") from None


def attach(name: str, attachment: Attachment, native: bool) -> None:
    """Write the metadata entry and the interface (hook-owned, or native with this host's
    source) into the persistent definition; the whole domain must work on this host."""
    config = config_module.load()
    with HostSession(f"domain {name} attach") as session:
        virt = session.virt
        root = domain_tree(virt.definition(virt.domain(name)), name)
        attach_interface(root, name, attachment, native, config, session.scan(config))
        virt.define(name, serialize(root))


def bring_in_line(names: list[str]) -> tuple[list[str], list[KvmhooksError]]:
    """`kvmhooks apply`: rewrite native sources in persistent definitions for this host;
    for running guests repair shared devices and move native interfaces (a bridge change
    in place, a direct change by live detach and attach). Without names: every domain,
    and the per-guest devices of domains that do not run are removed.
    Returns what was done, and the error of each domain that failed."""
    config = config_module.load()
    lines: list[str] = []
    errors: list[KvmhooksError] = []
    with HostSession("apply") as session:
        virt = session.virt
        doms = [virt.domain(name) for name in names] if names else virt.domains()
        for dom in doms:
            try:
                lines += _domain_in_line(session, dom, config)
            except KvmhooksError as error:
                errors.append(error)
        if not names:
            listed_at = time.time_ns()
            lines += _remove_orphans(session, _running_uuids(session.virt), listed_at)
    return lines, errors


def _domain_in_line(session: HostSession, dom, config) -> list[str]:
    virt, name, lines = session.virt, dom.name(), []
    if dom.isPersistent():
        root, domain = read_domain(virt.definition(dom), name)
        plan = plan_sources(domain, config, session.scan(config)) if domain.tagged else Plan()
        if plan.sources:
            virt.define(name, serialize(write_sources(root, plan.sources)))
            lines += [f"domain {name}: definition: {c.describe()}" for c in plan.sources]
    if not virt.running(dom):
        return lines
    root, domain = read_domain(virt.live(dom), name)
    if not domain.tagged:
        return lines
    repaired = hooks.repair(domain, "apply")
    lines += [f"domain {name}: {action.describe()}" for action in repaired.actions]
    for change in plan_sources(domain, config, session.scan(config)).sources:
        old = find_interface(root, change.mac)
        if old.get("type") == "bridge" and change.wanted.type == "bridge":
            # libvirt moves a running tap to another bridge in place.
            session.virt.update_live_interface(
                dom, serialize(retargeted_interface(old, change.wanted)))
        else:
            session.virt.replug(dom, change.mac, serialize(old),
                                serialize(replugged_interface(old, change.wanted)))
            state.count("replugs")
        lines.append(f"domain {name}: running guest: {change.describe()}")
    return lines


def _remove_orphans(session: HostSession, running_uuids: set[str],
                    listed_at: int) -> list[str]:
    """Delete the per-guest devices of domains that do not run; returns what was done.

    Which domains run is libvirt's to say, and libvirt is never asked under the host lock
    (it may be waiting for a hook that waits for that lock). A domain that started after
    the list was read has had its prepare, which writes the domain's record under the
    lock: such a domain's devices are not orphans."""
    with session.locked():
        # File times come from the kernel's coarse clock: a second of margin errs on the
        # side of keeping devices, which the next apply removes if they are orphans then.
        started = state.recorded_since(listed_at - RECORD_CLOCK_MARGIN_NS)
        plan = plan_orphans(session.scan(), running_uuids | started)
        failures = session.apply_best_effort(plan.actions)
    return [action.describe() for action in plan.actions] + failures


def _running_uuids(virt) -> set[str]:
    return {dom.UUIDString().lower() for dom in virt.domains() if virt.running(dom)}


def status() -> HostStatus:
    """Every tagged interface of every domain, kvmhooks' orphaned devices and the
    uplinks' shared devices; with the error of each domain whose XML could not be read."""
    config = config_module.load()
    rows: list[InterfaceStatus] = []
    errors: list[KvmhooksError] = []
    with HostSession("status") as session:
        inventory = session.scan(config)
        virt = session.virt
        for dom in virt.domains():
            running = virt.running(dom)
            try:
                definition = parse_domain(virt.definition(dom), dom.name())
                live = parse_domain(virt.live(dom), dom.name()) if running else None
            except KvmhooksError as error:
                errors.append(error)
                continue
            if live is None:
                rows += domain_status(definition, False, config, inventory)
            else:
                rows += domain_status(live, True, config, inventory, definition)
        names = {dom.UUIDString().lower(): dom.name() for dom in virt.domains()}
        rows += orphan_status(inventory, _running_uuids(virt), names)
    return HostStatus(tuple(rows), tuple(uplink_status(config, inventory)), tuple(errors))
