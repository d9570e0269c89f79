"""Bursts of NIC events collapse: state.waiting_slot and state.nic_event_lock keep one
handler per NIC in line behind the one at work, and send the others away."""

from __future__ import annotations

import os
import threading

import pytest

from kvmhooks import state


def test_one_place_in_line_per_name_and_purpose(state_dir):
    with state.waiting_slot("eth-1", "repair") as release:
        assert release is not None
        with state.waiting_slot("eth-1", "repair") as second:
            assert second is None
        with state.waiting_slot("eth-2", "repair") as other_nic:
            assert other_nic is not None
        with state.waiting_slot("eth-1", "lock") as other_purpose:
            assert other_purpose is not None
        release()
        with state.waiting_slot("eth-1", "repair") as after:
            assert after is not None


def test_a_slot_is_given_up_when_its_holder_leaves_without_releasing(state_dir):
    with state.waiting_slot("eth1", "repair") as release:
        assert release is not None
    with state.waiting_slot("eth1", "repair") as again:
        assert again is not None


def test_a_name_that_is_no_file_name_is_refused(state_dir):
    with pytest.raises(Exception, match="interface name"):
        with state.waiting_slot("../x", "repair"):
            pass


def test_while_one_handler_works_one_waits_and_the_rest_leave(state_dir):
    waiting_has_slot, finished = threading.Event(), []

    def second_handler():
        with state.nic_event_lock("eth1") as mine:
            finished.append(mine)

    with state.nic_event_lock("eth1") as first:
        assert first
        waiter = threading.Thread(target=second_handler)
        waiter.start()

        slot = state_dir / "pending" / "eth1.lock"
        for _ in range(500):
            if slot.exists() and _flocked(slot.stat()):
                waiting_has_slot.set()
                break
            threading.Event().wait(0.01)
        assert waiting_has_slot.is_set()
        assert finished == []
        with state.nic_event_lock("eth1") as third:
            assert not third
        assert finished == []
    waiter.join(10)
    assert finished == [True]


def _flocked(file: os.stat_result) -> bool:
    """Whether some process holds a flock on this file (/proc/locks lines read
    "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF": major and minor in hex, inode)."""
    wanted = f"{os.major(file.st_dev):02x}:{os.minor(file.st_dev):02x}:{file.st_ino}"
    with open("/proc/locks", encoding="ascii") as locks:
        return any(fields[1] == "FLOCK" and fields[5] == wanted
                   for fields in (line.split() for line in locks) if len(fields) > 5)
