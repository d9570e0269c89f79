"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def state_dir(monkeypatch, tmp_path):
    """An empty state directory of kvmhooks' own mode (KVMHOOKS_STATE_DIR)."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(directory))
    return directory
