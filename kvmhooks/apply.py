"""Run a plan's steps through the backend, undoing what succeeded on failure.

As in pyroute2's commit/rollback: an undo is recorded only after its step succeeded,
undone in reverse order, and undo failures are reported beside the failure itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .actions import Action, Backend, Create, DeleteLink, MarkLink, UnmarkLink
from .errors import ApplyError
from .state import CreationJournal

log = logging.getLogger("kvmhooks")


def run_step(action: Action, backend: Backend, journal: CreationJournal | None) -> None:
    """One step; a device of kvmhooks' is in the journal whenever it lacks its mark:
    from before its creation until it is marked or gone."""
    if journal is not None and isinstance(action, (Create, UnmarkLink)):
        journal.begin(action.name, action.mark)
    try:
        action.run(backend)
    finally:
        if journal is not None and isinstance(action, (Create, DeleteLink)):
            journal.end(action.name)
    if journal is not None and isinstance(action, MarkLink):
        journal.end(action.name)


def apply(actions: Iterable[Action], backend: Backend, context: str,
          journal: CreationJournal | None = None) -> list[Action]:
    """Run every action; on the first failure undo the ones done and raise ApplyError.

    context names the domain and the call, for the log. Returns the actions done.
    """
    done: list[Action] = []
    for action in actions:
        try:
            run_step(action, backend, journal)
        except Exception as error:  # whatever failed, what was done must be undone
            # The caller logs the ApplyError at the severity its situation calls for.
            undo_failures = undo(done, backend, context, journal)
            raise ApplyError(action.describe(), str(error), tuple(undo_failures)) from None
        log.info("%s: %s", context, action.describe())
        done.append(action)
    return done


def undo(done: list[Action], backend: Backend, context: str,
         journal: CreationJournal | None = None) -> list[str]:
    failures = []
    for action in reversed(done):
        reverse = action.undo()
        if reverse is None:
            failures.append(f"{action.describe()} (cannot be undone)")
            continue
        try:
            run_step(reverse, backend, journal)
            log.info("%s: undo: %s", context, reverse.describe())
        except Exception as error:  # report every undo failure, go on with the rest
            failures.append(f"{reverse.describe()}: {error}")
    return failures


def apply_best_effort(actions: Iterable[Action], backend: Backend, context: str,
                      journal: CreationJournal | None = None) -> list[str]:
    """Run every action, going on past failures (release must never fail)."""
    failures = []
    for action in actions:
        try:
            run_step(action, backend, journal)
            log.info("%s: %s", context, action.describe())
        except Exception as error:  # release must never fail: log and go on
            log.warning("%s: %s failed: %s", context, action.describe(), error)
            failures.append(f"{action.describe()}: {error}")
    return failures
