"""The host config file, /etc/kvmhooks/kvmhooks.toml, written for one test (or the demo,
or the benchmark) and put back as it was at cleanup. libvirtd passes no environment to
its hooks, so the lab cannot point them at another file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .cleanup import Cleanup, remove_file

CONFIG_PATH = Path("/etc/kvmhooks/kvmhooks.toml")


class ConfigFile:
    """Writes the config file and puts back what was there (or nothing) at cleanup.

        ConfigFile(cleanup).write('[uplink.lan]\\nnic = "ktnic1a2b3c"\\n')
    """

    def __init__(self, cleanup: Cleanup, path: Path | str = CONFIG_PATH) -> None:
        self.path = Path(path)
        self._backup: bytes | None = None
        self._backup_mode: int | None = None
        self._created_dir: Path | None = None
        self._armed = False
        self.cleanup = cleanup

    def write(self, text: str) -> Path:
        if not self._armed:
            if self.path.exists():
                self._backup = self.path.read_bytes()
                self._backup_mode = self.path.stat().st_mode & 0o7777
            elif not self.path.parent.exists():
                self._created_dir = self.path.parent
            self.cleanup.add(self.restore, _what=f"restore {self.path}")
            self._armed = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".kt-tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)
        return self.path

    def restore(self) -> None:
        if self._backup is not None:
            self.path.write_bytes(self._backup)
            if self._backup_mode is not None:
                os.chmod(self.path, self._backup_mode)
        else:
            remove_file(self.path)
            if self._created_dir is not None:
                shutil.rmtree(self._created_dir, ignore_errors=True)
        self._armed = False
