"""libvirt hook entry points: argv + stdin -> exit status.

libvirt runs the qemu hook as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain
XML on stdin, five times per start and stop, and waits for it. The installed hook is a
shell script that answers start/started/stopped itself and hands the rest to
hookclient.py (standard library only), which decides whether there is work and passes it
to the agent or, where none runs, to run_engine here. A hook never calls libvirt:
libvirtd is waiting for it.
"""

from __future__ import annotations

import sys

from .hookclient import (
    QEMU_NEVER_FAIL,
    QEMU_REWRITES_XML,
    Answer,
    Work,
    one_line,
    release_uuid,
    triage,
    write_answer,
)


def qemu_main(argv: list[str], stdin=None, stdout=None, stderr=None) -> int:
    """The qemu hook in this process: argv without the program name."""
    return _main("qemu", argv, stdin, stdout, stderr)


def network_main(argv: list[str], stdin=None, stdout=None, stderr=None) -> int:
    """The network hook in this process: NETWORK OPERATION SUB-OPERATION EXTRA, with
    <hookData><network>...</network></hookData> on stdin."""
    return _main("network", argv, stdin, stdout, stderr)


def _main(trigger: str, argv: list[str], stdin, stdout, stderr) -> int:
    answer = triage(trigger, argv, stdin or sys.stdin.buffer)
    if isinstance(answer, Work):
        answer = run_engine(trigger, argv, answer.data)
    return write_answer(answer, stdout or sys.stdout.buffer, stderr or sys.stderr)


def run_engine(trigger: str, argv: list[str], data: bytes) -> Answer:
    """The work of one hook call or NIC event; exceptions become one line each."""
    from .errors import KvmhooksError
    from .logsetup import setup
    log = setup(to_stderr=False)
    subject = {"qemu": "domain", "network": "network", "nic-event": "NIC"}[trigger]
    name, operation = (argv[1], argv[0]) if trigger == "nic-event" else (argv[0], argv[1])
    call = f"{trigger} {operation}"
    never_fail = (operation in QEMU_NEVER_FAIL if trigger == "qemu"
                  else operation == "stopped" or trigger == "nic-event")
    try:
        stdout, lines = _work(trigger, name, operation, data, call)
        return Answer(0, stdout, "\n".join(lines))
    except KvmhooksError as error:
        log.error("%s: %s", call, error)
        return Answer(0 if never_fail else error.exit_status, stderr=str(error))
    except Exception as error:  # the one catch-all of the hooks and NIC events
        log.exception("%s: %s %s: internal error", call, subject, name)
        return Answer(0 if never_fail else 1, stderr=one_line(
            f"{subject} {name}: internal error in {call}: {type(error).__name__}: {error}"))


def _work(trigger: str, name: str, operation: str, data: bytes,
          call: str) -> tuple[bytes, list[str]]:
    """(stdout, lines for stderr) of one call."""
    from . import engine
    if trigger == "nic-event":
        from .nic import handle
        handle(operation, name)
        return b"", []
    if trigger == "network":
        from .network import parse_hook_data
        network = parse_hook_data(data, name)
        if operation == "start":
            engine.network_start(network, call)
            return b"", []
        return b"", [f"network {name}: {call}: {failure}"
                     for failure in engine.network_stopped(network, call)]
    if operation == "prepare":
        engine.prepare(engine.read_domain(data, name)[1], call)
    elif operation in QEMU_REWRITES_XML:
        return engine.rewrite_for_host(data, name), []
    elif operation == "release":
        uuid = release_uuid(data)
        if uuid is None:
            return b"", [f"domain {name}: {call}: no <uuid> in the domain XML; "
                         "nothing released"]
        return b"", [f"domain {name}: {call}: {failure}"
                     for failure in engine.release(name, uuid, call)]
    else:
        engine.repair(engine.read_domain(data, name)[1], call)
    return b"", []
