"""What kvmhooks logs to syslog: hooks, the agent and detached NIC handlers included.

The lab machines run no syslog daemon, so the tests can own /dev/log.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from .cleanup import remove_file


def _listened_on(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


class SyslogCapture:
    """Listens on /dev/log (where no syslog daemon does) and keeps what kvmhooks logs,
    as (severity, text) pairs. ``owned`` is False when someone else listens there."""

    PATH = "/dev/log"
    SEVERITY = {3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each record's arrival
        if os.path.exists(self.PATH) and not _listened_on(self.PATH):
            remove_file(self.PATH)  # left by a run that was killed
        self.owned = not os.path.exists(self.PATH)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.owned:
            self.sock.bind(self.PATH)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            text = data.decode(errors="replace").rstrip("\0\n")
            priority, _, message = text.partition(">")
            severity = int(priority.lstrip("<") or 6) % 8 if priority.startswith("<") else 6
            self.times.append(time.monotonic())
            self.records.append((self.SEVERITY.get(severity, str(severity)), message))

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.records[mark:]

    def close(self) -> None:
        self.sock.close()
        if self.owned:
            remove_file(self.PATH)
