"""The counts `kvmhooks status --prometheus` reports, kept in the state directory:
state.count and state.counters."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from kvmhooks import state
from kvmhooks.errors import HostError
from kvmhooks.state import Counters


def test_counters_are_0_before_anything_is_counted(state_dir):
    assert state.counters() == Counters(0, 0)
    os.rmdir(state_dir)
    assert state.counters() == Counters(0, 0)


def test_counts_add_up_and_are_kept_in_the_state_directory(state_dir):
    for _ in range(3):
        state.count("nic_events")
    state.count("replugs")
    assert state.counters() == Counters(nic_events=3, replugs=1)
    assert sorted(os.listdir(state_dir)) == ["counters.json", "counters.lock"]


def test_handlers_that_count_at_once_lose_no_count(state_dir):
    def count_many():
        for _ in range(25):
            state.count("replugs")

    threads = [threading.Thread(target=count_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state.counters() == Counters(replugs=200)


def test_a_counter_file_that_is_not_kvmhooks_is_an_error_to_read(state_dir):
    (state_dir / "counters.json").write_text('{"nic_events": "many"}')
    with pytest.raises(HostError, match="counters.json: not a JSON object of counts"):
        state.counters()
    (state_dir / "counters.json").write_text("{")
    with pytest.raises(HostError, match="counters.json: not JSON"):
        state.counters()


@pytest.fixture
def logged(caplog):
    """What kvmhooks logs, whether its logger propagates or not (the command line's
    setup, which other tests run, turns that off)."""
    logger = logging.getLogger("kvmhooks")
    logger.addHandler(caplog.handler)  # a record may arrive twice: here and through root
    yield caplog
    logger.removeHandler(caplog.handler)


def test_counting_over_a_broken_file_starts_again_from_0(state_dir, logged):
    (state_dir / "counters.json").write_text("\0garbage")
    state.count("nic_events")
    assert state.counters() == Counters(nic_events=1)
    assert "counting from 0 again" in logged.text


def test_a_count_that_cannot_be_written_is_a_warning_only(state_dir, logged):
    os.chmod(state_dir, 0o777)  # kvmhooks refuses a state directory others may write
    try:
        state.count("nic_events")
    finally:
        os.chmod(state_dir, 0o700)
    assert {record.levelname for record in logged.records} == {"WARNING"}
    assert "counter nic_events not updated" in logged.text and "writable by others" \
        in logged.text
    assert state.counters() == Counters()


def test_there_is_no_counter_of_another_name(state_dir):
    with pytest.raises(ValueError):
        state.count("reboots")
