"""The standard-library front door: what the hook executables and the udev rule run, as
`python3 -I -S hookclient.py TRIGGER ARGS...`.

`-S` leaves out site-packages, so a call with nothing to do costs a bare interpreter start;
so this file cannot import the kvmhooks package (nor lxml, pyroute2 or libvirt), and the RPM
installs it on its own, as /usr/libexec/kvmhooks/hookclient.py. It decides whether a call
has work (triage); hands work to the kvmhooks agent, which keeps the engine warm; and, where
no agent listens or the call cannot reach it (a socket SELinux denies), turns site-packages
on and runs the same work in-process through kvmhooks.dispatch.

What both sides need (the metadata namespace, the interface-name rule, one-line error text,
the state directory, the hook operations, the agent's wire format) is defined here, once,
and the package imports it from here. Those imports, and the fallback's imports of
kvmhooks.logsetup and kvmhooks.dispatch, are the edges between this file and the package;
`-I -S` forces them, and each carries a comment saying so.
"""

from __future__ import annotations

import errno
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
# connect(2) answers these where no agent listens: no line is worth writing then.
NO_AGENT = frozenset({errno.ENOENT, errno.ECONNREFUSED})

QEMU_NOTHING_TO_DO = frozenset({"start", "started", "stopped"})
QEMU_REWRITES_XML = frozenset({"migrate", "restore"})  # non-empty stdout replaces the XML
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
    # Nothing on stdout: for migrate and restore libvirt takes any output, even its own
    # XML echoed, as a rewrite and marks the domain tainted ("hook-script").
    return Answer()


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

MAX_PAYLOAD = 16 * 1024 * 1024  # domain XML is refused over 2 MiB; anything larger is garbage


class GarbledMessage(ValueError):
    """What came over the agent's socket is not a message."""


def encode_message(header: dict, payload: bytes) -> bytes:
    return json.dumps({**header, "size": len(payload)}).encode() + b"\n" + payload


def send_message(stream, header: dict, payload: bytes) -> None:
    stream.write(encode_message(header, payload))
    stream.flush()


def read_message(stream) -> tuple[dict, bytes] | None:
    """(header, payload), or None when the peer closed before sending anything. Only a
    whole message is one: a client whose write failed half-way runs its call itself."""
    line = stream.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):  # without it, a cut header may still parse
        raise GarbledMessage("its header line is cut short")
    try:
        header = json.loads(line)
    except ValueError:
        raise GarbledMessage("its header is not JSON") from None
    size = header.get("size") if isinstance(header, dict) else None
    if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD:
        raise GarbledMessage("its header has no valid size")
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        raise GarbledMessage(f"{len(payload)} of its {size} bytes came")
    return header, payload


class AgentFailure(Exception):
    """The agent took a call and gave no usable answer; str() says how."""


class CallNotSent(Exception):
    """The call never reached the agent whole: making the socket, connecting (EACCES where
    SELinux denies the socket) or sending failed. The agent runs only whole calls
    (read_message), so the call may run in this process without running twice."""


def ask_agent(trigger: str, argv: list[str], data: bytes) -> Answer | None:
    """The agent's answer, or None when no agent listens; CallNotSent when the call could
    not be handed over. Once the whole call is sent, the agent may be running it: a
    failure from then on is an AgentFailure, never a second run here."""
    path = os.path.join(state_dir(), AGENT_SOCKET)
    connection = None
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(AGENT_TIMEOUT)
        connection.connect(path)
    except OSError as error:
        if connection is not None:
            connection.close()
        if error.errno in NO_AGENT:
            return None
        raise CallNotSent(f"cannot connect to the kvmhooks agent's socket {path}: "
                          f"{error.strerror or error}") from None
    with connection:
        try:
            connection.sendall(encode_message({"trigger": trigger, "argv": argv}, data))
        except socket.timeout:
            raise AgentFailure(f"the kvmhooks agent took no call within "
                               f"{AGENT_TIMEOUT:g} s") from None
        except OSError as error:
            raise CallNotSent(f"the kvmhooks agent's socket {path} failed while the call "
                              f"was being sent: {error.strerror or error}") from None
        return _agent_answer(connection)


def _agent_answer(connection: socket.socket) -> Answer:
    try:
        with connection.makefile("rb") as stream:
            reply = read_message(stream)
    except socket.timeout:
        raise AgentFailure(f"the kvmhooks agent gave no answer within "
                           f"{AGENT_TIMEOUT:g} s") from None
    except GarbledMessage as error:
        raise AgentFailure(f"the kvmhooks agent's answer is garbled ({error})") from None
    except OSError as error:
        raise AgentFailure(f"the connection to the kvmhooks agent failed: "
                           f"{error.strerror or error}") from None
    if reply is None:
        raise AgentFailure("the kvmhooks agent closed the connection without an answer")
    header, stdout = reply
    status, stderr = header.get("status"), header.get("stderr", "")
    if not isinstance(status, int) or isinstance(status, bool) or not isinstance(stderr, str):
        raise AgentFailure("the kvmhooks agent's answer is garbled (no valid status)")
    return Answer(status, stdout, stderr)


# --- where the agent does not get the call: the engine in this process -----------------

def run_in_process(trigger: str, argv: list[str], data: bytes, why: str = "") -> Answer:
    """Import the engine here (site-packages first: this interpreter started without).
    why: the reason the agent did not get the call, logged in one line; "" where no agent
    listens (a host without one is set up so)."""
    import site
    site.main()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if why:
        # An edge into the package, after site.main(), as the dispatcher's below.
        from kvmhooks.logsetup import setup
        subject, call = describe_call(trigger, argv)
        setup(to_stderr=False).warning(
            "%s", one_line(f"{subject}: {call}: {why}; the call runs in this process"))
    if trigger == "nic-event":
        return _detach_nic_event(argv)
    # The in-process fallback's edge from here into the package, after site.main().
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
            answer = _work(argv[0], argv[1:], answer.data)
    return write_answer(answer, sys.stdout.buffer, sys.stderr)


def _work(trigger: str, argv: list[str], data: bytes) -> Answer:
    try:
        try:
            answer = ask_agent(trigger, argv, data)
        except CallNotSent as error:
            return run_in_process(trigger, argv, data, why=str(error))
        return answer or run_in_process(trigger, argv, data)
    except Exception as error:  # the client's one catch-all: an agent that failed, a broken install
        subject, call = describe_call(trigger, argv)
        reason = str(error) if isinstance(error, AgentFailure) else \
            f"cannot run the engine: {type(error).__name__}: {error}"
        return Answer(0 if never_fails(trigger, argv) else 1,
                      stderr=one_line(f"{subject}: {call}: {reason}"))


def describe_call(trigger: str, argv: list[str]) -> tuple[str, str]:
    """("domain web1", "qemu prepare") for the lines that name a call; argv as triaged."""
    if trigger == "nic-event":
        return f"NIC {argv[1]}", f"nic-event {argv[0]}"
    noun = "domain" if trigger == "qemu" else "network"
    return f"{noun} {argv[0]}", f"{trigger} {argv[1]}"


def never_fails(trigger: str, argv: list[str]) -> bool:
    """Calls whose failure would hurt more than it tells: a failed reconnect makes libvirt
    kill the running guest; release, network stopped and NIC events have no one to refuse."""
    if trigger == "qemu":
        return argv[1] in QEMU_NEVER_FAIL
    return trigger == "nic-event" or argv[1] == "stopped"


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
