"""NIC events: when a NIC appears, is renamed or goes away, bring back everything built
on it; run by the udev rule (through kvmhooks-nic@.service, or detached where systemd
does not run) and by `kvmhooks watch`.

This runs outside any hook, so it may call libvirt: a guest whose macvtap died with its
NIC only comes back through a live detach and attach of its interface.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from . import config as config_module
from . import engine, state
from .apply import apply
from .domain import Domain, domain_from_tree
from .errors import KvmhooksError
from .names import IGNORED_DEVTYPES, IGNORED_NAME_GLOBS
from .netlink import Netlink
from .planner import plan_reconnect, plan_uplinks, resolve, resolve_affected
from .rewrite import apply_source, find_interface
from .xmlsafe import UnsafeXml, parse, serialize

log = logging.getLogger("kvmhooks")
MAX_PARALLEL_REPLUGS = 32



def is_candidate(ifname: str, devtype: str | None) -> bool:
    """Whether a udev event on this interface can concern an uplink (the rule file
    applies the same filter, from the same lists, before it starts anything)."""
    return bool(ifname) and devtype not in IGNORED_DEVTYPES and \
        not any(fnmatch.fnmatchcase(ifname, glob) for glob in IGNORED_NAME_GLOBS)


def handle(action: str, ifname: str) -> list[str]:
    """Converge on the host as it is now (the action only names the trigger): a burst
    of add and remove events ends in the state the last one left."""
    config = config_module.load_if_present()
    if config is None:
        return []
    with state.nic_event_lock(ifname) as mine:
        if not mine:
            return [f"NIC {ifname} {action}: another handler for {ifname} is waiting; "
                    "it will see this event"]
        with Netlink() as netlink:
            inventory = engine.scan(netlink, config)
            nic = inventory.by_name(ifname)
            if nic is None:
                lost = _lost_uplinks(ifname, config, inventory)
                return _losses(ifname, action, lost) if lost else []
            affected = resolve_affected(config, inventory, ifname)
            if not affected:
                return []
            return _reconnect(f"NIC {ifname} {action}", ifname, nic.index, config, netlink,
                              affected)


def _lost_uplinks(ifname, config, inventory) -> set[str]:
    """Uplinks whose NIC was ifname: named so, or named by MAC or path and now absent."""
    lost = set()
    for uplink in config.uplinks.values():
        if uplink.nic is not None and uplink.nic != ifname:
            continue
        try:
            resolve(uplink, inventory)
        except KvmhooksError:
            lost.add(uplink.name)
    return lost


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
            live_root = parse(virt.live(dom))
            domain = domain_from_tree(live_root, dom.name(), live=True)
            roots = {tagged.mac: live_root for tagged in domain.tagged}
            unplugged = frozenset(attachment.mac for attachment in domain.unplugged)
            if unplugged:
                definition_root = parse(virt.definition(dom))
                definition = domain_from_tree(definition_root, dom.name())
                extra = tuple(t for t in definition.tagged if t.mac in unplugged)
                domain = replace(domain, tagged=domain.tagged + extra, unplugged=())
                roots.update({tagged.mac: definition_root for tagged in extra})
        except (KvmhooksError, UnsafeXml) as error:
            log.warning("domain %s: %s", dom.name(), error)
            continue
        if domain.tagged:
            found.append(RunningGuest(dom, domain, roots, unplugged))
    return found



def _losses(ifname, action, lost) -> list[str]:
    """The NIC is gone: say which guests lost their link."""
    from .virt import Libvirt
    lines = []
    with Libvirt() as virt:
        for guest in _running_tagged(virt):
            domain = guest.domain
            for tagged in domain.tagged:
                if tagged.attachment.uplink in lost:
                    line = (f"domain {domain.name} interface {tagged.mac}: lost its link "
                            f"(uplink '{tagged.attachment.uplink}', NIC {ifname} {action})")
                    log.warning("%s", line)
                    lines.append(line)
    return lines


def _reconnect(context, ifname, nic_index, config, netlink, affected) -> list[str]:
    """Libvirt first (which guests run), then the host lock for the devices only, then
    libvirt again for the re-plugs: never libvirt under the host lock."""
    from .virt import Libvirt

    def failed(subject: str, error: KvmhooksError) -> str:
        """A NIC that went away, or came back as a new device, while this handler worked
        is a loss the handler of its own event repairs (it waits for the handlers' lock
        or is collapsed into one that does); anything else is an error."""
        current = netlink.inventory().by_name(ifname)
        if current is None or current.index != nic_index:
            line = f"{subject}: NIC {ifname} changed while being handled ({error})"
            log.warning("%s", line)
        else:
            line = f"{subject}: {error}"
            log.error("%s", line)
        return line

    with Libvirt() as virt:
        guests = _running_tagged(virt)
        lines, jobs = [], []
        with state.host_lock():
            try:
                inventory = engine.scan(netlink, config)
                done = apply(plan_uplinks(affected, config, inventory).actions, netlink,
                             context, state.CreationJournal())
            except KvmhooksError as error:
                return [failed(context, error)]
            lines += [f"{context}: {step.describe()}" for step in done]
            inventory = engine.scan(netlink, config)
            for guest in guests:
                subject = f"domain {guest.domain.name} {context}"
                try:
                    plan, replugs = plan_reconnect(guest.domain, affected, config, inventory,
                                                   guest.unplugged)
                    done = apply(plan.actions, netlink, subject, state.CreationJournal())
                except KvmhooksError as error:
                    lines.append(failed(subject, error))
                    continue
                lines += [f"{subject}: {step.describe()}" for step in done]
                jobs += [(guest, replug, subject) for replug in replugs]
        # Re-plugs wait for each guest to eject its NIC: all guests at once, not in turn.
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_REPLUGS, len(jobs) or 1)) as pool:
            for result in pool.map(lambda job: _replug(virt, *job), jobs):
                lines.append(result if isinstance(result, str) else failed(*result))
    return lines


def _replug(virt, guest, replug, subject):
    """Detach and attach one interface; its line, or (subject, error) when it failed."""
    old = find_interface(guest.roots[replug.mac], replug.mac)
    new = copy.deepcopy(old)
    if replug.source is not None:
        apply_source(new, replug.source)
        for target in new.findall("target"):
            new.remove(target)
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
    from .udev import net_events
    log.info("watching NIC events")
    for action, ifname, devtype in net_events():
        if action in ("add", "move", "remove") and is_candidate(ifname, devtype):
            try:
                for line in handle(action, ifname):
                    log.info("%s", line)
            except KvmhooksError as error:
                log.error("NIC %s %s: %s", ifname, action, error)
