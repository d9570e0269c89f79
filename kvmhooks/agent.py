"""`kvmhooks agent`: the engine kept warm for the hooks and NIC events.

libvirt calls the qemu hook five times per start and stop, and importing pyroute2, lxml
and libvirt costs far more than the work itself. The agent imports them once and serves
hookclient.py over a root-only Unix socket (systemd's socket activation where systemd
runs); the hook stays a standard-library client that falls back to in-process work when
no agent listens.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading

from . import virt  # noqa: F401  (imported now: the first NIC event need not wait for it)
from .dispatch import run

# hookclient.py runs alone under `python3 -I -S`: the wire format it speaks is defined there.
from .hookclient import AGENT_SOCKET, GarbledMessage, read_message, send_message
from .state import state_directory

log = logging.getLogger("kvmhooks")
SD_LISTEN_FDS_START = 3


def listener() -> socket.socket:
    """systemd's socket where it passed one, else our own in the state directory."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    path = os.path.join(state_directory(), AGENT_SOCKET)
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def serve(sock: socket.socket) -> None:
    log.info("agent listening")
    while True:
        connection, _ = sock.accept()
        threading.Thread(target=_serve_one, args=(connection,), daemon=True).start()


def _serve_one(connection: socket.socket) -> None:
    with connection, connection.makefile("rwb") as stream:
        if not _peer_is_root(connection):
            return
        try:
            message = read_message(stream)
        except GarbledMessage as error:
            log.warning("agent: refused a garbled call (%s)", error)
            return
        if message is None:
            return
        header, data = message
        trigger, argv = header["trigger"], header["argv"]
        if trigger == "nic-event":
            # The handler converges on the host as it finds it; udev need not wait.
            send_message(stream, {"status": 0, "stderr": ""}, b"")
            stream.close()
            run(trigger, argv, data)
            return
        answer = run(trigger, argv, data)
        send_message(stream, {"status": answer.status, "stderr": answer.stderr},
                     answer.stdout)


def _peer_is_root(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    if uid not in (0, os.getuid()):
        log.warning("agent: refused a connection from uid %d", uid)
        return False
    return True
