"""NIC events: when a NIC appears, is renamed or goes away, bring back everything built
on it. Run by the udev rule (through kvmhooks-nic@.service, the agent, or a detached
process) and by `kvmhooks watch`.

This runs outside any hook, so it may call libvirt: a guest whose macvtap died with its
NIC only comes back through a live detach and attach of its interface. It never calls
libvirt while it holds the host lock.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .. import config as config_module
from .. import state
from ..config import Config
from ..domain import Domain, read_domain
from ..errors import KvmhooksError
from ..names import is_candidate
from ..planner import Replug, plan_reconnect, plan_uplinks
from ..resolve import Resolution, lost_uplinks, resolve_affected
from ..rewrite import find_interface, replugged_interface
from ..xmlsafe import serialize
from .session import HostSession

log = logging.getLogger("kvmhooks")
MAX_PARALLEL_REPLUGS = 32


def handle(action: str, ifname: str) -> list[str]:
    """Converge on the host as it is now (the action only names the trigger): a burst
    of add and remove events ends in the state the last one left."""
    config = config_module.load_if_present()
    if config is None:
        return []
    context = f"NIC {ifname} {action}"
    with state.nic_event_lock(ifname) as mine:
        if not mine:
            return [f"{context}: another handler for {ifname} is waiting; it will see "
                    "this event"]
        with HostSession(context) as session:
            inventory = session.scan(config)
            nic = inventory.by_name(ifname)
            if nic is None:
                lost = lost_uplinks(config, inventory, ifname)
                return _losses(session, ifname, action, lost) if lost else []
            affected = resolve_affected(config, inventory, ifname)
            if not affected:
                return []
            return _reconnect(session, ifname, nic.index, config, affected)


@dataclass(frozen=True)
class RunningGuest:
    dom: object  # libvirt.virDomain
    domain: Domain  # with unplugged interfaces as the persistent definition has them
    roots: dict  # MAC -> the XML tree that holds its <interface> (live or definition)
    unplugged: frozenset


def _running_tagged(virt) -> list[RunningGuest]:
    found = []
    for dom in virt.domains():
        if not virt.running(dom):
            continue
        try:
            live_root, domain = read_domain(virt.live(dom), dom.name(), live=True)
            roots = {tagged.mac: live_root for tagged in domain.tagged}
            unplugged = frozenset(attachment.mac for attachment in domain.unplugged)
            if unplugged:
                definition_root, definition = read_domain(virt.definition(dom), dom.name())
                extra = tuple(t for t in definition.tagged if t.mac in unplugged)
                domain = replace(domain, tagged=domain.tagged + extra, unplugged=())
                roots.update({tagged.mac: definition_root for tagged in extra})
        except KvmhooksError as error:
            log.warning("domain %s: %s", dom.name(), error)
            continue
        if domain.tagged:
            found.append(RunningGuest(dom, domain, roots, unplugged))
    return found


def _losses(session: HostSession, ifname: str, action: str, lost: set[str]) -> list[str]:
    """The NIC is gone: say which guests lost their link."""
    lines = []
    for guest in _running_tagged(session.virt):
        domain = guest.domain
        for tagged in domain.tagged:
            if tagged.attachment.uplink in lost:
                line = (f"domain {domain.name} interface {tagged.mac}: lost its link "
                        f"(uplink '{tagged.attachment.uplink}', NIC {ifname} {action})")
                log.warning("%s", line)
                lines.append(line)
    return lines


def _reconnect(session: HostSession, ifname: str, nic_index: int, config: Config,
               affected: list[Resolution]) -> list[str]:
    """Libvirt first (which guests run), then the host lock for the devices only, then
    libvirt again for the re-plugs: never libvirt under the host lock."""
    context = session.context

    def failed(subject: str, error: KvmhooksError) -> str:
        """A NIC that went away, or came back as a new device, while this handler worked
        is a loss the handler of its own event repairs (it waits for the handlers' lock
        or is collapsed into one that does); anything else is an error."""
        current = session.scan(config).by_name(ifname)
        if current is None or current.index != nic_index:
            line = f"{subject}: NIC {ifname} changed while being handled ({error})"
            log.warning("%s", line)
        else:
            line = f"{subject}: {error}"
            log.error("%s", line)
        return line

    guests = _running_tagged(session.virt)
    lines, jobs = [], []
    with session.locked():
        try:
            done = session.apply(plan_uplinks(affected, config, session.scan(config)).actions)
        except KvmhooksError as error:
            return [failed(context, error)]
        lines += [f"{context}: {step.describe()}" for step in done]
        inventory = session.scan(config)
        for guest in guests:
            subject = f"domain {guest.domain.name} {context}"
            try:
                plan, replugs = plan_reconnect(guest.domain, affected, config, inventory,
                                               guest.unplugged)
                done = session.apply(plan.actions, subject)
            except KvmhooksError as error:
                lines.append(failed(subject, error))
                continue
            lines += [f"{subject}: {step.describe()}" for step in done]
            jobs += [(guest, replug, subject) for replug in replugs]
    # Re-plugs wait for each guest to eject its NIC: all guests at once, not in turn.
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_REPLUGS, len(jobs) or 1)) as pool:
        for result in pool.map(lambda job: _replug(session.virt, *job), jobs):
            lines.append(result if isinstance(result, str) else failed(*result))
    return lines


def _replug(virt, guest: RunningGuest, replug: Replug, subject: str):
    """Detach and attach one interface; its line, or (subject, error) when it failed."""
    old = find_interface(guest.roots[replug.mac], replug.mac)
    new = replugged_interface(old, replug.source)
    try:
        virt.replug(guest.dom, replug.mac, serialize(old) if replug.detach else None,
                    serialize(new))
    except KvmhooksError as error:
        return subject, error
    line = f"{subject}: re-plugged interface {replug.mac}"
    log.info("%s", line)
    return line


def watch() -> None:
    """The same handler driven by a udev monitor, for hosts without the rule."""
    from ..udev import net_events
    log.info("watching NIC events")
    for action, ifname, _devtype in net_events():
        if action in ("add", "move", "remove") and is_candidate(ifname):
            try:
                for line in handle(action, ifname):
                    log.info("%s", line)
            except KvmhooksError as error:
                log.error("NIC %s %s: %s", ifname, action, error)
