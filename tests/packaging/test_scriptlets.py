"""The RPM's scriptlets, run by rpm itself: real install, upgrade, reinstall and erase
transactions in a scratch root that has a shell (dash, mkdir and rm with their libraries,
/dev/null) and stand-ins that log their calls: systemctl, udevadm and systemd's update helper (the
one EL's systemd macros call). And the same scriptlets run apart in that root, without
those commands or with failing ones.

What they must do (issue 12): the systemd macros' expansion as on EL (presets on a first
install, disable on the erase, the agent restarted after an upgrade); udev rules reloaded
and systemd reloaded on every transaction; libvirtd, virtqemud and virtnetworkd restarted
(if they run: try-restart) on the first install and after the erase only, never on an
upgrade.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.packaging.rpms import query, run

pytestmark = pytest.mark.system  # rpm --root and chroot need root

HELPER = "/usr/lib/systemd/systemd-update-helper"
LOG = "/stand-in/calls.log"
FAIL = "/stand-in/fail"  # when it exists, every stand-in fails
RESTARTS = [f"systemctl try-restart {unit}"
            for unit in ("libvirtd.service", "virtqemud.service", "virtnetworkd.service")]
RELOADS = ["udevadm control --reload", "systemctl daemon-reload"]

STAND_IN = """#!/bin/sh
echo "{name} $*" >> {log}
[ -e {fail} ] && exit 1
exit 0
"""

# What EL's systemd-rpm-macros (systemd 252 on EL9, 257 on EL10) expand these to, from
# systemd's src/rpm/macros.systemd.in; compared line by line, blank lines and trailing
# blanks aside.
EL_EXPANSIONS = {
    "post": """\
if [ $1 -eq 1 ] && [ -x "/usr/lib/systemd/systemd-update-helper" ]; then
    # Initial installation
    /usr/lib/systemd/systemd-update-helper install-system-units kvmhooks-agent.socket || :
fi""",
    "preun": """\
if [ $1 -eq 0 ] && [ -x "/usr/lib/systemd/systemd-update-helper" ]; then
    # Package removal, not upgrade
    /usr/lib/systemd/systemd-update-helper remove-system-units kvmhooks-agent.socket \
kvmhooks-agent.service || :
fi""",
    "postun": """\
if [ $1 -ge 1 ] && [ -x "/usr/lib/systemd/systemd-update-helper" ]; then
    # Package upgrade, not uninstall
    /usr/lib/systemd/systemd-update-helper mark-restart-system-units kvmhooks-agent.service \
|| :
fi""",
}
TAGS = {"post": "POSTIN", "preun": "PREUN", "postun": "POSTUN", "posttrans": "POSTTRANS"}


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def scriptlets(rpms) -> dict[str, str]:
    return {name: query(rpms[1], "--qf", f"%{{{tag}}}") for name, tag in TAGS.items()}


def _copy_program(program: str, root: Path, target: str) -> None:
    """PROGRAM as ROOT/TARGET, with the shared libraries it loads."""
    real = Path(program).resolve()
    destination = root / target.lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, destination)
    for library in re.findall(r"(/\S+) \(0x", run(["ldd", real]).stdout):
        copy = root / library.lstrip("/")
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(library).resolve(), copy)


class ShellRoot:
    """A scratch root with an rpm database, /bin/sh, mkdir, rm and the logging stand-ins."""

    def __init__(self, path: Path):
        self.path = path
        _copy_program("/bin/sh", path, "/bin/sh")
        for program in ("mkdir", "rm"):
            _copy_program(shutil.which(program), path, f"/usr/bin/{program}")
        (path / "var/tmp").mkdir(parents=True)  # where rpm writes a scriptlet to run it
        (path / "dev").mkdir()
        os.mknod(path / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        (path / "stand-in").mkdir()
        self.install_stand_ins()
        self.rpm("--initdb")

    def install_stand_ins(self) -> None:
        for name, target in (("systemctl", "/usr/bin/systemctl"),
                             ("udevadm", "/usr/bin/udevadm"),
                             ("systemd-update-helper", HELPER)):
            path = self / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(STAND_IN.format(name=name, log=LOG, fail=FAIL))
            path.chmod(0o755)

    def remove_stand_ins(self) -> None:
        for target in ("/usr/bin/systemctl", "/usr/bin/udevadm", HELPER):
            (self / target).unlink()

    def __truediv__(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def rpm(self, *args: str) -> str:
        return run(["rpm", "--root", self.path, "--dbpath", "/var/lib/rpm", *args]).stdout

    def calls(self) -> list[str]:
        """The stand-ins' calls since the last look."""
        log = self / LOG
        if not log.exists():
            return []
        calls = log.read_text().splitlines()
        log.unlink()
        return calls

    def scriptlet(self, body: str, arg: str) -> subprocess.CompletedProcess:
        """BODY on its own, as rpm runs it: `/bin/sh SCRIPT ARG` chrooted into the root."""
        script = self / "var/tmp/scriptlet"
        script.write_text(body)
        return subprocess.run(["chroot", self.path, "/bin/sh", "/var/tmp/scriptlet", arg],
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def no_first_install_left(self) -> bool:
        state = self / "/var/lib/rpm-state/kvmhooks"
        return not state.exists() or not any(state.iterdir())


@pytest.fixture
def root(tmp_path) -> ShellRoot:
    return ShellRoot(tmp_path / "root")


# --------------------------------------------------------------------------- the text


@pytest.mark.parametrize("name", sorted(EL_EXPANSIONS))
def test_systemd_macros_expand_as_on_el(scriptlets, name):
    wanted = _lines(EL_EXPANSIONS[name])
    got = _lines(scriptlets[name])
    assert any(got[i:i + len(wanted)] == wanted for i in range(len(got))), scriptlets[name]


def test_systemctl_only_reloads_and_try_restarts(scriptlets):
    # Enabling, disabling and restarting the agent are the systemd helper's (the macros').
    for name, body in scriptlets.items():
        for line in body.splitlines():
            words = line.split()
            if words[:1] == ["systemctl"]:
                assert words[1] in {"daemon-reload", "try-restart"}, f"{name}: {line}"


def test_scriptlets_parse_in_sh_and_bash(rpms, scriptlets, tmp_path):
    shown = query(rpms[1], "--scripts")
    for heading in ("postinstall", "preuninstall", "posttrans", "postuninstall"):
        assert f"{heading} scriptlet (using /bin/sh):" in shown
    for name, body in scriptlets.items():
        script = tmp_path / name
        script.write_text(body)
        for shell in ("bash", "sh"):
            result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert result.returncode == 0, f"{shell} -n {name}: {result.stderr}"


# --------------------------------------------------------------------------- transactions


def test_first_install_presets_the_socket_reloads_and_restarts_the_running_daemons(root,
                                                                                    rpms):
    root.rpm("-i", "--nodeps", rpms[1])
    assert root.calls() == ["systemd-update-helper install-system-units "
                            "kvmhooks-agent.socket", *RELOADS, *RESTARTS]
    assert root.no_first_install_left()


def test_upgrade_reloads_and_restarts_the_agent_but_no_libvirt_daemon(root, rpms):
    root.rpm("-i", "--nodeps", rpms[1])
    root.calls()
    root.rpm("-U", "--nodeps", rpms[2])
    assert root.calls() == [
        "systemd-update-helper mark-restart-system-units kvmhooks-agent.service", *RELOADS]
    assert root.no_first_install_left()


def test_reinstall_restarts_no_libvirt_daemon(root, rpms):
    root.rpm("-i", "--nodeps", rpms[1])
    root.calls()
    root.rpm("--reinstall", "--nodeps", rpms[1])
    assert not [call for call in root.calls() if "try-restart" in call]


def test_erase_disables_the_agent_reloads_and_restarts_the_running_daemons(root, rpms):
    root.rpm("-i", "--nodeps", rpms[1])
    root.calls()
    root.rpm("-e", "--nodeps", "kvmhooks")
    assert root.calls() == [
        "systemd-update-helper remove-system-units kvmhooks-agent.socket "
        "kvmhooks-agent.service", *RELOADS, *RESTARTS]
    assert not (root / "/usr/lib/systemd/system/kvmhooks-agent.socket").exists()
    # Installed again later: a first install again.
    root.rpm("-i", "--nodeps", rpms[2])
    assert root.calls()[-3:] == RESTARTS


def test_upgrade_after_an_interrupted_first_install_restarts_the_daemons_then(root, rpms):
    # A first install whose %posttrans never ran (rpm killed) left its mark: the next
    # transaction's %posttrans does the restart that was owed, once.
    root.rpm("-i", "--nodeps", "--noposttrans", rpms[1])
    root.calls()
    root.rpm("-U", "--nodeps", rpms[2])
    assert root.calls()[-3:] == RESTARTS
    assert root.no_first_install_left()


# --------------------------------------------------------------------------- apart

ARGS = [("post", "1"), ("post", "2"), ("preun", "0"), ("preun", "1"), ("postun", "0"),
        ("postun", "1"), ("posttrans", "1"), ("posttrans", "2")]


@pytest.mark.parametrize("name,arg", ARGS)
def test_scriptlet_without_systemd_or_udevadm_succeeds(root, scriptlets, name, arg):
    root.remove_stand_ins()
    result = root.scriptlet(scriptlets[name], arg)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("name,arg", ARGS)
def test_failing_systemctl_udevadm_and_helper_never_fail_the_transaction(root, scriptlets,
                                                                         name, arg):
    (root / FAIL).touch()
    (root / "/var/lib/rpm-state/kvmhooks").mkdir(parents=True)
    (root / "/var/lib/rpm-state/kvmhooks/first-install").touch()
    result = root.scriptlet(scriptlets[name], arg)
    assert result.returncode == 0, result.stderr
    quiet = (name, arg) in {("post", "2"), ("preun", "1")}  # nothing to do there
    assert os.path.exists(root / LOG) == (not quiet)
