"""The RPMs the packaging tests share, built once per session from this work tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.rpms import build


@pytest.fixture(scope="session")
def rpms(tmp_path_factory) -> dict[int, Path]:
    """EL9, release 1 and release 2 of the same work tree."""
    out = tmp_path_factory.mktemp("rpms")
    return {release: build("--release", str(release), "--outdir", str(out))
            for release in (1, 2)}


@pytest.fixture(scope="session")
def el_rpms(rpms, tmp_path_factory) -> dict[int, Path]:
    """Release 1 for each EL: 9 and 10."""
    out = tmp_path_factory.mktemp("rpms-el10")
    return {9: rpms[1], 10: build("--el", "10", "--outdir", str(out))}
