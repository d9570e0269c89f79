"""Building and reading kvmhooks' RPMs for the packaging tests: scripts/build-rpm with
Debian's rpmbuild (packaging/macros.el standing in for EL's macro packages), rpm -qp."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_RPM = REPO / "scripts" / "build-rpm"
SPEC = REPO / "packaging" / "kvmhooks.spec"
EL_MACROS = REPO / "packaging" / "macros.el"
SITELIB = {9: "/usr/lib/python3.9/site-packages", 10: "/usr/lib/python3.12/site-packages"}


def run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def build(*options: str, cwd: Path = REPO) -> Path:
    """scripts/build-rpm OPTIONS; the path it printed last (what it built)."""
    result = run([BUILD_RPM, *options], cwd=cwd)
    built = Path(result.stdout.strip().splitlines()[-1])
    assert built.is_file(), result.stdout
    return built


def query(rpm: Path, *args: str) -> str:
    return run(["rpm", "-qp", *args, rpm]).stdout


def pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.MULTILINE).group(1)


def dependencies(rpm: Path, tag: str = "REQUIRE") -> list[tuple[str, str, str]]:
    """(name, operator, version) of each of the package's TAGs (REQUIRE, PROVIDE)."""
    text = query(rpm, "--qf", f"[%{{{tag}NAME}}\\t%{{{tag}FLAGS:depflags}}\\t"
                              f"%{{{tag}VERSION}}\\n]")
    return [tuple(field.strip() for field in line.split("\t"))
            for line in text.splitlines() if line]


def vercmp(a: str, b: str) -> int:
    """rpm's own version comparison: -1, 0 or 1."""
    result = run(["rpm", "--eval", f'%{{lua: print(rpm.vercmp("{a}", "{b}"))}}'])
    return int(result.stdout.strip())
