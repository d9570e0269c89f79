"""Each action's undo, and apply.apply's rollback, through an in-memory fake backend.

The fake only records calls: it tests apply's own undo logic, not the kernel.
"""

from __future__ import annotations

import pytest

from kvmhooks.actions import (
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
    SetUp,
)
from kvmhooks.apply import apply, apply_best_effort
from kvmhooks.errors import ApplyError, HostError
from kvmhooks.inventory import Route

from .builders import MAC1

ROUTE = Route("default", 2, gateway="198.18.5.1")


@pytest.mark.parametrize("action, reverse", [
    (CreateBridge("br-lan", None, "kvmhooks:bridge:lan"), DeleteLink("br-lan", "undo")),
    (CreateTap("kh1", MAC1, "br-lan", "m"), DeleteLink("kh1", "undo")),
    (CreateMacvtap("kh1", MAC1, "eth1", "private", "m"), DeleteLink("kh1", "undo")),
    (CreateShim("kh-lan", "eth1", "198.18.5.2/24", "m"), DeleteLink("kh-lan", "undo")),
    (SetUp("eth1"), SetDown("eth1")),
    (SetDown("eth1"), SetUp("eth1")),
    (SetMaster("eth1", "br-lan", None), SetMaster("eth1", None, "br-lan")),
    (SetMaster("kh1", "br-lan", "br0"), SetMaster("kh1", "br0", "br-lan")),
    (AddAddress("br-lan", "198.18.5.10/24"), DelAddress("br-lan", "198.18.5.10/24")),
    (DelAddress("eth1", "198.18.5.10/24"), AddAddress("eth1", "198.18.5.10/24")),
    (MoveRoute(ROUTE, "eth1", "br-lan"), MoveRoute(ROUTE, "br-lan", "eth1")),
    (DeleteLink("kh1", "stopped"), None),
])
def test_undo(action, reverse):
    assert action.undo() == reverse


class FakeBackend:
    """Records (method, args) for every call; raises HostError at call number fail_at."""

    def __init__(self, fail_at: int | None = None, fail_undo: bool = False):
        self.calls: list[tuple] = []
        self.fail_at, self.fail_undo = fail_at, fail_undo

    def __getattr__(self, method: str):
        def call(*args):
            self.calls.append((method, *args))
            if len(self.calls) == self.fail_at or (
                    self.fail_undo and self.fail_at and len(self.calls) > self.fail_at):
                raise HostError(f"{method}: Operation not permitted")
        return call


PLAN = (
    CreateBridge("br-lan", "02:00:c6:12:05:01", "kvmhooks:bridge:lan"),
    AddAddress("br-lan", "198.18.5.10/24"),
    MoveRoute(ROUTE, "eth1", "br-lan"),
    SetMaster("eth1", "br-lan", None),
    DelAddress("eth1", "198.18.5.10/24"),
    CreateTap("kh1", "fe:54:00:6b:3c:01", "br-lan", "kvmhooks:guest:u"),
)
FORWARD = [
    ("create_bridge", "br-lan", "02:00:c6:12:05:01", "kvmhooks:bridge:lan"),
    ("add_address", "br-lan", "198.18.5.10/24"),
    ("move_route", ROUTE, "br-lan"),
    ("set_master", "eth1", "br-lan"),
    ("del_address", "eth1", "198.18.5.10/24"),
    ("create_tap", "kh1", "fe:54:00:6b:3c:01", "br-lan", "kvmhooks:guest:u"),
]


def test_apply_runs_every_step_in_order():
    backend = FakeBackend()
    assert apply(PLAN, backend, "domain web1 qemu prepare") == list(PLAN)
    assert backend.calls == FORWARD


def test_failure_undoes_done_steps_in_reverse():
    backend = FakeBackend(fail_at=5)  # del_address fails
    with pytest.raises(ApplyError) as caught:
        apply(PLAN, backend, "domain web1 qemu prepare")
    assert str(caught.value) == ("remove address 198.18.5.10/24 from eth1 failed: "
                                 "del_address: Operation not permitted; "
                                 "earlier steps were undone")
    assert caught.value.failed_step == "remove address 198.18.5.10/24 from eth1"
    assert backend.calls[5:] == [
        ("set_master", "eth1", None),
        ("move_route", ROUTE, "eth1"),
        ("del_address", "br-lan", "198.18.5.10/24"),
        ("delete_link", "br-lan"),
    ]


def test_failure_at_first_step_undoes_nothing():
    backend = FakeBackend(fail_at=1)
    with pytest.raises(ApplyError, match="^create bridge br-lan with MAC"):
        apply(PLAN, backend, "ctx")
    assert len(backend.calls) == 1


def test_undo_failures_are_reported():
    backend = FakeBackend(fail_at=3, fail_undo=True)
    with pytest.raises(ApplyError) as caught:
        apply(PLAN, backend, "ctx")
    assert caught.value.undo_failures == (
        "remove address 198.18.5.10/24 from br-lan: del_address: Operation not permitted",
        "delete br-lan (undo): delete_link: Operation not permitted",
    )
    assert "could not undo: remove address" in str(caught.value)


def test_steps_without_undo_are_reported():
    backend = FakeBackend(fail_at=2)
    with pytest.raises(ApplyError) as caught:
        apply((DeleteLink("kh1", "rebuilt"), CreateTap("kh1", MAC1, "br-lan", "m")),
              backend, "ctx")
    assert caught.value.undo_failures == ("delete kh1 (rebuilt) (cannot be undone)",)


def test_best_effort_goes_on_past_failures():
    backend = FakeBackend(fail_at=1)
    failures = apply_best_effort((DeleteLink("kh1", "stop"), DeleteLink("kh2", "stop")),
                                 backend, "ctx")
    assert failures == ["delete kh1 (stop): delete_link: Operation not permitted"]
    assert backend.calls == [("delete_link", "kh1"), ("delete_link", "kh2")]
