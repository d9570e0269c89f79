"""Run a plan's actions through the netlink backend, undoing what succeeded on failure.

As in pyroute2's commit/rollback: an undo is recorded only after its step succeeded,
undone in reverse order, and undo failures are reported beside the failure itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .actions import (
    Action,
    AddAddress,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    DelAddress,
    DeleteLink,
    MoveRoute,
    SetDown,
    SetMaster,
    SetRouteMetric,
    SetUp,
)
from .errors import ApplyError

log = logging.getLogger("kvmhooks")


# EL9's Python is 3.9: a table rather than a match statement.
_RUNNERS = {
    CreateBridge: lambda a, b: b.create_bridge(a.name, a.mac, a.mark),
    CreateTap: lambda a, b: b.create_tap(a.name, a.mac, a.bridge, a.mark),
    CreateMacvtap: lambda a, b: b.create_macvtap(a.name, a.parent, a.mode, a.mac, a.mark),
    CreateShim: lambda a, b: b.create_shim(a.name, a.parent, a.address, a.mark),
    SetUp: lambda a, b: b.set_state(a.name, True),
    SetDown: lambda a, b: b.set_state(a.name, False),
    SetMaster: lambda a, b: b.set_master(a.name, a.master),
    AddAddress: lambda a, b: b.add_address(a.name, a.address),
    DelAddress: lambda a, b: b.del_address(a.name, a.address),
    MoveRoute: lambda a, b: b.move_route(a.route, a.target),
    SetRouteMetric: lambda a, b: b.set_route_metric(a.route, a.dev, a.metric),
    DeleteLink: lambda a, b: b.delete_link(a.name),
}


CREATES = (CreateBridge, CreateTap, CreateMacvtap, CreateShim)


def run_action(action: Action, backend, journal=None) -> None:
    """journal (state.CreationJournal) records a device while it is created unmarked."""
    if journal is not None and isinstance(action, CREATES):
        journal.begin(action.name, action.mark)
    try:
        _RUNNERS[type(action)](action, backend)
    finally:
        if journal is not None and isinstance(action, (*CREATES, DeleteLink)):
            journal.end(action.name)


def apply(actions: Iterable[Action], backend, context: str, journal=None) -> list[Action]:
    """Run every action; on the first failure undo the ones done and raise ApplyError.

    context names the domain and the call, for the log. Returns the actions done.
    """
    done: list[Action] = []
    for action in actions:
        try:
            run_action(action, backend, journal)
        except Exception as error:  # whatever failed, what was done must be undone
            # The caller logs the ApplyError at the severity its situation calls for.
            undo_failures = undo(done, backend, context, journal)
            raise ApplyError(action.describe(), str(error), tuple(undo_failures)) from None
        log.info("%s: %s", context, action.describe())
        done.append(action)
    return done


def undo(done: list[Action], backend, context: str, journal=None) -> list[str]:
    failures = []
    for action in reversed(done):
        reverse = action.undo()
        if reverse is None:
            failures.append(f"{action.describe()} (cannot be undone)")
            continue
        try:
            run_action(reverse, backend, journal)
            log.info("%s: undo: %s", context, reverse.describe())
        except Exception as error:  # report every undo failure, go on with the rest
            failures.append(f"{reverse.describe()}: {error}")
    return failures


def apply_best_effort(actions: Iterable[Action], backend, context: str,
                      journal=None) -> list[str]:
    """Run every action, going on past failures (release must never fail)."""
    failures = []
    for action in actions:
        try:
            run_action(action, backend, journal)
            log.info("%s: %s", context, action.describe())
        except Exception as error:  # release must never fail: log and go on
            log.warning("%s: %s failed: %s", context, action.describe(), error)
            failures.append(f"{action.describe()}: {error}")
    return failures
