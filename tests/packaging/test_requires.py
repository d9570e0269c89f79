"""Every Requires of the built RPM, EL9 and EL10 builds, is met by what those ELs' own
repositories and EPEL hold: DESIGN.md section 5's table, kept here as data, compared
with rpm's own version comparison."""

from __future__ import annotations

import pytest

from tests.packaging.rpms import dependencies, vercmp

pytestmark = pytest.mark.system  # the session's RPM builds need root (Debian's rpm)

# What each EL provides, by name: version, or None for a file path that carries none.
# DESIGN.md section 5, plus what the rest of kvmhooks' Requires need: the interpreter
# (python3, BaseOS) that /usr/bin/kvmhooks names, /bin/sh (bash, BaseOS), systemd and
# the rpmlib features of EL9's rpm 4.16 and EL10's rpm 4.19 that a noarch package uses.
RPMLIB = {
    "rpmlib(CompressedFileNames)": "3.0.4-1",
    "rpmlib(FileDigests)": "4.6.0-1",
    "rpmlib(PayloadFilesHavePrefix)": "4.0-1",
    "rpmlib(PayloadIsZstd)": "5.4.18-1",
    "rpmlib(PayloadIsXz)": "5.2-1",
}
EL_REPOSITORIES = {
    9: {
        "python(abi)": "3.9",
        "/usr/bin/python3": None,
        "/bin/sh": None,
        "python3-libvirt": "10.10.0",               # AppStream
        "python3-lxml": "4.6.5",                    # AppStream
        "python3-pyudev": "0.22.0",                 # BaseOS
        "python3-pyroute2": "0.5.14",               # EPEL
        "python3-tomli": "2.0.1",                   # AppStream
        "libvirt-daemon-driver-qemu": "10.10.0",    # AppStream
        "systemd": "252",                           # BaseOS
        **RPMLIB,
    },
    10: {
        "python(abi)": "3.12",
        "/usr/bin/python3": None,
        "/bin/sh": None,
        "python3-libvirt": "10.10.0",
        "python3-lxml": "5.2.1",
        "python3-pyudev": "0.24.1",
        "python3-pyroute2": "0.7.12",
        "libvirt-daemon-driver-qemu": "10.10.0",
        "systemd": "257",
        **RPMLIB,
    },
}

# The floors kvmhooks supports (issue 12): Python 3.9, libvirt-python 7.0, lxml 4.6,
# pyroute2 0.5.14, pyudev 0.22; tomli 2.0.1 (what Python 3.11 took in as tomllib) where
# Python has no tomllib; the .d hook directories of libvirt 6.5.
FLOORS = {
    9: {"python3-libvirt >= 7.0", "python3-lxml >= 4.6", "python3-pyroute2 >= 0.5.14",
        "python3-pyudev >= 0.22", "python3-tomli >= 2.0.1",
        "libvirt-daemon-driver-qemu >= 6.5.0", "python(abi) = 3.9"},
    10: {"python3-libvirt >= 7.0", "python3-lxml >= 4.6", "python3-pyroute2 >= 0.5.14",
         "python3-pyudev >= 0.22", "libvirt-daemon-driver-qemu >= 6.5.0",
         "python(abi) = 3.12"},
}

_SENSE = {"<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0,
          ">=": lambda c: c >= 0, ">": lambda c: c > 0}


def satisfied(requirement: tuple[str, str, str], provides: dict[str, str | None]) -> bool:
    name, sense, version = requirement
    if name not in provides:
        return False
    if not sense:
        return True
    have = provides[name]
    return have is not None and _SENSE[sense](vercmp(have, version))


@pytest.mark.parametrize("el", [9, 10])
def test_requires_carry_the_floors(el_rpms, el):
    requires = {" ".join(filter(None, r)) for r in dependencies(el_rpms[el])}
    assert FLOORS[el] <= requires
    assert not [r for r in requires if r.startswith("python3-") and " >= " not in r]
    assert ("python3-tomli" in " ".join(requires)) == (el == 9)


@pytest.mark.parametrize("el", [9, 10])
def test_every_requires_is_met_by_the_el_repositories(el_rpms, el):
    own = {name: version for name, _, version in dependencies(el_rpms[el], "PROVIDE")}
    provides = {**EL_REPOSITORIES[el], **own}
    unmet = [r for r in dependencies(el_rpms[el]) if not satisfied(r, provides)]
    assert unmet == []


def test_the_check_refuses_what_the_repositories_cannot_meet():
    el9, el10 = EL_REPOSITORIES[9], EL_REPOSITORIES[10]
    assert satisfied(("python3-pyroute2", ">=", "0.5.14"), el9)
    assert satisfied(("python3-pyudev", ">=", "0.22"), el9)  # 0.22.0
    assert not satisfied(("python3-pyroute2", ">=", "0.6"), el9)
    assert not satisfied(("python3-lxml", ">=", "4.7"), el9)
    assert not satisfied(("python(abi)", "=", "3.9"), el10)
    assert not satisfied(("python3-tomli", "", ""), el10)
    assert not satisfied(("/bin/sh", ">=", "1"), el9)  # a path carries no version
    assert not satisfied(("python3-netaddr", "", ""), el9)
