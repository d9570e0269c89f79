"""Where the RPM can be built from: a git checkout (scripts/build-rpm, `make rpm`,
`make srpm`), an exported tree without .git (`git archive`, an unpacked release
tarball), the release tarball itself (`rpmbuild -ta`) and the SRPM (`rpmbuild --rebuild`).
Every route gives the same package."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from tests.packaging.rpms import (
    EL_MACROS,
    REPO,
    build,
    dependencies,
    pyproject_version,
    query,
    run,
)

pytestmark = pytest.mark.system  # the RPM builds need root (Debian's rpm)

NAME = f"kvmhooks-{pyproject_version()}"


def _same_package(rpm: Path, reference: Path) -> None:
    assert rpm.name == reference.name
    assert dependencies(rpm) == dependencies(reference)
    for what in ("--list", "--scripts", "--configfiles"):
        assert query(rpm, what) == query(reference, what), what


def _export(tree: Path) -> Path:
    """The work tree's files as they are (what git would archive, uncommitted changes
    included) in TREE, with no .git."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=REPO).stdout.split("\0")
    for relative in filter(None, listed):
        source = REPO / relative
        if source.is_file():
            (tree / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / relative)
    assert not (tree / ".git").exists()
    return tree


@pytest.fixture(scope="session")
def tarball(tmp_path_factory) -> Path:
    return build("--tarball", "--outdir", str(tmp_path_factory.mktemp("dist")))


def test_tarball_is_the_release_layout_with_one_spec(tarball):
    assert tarball.name == f"{NAME}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert all(name == NAME or name.startswith(f"{NAME}/") for name in names)
    # rpmbuild -ta reads every *.spec in the tarball into one spec: there must be one.
    assert [name for name in names if name.endswith(".spec")] == [
        f"{NAME}/packaging/kvmhooks.spec"]
    assert f"{NAME}/pyproject.toml" in names
    assert not [name for name in names if "/.git/" in name or "__pycache__" in name
                or "/build/" in name or "/.venv/" in name]


def test_make_rpm_and_srpm_in_a_tree_without_git(tmp_path, rpms):
    tree = _export(tmp_path / "tree")
    for target in ("rpm", "srpm"):
        run(["make", "-C", tree, target])
    built = tree / "build" / "rpm"
    _same_package(built / rpms[1].name, rpms[1])
    assert (built / f"{NAME}-1.el9.src.rpm").is_file()


def test_make_rpm_from_git_archive_of_head(tmp_path):
    # The committed tree, exactly as issue 12's acceptance builds it.
    tree = tmp_path / "tree"
    tree.mkdir()
    run(["git", "archive", "--format=tar", "-o", tmp_path / "head.tar", "HEAD"], cwd=REPO)
    run(["tar", "-x", "-C", tree, "-f", tmp_path / "head.tar"])
    run(["make", "-C", tree, "rpm"])
    assert (tree / "build" / "rpm" / f"{NAME}-1.el9.noarch.rpm").is_file()


def test_exported_tree_makes_the_tarball_of_the_checkout(tmp_path, tarball):
    tree = _export(tmp_path / "tree")
    again = build("--tarball", "--outdir", str(tmp_path / "dist"), cwd=tree)
    with tarfile.open(tarball) as one, tarfile.open(again) as other:
        assert sorted(one.getnames()) == sorted(other.getnames())


def test_rpmbuild_ta_on_the_tarball(tmp_path, tarball, rpms):
    # What an EL builder runs; Debian's rpmbuild needs EL's macros (packaging/macros.el)
    # and %rhel, and --nodeps (no EL BuildRequires here).
    top = tmp_path / "top"
    run(["rpmbuild", "-ta", "--nodeps", "--quiet", "--load", EL_MACROS, "--define", "rhel 9",
         "--define", f"_topdir {top}", tarball])
    _same_package(top / "RPMS" / "noarch" / rpms[1].name, rpms[1])
    assert (top / "SRPMS" / f"{NAME}-1.el9.src.rpm").is_file()


def test_srpm_holds_the_tarball_and_spec_and_rebuilds_the_rpm(tmp_path, rpms):
    srpm = build("--srpm", "--outdir", str(tmp_path))
    assert srpm.name == f"{NAME}-1.el9.src.rpm"
    assert sorted(query(srpm, "--list").split()) == sorted(["kvmhooks.spec", f"{NAME}.tar.gz"])
    top = tmp_path / "top"
    run(["rpmbuild", "--rebuild", "--nodeps", "--quiet", "--load", EL_MACROS,
         "--define", "rhel 9", "--define", f"_topdir {top}", srpm])
    _same_package(top / "RPMS" / "noarch" / rpms[1].name, rpms[1])


def test_srpm_for_el10(tmp_path):
    srpm = build("--srpm", "--el", "10", "--outdir", str(tmp_path))
    assert srpm.name == f"{NAME}-1.el10.src.rpm"
