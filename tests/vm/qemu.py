"""The two channels into a booted host VM: QMP (the machine: PCI hotplug, reset) and
qemu-guest-agent (the system inside: run a command, write a file)."""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass


class QmpError(RuntimeError):
    pass


class Qmp:
    """A QMP client on QEMU's unix socket; events are kept as they pass, until a wait
    consumes them."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rb")
        self._events: list[dict] = []
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.stream.readline()
        if not line:
            raise QmpError("QEMU closed its QMP socket")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read()
            if "event" in message:
                self._events.append(message)
            elif "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc')}")
            elif "return" in message:
                return message["return"]

    def wait_event(self, name: str, timeout: float, **data) -> dict:
        """The first event ``name`` (with ``data`` among its data) seen or still to come."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event["event"] == name and all(
                        event.get("data", {}).get(k) == v for k, v in data.items()):
                    self._events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no QMP event {name} {data} within {timeout} s")
            self.sock.settimeout(left)
            try:
                message = self._read()
            except socket.timeout:
                continue
            finally:
                self.sock.settimeout(30.0)
            if "event" in message:
                self._events.append(message)

    def pending_events(self) -> list[dict]:
        """Every event QEMU sent up to now that no wait consumed (a command's answer comes
        after every event sent before it)."""
        self.execute("query-status")
        return list(self._events)

    def drop_events(self, name: str) -> None:
        """Forget every event ``name`` sent up to now: a wait then sees only later ones."""
        self.execute("query-status")
        self._events[:] = [event for event in self._events if event["event"] != name]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@dataclass(frozen=True)
class Completed:
    command: str
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.returncode != 0:
            raise AssertionError(f"in the VM, `{self.command}` exited {self.returncode}:\n"
                                 f"{self.stdout}{self.stderr}")
        return self


class GuestAgent:
    """qemu-guest-agent over its virtio-serial port (a unix socket on this side).

    Each call opens a fresh connection and resynchronizes (guest-sync-delimited), so a
    VM that rebooted, or an agent that restarted, costs nothing but the wait."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sync_id = int(time.time())

    def _connect(self, timeout: float) -> socket.socket:
        """A connection on which the agent answered a fresh sync; retried until ``timeout``.

        QEMU serves one client at a time on the socket, and an agent that restarts (as at
        boot) drops what it was told: a sync that gets no answer is abandoned, its socket
        closed, and tried again. Nothing but the sync was sent on it, so this is safe for
        every command."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(min(10.0, max(1.0, deadline - time.monotonic())))
            try:
                self._sync(sock)
                sock.settimeout(timeout)
                return sock
            except (OSError, ConnectionError, ValueError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _sync(self, sock: socket.socket) -> None:
        sock.connect(self.path)
        self._sync_id += 1
        sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                           "arguments": {"id": self._sync_id}}).encode())
        buffer = b""
        while True:  # skip whatever an earlier, abandoned request left, up to the 0xff
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the guest agent closed the channel")
            buffer += chunk
            if b"\xff" in buffer:
                buffer = buffer[buffer.rindex(b"\xff") + 1:]
            if buffer.endswith(b"\n"):
                reply = json.loads(buffer)
                if reply.get("return") == self._sync_id:
                    return
                buffer = b""

    def call(self, command: str, timeout: float = 30.0, **arguments) -> object:
        with self._connect(timeout) as sock:
            request = {"execute": command}
            if arguments:
                request["arguments"] = arguments
            sock.sendall(json.dumps(request).encode())
            buffer = b""
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"the guest agent closed the channel during {command}")
                buffer += chunk
        reply = json.loads(buffer)
        if "error" in reply:
            raise RuntimeError(f"guest agent {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("guest-ping", timeout=3)
                return
            except (OSError, ConnectionError, ValueError):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the guest agent did not answer within {timeout} s") from None
                time.sleep(0.5)

    def sh(self, script: str, timeout: float = 120.0) -> Completed:
        """Run ``script`` with /bin/sh in the VM; its exit status and output."""
        pid = self.call("guest-exec", path="/bin/sh", arg=["-c", script],
                        **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        # Most scripts end within a few tens of milliseconds: poll fast, then every 0.2 s.
        interval = 0.01
        while True:
            status = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"in the VM, `{script}` ran longer than {timeout} s")
            time.sleep(interval)
            interval = min(interval * 2, 0.2)

        def text(key: str) -> str:
            return base64.b64decode(status.get(key, "")).decode(errors="replace")

        returncode = status["exitcode"] if "exitcode" in status else -status.get("signal", 1)
        return Completed(script, returncode, text("out-data"), text("err-data"))

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        handle = self.call("guest-file-open", path=path, mode="w")
        try:
            for start in range(0, len(data), 1 << 16):
                self.call("guest-file-write", handle=handle,
                          **{"buf-b64": base64.b64encode(data[start:start + (1 << 16)]).decode()})
        finally:
            self.call("guest-file-close", handle=handle)
        self.sh(f"chmod {mode:o} '{path}'").check()
