"""kvmhooks acts as root on what its config says: it trusts a config only where nobody
but root (or the user kvmhooks runs as) can change it. Root is needed to hand files to
another owner."""

from __future__ import annotations

import os

import pytest

from kvmhooks import config
from kvmhooks.errors import ConfigError

pytestmark = [pytest.mark.system, pytest.mark.floor]

NOBODY = 65534
TEXT = '[uplink.lan]\nnic = "eth1"\n'


@pytest.fixture
def tree(tmp_path):
    """tmp_path/etc (root, 0755) holding kvmhooks.toml (root, 0644)."""
    if os.geteuid() != 0:
        pytest.fail("these tests hand files to another owner: run them as root")
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    path = etc / "kvmhooks.toml"
    path.write_text(TEXT)
    os.chmod(path, 0o644)
    return path


def test_a_root_owned_config_below_a_sticky_directory_is_trusted(tree):
    os.chmod(tree.parent.parent, 0o1777)  # like /tmp above a root-owned directory
    assert config.load(str(tree)).uplinks["lan"].nic == "eth1"


def test_a_config_owned_by_another_user_is_refused(tree):
    os.chown(tree, NOBODY, -1)
    with pytest.raises(ConfigError, match=f"config file {tree} belongs to uid {NOBODY}"):
        config.load(str(tree))


@pytest.mark.parametrize("level", [1, 2], ids=["its-directory", "above"])
def test_a_directory_owned_by_another_user_is_refused(level, tree):
    directory = tree.parents[level - 1]
    os.chown(directory, NOBODY, -1)
    with pytest.raises(ConfigError, match=f"directory {directory} belongs to uid {NOBODY}"):
        config.load(str(tree))


def test_a_config_in_a_sticky_directory_others_write_is_refused(tree):
    os.chmod(tree.parent, 0o1777)  # a config straight in /tmp: others may put one there first
    with pytest.raises(ConfigError, match=f"directory {tree.parent} is writable by others"):
        config.load(str(tree))


def test_a_link_to_a_config_others_can_replace_is_refused(tree, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    target = loose / "kvmhooks.toml"
    target.write_text(TEXT)
    os.chmod(target, 0o644)
    tree.unlink()
    tree.symlink_to(target)
    with pytest.raises(ConfigError, match=f"directory {loose} is writable by others"):
        config.load(str(tree))
