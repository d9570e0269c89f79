"""rpmlint (from PyPI, the test extra) with packaging/rpmlint.toml, as `scripts/build-rpm
--lint` runs it: no error on the spec, the SRPM and the RPM of EL9 and EL10, and every
warning it still gives explained where the spec, the rpmlint config or the README's RPM
section name it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.rpms import BUILD_RPM, REPO, SPEC

pytestmark = pytest.mark.system  # the RPM builds need root (Debian's rpm)

RPMLINT = Path(sys.executable).parent / "rpmlint"
CONFIG = REPO / "packaging" / "rpmlint.toml"
FINDING = re.compile(r"^\S+?(?::\d+)?: ([EW]): (\S+)", re.MULTILINE)


def _readme_rpm_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## RPM\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="session", params=[(9, "checkout"), (10, "checkout"),
                                        (9, "git-archive")],
                ids=["el9", "el10", "el9-git-archive"])
def lint(request, tmp_path_factory) -> subprocess.CompletedProcess:
    """From this checkout, or from `git archive HEAD` extracted by root, which keeps git's
    0664 file modes."""
    el, tree = request.param
    top = REPO
    if tree == "git-archive":
        top = tmp_path_factory.mktemp("archive")
        archive = subprocess.run(["git", "-C", REPO, "archive", "HEAD"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", top], input=archive, check=True)
    return subprocess.run(
        [top / BUILD_RPM.relative_to(REPO), "--lint", "--el", str(el),
         "--outdir", tmp_path_factory.mktemp("lint")],
        capture_output=True, text=True, timeout=300, cwd=top,
        env={**os.environ, "RPMLINT": str(RPMLINT)})


def test_rpmlint_finds_no_error_in_spec_srpm_and_rpm(lint):
    report = lint.stdout + lint.stderr
    assert lint.returncode == 0, report
    assert re.search(r"\b2 packages and 1 specfiles checked; 0 errors\b", report), report
    assert [kind for kind, _ in FINDING.findall(report) if kind == "E"] == [], report


def test_every_remaining_warning_is_explained(lint):
    # The spec writes % as %% in comments.
    explained = (SPEC.read_text() + CONFIG.read_text()).replace("%%", "%") + \
        _readme_rpm_section()
    warnings = {name for kind, name in FINDING.findall(lint.stdout) if kind == "W"}
    assert warnings, lint.stdout  # the report was read
    assert [name for name in warnings if f"rpmlint: {name}" not in explained
            and f"`{name}`" not in explained] == [], lint.stdout
