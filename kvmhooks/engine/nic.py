"""NIC events: when a NIC appears, is renamed or goes away, bring back everything built
on it. Run by the udev rule (through kvmhooks-nic@.service, the agent, or a detached
process) and by `kvmhooks watch`.

This runs outside any hook, so it may call libvirt: a guest whose macvtap died with its
NIC only comes back through a live detach and attach of its interface. It never calls
libvirt while it holds the host lock, and bounds every wait of its own: each libvirt call
and the detach (virt.py), libvirt's return (LIBVIRT_WAIT); so the locks it waits for are
held for a bounded time too.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .. import config as config_module
from .. import state
from ..config import Config
from ..domain import Domain, read_domain
from ..errors import KvmhooksError, LibvirtUnavailable
from ..names import is_candidate
from ..planner import Replug, plan_reconnect, plan_uplinks
from ..resolve import lost_uplinks, resolve_affected
from ..rewrite import find_interface, replugged_interface
from ..xmlsafe import serialize
from .session import HostSession

log = logging.getLogger("kvmhooks")
MAX_PARALLEL_REPLUGS = 32
# A restart of virtqemud (or libvirtd) takes seconds: a handler that finds libvirt
# unreachable asks again every LIBVIRT_RETRY seconds, for LIBVIRT_WAIT at most.
LIBVIRT_WAIT = 60.0
LIBVIRT_RETRY = 1.0


def handle(action: str, ifname: str) -> list[str]:
    """Converge on the host as it is now (the action only names the trigger): a burst
    of add and remove events ends in the state the last one left.

    An event on a NIC no uplink uses ends here, before any lock, and is not counted
    (kvmhooks_nic_events_total counts the others). For an uplink's NIC the
    shared devices (bridge, enslaved NIC, shim) are repaired at once, under the host lock
    alone, whatever libvirt and other NIC handlers do; then, one NIC handler at a time,
    the guests: taps re-enslaved, dead macvtaps rebuilt and re-plugged through libvirt.
    Each part has one place in line per NIC: an event that finds it taken ends there,
    so a flapping NIC's burst of events costs two handlers' work."""
    config = config_module.load_if_present()
    if config is None:
        return []
    context = f"NIC {ifname} {action}"
    with HostSession(context) as session:
        inventory = session.scan(config)
        if inventory.by_name(ifname) is None:
            lost = lost_uplinks(config, inventory, ifname)
            if not lost:
                return []
            state.count("nic_events")
            return _in_turn(context, ifname,
                            lambda: _losses(session, ifname, action, lost))
        if not resolve_affected(config, inventory, ifname):
            return []
        state.count("nic_events")
        lines = _repair_uplinks(session, ifname)
        if lines is None:
            return [_waits_already(context, ifname)]
        return lines + _in_turn(context, ifname,
                                lambda: _reconnect_guests(session, ifname))


def _in_turn(context: str, ifname: str, work) -> list[str]:
    """work() while no other NIC handler does its own; nothing when a handler for the
    same NIC waits for its turn already (it will see what this event left)."""
    with state.nic_event_lock(ifname) as mine:
        if not mine:
            return [_waits_already(context, ifname)]
        return work()


def _waits_already(context: str, ifname: str) -> str:
    return f"{context}: another handler for {ifname} is waiting; it will see this event"


def _failed(session: HostSession, config: Config, ifname: str, nic_index: int,
            subject: str, error: KvmhooksError) -> str:
    """A NIC that went away, or came back as a new device, while this handler worked
    is a loss the handler of its own event repairs (it waits for the handlers' lock or
    is collapsed into one that does); anything else is an error."""
    current = session.scan(config).by_name(ifname)
    if current is None or current.index != nic_index:
        line = f"{subject}: NIC {ifname} changed while being handled ({error})"
        log.warning("%s", line)
    else:
        line = f"{subject}: {error}"
        log.error("%s", line)
    return line


def _config_now() -> Config | None:
    """The config as the host lock finds it. A handler may wait for the lock while the
    config changes: an uplink taken out of it, and its bridge deleted, is not built again
    from what the file said when the event came."""
    return config_module.load_if_present()


def _repair_uplinks(session: HostSession, ifname: str) -> list[str] | None:
    """The shared devices of the uplinks whose NIC is ifname: no libvirt needed. None when
    another handler for ifname waits to repair them: it sees this event, and this one
    has nothing left to do."""
    context = session.context
    with state.waiting_slot(ifname, "repair") as release:
        if release is None:
            return None
        with session.locked():
            release()
            config = _config_now()
            if config is None:
                return []
            inventory = session.scan(config)
            nic = inventory.by_name(ifname)
            if nic is None:  # gone again: its own event's handler says what was lost
                return []
            affected = resolve_affected(config, inventory, ifname)
            try:
                done = session.apply(plan_uplinks(affected, config, inventory).actions)
            except KvmhooksError as error:
                return [_failed(session, config, ifname, nic.index, context, error)]
    return [f"{context}: {step.describe()}" for step in done]


@dataclass(frozen=True)
class RunningGuest:
    dom: object  # libvirt.virDomain
    domain: Domain  # with unplugged interfaces as the persistent definition has them
    roots: dict  # MAC -> the XML tree that holds its <interface> (live or definition)
    unplugged: frozenset


def _running_tagged(virt) -> list[RunningGuest]:
    """The running guests with kvmhooks metadata; LibvirtUnavailable when libvirt
    cannot say."""
    found = []
    for dom in virt.domains():
        if not virt.running(dom):
            continue
        try:
            live_root, domain = read_domain(virt.live(dom), dom.name(), live=True)
            roots = {tagged.mac: live_root for tagged in domain.tagged}
            unplugged = frozenset(attachment.mac for attachment in domain.unplugged)
            if unplugged:
                definition_root, definition = read_domain(virt.bounded(
                    f"domain {dom.name()}: read its definition", virt.definition, dom),
                    dom.name())
                extra = tuple(t for t in definition.tagged if t.mac in unplugged)
                domain = replace(domain, tagged=domain.tagged + extra, unplugged=())
                roots.update({tagged.mac: definition_root for tagged in extra})
        except LibvirtUnavailable:
            raise
        except KvmhooksError as error:
            log.warning("domain %s: %s", dom.name(), error)
            continue
        if domain.tagged:
            found.append(RunningGuest(dom, domain, roots, unplugged))
    return found


def _running_tagged_when_libvirt_answers(session: HostSession,
                                         ifname: str) -> list[RunningGuest]:
    """The running tagged guests; while libvirt cannot be reached (a daemon restarting),
    asked again for LIBVIRT_WAIT at most, and LibvirtUnavailable after that."""
    context = session.context
    try:
        return _running_tagged(session.virt)
    except LibvirtUnavailable as error:
        log.warning("%s: %s; the guests' taps and re-plugs wait for libvirt (up to %.0f s)",
                    context, error, LIBVIRT_WAIT)
    deadline = time.monotonic() + LIBVIRT_WAIT
    while True:
        time.sleep(LIBVIRT_RETRY)
        try:
            guests = _running_tagged(session.virt)
        except LibvirtUnavailable as error:
            if time.monotonic() < deadline:
                continue
            raise LibvirtUnavailable(
                f"libvirt did not answer within {LIBVIRT_WAIT:.0f} s ({error}); the "
                f"guests' taps and re-plugs wait for the next event of NIC {ifname}"
            ) from None
        log.info("%s: libvirt answers again: taps and re-plugs follow", context)
        return guests


def _losses(session: HostSession, ifname: str, action: str, lost: set[str]) -> list[str]:
    """The NIC is gone: say which guests lost their link."""
    try:
        guests = _running_tagged(session.virt)
    except LibvirtUnavailable as error:
        line = f"{session.context}: cannot tell which guests lost their link: {error}"
        log.warning("%s", line)
        return [line]
    lines = []
    for guest in guests:
        domain = guest.domain
        for tagged in domain.tagged:
            if tagged.attachment.uplink in lost:
                line = (f"domain {domain.name} interface {tagged.mac}: lost its link "
                        f"(uplink '{tagged.attachment.uplink}', NIC {ifname} {action})")
                log.warning("%s", line)
                lines.append(line)
    return lines


def _reconnect_guests(session: HostSession, ifname: str) -> list[str]:
    """Libvirt first (which guests run), then the host lock for the devices only, then
    libvirt again for the re-plugs: never libvirt under the host lock."""
    context = session.context
    try:
        guests = _running_tagged_when_libvirt_answers(session, ifname)
    except LibvirtUnavailable as error:
        line = f"{context}: {error}"
        log.error("%s", line)
        return [line]
    lines, jobs = [], []
    with session.locked():
        config = _config_now()
        if config is None:
            return []
        inventory = session.scan(config)
        nic = inventory.by_name(ifname)
        affected = resolve_affected(config, inventory, ifname)
        if nic is None or not affected:  # gone again: its own event's handler takes over
            return []
        for guest in guests:
            subject = f"domain {guest.domain.name} {context}"
            try:
                if not state.has_record(guest.domain.uuid):
                    # Stopped since libvirt said it ran (its release removed its devices),
                    # or still in its prepare, which builds them: devices rebuilt now
                    # would outlive it.
                    continue
                plan, replugs = plan_reconnect(guest.domain, affected, config, inventory,
                                               guest.unplugged)
                done = session.apply(plan.actions, subject)
            except KvmhooksError as error:
                lines.append(_failed(session, config, ifname, nic.index, subject, error))
                continue
            lines += [f"{subject}: {step.describe()}" for step in done]
            jobs += [(guest, replug, subject) for replug in replugs]
    # Re-plugs wait for each guest to eject its NIC: all guests at once, not in turn.
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_REPLUGS, len(jobs) or 1)) as pool:
        for result in pool.map(lambda job: _replug(session.virt, *job), jobs):
            lines.append(result if isinstance(result, str)
                         else _failed(session, config, ifname, nic.index, *result))
    return lines


def _replug(virt, guest: RunningGuest, replug: Replug, subject: str):
    """Detach and attach one interface; its line, or (subject, error) when it failed."""
    try:
        old = find_interface(guest.roots[replug.mac], replug.mac)
        new = replugged_interface(old, replug.source)
        virt.replug(guest.dom, replug.mac, serialize(old) if replug.detach else None,
                    serialize(new))
    except KvmhooksError as error:
        return subject, error
    state.count("replugs")
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
