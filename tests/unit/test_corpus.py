"""The bad-input corpus (tests/corpus/) through the real entry points, without root work.

Every case runs one real entry point in a process of its own:
- the hook client as libvirt and udev run it: `python -I -S kvmhooks/hookclient.py qemu
  DOMAIN OP SUB -` (domain XML on stdin), `network NET OP SUB -` (hookData on stdin),
  `nic-event ACTION IFNAME`;
- the command line: `python -m kvmhooks explain --xml FILE`, `check-config FILE`, `attach`,
  `nic-event`, and argument errors.

KVMHOOKS_STATE_DIR is an empty directory (no agent there: the engine runs in-process) and
KVMHOOKS_CONFIG a corpus config or GOOD_CONFIG, whose NICs do not exist: an input that passes
validation stops at "no NIC on this host" (exit 1) before it can touch anything, so bad input
must be refused before that, with exit 2.

Each case must give the contract's exit status and exactly one line on stderr, starting with
"kvmhooks: ", naming the domain, MAC, key or file; no traceback; nothing on stdout when the
call is refused; no new kh* link on the host. Inputs with entities point them at a file
holding MARKER, at a FIFO that records any open, and at a URL on 127.0.0.1 served by a socket
server that records any connection: the marker never shows, nothing is opened or connected.

Where root can, each process runs in a mount namespace of its own with an empty /dev (but
/dev/null): the in-process engine logs to /dev/log, and on the lab machine another test run
may be listening there and counting errors.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lxml import etree

from kvmhooks.domain import parse_domain
from kvmhooks.errors import BadInput, MetadataError
from kvmhooks.network import parse_hook_data

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
HOOKCLIENT = str(REPO / "kvmhooks" / "hookclient.py")
MARKER = "KT-CORPUS-SECRET-7f3a9c"
DOMAIN = "kc-web"  # the name in every corpus domain XML, and the hook's argv
NETWORK = "kcnet"
MAC1, MAC2 = "02:6b:63:00:00:01", "02:6b:63:00:00:02"
TIMEOUT = 60

GOOD_CONFIG = """\
[uplink.kclan]
nic = "ktnic-absent"
bridge = "khkcbr0"

[uplink.kcsolo]
nic = "ktnic-absent2"

[uplink.kconly]
nic = "ktnic-absent"
domains = ["web-*"]

[network.kcnet]
uplink = "kclan"
"""
NO_NIC = "no NIC on this host"

# kh* links that other test runs on this machine create while we run (tests/helpers.py:
# guest MACs 52:54:00:xx:xx:xx, uplinks uXXXXXX); corpus devices would be kh026b63... or
# kh-kc... or khkc..., so these never hide one of ours.
OTHER_RUNS = re.compile(r"^kh(525400[0-9a-f]{6}|-u[0-9a-f]{6})$")


# --- the cases -------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """argv follows the interpreter; "{input}" is the materialized corpus file. stdin: a
    corpus file (relative to CORPUS), a generated one ("@10MB", "@2MiB+1") or None.
    names: words the stderr line must hold ("{input}" likewise). lines: 1 for an error
    line, 0 for a call that must stay silent. stdout must stay empty: any output of
    migrate or restore would replace the domain XML (and taint the domain)."""

    id: str
    argv: tuple[str, ...]
    status: int
    names: tuple[str, ...] = ()
    stdin: str | None = None
    input: str | None = None
    lines: int = 1
    config: str | None = None  # a corpus config, "@missing", "@directory"; None: GOOD_CONFIG


def hook(*argv: str) -> tuple[str, ...]:
    return ("-I", "-S", HOOKCLIENT, *argv)


def cli(*argv: str) -> tuple[str, ...]:
    return ("-m", "kvmhooks", *argv)


# Domain XML: (file, exit status, words of the line, whether the name comes from the XML,
# whether parse_domain itself must refuse it). "{domain}" is the argv name for the hook
# and, for the command line, the file when the XML cannot say its name.
D = "{domain}"
DOMAIN_FILES = [
    ("truncated.xml", 2, (D, "malformed XML"), False, True),
    ("doctype-internal-entity.xml", 2, (D, "DOCTYPE"), False, True),
    ("external-entity-file.xml", 2, (D, "DOCTYPE"), False, True),
    ("external-entity-fifo.xml", 2, (D, "DOCTYPE"), False, True),
    ("external-entity-url.xml", 2, (D, "DOCTYPE"), False, True),
    ("parameter-entity-url.xml", 2, (D, "DOCTYPE"), False, True),
    ("external-dtd-url.xml", 2, (D, "DOCTYPE"), False, True),
    ("billion-laughs.xml", 2, (D, "DOCTYPE"), False, True),
    ("utf16-external-entity.xml", 2, (D, "DOCTYPE"), False, True),
    ("utf16-parameter-entity-fifo.xml", 2, (D, "DOCTYPE"), False, True),
    ("xinclude-file.xml", 2, (DOMAIN, "<include>"), True, True),
    ("stylesheet-pi-url.xml", 2, (DOMAIN, "schemaLocation"), True, True),
    ("undeclared-entity.xml", 2, (D, "malformed XML"), False, True),
    ("non-utf8.xml", 2, (D, "malformed XML"), False, True),
    ("unsupported-encoding.xml", 2, (D, "malformed XML"), False, True),
    ("nul-byte.xml", 2, (D, "malformed XML"), False, True),
    ("deep-nesting.xml", 2, (D, "malformed XML"), False, True),
    ("empty.xml", 2, (D,), False, True),
    ("not-a-domain.xml", 2, (D, "<network>"), False, True),
    ("duplicate-mac-metadata.xml", 2, (DOMAIN, MAC1, "twice"), True, True),
    ("duplicate-mac-case.xml", 2, (DOMAIN, "02:6b:63:00:00:0a", "twice"), True, True),
    ("duplicate-mac-devices.xml", 2, (DOMAIN, MAC1, "more than one"), True, True),
    ("mac-missing-from-devices.xml", 2, (DOMAIN, MAC2), True, True),
    ("two-net-elements.xml", 2, (DOMAIN, "more than one <net>"), True, True),
    ("unknown-attribute.xml", 2, (DOMAIN, MAC1, "colour"), True, True),
    ("invalid-mode.xml", 2, (DOMAIN, MAC1, "vepa2"), True, True),
    ("invalid-type.xml", 2, (DOMAIN, MAC1, "macvtap"), True, True),
    ("missing-uplink.xml", 2, (DOMAIN, MAC1, "uplink"), True, True),
    ("missing-mac.xml", 2, (DOMAIN, "'mac'"), True, True),
    ("bad-mac.xml", 2, (DOMAIN, "02:6b:63:00:00:zz"), True, True),
    ("mac-with-newline.xml", 2, (DOMAIN, "02:6b:63:00:00:01"), True, True),
    ("target-dev-shell.xml", 2, (DOMAIN, MAC1, "kh$(reboot)"), True, True),
    ("target-dev-path.xml", 2, (DOMAIN, MAC1, "../../etc/kc"), True, True),
    ("target-dev-long.xml", 2, (DOMAIN, MAC1, "longer than 15"), True, True),
    ("uplink-shell.xml", 2, (DOMAIN, MAC1, "kclan;reboot"), True, False),
    ("uplink-path.xml", 2, (DOMAIN, MAC1, "../kclan"), True, False),
    ("uplink-long.xml", 2, (DOMAIN, MAC1, "kclan-much-too-long-for-a-name"), True, False),
    ("network-type-hook-owned.xml", 2, (DOMAIN, MAC1, "network"), True, True),
    ("untaggable-type.xml", 2, (DOMAIN, MAC1, "type='user'"), True, True),
    ("hook-owned-unmanaged.xml", 2, (DOMAIN, MAC1, "managed='no'"), True, True),
    # Two hook-owned interfaces with one target dev: a conflict in the XML alone.
    ("duplicate-target-dev.xml", 2, (DOMAIN, "kh026b63000001"), True, False),
    ("bridge-without-bridge.xml", 2, (DOMAIN, MAC1, "kcsolo"), True, False),
    ("not-allowed.xml", 2, (DOMAIN, "kconly"), True, False),
    ("text-in-metadata.xml", 2, (DOMAIN, "text"), True, True),
    ("unknown-element.xml", 2, (DOMAIN, "<iface>"), True, True),
    ("child-in-interface.xml", 2, (DOMAIN, "child"), True, True),
    ("net-attribute.xml", 2, (DOMAIN, "version"), True, True),
    ("name-shell.xml", 2, ("kc;$(reboot)|web`id`", MAC1), True, True),
    ("name-path.xml", 2, ("../../etc/kc-web", MAC1), True, True),
    ("name-newline.xml", 2, ("kc-web", MAC1), True, True),
    ("@10MB", 2, (D, "over the limit"), False, True),
    ("@2MiB+1", 2, (D, "over the limit"), False, True),
]
# Inputs the hook's triage answers itself, without parsing: no kvmhooks namespace in
# the bytes (an empty stdin, or UTF-16, where the ASCII namespace cannot be seen).
HOOK_NOTHING_TO_DO = {"empty.xml", "utf16-external-entity.xml",
                      "utf16-parameter-entity-fifo.xml"}

HOOKDATA_FILES = [
    ("truncated.xml", 2, ("network kcnet", "malformed XML")),
    ("doctype-entity.xml", 2, ("network kcnet", "DOCTYPE")),
    ("external-entity-file.xml", 2, ("network kcnet", "DOCTYPE")),
    ("external-entity-url.xml", 2, ("network kcnet", "DOCTYPE")),
    ("parameter-entity-url.xml", 2, ("network kcnet", "DOCTYPE")),
    ("billion-laughs.xml", 2, ("network kcnet", "DOCTYPE")),
    ("utf16-external-entity-fifo.xml", 2, ("network kcnet", "DOCTYPE")),
    ("non-utf8.xml", 2, ("network kcnet", "malformed XML")),
    ("nul-byte.xml", 2, ("network kcnet", "malformed XML")),
    ("no-network.xml", 2, ("network kcnet", "<network>")),
    ("empty.xml", 2, ("network kcnet",)),
    ("@10MB", 2, ("network kcnet", "over the limit")),
    # A network the config does not name (whatever its name) is left alone.
    ("name-shell.xml", 0, ()),
]

# Config files: (file, the dotted key the line must name, or None where there is none).
CONFIG_FILES = [
    ("syntax-truncated.toml", None), ("non-utf8.toml", None), ("nul-byte.toml", None),
    ("duplicate-key.toml", None), ("duplicate-table.toml", None),
    ("deep-nesting.toml", None),
    ("unknown-key.toml", "uplink.kclan.colour"),
    ("two-selectors.toml", "uplink.kclan.mac"),
    ("no-selector.toml", "uplink.kclan"),
    ("nic-shell.toml", "uplink.kclan.nic"),
    ("nic-path.toml", "uplink.kclan.nic"),
    ("nic-long.toml", "uplink.kclan.nic"),
    ("nic-empty.toml", "uplink.kclan.nic"),
    ("nic-not-string.toml", "uplink.kclan.nic"),
    ("nic-newline.toml", "uplink.kclan.nic"),
    ("bridge-long.toml", "uplink.kclan.bridge"),
    ("bridge-is-nic.toml", "uplink.kclan.bridge"),
    ("uplink-name-long.toml", "uplink.kclan-too-long"),
    ("uplink-name-shell.toml", "uplink.kclan;reboot"),
    ("uplink-name-path.toml", "uplink.kc/../lan"),
    ("duplicate-bridge.toml", "uplink.kcsan.bridge"),
    ("network-unknown-uplink.toml", "network.kcnet.uplink"),
    ("network-missing-uplink.toml", "network.kcnet"),
    ("network-name-path.toml", "network.kc/../net"),
    ("host-address-no-prefix.toml", "uplink.kclan.host_address"),
    ("host-address-invalid.toml", "uplink.kclan.host_address"),
    ("domains-not-list.toml", "uplink.kclan.domains"),
    ("domains-empty-pattern.toml", "uplink.kclan.domains"),
    ("bad-mac.toml", "uplink.kclan.mac"),
    ("top-level-key.toml", "nic"),
    ("unknown-table.toml", "uplinks"),
    ("uplink-keys-direct.toml", "uplink.nic"),
]
# Bad configs also reach the hook: a tagged domain's prepare must refuse with the file.
CONFIGS_THROUGH_THE_HOOK = ["syntax-truncated.toml", "non-utf8.toml", "nic-shell.toml",
                            "duplicate-bridge.toml", "deep-nesting.toml", "nic-newline.toml",
                            "@missing", "@directory"]
GOOD_DOMAIN = "ops/good.xml"  # written at test time: a valid tagged domain
# Every domain input goes through the hook; these also through `explain --xml FILE` (one
# of each way to fail: the command line names FILE where the XML cannot name the domain).
CLI_EXPLAIN = {"truncated.xml", "external-entity-file.xml", "external-entity-url.xml",
               "parameter-entity-url.xml", "billion-laughs.xml", "utf16-external-entity.xml",
               "utf16-parameter-entity-fifo.xml", "xinclude-file.xml", "non-utf8.xml",
               "nul-byte.xml", "empty.xml", "not-a-domain.xml", "duplicate-mac-metadata.xml",
               "mac-with-newline.xml", "target-dev-shell.xml", "uplink-shell.xml",
               "duplicate-target-dev.xml", "not-allowed.xml", "name-newline.xml",
               "name-path.xml", "@10MB"}


def _cases() -> list[Case]:
    cases = []
    for name, status, words, _, _ in DOMAIN_FILES:
        stem = name.lstrip("@").replace(".xml", "")
        stdin = name if name.startswith("@") else f"domain/{name}"
        if name in HOOK_NOTHING_TO_DO:
            cases.append(Case(f"hook-prepare-{stem}", hook("qemu", DOMAIN, "prepare", "begin",
                                                           "-"), 0, stdin=stdin, lines=0))
        else:
            cases.append(Case(f"hook-prepare-{stem}", hook("qemu", DOMAIN, "prepare", "begin",
                                                           "-"), status, words, stdin=stdin))
        if name in CLI_EXPLAIN:
            cases.append(Case(f"cli-explain-{stem}", cli("explain", "--xml", "{input}"),
                              status, words, input=stdin))
    ops = [  # other qemu operations, with bad input
        ("migrate", "domain/truncated.xml", 2, (DOMAIN, "malformed XML"), 1),
        ("migrate", "domain/external-entity-url.xml", 2, (DOMAIN, "DOCTYPE"), 1),
        ("restore", "domain/duplicate-mac-metadata.xml", 2, (DOMAIN, MAC1), 1),
        ("restore", "domain/billion-laughs.xml", 2, (DOMAIN, "DOCTYPE"), 1),
        ("migrate", "ops/untagged-garbage.xml", 0, (), 0),
        ("restore", "ops/untagged-garbage.xml", 0, (), 0),
        ("reconnect", "domain/truncated.xml", 0, (DOMAIN, "malformed XML"), 1),
        ("reconnect", "domain/duplicate-mac-metadata.xml", 0, (DOMAIN, MAC1), 1),
        ("attach", "domain/external-entity-file.xml", 0, (DOMAIN, "DOCTYPE"), 1),
        ("attach", "domain/invalid-mode.xml", 0, (DOMAIN, MAC1), 1),
        ("release", "ops/release-without-uuid.xml", 0, (DOMAIN, "no <uuid>"), 1),
        ("release", "ops/untagged-garbage.xml", 0, (), 0),
    ]
    for op, stdin, status, words, lines in ops:
        stem = Path(stdin).stem
        cases.append(Case(f"hook-{op}-{stem}", hook("qemu", DOMAIN, op, "begin", "-"), status,
                          words, stdin=stdin, lines=lines))
    for name, status, words in HOOKDATA_FILES:
        stem = name.lstrip("@").replace(".xml", "")
        stdin = name if name.startswith("@") else f"hookdata/{name}"
        cases.append(Case(f"hook-network-start-{stem}",
                          hook("network", NETWORK, "start", "begin", "-"), status, words,
                          stdin=stdin, lines=1 if status else 0))
    cases.append(Case("hook-network-stopped-truncated",
                      hook("network", NETWORK, "stopped", "end", "-"), 0,
                      ("network kcnet", "malformed XML"), stdin="hookdata/truncated.xml"))
    for name, key in CONFIG_FILES:
        words = ("{input}",) + ((key,) if key else ())
        cases.append(Case(f"cli-check-config-{Path(name).stem}", cli("check-config", "{input}"),
                          2, words, input=f"config/{name}"))
    cases += [
        Case("cli-check-config-missing", cli("check-config", "{input}"), 2, ("{input}",),
             input="@missing"),
        Case("cli-check-config-directory", cli("check-config", "{input}"), 2, ("{input}",),
             input="@directory"),
    ]
    for name in CONFIGS_THROUGH_THE_HOOK:
        config = name if name.startswith("@") else f"config/{name}"
        cases.append(Case(f"hook-prepare-config-{Path(name.lstrip('@')).stem}",
                          hook("qemu", DOMAIN, "prepare", "begin", "-"), 2, ("{config}",),
                          stdin=GOOD_DOMAIN, config=config))
    cases += _argument_cases()
    return cases


def _argument_cases() -> list[Case]:
    qemu_usage, nic = ("usage",), ("nic-event",)
    return [
        # the hook client: missing arguments, unknown triggers and operations
        Case("hook-no-arguments", hook(), 2, ("usage",)),
        Case("hook-qemu-no-arguments", hook("qemu"), 2, qemu_usage),
        Case("hook-qemu-no-operation", hook("qemu", DOMAIN), 2, qemu_usage),
        Case("hook-network-no-operation", hook("network", NETWORK), 2, qemu_usage),
        Case("hook-unknown-trigger", hook("lxc", DOMAIN, "prepare", "begin", "-"), 2, ("lxc",)),
        Case("hook-qemu-unknown-operation", hook("qemu", DOMAIN, "frobnicate", "begin", "-"), 0,
             (DOMAIN, "frobnicate"), stdin="domain/truncated.xml"),
        Case("hook-qemu-unknown-operation-odd-names",
             hook("qemu", "kc;$(reboot)", "../../frob", "begin", "-"), 0,
             ("kc;$(reboot)", "../../frob")),
        Case("hook-network-other-operation", hook("network", NETWORK, "port-created", "begin",
                                                  "-"), 0, lines=0,
             stdin="hookdata/truncated.xml"),
        # the udev handler: bad actions and interface names (named in the line)
        Case("hook-nic-event-no-arguments", hook("nic-event"), 2, nic),
        Case("hook-nic-event-no-ifname", hook("nic-event", "add"), 2, nic),
        Case("hook-nic-event-bad-action", hook("nic-event", "plug", "ktnic-absent"), 2, nic),
        Case("hook-nic-event-path", hook("nic-event", "add", "../ktnic"), 2, ("../ktnic",)),
        Case("hook-nic-event-shell", hook("nic-event", "add", "kt;reboot"), 2, ("kt;reboot",)),
        Case("hook-nic-event-long", hook("nic-event", "add", "ktnic-far-too-long"), 2,
             ("ktnic-far-too-long",)),
        Case("hook-nic-event-empty-ifname", hook("nic-event", "add", ""), 2, nic),
        Case("hook-nic-event-extra", hook("nic-event", "add", "ktnic-absent", "x"), 2, nic),
        # the command line
        Case("cli-no-command", cli(), 2, ("COMMAND",)),
        Case("cli-unknown-command", cli("frobnicate"), 2, ("frobnicate",)),
        Case("cli-explain-no-source", cli("explain"), 2, ("explain",)),
        Case("cli-explain-missing-file", cli("explain", "--xml", "{input}"), 2, ("{input}",),
             input="@missing"),
        Case("cli-explain-directory", cli("explain", "--xml", "{input}"), 2, ("{input}",),
             input="@directory"),
        Case("cli-attach-bad-mac", cli("attach", DOMAIN, "--mac", "02:6b:63:zz", "--uplink",
                                       "kclan", "--type", "bridge"), 2, ("--mac", "02:6b:63:zz")),
        Case("cli-attach-shell-mac", cli("attach", DOMAIN, "--mac", "02:6b;reboot", "--uplink",
                                         "kclan", "--type", "direct"), 2, ("02:6b;reboot",)),
        Case("cli-attach-mode-for-bridge", cli("attach", DOMAIN, "--mac", MAC1, "--uplink",
                                               "kclan", "--type", "bridge", "--mode",
                                               "private"), 2, ("--mode",)),
        Case("cli-attach-missing-mac", cli("attach", DOMAIN, "--uplink", "kclan", "--type",
                                           "bridge"), 2, ("--mac",)),
        Case("cli-attach-bad-type", cli("attach", DOMAIN, "--mac", MAC1, "--uplink", "kclan",
                                        "--type", "vepa"), 2, ("--type", "vepa")),
        Case("cli-nic-event-nothing", cli("nic-event"), 2, nic),
        Case("cli-nic-event-no-ifname", cli("nic-event", "add"), 2, nic),
        Case("cli-nic-event-bad-action", cli("nic-event", "plug", "ktnic-absent"), 2, nic),
        Case("cli-nic-event-path", cli("nic-event", "add", "../ktnic"), 2, ("../ktnic",)),
        Case("cli-nic-event-shell", cli("nic-event", "add", "kt;reboot"), 2, ("kt;reboot",)),
        Case("cli-nic-event-long", cli("nic-event", "add", "ktnic-far-too-long"), 2,
             ("ktnic-far-too-long",)),
        Case("cli-nic-event-instance-slash", cli("nic-event", "remove:kt/x:5"), 2, ("kt/x",)),
        Case("cli-nic-event-instance-extra", cli("nic-event", "add:ktnic-absent:5:6"), 2, nic),
    ]


CASES = _cases()
CONTROLS = [  # inputs that pass validation: they stop at the absent NIC, or succeed
    Case("control-hook-prepare", hook("qemu", DOMAIN, "prepare", "begin", "-"), 1,
         ("kclan", NO_NIC), stdin=GOOD_DOMAIN),
    Case("control-cli-explain", cli("explain", "--xml", "{input}"), 1, ("kclan", NO_NIC),
         input=GOOD_DOMAIN),
    Case("control-hook-network-start", hook("network", NETWORK, "start", "begin", "-"), 1,
         ("kclan", NO_NIC), stdin="@good-hookdata"),
    Case("control-hook-qemu-start", hook("qemu", DOMAIN, "start", "begin", "-"), 0, lines=0,
         stdin=GOOD_DOMAIN),
]


def corpus_files() -> list[Path]:
    return sorted(path for path in CORPUS.rglob("*") if path.is_file()
                  and path.suffix in (".xml", ".toml"))


# --- the lab: a secret file, FIFOs that record opens, a URL that records connections -----

class Recorder:
    """A socket server on 127.0.0.1 that records every connection (the request line) and
    answers with MARKER, so a fetched entity would carry it into the output."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    request = connection.recv(4096).decode("latin-1").split("\r\n")[0]
                except OSError:
                    request = "(nothing read)"
                self.requests.append(request or "(empty request)")
                try:
                    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                       + MARKER.encode())
                except OSError:
                    pass

    def url(self, case_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/{case_id}"

    def requests_for(self, case_id: str) -> list[str]:
        return [r for r in self.requests if f"/{case_id}/" in r or r.endswith(f"/{case_id}")]

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


class FifoWatch:
    """FIFOs in place of files: a parser that opens one is recorded (and gets MARKER)."""

    def __init__(self):
        self.paths: set[str] = set()
        self.opened: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def add(self, path: Path) -> str:
        os.mkfifo(path, 0o600)
        self.paths.add(str(path))
        return str(path)

    def _watch(self):
        while not self.stop.is_set():
            for path in list(self.paths):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as error:
                    if error.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    continue
                self.opened.append(path)
                try:
                    os.write(fd, MARKER.encode())
                except OSError:
                    pass
                os.close(fd)
            time.sleep(0.005)

    def close(self):
        self.stop.set()
        self.thread.join(5)


@dataclass
class Lab:
    root: Path
    secret: Path
    recorder: Recorder
    fifos: FifoWatch
    prefix: list[str]
    outcomes: dict = field(default_factory=dict)

    def materialize(self, case_id: str, source: str, where: Path) -> Path:
        """The input file of a case, placeholders filled in."""
        if source == "@missing":
            return where / "absent.file"
        if source == "@directory":
            (where / "a-directory").mkdir(exist_ok=True)
            return where / "a-directory"
        if source == GOOD_DOMAIN:
            data = good_domain().encode()
        elif source == "@good-hookdata":
            data = (b'<hookData><network><name>kcnet</name><forward mode="bridge"/>'
                    b'<bridge name="khkcbr0"/></network></hookData>')
        elif source == "@10MB":
            data = big_domain(10 * 1024 * 1024) if "network" not in case_id else \
                big_hookdata(10 * 1024 * 1024)
        elif source == "@2MiB+1":
            data = big_domain(2 * 1024 * 1024 + 1)
        else:
            data = (CORPUS / source).read_bytes()
        if b"@SECRET_FIFO@" in data:
            data = data.replace(b"@SECRET_FIFO@",
                                self.fifos.add(where / f"fifo-{case_id}").encode())
        data = data.replace(b"@SECRET_FILE@", str(self.secret).encode())
        data = data.replace(b"@URL@", self.recorder.url(case_id).encode())
        if "utf16" in source:
            data = data.decode("utf-8").encode("utf-16")
        path = where / (Path(source.lstrip("@")).name or "input")
        path.write_bytes(data)
        return path


def good_domain() -> str:
    return (CORPUS / "domain" / "invalid-mode.xml").read_text().replace(' mode="vepa2"', "")


def big_domain(size: int) -> bytes:
    """A tagged domain of exactly size bytes (a long <description>)."""
    head = good_domain().replace("<memory", "<description>@PAD@</description>\n  <memory")
    return head.replace("@PAD@", "x" * (size - len(head.encode()) + len("@PAD@"))).encode()


def big_hookdata(size: int) -> bytes:
    head = ('<hookData><network><name>kcnet</name><description>@PAD@</description>'
            '</network></hookData>')
    return head.replace("@PAD@", "x" * (size - len(head) + len("@PAD@"))).encode()


def _isolation() -> list[str]:
    """The prefix that gives a command a mount namespace with an empty /dev (so nothing
    it logs reaches /dev/log), or [] where that cannot be had (not root)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return []
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o mode=755,size=64k kvmhooks-corpus /dev '
              '&& mknod -m 666 /dev/null c 1 3 && exec "$@"', "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=TIMEOUT)
    return prefix if probe.returncode == 0 else []


def kh_links() -> set[str]:
    return {name for name in os.listdir("/sys/class/net")
            if name.startswith("kh") and not OTHER_RUNS.match(name)}


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: bytes
    stderr: str
    new_links: frozenset
    input_path: str | None
    config_path: str
    stdin: bytes


def run_case(lab: Lab, case: Case) -> Outcome:
    where = lab.root / case.id
    where.mkdir()
    (where / "state").mkdir(mode=0o700)
    if case.config is None:
        config = where / "kvmhooks.toml"
        config.write_text(GOOD_CONFIG)
    else:
        config = lab.materialize(case.id, case.config, where)
    stdin = lab.materialize(case.id, case.stdin, where).read_bytes() if case.stdin else b""
    input_path = str(lab.materialize(case.id, case.input, where)) if case.input else None
    argv = [a.replace("{input}", input_path or "") for a in case.argv]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "KVMHOOKS_CONFIG": str(config), "KVMHOOKS_STATE_DIR": str(where / "state")}
    before = kh_links()
    result = subprocess.run([*lab.prefix, sys.executable, *argv], input=stdin,
                            capture_output=True, env=env, cwd=REPO, timeout=TIMEOUT)
    new_links = frozenset(kh_links() - before)
    return Outcome(result.returncode, result.stdout,
                   result.stderr.decode("utf-8", errors="replace"), new_links, input_path,
                   str(config), stdin)


def _selected(request, name: str) -> set[str]:
    """The ids of the cases this session runs (all of them unless -k or node ids choose)."""
    return {item.callspec.params[name].id for item in request.session.items
            if getattr(item, "module", None) is sys.modules[__name__]
            and name in getattr(getattr(item, "callspec", None), "params", {})}


@pytest.fixture(scope="module")
def corpus_lab(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    secret = root / "secret.txt"
    secret.write_text(f"{MARKER}\n")
    recorder, fifos = Recorder(), FifoWatch()
    lab = Lab(root, secret, recorder, fifos, _isolation())
    with ThreadPoolExecutor(max_workers=4) as pool:
        wanted = _selected(request, "case")
        futures = {case.id: pool.submit(run_case, lab, case) for case in CASES + CONTROLS
                   if case.id in wanted}
        lab.outcomes = {case_id: future.result() for case_id, future in futures.items()}
    time.sleep(0.05)  # a FIFO opened at the very end is still seen
    yield lab
    recorder.close()
    fifos.close()


# --- the tests --------------------------------------------------------------------------

def _words(case: Case, outcome: Outcome, from_xml: bool | None = None) -> list[str]:
    words = []
    for word in case.names:
        if word == D:
            cli_run = case.argv[:2] == ("-m", "kvmhooks")
            word = outcome.input_path if cli_run and not from_xml else DOMAIN
        words.append(word.replace("{input}", outcome.input_path or "")
                     .replace("{config}", outcome.config_path))
    return words


_FROM_XML = {name: from_xml for name, _, _, from_xml, _ in DOMAIN_FILES}


def _check(lab: Lab, case: Case) -> None:
    outcome = lab.outcomes[case.id]
    lines = outcome.stderr.splitlines()
    shown = f"status {outcome.status}, stderr {outcome.stderr!r}, stdout {outcome.stdout[:200]!r}"
    assert "Traceback" not in outcome.stderr, shown
    assert outcome.status == case.status, shown
    assert len(lines) == case.lines, shown
    for line in lines:
        assert line.startswith("kvmhooks: "), shown
    source = Path(case.stdin or case.input or "").name
    for word in _words(case, outcome, _FROM_XML.get(source, _FROM_XML.get(case.stdin))):
        assert word in outcome.stderr, f"{word!r} not named: {shown}"
    assert outcome.stdout == b"", shown
    assert MARKER not in outcome.stderr and MARKER.encode() not in outcome.stdout, shown
    assert not outcome.new_links, f"links appeared: {sorted(outcome.new_links)}"
    assert lab.recorder.requests_for(case.id) == [], "the parser reached the network"
    assert not [p for p in lab.fifos.opened if p.endswith(f"fifo-{case.id}")], \
        "the parser opened a file"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_its_status_and_one_line(corpus_lab, case):
    _check(corpus_lab, case)


@pytest.mark.parametrize("case", CONTROLS, ids=[case.id for case in CONTROLS])
def test_valid_input_stops_at_the_absent_nic(corpus_lab, case):
    """The controls: GOOD_CONFIG and the good inputs pass validation, so the exit 2 of the
    bad ones comes from what is bad in them."""
    _check(corpus_lab, case)


def test_nothing_was_fetched_nor_opened(corpus_lab):
    assert corpus_lab.recorder.requests == []
    assert corpus_lab.fifos.opened == []


def test_the_detectors_see_what_a_resolving_parser_does(tmp_path):
    """The FIFO and the socket server do notice a parser that resolves entities (libxml2
    2.14 has no HTTP client left, so the server is shown a plain HTTP request)."""
    recorder, fifos = Recorder(), FifoWatch()
    try:
        fifo = fifos.add(tmp_path / "fifo-control")
        resolving = etree.XMLParser(resolve_entities=True, load_dtd=True)
        root = etree.fromstring(
            f'<!DOCTYPE d [<!ENTITY s SYSTEM "{fifo}">]><d>&s;</d>'.encode(), resolving)
        assert root.text == MARKER and fifos.opened == [fifo]
        with urllib.request.urlopen(recorder.url("control") + "/x", timeout=10) as reply:
            assert reply.read() == MARKER.encode()
        assert len(recorder.requests_for("control")) == 1
    finally:
        recorder.close()
        fifos.close()


def test_the_corpus_holds_at_least_40_bad_inputs():
    files = corpus_files()
    generated = [name for name, *_ in DOMAIN_FILES + HOOKDATA_FILES if name.startswith("@")]
    argument_cases = _argument_cases()
    assert len(files) + len(generated) + len(argument_cases) >= 40
    used = {f"domain/{name}" for name, *_ in DOMAIN_FILES} | \
        {f"hookdata/{name}" for name, *_ in HOOKDATA_FILES} | \
        {f"config/{name}" for name, _ in CONFIG_FILES} | \
        {c.stdin for c in CASES} | {c.input for c in CASES}
    unused = [str(p.relative_to(CORPUS)) for p in files if str(p.relative_to(CORPUS)) not in used]
    assert unused == [], "corpus files no test runs"


# --- the parsers themselves, on every XML input -------------------------------------------

def _xml_inputs() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in corpus_files() if p.suffix == ".xml")


@pytest.fixture(scope="module")
def parser_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("parsers")
    secret = root / "secret.txt"
    secret.write_text(f"{MARKER}\n")
    recorder, fifos = Recorder(), FifoWatch()
    yield Lab(root, secret, recorder, fifos, [])
    recorder.close()
    fifos.close()


@pytest.mark.parametrize("source", _xml_inputs() + ["@10MB", "@2MiB+1"])
def test_parsers_refuse_with_one_line_and_resolve_nothing(parser_lab, source):
    """parse_domain and parse_hook_data on every XML input: a result or their one error
    class (anything else fails here), one line, and nothing fetched, opened or expanded."""
    case_id = "parse-" + source.replace("/", "-").lstrip("@")
    where = parser_lab.root / case_id
    where.mkdir()
    data = parser_lab.materialize(case_id, source, where).read_bytes()
    errors = {}
    texts = []
    for parser, error_class in ((parse_domain, MetadataError), (parse_hook_data, BadInput)):
        try:
            texts.append(repr(parser(data, "kc-hint")))
        except error_class as error:
            errors[parser.__name__] = str(error)
            texts.append(str(error))
    time.sleep(0.02)  # a FIFO opened at the very end is still seen
    assert not any(MARKER in text for text in texts), texts
    assert parser_lab.recorder.requests_for(case_id) == [], "the parser reached the network"
    assert parser_lab.fifos.opened == [], "the parser opened a file"
    kind, _, name = source.rpartition("/")
    domain_refused = {n: refused for n, _, _, _, refused in DOMAIN_FILES}
    network_refused = {n: status == 2 for n, status, _ in HOOKDATA_FILES}
    if kind in ("domain", "") and domain_refused.get(name):
        line = errors.get("parse_domain")
        assert line is not None, "parse_domain accepted it"
        assert line.startswith("domain ") and "\n" not in line, line
    if kind == "hookdata" and network_refused.get(name):
        line = errors.get("parse_hook_data")
        assert line is not None, "parse_hook_data accepted it"
        assert line.startswith("network kc-hint: ") and "\n" not in line, line
