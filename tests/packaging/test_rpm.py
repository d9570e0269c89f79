"""The RPM: built by scripts/build-rpm (rpmbuild from Debian's rpm package), installed into
a scratch root with `rpm --root` (--nodeps: the EL packages do not exist here), upgraded
and erased there.

rpm runs scriptlets chrooted into the scratch root, which has no shell here, so every
`rpm --root` transaction here runs with --noscripts; test_scriptlets.py runs them in a root
that has one. Installing with `rpm --root` needs root (files owned by root), hence the
system mark.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kvmhooks import install
from tests.packaging.rpms import REPO, pyproject_version, query, run
from tests.packaging.rpms import SITELIB as EL_SITELIB

pytestmark = pytest.mark.system

SITELIB = EL_SITELIB[9]  # what scripts/build-rpm builds by default
CONFIG = "/etc/kvmhooks/kvmhooks.toml"
QEMU_HOOK = "/etc/libvirt/hooks/qemu.d/kvmhooks"
NETWORK_HOOK = "/etc/libvirt/hooks/network.d/kvmhooks"
COMMAND = "/usr/bin/kvmhooks"
CLIENT = "/usr/libexec/kvmhooks/hookclient.py"
AGENT_UNITS = ["/usr/lib/systemd/system/kvmhooks-agent.socket",
               "/usr/lib/systemd/system/kvmhooks-agent.service"]
PRESET = "/usr/lib/systemd/system-preset/50-kvmhooks.preset"

# The installed paths of the contract (DESIGN.md, README) and the RPM's own, with modes.
CONTRACT = {
    QEMU_HOOK: 0o755,
    NETWORK_HOOK: 0o755,
    "/usr/lib/udev/rules.d/90-kvmhooks.rules": 0o644,
    "/usr/lib/systemd/system/kvmhooks-nic@.service": 0o644,
    "/usr/lib/systemd/network/10-kvmhooks.link": 0o644,
    **{unit: 0o644 for unit in AGENT_UNITS},
    PRESET: 0o644,
    CLIENT: 0o644,
    CONFIG: 0o644,
    COMMAND: 0o755,
    f"{SITELIB}/kvmhooks/__init__.py": 0o644,
    f"{SITELIB}/kvmhooks/dispatch.py": 0o644,
    f"{SITELIB}/kvmhooks/engine/session.py": 0o644,
    f"{SITELIB}/kvmhooks/cli.py": 0o644,
    "/usr/share/doc/kvmhooks/README.md": 0o644,
    "/usr/share/licenses/kvmhooks/LICENSE": 0o644,
}
# What an erase must take away.
REMOVED_ON_ERASE = [QEMU_HOOK, NETWORK_HOOK, "/usr/lib/udev/rules.d/90-kvmhooks.rules",
                    "/usr/lib/systemd/system/kvmhooks-nic@.service",
                    "/usr/lib/systemd/network/10-kvmhooks.link", COMMAND, CLIENT,
                    *AGENT_UNITS, PRESET,
                    f"{SITELIB}/kvmhooks", CONFIG, "/etc/kvmhooks",
                    "/etc/libvirt/hooks/qemu.d", "/etc/libvirt/hooks/network.d"]

UNTAGGED_DOMAIN = b"""<domain type='kvm'>
  <name>kt-rpm</name>
  <uuid>5d7bb1a8-86b6-4d31-9b7e-5b1c1d2a2f11</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default'/>
    </interface>
  </devices>
</domain>
"""


def _query(rpm: Path, *args: str) -> str:
    return query(rpm, *args)


class Root:
    """A scratch root with its own rpm database."""

    def __init__(self, path: Path):
        self.path = path
        self.rpm("--initdb")

    def rpm(self, *args: str) -> str:
        return run(["rpm", "--root", str(self.path), "--dbpath", "/var/lib/rpm",
                     *args]).stdout

    def install(self, rpm: Path, *options: str) -> None:
        self.rpm(*options, "--nodeps", "--noscripts", str(rpm))

    def __truediv__(self, path: str) -> Path:
        return self.path / path.lstrip("/")


@pytest.fixture
def root(tmp_path) -> Root:
    return Root(tmp_path / "root")


@pytest.fixture
def installed(root, rpms) -> Root:
    root.install(rpms[1], "-i")
    return root


# --------------------------------------------------------------------------- metadata


def test_rpm_is_noarch_with_pyprojects_version(rpms):
    info = _query(rpms[1], "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}")
    assert info == f"kvmhooks {pyproject_version()} 1.el9 noarch MIT"
    requires = {line.strip() for line in _query(rpms[1], "--requires").splitlines()}
    assert "python(abi) = 3.9" in requires  # rpm's generator, from the site-packages path


def test_spec_fallback_version_is_pyprojects():
    spec = (REPO / "packaging" / "kvmhooks.spec").read_text()
    assert f"%{{!?kh_version:%global kh_version {pyproject_version()}}}" in spec


def test_el10_build_drops_tomli_and_uses_python_3_12(el_rpms):
    rpm = el_rpms[10]
    assert rpm.name == f"kvmhooks-{pyproject_version()}-1.el10.noarch.rpm"
    requires = _query(rpm, "--requires")
    assert "python3-tomli" not in requires
    assert "python(abi) = 3.12" in requires
    assert "/usr/lib/python3.12/site-packages/kvmhooks/dispatch.py" in _query(rpm, "--list")


def test_config_is_noreplace_and_the_only_config_file(rpms):
    assert _query(rpms[1], "--configfiles").split() == [CONFIG]
    flags = dict(line.split(" ", 1) for line in _query(
        rpms[1], "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines())
    assert flags[CONFIG] == "cn"  # %config(noreplace)
    assert _query(rpms[1], "--docfiles").split() == ["/usr/share/doc/kvmhooks/README.md"]
    assert _query(rpms[1], "--licensefiles").split() == ["/usr/share/licenses/kvmhooks/LICENSE"]


# --------------------------------------------------------------------------- installed files


def test_installs_every_path_of_the_contract_with_its_mode(installed):
    for path, mode in CONTRACT.items():
        st = os.lstat(installed / path)
        assert stat.S_ISREG(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(stat.S_IMODE(st.st_mode))}"
        assert st.st_uid == 0 and st.st_gid == 0, path


def test_installed_files_are_what_install_renders_for_the_rpm(installed):
    for item in install.planned_files(install.RPM_LAYOUT):
        path = installed / item.path
        assert path.read_text() == item.text, item.path
        assert stat.S_IMODE(path.stat().st_mode) == item.mode, item.path


def test_installed_package_is_the_source_package(installed):
    source = REPO / "kvmhooks"
    wanted = {p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts}
    target = installed / f"{SITELIB}/kvmhooks"
    got = {p.relative_to(target) for p in target.rglob("*") if p.is_file()}
    assert got == wanted
    for relative in wanted:
        assert (target / relative).read_bytes() == (source / relative).read_bytes(), relative


def test_example_config_configures_nothing(installed):
    text = (installed / CONFIG).read_text()
    assert text.strip()
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------- running it

# The scratch root has no Python: the host's runs the installed script with the installed
# package first on sys.path, and says where kvmhooks came from (if it was imported).
DRIVER = """\
import runpy, sys
sitelib, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, sitelib)
sys.argv = sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    sys.stderr.write("kvmhooks from %s\\n" % getattr(sys.modules.get("kvmhooks"), "__file__",
                                                     None))
"""


def _environment(root: Root, tmp_path: Path) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KVMHOOKS_CONFIG": str(root / CONFIG),
            "KVMHOOKS_STATE_DIR": str(tmp_path / "state")}  # no agent listens there


def _run_installed(root: Root, script: Path, *args: str, stdin: bytes = b"",
                   tmp_path: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-I", "-c", DRIVER, str(root / SITELIB), str(script), *args],
        input=stdin, capture_output=True, env=_environment(root, tmp_path), timeout=60)
    return result


def _from_the_scratch_root(root: Root, result: subprocess.CompletedProcess) -> bool:
    return f"kvmhooks from {root / SITELIB}/kvmhooks/__init__.py" in result.stderr.decode()


def _run_installed_hook(root: Root, hook: str, *args: str, stdin: bytes,
                        tmp_path: Path) -> subprocess.CompletedProcess:
    """The installed shell hook itself, its python and client paths mapped to this host
    and the scratch root."""
    text = (root / hook).read_text()
    mapped = text.replace("/usr/bin/python3", sys.executable).replace(CLIENT, str(root / CLIENT))
    shim = tmp_path / "hook.sh"
    shim.write_text(mapped)
    return subprocess.run(["/bin/sh", str(shim), *args], input=stdin, capture_output=True,
                          env=_environment(root, tmp_path), timeout=60)


def test_installed_hooks_are_shell_scripts_that_run_the_installed_client(installed):
    for hook, kind in ((QEMU_HOOK, "qemu"), (NETWORK_HOOK, "network")):
        lines = (installed / hook).read_text().splitlines()
        assert lines[0] == "#!/bin/sh"
        assert lines[-1] == f'exec /usr/bin/python3 -I -S {CLIENT} {kind} "$@"'
    assert (installed / CLIENT).read_bytes() == (REPO / "kvmhooks/hookclient.py").read_bytes()


@pytest.mark.parametrize("operation", ["start", "prepare"])
def test_installed_qemu_hook_answers_calls_with_nothing_to_do(installed, tmp_path, operation):
    # start: answered by the shell; prepare of an untagged domain: by the client, which
    # reads the XML and needs no engine.
    result = _run_installed_hook(installed, QEMU_HOOK, "kt-rpm", operation, "begin", "-",
                                 stdin=UNTAGGED_DOMAIN, tmp_path=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert not (tmp_path / "state").exists()


def test_installed_client_runs_the_installed_engine(installed, tmp_path):
    # A tagged domain needs the engine; with no agent the client runs it in-process, from
    # the installed package, which refuses the domain: the example config has no uplinks.
    tagged = UNTAGGED_DOMAIN.replace(b"<devices>", b"""<metadata>
    <kh:net xmlns:kh="urn:kvmhooks:net:1">
      <kh:interface mac="52:54:00:aa:bb:01" type="direct" uplink="lan"/>
    </kh:net></metadata><devices>""")
    tagged = tagged.replace(b"<interface type='network'>", b"<interface type='direct'>")
    result = _run_installed(installed, installed / CLIENT, "qemu", "kt-rpm", "prepare",
                            "begin", "-", stdin=tagged, tmp_path=tmp_path)
    assert _from_the_scratch_root(installed, result), result.stderr.decode()
    assert result.returncode == 2
    assert "domain kt-rpm interface 52:54:00:aa:bb:01: unknown uplink 'lan'" in \
        result.stderr.decode()


def test_installed_network_hook_leaves_unconfigured_networks_alone(installed, tmp_path):
    network = b"<hookData><network><name>kt-rpm</name></network></hookData>"
    result = _run_installed_hook(installed, NETWORK_HOOK, "kt-rpm", "start", "begin", "-",
                                 stdin=network, tmp_path=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")


def test_installed_package_imports_whole(installed, tmp_path):
    script = tmp_path / "import_all.py"
    script.write_text(
        "import importlib, pkgutil, kvmhooks\n"
        "for module in pkgutil.walk_packages(kvmhooks.__path__, 'kvmhooks.'):\n"
        "    if module.name != 'kvmhooks.__main__':\n"
        "        importlib.import_module(module.name)\n")
    result = _run_installed(installed, script, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert _from_the_scratch_root(installed, result)


def test_installed_command_checks_the_example_config(installed, tmp_path):
    result = _run_installed(installed, installed / COMMAND, "check-config",
                            str(installed / CONFIG), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"ok (0 uplinks, 0 networks)" in result.stdout
    # Uncommenting the example's settings gives a valid config.
    example = (installed / CONFIG).read_text()
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", example)
    assert uncommented != example
    edited = tmp_path / "uncommented.toml"
    edited.write_text(uncommented)
    result = _run_installed(installed, installed / COMMAND, "check-config", str(edited),
                            tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"ok (2 uplinks, 1 network)" in result.stdout


# --------------------------------------------------------------------------- upgrade, erase


def test_upgrade_keeps_an_edited_config(installed, rpms):
    config = installed / CONFIG
    edited = config.read_text() + '\n[uplink.lan]\nnic = "ens32"\n'
    config.write_text(edited)
    installed.install(rpms[2], "-U")
    assert installed.rpm("-q", "kvmhooks").strip().endswith("-2.el9.noarch")
    assert config.read_text() == edited
    leftovers = [p.name for p in config.parent.iterdir() if p.name != config.name]
    assert leftovers == []  # same packaged config in both releases: no .rpmnew
    for path, mode in CONTRACT.items():
        assert stat.S_IMODE(os.lstat(installed / path).st_mode) == mode, path


def test_erase_leaves_no_hook_rule_or_unit_behind(root, rpms):
    own_hook = root / "/etc/libvirt/hooks/qemu"
    own_hook.parent.mkdir(parents=True)
    own_hook.write_text("#!/bin/sh\nexit 0\n")
    root.install(rpms[1], "-i")
    root.rpm("-e", "--nodeps", "--noscripts", "kvmhooks")
    for path in REMOVED_ON_ERASE:
        assert not os.path.lexists(root / path), path
    assert own_hook.read_text() == "#!/bin/sh\nexit 0\n"
    assert root.rpm("-qa").strip() == ""


def test_erase_keeps_an_edited_config_as_rpmsave(installed):
    (installed / CONFIG).write_text('[uplink.lan]\nnic = "ens32"\n')
    installed.rpm("-e", "--nodeps", "--noscripts", "kvmhooks")
    assert not (installed / CONFIG).exists()
    assert (installed / (CONFIG + ".rpmsave")).read_text() == '[uplink.lan]\nnic = "ens32"\n'
    assert not (installed / QEMU_HOOK).exists()


def test_preset_enables_the_agent_socket_and_nothing_else(installed):
    # systemctl preset (the %systemd_post of a first install) reads it: the socket starts
    # the agent on demand; the NIC unit is started by udev, never enabled.
    lines = [line for line in (installed / PRESET).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["enable kvmhooks-agent.socket"]
