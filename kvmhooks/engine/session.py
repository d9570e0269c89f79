"""The host session: the one way a flow holds the host.

Every flow that changes host links or calls libvirt goes through a HostSession. It holds
one netlink socket and, when asked, the host lock (one for every kvmhooks process: hooks,
NIC events, the command line); it takes snapshots of the host, applies plans strictly (undo
on failure) or best-effort (for calls that must never fail), keeps the creation journal,
writes the record of what a domain's prepare built, and opens libvirt, which it refuses
under the host lock: libvirt may be waiting for a hook that waits for that lock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from .. import state
from ..actions import Action
from ..apply import apply, apply_best_effort
from ..config import Config
from ..inventory import Inventory, with_creating_marks
from ..netlink import Netlink
from ..planner import Plan

log = logging.getLogger("kvmhooks")


class HostSession:
    """context names the flow in log lines ("domain web1 qemu prepare")."""

    def __init__(self, context: str):
        self.context = context
        self.netlink = Netlink()
        self._journal: state.CreationJournal | None = None  # there while the lock is held
        self._virt = None

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc) -> None:
        self.netlink.close()
        if self._virt is not None:
            self._virt.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the host lock for this session's host changes."""
        with state.host_lock():
            self._journal = state.CreationJournal()
            try:
                yield
            finally:
                self._journal = None

    def scan(self, config: Config | None = None) -> Inventory:
        """A snapshot of the host, with the udev paths of NICs where config names a NIC by
        path. Devices still in the creation journal carry the mark they were created for;
        under the lock, where no creation is under way, entries of devices that are gone
        are dropped."""
        id_paths = None
        if config is not None and any(uplink.path for uplink in config.uplinks.values()):
            from ..udev import id_paths as udev_id_paths
            id_paths = udev_id_paths()
        inventory = with_creating_marks(self.netlink.inventory(id_paths),
                                        state.creating_marks())
        if self._journal is not None:
            state.forget_creating({link.name for link in inventory.links})
        return inventory

    def apply(self, actions: Iterable[Action], context: str | None = None) -> list[Action]:
        """Run the steps, all or nothing: a failure undoes what was done and raises
        ApplyError. Under the lock only."""
        return apply(actions, self.netlink, context or self.context, self._held_journal())

    def apply_best_effort(self, actions: Iterable[Action]) -> list[str]:
        """Run every step, going on past failures; returns them. Under the lock only."""
        return apply_best_effort(actions, self.netlink, self.context, self._held_journal())

    def _held_journal(self) -> state.CreationJournal:
        if self._journal is None:
            raise RuntimeError(f"{self.context}: host changes outside the host lock")
        return self._journal

    @staticmethod
    def write_record(plan: Plan) -> None:
        """What the domain's prepare built, for its release and for the hook client."""
        state.write_record(plan.uuid, plan.as_dict())

    @staticmethod
    def drop_record(uuid: str) -> None:
        state.drop_record(uuid)

    @property
    def virt(self):
        """The libvirt connection (virt.Libvirt), opened at first use; never under the
        host lock, and never from a hook (libvirt is waiting for it)."""
        if self._journal is not None:
            raise RuntimeError(f"{self.context}: libvirt called under the host lock")
        if self._virt is None:
            from ..virt import Libvirt
            self._virt = Libvirt()
        return self._virt
