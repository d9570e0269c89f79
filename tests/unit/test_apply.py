"""Each action's undo, and apply.apply's rollback, through an in-memory fake backend.

The fake only records calls: it tests apply's own undo logic, not the kernel.
"""

from __future__ import annotations

import pytest

from kvmhooks.actions import (
    AddAddress,
    AddRoute,
    CreateBridge,
    CreateMacvtap,
    CreateShim,
    CreateTap,
    DelAddress,
    DeleteLink,
    DelRoute,
    MarkLink,
    MoveRoute,
    SetDown,
    SetMaster,
    SetMtu,
    SetUp,
    UnmarkLink,
)
from kvmhooks.apply import apply, apply_best_effort, run_step
from kvmhooks.errors import ApplyError, HostError
from kvmhooks.inventory import Address, Route
from kvmhooks.state import CreationJournal, creating_marks

from .builders import MAC1

ROUTE = Route("default", 2, gateway="198.18.5.1")
ADDRESS = Address("198.18.5.10/24", valid=3000, preferred=2000)
SHIM_ADDRESS = Address("198.18.5.2/24")


@pytest.mark.parametrize("action, reverse", [
    (CreateBridge("br-lan", None, "kvmhooks:bridge:lan"), DeleteLink("br-lan", "undo")),
    (CreateTap("kh1", MAC1, "br-lan", "m"), DeleteLink("kh1", "undo")),
    (CreateMacvtap("kh1", MAC1, "eth1", "private", "m"), DeleteLink("kh1", "undo")),
    (CreateShim("kh-lan", "eth1", (SHIM_ADDRESS,), "m", "02:00:00:00:00:01", 1500),
     DeleteLink("kh-lan", "undo")),
    (SetUp("eth1"), SetDown("eth1")),
    (SetDown("eth1"), SetUp("eth1")),
    (SetMaster("eth1", "br-lan", None), SetMaster("eth1", None, "br-lan")),
    (SetMaster("kh1", "br-lan", "br0"), SetMaster("kh1", "br0", "br-lan")),
    (AddAddress("br-lan", ADDRESS), DelAddress("br-lan", ADDRESS)),
    (DelAddress("eth1", ADDRESS), AddAddress("eth1", ADDRESS)),
    (MoveRoute(ROUTE, "eth1", "br-lan"), MoveRoute(ROUTE, "br-lan", "eth1")),
    (AddRoute(ROUTE, "eth1"), DelRoute(ROUTE, "eth1")),
    (DelRoute(ROUTE, "eth1"), AddRoute(ROUTE, "eth1")),
    (SetMtu("br-lan", 9000, 1500), SetMtu("br-lan", 1500, 9000)),
    (MarkLink("br-lan", "m"), UnmarkLink("br-lan", "m")),
    (UnmarkLink("br-lan", "m"), MarkLink("br-lan", "m")),
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
    CreateBridge("br-lan", "02:00:c6:12:05:01", "kvmhooks:bridge:lan", 9000),
    AddAddress("br-lan", ADDRESS),
    MoveRoute(ROUTE, "eth1", "br-lan"),
    SetMaster("eth1", "br-lan", None),
    DelAddress("eth1", ADDRESS),
    CreateTap("kh1", "fe:54:00:6b:3c:01", "br-lan", "kvmhooks:guest:u", 9000),
)
FORWARD = [
    ("create_bridge", "br-lan", "02:00:c6:12:05:01", "kvmhooks:bridge:lan", 9000),
    ("add_address", "br-lan", ADDRESS),
    ("move_route", ROUTE, "br-lan"),
    ("set_master", "eth1", "br-lan"),
    ("del_address", "eth1", ADDRESS),
    ("create_tap", "kh1", "fe:54:00:6b:3c:01", "br-lan", "kvmhooks:guest:u", 9000, False),
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
        ("del_address", "br-lan", ADDRESS),
        ("delete_link", "br-lan"),
    ]


def test_failure_at_first_step_undoes_nothing():
    backend = FakeBackend(fail_at=1)
    with pytest.raises(ApplyError, match="^create bridge br-lan with MAC .*, MTU 9000 failed"):
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


def test_an_address_is_described_with_its_lifetimes():
    assert AddAddress("br-lan", ADDRESS).describe() == \
        "add address 198.18.5.10/24 (valid 3000 s, preferred 2000 s) to br-lan"


def test_a_device_stays_in_the_creation_journal_until_it_carries_its_mark(tmp_path,
                                                                          monkeypatch):
    """Marking a device a kill left unmarked takes it out of the journal, once marked;
    taking the mark away puts it back first."""
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    journal = CreationJournal()
    journal.begin("br-lan", "m")
    with pytest.raises(HostError):
        run_step(MarkLink("br-lan", "m"), FakeBackend(fail_at=1), journal)
    assert creating_marks() == {"br-lan": "m"}, "still unmarked: still journalled"
    run_step(MarkLink("br-lan", "m"), FakeBackend(), journal)
    assert creating_marks() == {}
    backend = FakeBackend()
    run_step(UnmarkLink("br-lan", "m"), backend, journal)
    assert creating_marks() == {"br-lan": "m"} and backend.calls == [
        ("set_mark", "br-lan", None)]
