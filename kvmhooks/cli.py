"""The `kvmhooks` command: thin subcommands over the engine. Exit 0, 1 (host or runtime
failure) or 2 (bad input), with one line per error."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile

from . import __version__
from . import config as config_module
from .domain import DIRECT_MODES, KINDS, Attachment, format_trunk, parse_vlans
from .errors import HostError, KvmhooksError, UsageError

# hookclient.py runs alone under `python3 -I -S` and checks NIC events too: their actions
# live there.
from .hookclient import NIC_ACTIONS
from .names import ifname_problem, normalize_mac


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .logsetup import setup
    setup(to_stderr=True)
    try:
        return args.run(args) or 0
    except KvmhooksError as error:
        print(f"kvmhooks: {error}", file=sys.stderr)
        return error.exit_status
    except Exception as error:  # the one catch-all of this entry point
        print(f"kvmhooks: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"kvmhooks: {self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kvmhooks", description=(
        "Host networking that follows KVM guests, from their libvirt metadata."))
    parser.add_argument("--version", action="version", version=f"kvmhooks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="the plan for this host, changing nothing")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("domain", nargs="?", help="a libvirt domain name")
    source.add_argument("--xml", metavar="FILE",
                        help="a domain XML file instead ('-': standard input)")
    explain.add_argument("--incoming", action="store_true",
                         help="for a guest that would come here by migration or restore "
                              "(a preflight): native sources are rewritten, not refused")
    explain.add_argument("--json", action="store_true", help="the plan as JSON")
    explain.set_defaults(run=_explain)

    attach = commands.add_parser("attach", help="tag an interface in a persistent definition")
    attach.add_argument("domain", help="a libvirt domain name")
    attach.add_argument("--mac", required=True,
                        help="the interface's MAC (an interface is added when none has it)")
    attach.add_argument("--type", required=True, choices=KINDS,
                        help="bridge: a tap on the uplink's bridge; direct: a macvtap on its "
                             "NIC; network: the libvirt network --network names")
    attach.add_argument("--uplink", metavar="NAME",
                        help="an uplink of the host config (--type bridge or direct)")
    attach.add_argument("--network", metavar="NAME",
                        help="a libvirt network (--type network; always the native form)")
    attach.add_argument("--mode", choices=DIRECT_MODES,
                        help="the macvtap's mode (--type direct; default bridge)")
    attach.add_argument("--vlan", metavar="ID",
                        help="the access VLAN (1-4094), whose frames the guest sees "
                             "untagged (--type bridge or direct)")
    attach.add_argument("--trunk", metavar="LIST",
                        help="VLANs the guest sees tagged, IDs and ranges such as "
                             "100,200-210 (--type bridge)")
    attach.add_argument("--native", action="store_true",
                        help="write type bridge/direct with this host's source instead of "
                             "the hook-owned form (VLANs on type bridge take the "
                             "hook-owned form)")
    attach.set_defaults(run=_attach)

    in_line = commands.add_parser("apply", help="bring definitions and running guests in line")
    in_line.add_argument("domains", nargs="*", metavar="DOMAIN",
                         help="the domains to bring in line (default: every domain, and "
                              "orphaned devices removed)")
    in_line.set_defaults(run=_bring_in_line)

    status = commands.add_parser("status", help="every tagged interface and its state")
    form = status.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the rows as JSON")
    form.add_argument("--prometheus", action="store_true",
                      help="interfaces, uplinks and counts in the format of "
                           "node_exporter's textfile collector")
    status.add_argument("--output", metavar="FILE",
                        help="with --prometheus: write FILE (mode 0644) by an atomic "
                             "rename instead of standard output")
    status.set_defaults(run=_status)

    check = commands.add_parser("check-config", help="validate a host config")
    check.add_argument("file", nargs="?",
                       help="the config to check (default: the one kvmhooks reads)")
    check.set_defaults(run=_check_config)

    nic_event = commands.add_parser("nic-event", help="what the udev rule runs for a NIC")
    nic_event.add_argument("event", nargs="+", metavar="ACTION IFNAME",
                           help="add, move or remove, and the interface name (or the "
                                "unit's instance ACTION:IFNAME[:SEQNUM], as it is)")
    nic_event.set_defaults(run=_nic_event)

    watch = commands.add_parser("watch", help="handle NIC events from a udev monitor")
    watch.set_defaults(run=_watch)

    agent = commands.add_parser("agent", help="serve the hooks with the engine kept warm")
    agent.set_defaults(run=_agent)

    install = commands.add_parser("install", help="install the hook shims (non-RPM install)")
    install.add_argument("--root", default="/",
                         help="write under this directory instead of / (for images)")
    install.set_defaults(run=_install)
    return parser


def _check_config(args) -> int:
    config = config_module.load(args.file)
    print(f"{config.path}: ok ({_count(len(config.uplinks), 'uplink')}, "
          f"{_count(len(config.networks), 'network')})")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _install(args) -> int:
    from .install import install
    lines = install(args.root)
    print("\n".join(lines))
    if any(line.startswith("installed") for line in lines) and args.root == "/":
        print("restart libvirtd (or virtqemud and virtnetworkd) so that it runs new hooks")
    return 0


def _nic_event(args) -> int:
    from .engine.nic import handle
    action, ifname = _nic_event_words(args.event)
    if problem := ifname_problem(ifname):
        raise UsageError(f"nic-event: interface name {problem}")
    for line in handle(action, ifname):
        print(line)
    return 0


def _nic_event_words(event: list[str]) -> tuple[str, str]:
    """ACTION IFNAME, or the unit's instance verbatim, ACTION:IFNAME[:SEQNUM] (an
    interface name holds no ':')."""
    words = event
    if len(event) == 1:
        words = event[0].split(":")
        if len(words) == 3 and words[2].isdigit():
            words = words[:2]
    if len(words) != 2 or words[0] not in NIC_ACTIONS:
        raise UsageError("nic-event takes ACTION IFNAME (ACTION: add, move or remove)")
    return words[0], words[1]


def _agent(args) -> int:
    from .agent import listener, serve
    serve(listener())
    return 0


def _watch(args) -> int:
    from .engine.nic import watch
    watch()
    return 0


def _explain(args) -> int:
    from .engine.admin import explain
    domain, plan = explain(args.domain, args.xml)
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    if not domain.tagged:
        print(f"domain {domain.name}: no kvmhooks metadata; nothing to do")
        return 0
    print(f"domain {domain.name} on this host:")
    for resolution in plan.resolutions:
        bridge = f", bridge {resolution.bridge}" if resolution.bridge else ""
        nic = resolution.nic or "away (guests go on the bridge until it comes back)"
        print(f"  uplink {resolution.uplink}: NIC {nic}{bridge}")
    if not plan.actions:
        print("  devices: nothing to create")
    for action in plan.actions:
        print(f"  {action.describe()}")
    if plan.sources:
        print("  native sources the migrate or restore hook writes for this host:"
              if args.incoming else
              f"  native sources that differ (a start is refused until "
              f"'kvmhooks apply {domain.name}'):")
        for change in plan.sources:
            print(f"  {change.describe()}")
    return 0


def _attach(args) -> int:
    from .engine.admin import attach
    mac = normalize_mac(args.mac)
    if mac is None:
        raise UsageError(f"--mac: '{args.mac}' is not a MAC address")
    if args.mode and args.type != "direct":
        raise UsageError("--mode applies only to --type direct")
    if args.trunk is not None and args.type != "bridge":
        raise UsageError("--trunk applies only to --type bridge")
    if args.vlan is not None and args.type == "network":
        raise UsageError("--vlan applies only to --type bridge or direct")
    if args.type == "network":
        if args.network is None or args.uplink is not None:
            raise UsageError("--type network takes --network NAME and no --uplink")
        attach(args.domain, Attachment(mac, "network", network=args.network), True)
        print(f"domain {args.domain}: interface {mac} attached to network {args.network} "
              "(native)")
        return 0
    if args.uplink is None or args.network is not None:
        raise UsageError(f"--type {args.type} takes --uplink NAME and no --network")
    # The metadata parser's checks and words: a bad ID is the same line either way.
    vlan, trunk = parse_vlans(args.vlan, args.trunk, args.domain, mac)
    attachment = Attachment(mac, args.type, uplink=args.uplink,
                            mode=(args.mode or "bridge") if args.type == "direct" else None,
                            vlan=vlan, trunk=trunk)
    attach(args.domain, attachment, args.native)
    details = [args.type]
    if attachment.mode:
        details.append(f"mode {attachment.mode}")
    if vlan is not None:
        details.append(f"vlan {vlan}")
    if trunk:
        details.append(f"trunk {format_trunk(trunk)}")
    details.append("native" if args.native else "hook-owned")
    print(f"domain {args.domain}: interface {mac} attached to uplink {args.uplink} "
          f"({', '.join(details)})")
    return 0


def _bring_in_line(args) -> int:
    from .engine.admin import bring_in_line
    lines, errors = bring_in_line(args.domains)
    for line in lines:
        print(line)
    for error in errors:
        print(f"kvmhooks: {error}", file=sys.stderr)
    return max((error.exit_status for error in errors), default=0)


def _status(args) -> int:
    from .engine.admin import status
    if args.output is not None and not args.prometheus:
        raise UsageError("status: --output applies only to --prometheus")
    report = status()
    for error in report.errors:
        print(f"kvmhooks: {error}", file=sys.stderr)
    rows = report.interfaces
    if args.prometheus:
        from .metrics import exposition
        from .state import counters
        text = exposition(report, counters())
        if args.output is None:
            sys.stdout.write(text)
        else:
            _replace_file(args.output, text)
        return 0
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return 0
    header = ("DOMAIN", "MAC", "UPLINK", "NIC", "DEVICE", "STATE")
    table = [header] + [(r.domain, r.mac, r.uplink, r.nic, r.device,
                         r.state + (f" ({r.reason})" if r.reason else "")) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    return 0


def _replace_file(path: str, text: str) -> None:
    """path holds text, or what it held before: node_exporter may read it at any
    moment, and a half-written file would be read as it is. The temporary file's name
    does not end in .prom, which the textfile collector leaves alone."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise HostError(f"{path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o644)  # node_exporter does not run as root
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise HostError(f"{path}: {error.strerror}") from None
