"""One hook call or NIC event -> one engine call -> its answer (exit status, stdout, one
line per error). The agent runs it for each connection; hookclient.py runs it in-process
where no agent listens.

libvirt runs the qemu hook as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain
XML on stdin and waits for it; the network hook as `network NETWORK OPERATION ...` with
<hookData> on stdin; udev hands over `nic-event ACTION IFNAME`. hookclient.py has already
turned away what has no work (triage).
"""

from __future__ import annotations

from .domain import parse_domain
from .engine import hooks
from .engine.nic import handle
from .errors import KvmhooksError

# hookclient.py runs alone under `python3 -I -S`: the hook operations and answers are its.
from .hookclient import (
    QEMU_REWRITES_XML,
    Answer,
    describe_call,
    never_fails,
    one_line,
    release_uuid,
)
from .logsetup import setup
from .network import parse_hook_data


def run(trigger: str, argv: list[str], data: bytes) -> Answer:
    """The work of one call; every exception becomes one line, and calls that must never
    fail (reconnect, attach, release, network stopped, NIC events) exit 0 whatever happens."""
    log = setup(to_stderr=False)
    subject, call = describe_call(trigger, argv)
    name, operation = (argv[1], argv[0]) if trigger == "nic-event" else (argv[0], argv[1])
    never_fail = never_fails(trigger, argv)
    try:
        stdout, lines = _call(trigger, name, operation, data, call)
        return Answer(0, stdout, "\n".join(lines))
    except KvmhooksError as error:
        log.error("%s: %s", call, error)
        return Answer(0 if never_fail else error.exit_status, stderr=str(error))
    except Exception as error:  # the one catch-all of the hooks and NIC events
        log.exception("%s: %s: internal error", call, subject)
        return Answer(0 if never_fail else 1, stderr=one_line(
            f"{subject}: internal error in {call}: {type(error).__name__}: {error}"))


def _call(trigger: str, name: str, operation: str, data: bytes,
          call: str) -> tuple[bytes, list[str]]:
    """(stdout, lines for stderr) of one call."""
    if trigger == "nic-event":
        handle(operation, name)
        return b"", []
    if trigger == "network":
        network = parse_hook_data(data, name)
        if operation == "start":
            hooks.network_start(network, call)
            return b"", []
        return b"", [f"network {name}: {call}: {failure}"
                     for failure in hooks.network_stopped(network, call)]
    if operation in QEMU_REWRITES_XML:
        return hooks.rewrite_for_host(data, name), []
    if operation == "release":
        uuid = release_uuid(data)
        if uuid is None:
            return b"", [f"domain {name}: {call}: no <uuid> in the domain XML; "
                         "nothing released"]
        return b"", [f"domain {name}: {call}: {failure}"
                     for failure in hooks.release(name, uuid, call)]
    domain = parse_domain(data, name)
    if operation == "prepare":
        hooks.prepare(domain, call)
    else:
        hooks.repair(domain, call)
    return b"", []
