"""The `kvmhooks` command: thin subcommands over the engine. Exit 0, 1 (host or runtime
failure) or 2 (bad input), with one line per error."""

from __future__ import annotations

import argparse
import copy
import json
import sys

from . import config as config_module
from . import engine
from .domain import DIRECT_MODES, Attachment, Domain, domain_from_tree
from .errors import KvmhooksError, UsageError
from .names import normalize_mac


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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="the plan for this host, changing nothing")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("domain", nargs="?", help="a libvirt domain name")
    source.add_argument("--xml", metavar="FILE", help="a domain XML file instead")
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(run=cmd_explain)

    attach = commands.add_parser("attach", help="tag an interface in a persistent definition")
    attach.add_argument("domain")
    attach.add_argument("--mac", required=True)
    attach.add_argument("--uplink", required=True)
    attach.add_argument("--type", required=True, choices=("bridge", "direct"))
    attach.add_argument("--mode", choices=DIRECT_MODES)
    attach.add_argument("--native", action="store_true",
                        help="write type bridge/direct with this host's source instead of "
                             "the hook-owned form")
    attach.set_defaults(run=cmd_attach)

    apply = commands.add_parser("apply", help="bring definitions and running guests in line")
    apply.add_argument("domains", nargs="*", metavar="DOMAIN")
    apply.set_defaults(run=cmd_apply)

    status = commands.add_parser("status", help="every tagged interface and its state")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    check = commands.add_parser("check-config", help="validate a host config")
    check.add_argument("file", nargs="?")
    check.set_defaults(run=cmd_check_config)

    nic_event = commands.add_parser("nic-event", help="what the udev rule runs for a NIC")
    nic_event.add_argument("event", nargs="+", metavar="ACTION IFNAME",
                           help="add, move or remove, and the interface name (or the "
                                "systemd instance ACTION:IFNAME[:SEQNUM])")
    nic_event.set_defaults(run=cmd_nic_event)

    watch = commands.add_parser("watch", help="handle NIC events from a udev monitor")
    watch.set_defaults(run=cmd_watch)

    agent = commands.add_parser("agent", help="serve the hooks with the engine kept warm")
    agent.set_defaults(run=cmd_agent)

    install = commands.add_parser("install", help="install the hook shims (non-RPM install)")
    install.add_argument("--root", default="/")
    install.set_defaults(run=cmd_install)
    return parser


def cmd_check_config(args) -> int:
    config = config_module.load(args.file)
    print(f"{config.path}: ok ({_count(len(config.uplinks), 'uplink')}, "
          f"{_count(len(config.networks), 'network')})")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def cmd_install(args) -> int:
    from .install import install
    lines = install(args.root)
    print("\n".join(lines))
    if any(line.startswith("installed") for line in lines) and args.root == "/":
        print("restart libvirtd (or virtqemud and virtnetworkd) so that it runs new hooks")
    return 0


def cmd_nic_event(args) -> int:
    from .names import ifname_problem
    from .nic import handle
    words = args.event[0].split(":") if len(args.event) == 1 else args.event
    if len(words) not in (2, 3) or words[0] not in ("add", "move", "remove"):
        raise UsageError("nic-event takes ACTION IFNAME (ACTION: add, move or remove)")
    action, ifname = words[0], words[1]
    if problem := ifname_problem(ifname):
        raise UsageError(f"nic-event: interface name {problem}")
    for line in handle(action, ifname):
        print(line)
    return 0


def cmd_agent(args) -> int:
    from .agent import listener, serve
    serve(listener())
    return 0


def cmd_watch(args) -> int:
    from .nic import watch
    watch()
    return 0


def cmd_explain(args) -> int:
    if args.xml:
        try:
            with open(args.xml, "rb") as stream:
                data = stream.read()
        except OSError as error:
            raise UsageError(f"{args.xml}: {error.strerror}") from None
        domain = engine.read_domain(data, args.xml)[1]
    else:
        from .virt import Libvirt
        with Libvirt() as virt:
            domain = engine.read_domain(virt.definition(virt.domain(args.domain)),
                                        args.domain)[1]
    if not domain.tagged and not args.json:
        print(f"domain {domain.name}: no kvmhooks metadata; nothing to do")
        return 0
    plan = engine.explain(domain, config_module.load())
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
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
        print(f"  native sources that differ (a start is refused until "
              f"'kvmhooks apply {domain.name}'):")
        for source in plan.sources:
            print(f"  {source.describe()}")
    return 0


def cmd_attach(args) -> int:
    from .netlink import Netlink
    from .planner import resolve, resolve_all, uplink_for, wanted_source
    from .rewrite import set_attachment, set_hook_owned, set_native
    from .virt import Libvirt
    from .xmlsafe import parse, serialize
    mac = normalize_mac(args.mac)
    if mac is None:
        raise UsageError(f"--mac: '{args.mac}' is not a MAC address")
    if args.mode and args.type != "direct":
        raise UsageError("--mode applies only to --type direct")
    attachment = Attachment(mac, args.type, uplink=args.uplink,
                            mode=(args.mode or "bridge") if args.type == "direct" else None)
    config = config_module.load()
    with Libvirt() as virt:
        dom = virt.domain(args.domain)
        root = parse(virt.definition(dom))
        set_attachment(root, attachment)
        set_hook_owned(root, mac)
        domain = domain_from_tree(root, args.domain)
        tagged = next(t for t in domain.tagged if t.mac == mac)
        with Netlink() as netlink:
            inventory = engine.scan(netlink, config)
        resolve_all(domain, config, inventory)  # the whole domain must work on this host
        if args.native:
            uplink = uplink_for(tagged, domain, config)
            set_native(root, wanted_source(tagged, resolve(uplink, inventory)))
            domain_from_tree(root, args.domain)
        virt.define(args.domain, serialize(root))
    form = "native" if args.native else "hook-owned"
    print(f"domain {args.domain}: interface {mac} attached to uplink {args.uplink} "
          f"({args.type}{', mode ' + attachment.mode if attachment.mode else ''}, {form})")
    return 0


def cmd_apply(args) -> int:
    from .virt import Libvirt
    config = config_module.load()
    status = 0
    with Libvirt() as virt:
        doms = [virt.domain(name) for name in args.domains] if args.domains else virt.domains()
        for dom in doms:
            try:
                for line in _apply_domain(virt, dom, config):
                    print(line)
            except KvmhooksError as error:
                print(f"kvmhooks: {error}", file=sys.stderr)
                status = max(status, error.exit_status)
        if not args.domains:
            for line in engine.remove_orphans(_running_uuids(virt)):
                print(line)
    return status


def _running_uuids(virt) -> set[str]:
    return {dom.UUIDString().lower() for dom in virt.domains() if virt.running(dom)}


def _apply_domain(virt, dom, config) -> list[str]:
    from .netlink import Netlink
    from .planner import plan_sources
    from .rewrite import apply_source, find_interface, write_sources
    from .xmlsafe import serialize
    name, lines = dom.name(), []
    if dom.isPersistent():
        root, domain = engine.read_domain(virt.definition(dom), name)
        if domain.tagged:
            with Netlink() as netlink:
                plan = plan_sources(domain, config, engine.scan(netlink, config))
            if plan.sources:
                virt.define(name, serialize(write_sources(root, plan.sources)))
                lines += [f"domain {name}: definition: {s.describe()}" for s in plan.sources]
    if not virt.running(dom):
        return lines
    root, domain = engine.read_domain(virt.live(dom), name)
    if not domain.tagged:
        return lines
    repaired = engine.repair(domain, "apply")
    lines += [f"domain {name}: {action.describe()}" for action in repaired.actions]
    with Netlink() as netlink:
        plan = plan_sources(domain, config, engine.scan(netlink, config))
    for source in plan.sources:
        old = find_interface(root, source.mac)
        new = copy.deepcopy(old)
        apply_source(new, source)
        if old.get("type") == "bridge" and source.type == "bridge":
            # libvirt moves a running tap to another bridge in place.
            virt.update_live_interface(dom, serialize(new))
        else:
            for target in new.findall("target"):
                new.remove(target)
            virt.replug(dom, source.mac, serialize(old), serialize(new))
        lines.append(f"domain {name}: running guest: {source.describe()}")
    return lines


def cmd_status(args) -> int:
    from .netlink import Netlink
    from .status import domain_status, orphan_status
    from .virt import Libvirt
    config = config_module.load()
    rows = []
    with Libvirt() as virt, Netlink() as netlink:
        inventory = engine.scan(netlink, config)
        for dom in virt.domains():
            running = virt.running(dom)
            xml = virt.live(dom) if running else virt.definition(dom)
            try:
                domain: Domain = engine.read_domain(xml, dom.name())[1]
            except KvmhooksError as error:
                print(f"kvmhooks: {error}", file=sys.stderr)
                continue
            rows += domain_status(domain, running, config, inventory)
        names = {dom.UUIDString().lower(): dom.name() for dom in virt.domains()}
        rows += orphan_status(inventory, _running_uuids(virt), names)
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
