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
import selectors
import signal
import socket
import struct
import threading
from dataclasses import dataclass

from . import virt  # noqa: F401  (imported now: the first NIC event need not wait for it)
from .dispatch import run

# hookclient.py runs alone under `python3 -I -S`: the wire format it speaks is defined there.
from .hookclient import AGENT_SOCKET, GarbledMessage, read_message, send_message
from .state import state_directory

log = logging.getLogger("kvmhooks")
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class Listener:
    """The socket the agent accepts calls on; ``path`` and ``inode`` where the agent bound
    it itself (systemd's socket is systemd's to remove)."""

    sock: socket.socket
    path: str | None = None
    inode: int | None = None


def listener() -> Listener:
    """systemd's socket where it passed one, else our own in the state directory."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        return Listener(socket.socket(fileno=SD_LISTEN_FDS_START))
    path = os.path.join(state_directory(), AGENT_SOCKET)
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    return Listener(sock, path, os.stat(path).st_ino)


def serve(listening: Listener) -> None:
    """Serve calls until SIGTERM; then answer every call already taken or waiting in the
    socket's queue and return. A stop (`systemctl stop`, an upgrade's restart) thus never
    fails a hook call, and so never the guest operation that made it; a second SIGTERM
    ends the agent at once."""
    stopping = threading.Event()
    wakeup, waker = socket.socketpair()
    waker.setblocking(False)
    signal.set_wakeup_fd(waker.fileno())

    def stop(signum, frame) -> None:
        stopping.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    workers: list[threading.Thread] = []
    log.info("agent listening")
    with selectors.DefaultSelector() as selector:
        selector.register(listening.sock, selectors.EVENT_READ)
        selector.register(wakeup, selectors.EVENT_READ)
        while not stopping.is_set():
            if any(key.fileobj is listening.sock for key, _ in selector.select()):
                workers = [worker for worker in workers if worker.is_alive()]
                workers.append(_start(listening.sock.accept()[0]))
    _forget_path(listening)
    listening.sock.setblocking(False)
    while True:  # calls already queued were sent to this agent: it answers them too
        try:
            connection, _ = listening.sock.accept()
        except BlockingIOError:
            break
        connection.setblocking(True)
        workers.append(_start(connection))
    listening.sock.close()
    log.info("agent stopping: answering %d call(s) in hand",
             sum(worker.is_alive() for worker in workers))
    for worker in workers:
        worker.join()
    signal.set_wakeup_fd(-1)
    wakeup.close()
    waker.close()


def _forget_path(listening: Listener) -> None:
    """Unlink our socket, unless another agent has bound the path since: new calls then
    run in-process instead of reaching an agent on its way out."""
    if listening.path is None:
        return
    try:
        if os.stat(listening.path).st_ino == listening.inode:
            os.unlink(listening.path)
    except FileNotFoundError:
        pass


def _start(connection: socket.socket) -> threading.Thread:
    worker = threading.Thread(target=_serve_one, args=(connection,), daemon=True)
    worker.start()
    return worker


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
