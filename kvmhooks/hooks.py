"""libvirt hook entry points: argv + stdin -> exit status.

libvirt runs the qemu hook as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain
XML on stdin, five times per start and stop, and waits for it; so the calls that have
nothing to do return before anything heavy (lxml, pyroute2, libvirt) is imported.
A hook never calls libvirt: libvirtd is waiting for it.
"""

from __future__ import annotations

import os
import re
import sys

NAMESPACE_BYTES = b"urn:kvmhooks:net:1"
NOTHING_TO_DO = frozenset({"start", "started", "stopped"})
REWRITES_XML = frozenset({"migrate", "restore"})  # stdout replaces the domain XML
NEVER_FAIL = frozenset({"reconnect", "attach", "release"})  # failing would hurt the guest
KNOWN = NOTHING_TO_DO | REWRITES_XML | NEVER_FAIL | {"prepare"}
_UUID = re.compile(rb"<uuid>\s*([0-9a-fA-F-]{36})\s*</uuid>")


def qemu_main(argv: list[str], stdin=None, stdout=None) -> int:
    """argv without the program name: DOMAIN OPERATION [SUB-OPERATION [EXTRA]]."""
    if len(argv) < 2:
        _say("usage: qemu DOMAIN OPERATION SUB-OPERATION EXTRA (as libvirt calls it)")
        return 2
    name, operation = argv[0], argv[1]
    if operation in NOTHING_TO_DO:
        return 0
    if operation not in KNOWN:
        _say(f"qemu hook: ignoring unknown operation '{operation}' for domain {name}")
        return 0
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    data = stdin.read()
    if operation in REWRITES_XML and NAMESPACE_BYTES not in data:
        stdout.write(data)
        return 0
    if NAMESPACE_BYTES not in data and not (operation == "release" and _has_record(data)):
        return 0
    return _run_engine(name, operation, data, stdout)


NETWORK_OPERATIONS = frozenset({"start", "stopped"})


def network_main(argv: list[str], stdin=None) -> int:
    """argv without the program name: NETWORK OPERATION SUB-OPERATION EXTRA, with
    <hookData><network>...</network></hookData> on stdin."""
    if len(argv) < 2:
        _say("usage: network NETWORK OPERATION SUB-OPERATION EXTRA (as libvirt calls it)")
        return 2
    name, operation = argv[0], argv[1]
    if operation not in NETWORK_OPERATIONS:
        return 0
    from .errors import KvmhooksError
    from .logsetup import setup
    log = setup(to_stderr=False)
    call = f"network {operation}"
    try:
        from . import engine
        from .network import parse_hook_data
        network = parse_hook_data((stdin or sys.stdin.buffer).read(), name)
        if operation == "start":
            engine.network_start(network, call)
        else:
            for failure in engine.network_stopped(network, call):
                _say(f"network {name}: {call}: {failure}")
        return 0
    except KvmhooksError as error:
        log.error("%s: %s", call, error)
        _say(str(error))
        return 0 if operation == "stopped" else error.exit_status
    except Exception as error:  # the one catch-all of this entry point
        log.exception("%s: network %s: internal error", call, name)
        _say(f"network {name}: internal error in {call}: {type(error).__name__}: {error}")
        return 0 if operation == "stopped" else 1


def _has_record(data: bytes) -> bool:
    """Whether kvmhooks built something for this domain (its metadata may be gone)."""
    from .config import state_dir
    match = _UUID.search(data)
    if not match:
        return False
    uuid = match.group(1).decode("ascii").lower()
    return os.path.exists(os.path.join(state_dir(), "domains", f"{uuid}.json"))


def _run_engine(name: str, operation: str, data: bytes, stdout) -> int:
    from . import engine
    from .errors import KvmhooksError
    from .logsetup import setup
    log = setup(to_stderr=False)
    call = f"qemu {operation}"
    try:
        if operation == "prepare":
            engine.prepare(engine.read_domain(data, name)[1], call)
        elif operation in REWRITES_XML:
            stdout.write(engine.rewrite_for_host(data, name))
        elif operation == "release":
            _release(name, data, call)
        else:
            engine.repair(engine.read_domain(data, name)[1], call)
        return 0
    except KvmhooksError as error:
        log.error("%s: %s", call, error)
        _say(str(error))
        return 0 if operation in NEVER_FAIL else error.exit_status
    except Exception as error:  # the one catch-all of this entry point
        log.exception("%s: domain %s: internal error", call, name)
        _say(f"domain {name}: internal error in {call}: {type(error).__name__}: {error}")
        return 0 if operation in NEVER_FAIL else 1


def _release(name: str, data: bytes, call: str) -> None:
    from . import engine
    match = _UUID.search(data)
    if match is None:
        _say(f"domain {name}: {call}: no <uuid> in the domain XML; nothing released")
        return
    for failure in engine.release(name, match.group(1).decode("ascii").lower(), call):
        _say(f"domain {name}: {call}: {failure}")


def _say(line: str) -> None:
    sys.stderr.write(f"kvmhooks: {line}\n")
    sys.stderr.flush()
