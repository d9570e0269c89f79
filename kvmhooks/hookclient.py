"""The standard-library front door: what the hook executables and the udev rule run, as
`python3 -I -S hookclient.py TRIGGER ARGS...`.

`-S` leaves out site-packages, so a call with nothing to do costs a bare interpreter start;
so this file cannot import the kvmhooks package (nor lxml, pyroute2 or libvirt), and the RPM
installs it on its own, as /usr/libexec/kvmhooks/hookclient.py. It decides whether a call
has work (triage); hands work to the kvmhooks agent, which keeps the engine warm; and, where
no agent listens, turns site-packages on and runs the same work in-process through
kvmhooks.dispatch.

What both sides need (the metadata namespace, the interface-name rule, one-line error text,
the state directory, the hook operations, the agent's wire format) is defined here, once,
and the package imports it from here. Those imports, and the fallback's import of
kvmhooks.dispatch, are the edges between this file and the package; `-I -S` forces them,
and each carries a comment saying so.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import dataclass

NAMESPACE = "urn:kvmhooks:net:1"  # of the domain metadata kvmhooks reads
DEFAULT_STATE_DIR = "/run/kvmhooks"
AGENT_SOCKET = "agent.sock"
AGENT_TIMEOUT = 600.0  # a prepare may wait its turn at the host behind re-plugs

QEMU_NOTHING_TO_DO = frozenset({"start", "started", "stopped"})
QEMU_REWRITES_XML = frozenset({"migrate", "restore"})  # stdout replaces the domain XML
QEMU_NEVER_FAIL = frozenset({"reconnect", "attach", "release"})  # failing hurts the guest
QEMU_KNOWN = QEMU_NOTHING_TO_DO | QEMU_REWRITES_XML | QEMU_NEVER_FAIL | {"prepare"}
NETWORK_OPERATIONS = frozenset({"start", "stopped"})
NIC_ACTIONS = frozenset({"add", "move", "remove"})
_UUID = re.compile(rb"<uuid>\s*([0-9a-fA-F-]{36})\s*</uuid>")
# What str.splitlines() splits on, and other control characters: input text quoted in an
# error line must never start a line of its own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """text with line breaks and control characters written as escapes."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)
# The kernel refuses '/', ':' and white space in names (dev_valid_name); kvmhooks also
# refuses shell and glob metacharacters, so a name is always safe in a log line.
IFNAME = re.compile(r"^[A-Za-z0-9_.+-]{1,15}$")


@dataclass(frozen=True)
class Answer:
    """The call is answered without the engine."""

    status: int = 0
    stdout: bytes = b""
    stderr: str = ""


@dataclass(frozen=True)
class Work:
    """The call needs the engine, with this input."""

    data: bytes = b""


def state_dir() -> str:
    return os.environ.get("KVMHOOKS_STATE_DIR", DEFAULT_STATE_DIR)


def triage(trigger: str, argv: list[str], stdin) -> Answer | Work:
    """trigger: qemu, network or nic-event; argv as libvirt or udev passes it."""
    if trigger == "qemu":
        return _triage_qemu(argv, stdin)
    if trigger == "network":
        return _triage_network(argv, stdin)
    if trigger == "nic-event":
        if len(argv) != 2 or argv[0] not in NIC_ACTIONS:
            return Answer(2, stderr="usage: nic-event add|move|remove IFNAME")
        if not IFNAME.match(argv[1]):
            return Answer(2, stderr=one_line(f"nic-event: {argv[1]!r} is not an interface "
                                             "name (1 to 15 of letters, digits, '_.+-')"))
        return Work()
    return Answer(2, stderr=one_line(f"unknown trigger '{trigger}' (qemu, network or "
                                     "nic-event)"))


def _triage_qemu(argv: list[str], stdin) -> Answer | Work:
    if len(argv) < 2:
        return Answer(2, stderr="usage: qemu DOMAIN OPERATION SUB-OPERATION EXTRA "
                                "(as libvirt calls it)")
    name, operation = argv[0], argv[1]
    if operation in QEMU_NOTHING_TO_DO:
        return Answer()
    if operation not in QEMU_KNOWN:
        return Answer(stderr=one_line(f"qemu hook: ignoring unknown operation '{operation}' "
                                      f"for domain {name}"))
    data = stdin.read()
    if NAMESPACE.encode() in data or (operation == "release" and _has_record(data)):
        return Work(data)
    return Answer(stdout=data if operation in QEMU_REWRITES_XML else b"")


def _triage_network(argv: list[str], stdin) -> Answer | Work:
    if len(argv) < 2:
        return Answer(2, stderr="usage: network NETWORK OPERATION SUB-OPERATION EXTRA "
                                "(as libvirt calls it)")
    if argv[1] not in NETWORK_OPERATIONS:
        return Answer()
    return Work(stdin.read())


def record_path(uuid: str) -> str:
    """Where the record of what a domain's prepare built lives."""
    return os.path.join(state_dir(), "domains", f"{uuid}.json")


def release_uuid(data: bytes) -> str | None:
    match = _UUID.search(data)
    return match.group(1).decode("ascii").lower() if match else None


def _has_record(data: bytes) -> bool:
    """Whether kvmhooks built something for this domain (its metadata may be gone)."""
    uuid = release_uuid(data)
    return uuid is not None and os.path.exists(record_path(uuid))


# --- the agent's wire format: one JSON line, then that many bytes ------------------------

def send_message(stream, header: dict, payload: bytes) -> None:
    stream.write(json.dumps({**header, "size": len(payload)}).encode() + b"\n" + payload)
    stream.flush()


def read_message(stream) -> tuple[dict, bytes] | None:
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    payload = stream.read(header["size"]) if header["size"] else b""
    return header, payload


def ask_agent(trigger: str, argv: list[str], data: bytes) -> Answer | None:
    """The agent's answer, or None when no agent listens (nothing was sent then)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(AGENT_TIMEOUT)
    try:
        connection.connect(os.path.join(state_dir(), AGENT_SOCKET))
    except OSError:
        connection.close()
        return None
    with connection, connection.makefile("rwb") as stream:
        send_message(stream, {"trigger": trigger, "argv": argv}, data)
        reply = read_message(stream)
    if reply is None:
        return Answer(1, stderr=f"{trigger}: the kvmhooks agent closed the connection")
    header, stdout = reply
    return Answer(header["status"], stdout, header.get("stderr", ""))


# --- where no agent listens: the engine in this process --------------------------------

def run_in_process(trigger: str, argv: list[str], data: bytes) -> Answer:
    """Import the engine here (site-packages first: this interpreter started without)."""
    import site
    site.main()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if trigger == "nic-event":
        return _detach_nic_event(argv)
    # The in-process fallback is the one edge from here into the package, after site.main().
    from kvmhooks.dispatch import run
    return run(trigger, argv, data)


def _detach_nic_event(argv: list[str]) -> Answer:
    """udev must stay fast: handle the event in a process of its own and return."""
    child = os.fork()
    if child > 0:
        os.waitpid(child, 0)  # the first child leaves at once; the grandchild works
        return Answer()
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        from kvmhooks.dispatch import run  # as in run_in_process
        run("nic-event", argv, b"")
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    if not argv:
        answer = Answer(2, stderr="usage: hookclient qemu|network|nic-event ARGS...")
    else:
        answer = triage(argv[0], argv[1:], sys.stdin.buffer)
        if isinstance(answer, Work):
            data = answer.data
            answer = ask_agent(argv[0], argv[1:], data) or run_in_process(argv[0], argv[1:],
                                                                          data)
    return write_answer(answer, sys.stdout.buffer, sys.stderr)


def write_answer(answer: Answer, stdout, stderr) -> int:
    """Put an answer where libvirt reads it; returns its exit status."""
    if answer.stdout:
        stdout.write(answer.stdout)
        stdout.flush()
    if answer.stderr:
        stderr.write("".join(f"kvmhooks: {line}\n" for line in answer.stderr.splitlines()))
        stderr.flush()
    return answer.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
