"""hookclient when the kernel denies it the agent's socket, as SELinux does on an EL host:
a call that never reached the agent whole runs in the client's own process; one the agent
may have taken never runs twice.

The denials are the kernel's own: a child process installs a seccomp filter that answers
EACCES (the errno of an SELinux denial) to one socket system call, then asks a real
listening socket. No root needed."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import platform
import socket

import pytest

from kvmhooks import hookclient

from .test_hookclient import TAGGED

# seccomp(2): the filter sees struct seccomp_data {int nr; __u32 arch; ...}.
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
ARCHES = {  # audit arch, and the system call numbers of asm/unistd.h
    "x86_64": (0xC000003E, {"socket": 41, "connect": 42, "sendto": 44, "sendmsg": 46}),
    "aarch64": (0xC00000B7, {"socket": 198, "connect": 203, "sendto": 206, "sendmsg": 211}),
}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse(calls: list[str], error: int) -> None:
    """From now on this process's calls named in `calls` fail with `error`."""
    arch, numbers = ARCHES[platform.machine()]
    program = [SockFilter(BPF_LD_W_ABS, 0, 0, 4),  # arch
               SockFilter(BPF_JEQ_K, 0, len(calls) + 1, arch),
               SockFilter(BPF_LD_W_ABS, 0, 0, 0)]  # system call number
    for place, name in enumerate(calls):  # on a match, jump to the last instruction
        program.append(SockFilter(BPF_JEQ_K, len(calls) - place, 0, numbers[name]))
    program += [SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
                SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | error)]
    filters = (SockFilter * len(program))(*program)
    libc = ctypes.CDLL(None, use_errno=True)
    prog = SockFprog(len(program), filters)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def ask_with_calls_refused(calls: list[str]) -> str:
    """ask_agent's verdict, from a child process whose `calls` the kernel refuses with
    EACCES."""
    verdict_in, verdict_out = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(verdict_in)
            refuse(calls, errno.EACCES)
            try:
                verdict = f"answered {hookclient.ask_agent('qemu', ['web1', 'prepare'], TAGGED)!r}"
            except Exception as error:  # noqa: BLE001 - what the test reports
                verdict = f"{type(error).__name__}: {error}"
            os.write(verdict_out, verdict.encode())
        finally:
            os._exit(0)
    os.close(verdict_out)
    os.waitpid(child, 0)
    with os.fdopen(verdict_in, "rb") as stream:
        return stream.read().decode()


def what_arrived(listener: socket.socket) -> bytes | None:
    """The bytes of the one connection the listener got (None: no connection)."""
    listener.setblocking(False)
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return None
    with connection:
        connection.setblocking(True)
        connection.settimeout(5)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


@pytest.mark.skipif(platform.machine() not in ARCHES, reason="system call numbers unknown")
@pytest.mark.parametrize("calls, arrived", [
    (["socket"], None),              # the client may not make a Unix socket
    (["connect"], None),             # connectto or the socket file's write denied
    (["sendto", "sendmsg"], b""),    # connected, then the write denied
])
def test_a_denied_call_is_reported_as_not_sent(calls, arrived, tmp_path, monkeypatch):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    path = str(tmp_path / hookclient.AGENT_SOCKET)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        verdict = ask_with_calls_refused(calls)
        assert what_arrived(listener) == arrived
    assert verdict.startswith("CallNotSent: ") and "Permission denied" in verdict, verdict
    assert path in verdict


def test_a_socket_nobody_listens_on_means_no_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMHOOKS_STATE_DIR", str(tmp_path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(tmp_path / hookclient.AGENT_SOCKET))  # bound, nobody listens
        assert hookclient.ask_agent("qemu", ["web1", "prepare"], TAGGED) is None


@pytest.mark.parametrize("header, payload", [
    ({"trigger": "nic-event", "argv": ["add", "ens32"]}, b""),
    ({"trigger": "qemu", "argv": ["web1", "prepare", "begin", "-"]}, TAGGED),
])
def test_the_agent_takes_no_call_that_arrived_cut_short(header, payload):
    # A client whose write was denied half-way has sent a part of its call; only a whole
    # call is one, so the client may run it itself without its running twice.
    stream = io.BytesIO()
    hookclient.send_message(stream, header, payload)
    whole = stream.getvalue()
    assert hookclient.read_message(io.BytesIO(whole)) == ({**header, "size": len(payload)},
                                                          payload)
    assert hookclient.read_message(io.BytesIO(b"")) is None
    for cut in range(1, len(whole)):
        with pytest.raises(hookclient.GarbledMessage):
            hookclient.read_message(io.BytesIO(whole[:cut]))

