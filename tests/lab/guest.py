"""Tiny Linux guests that really boot (under TCG) and send real packets.

For end-to-end and NIC-event tests.  A guest is a Debian cloud kernel plus a
busybox-static initramfs whose ``/init`` is configured only by the kernel
command line:

``kh.ip=MAC=ADDR/LEN`` (repeatable: one IPv4 address per NIC, IPv6 ones besides)
    every 0.5 s, each interface with that MAC that has no IPv4 address yet
    (a NIC that was hot-plugged again is a new interface) gets the address
    and is set up; the guest prints ``KH nic <ifname> <mac> up``, and
    ``KH ready`` once, when all of them are configured (at once when there
    are none).  ``KH nic <ifname> <mac> gone`` when a configured one vanishes.
    An IPv6 address is added, without duplicate address detection, to the
    interface with that MAC that lacks it.
``kh.mtu=MAC=MTU``
    the interface with that MAC gets this MTU before its IPv4 address.
``kh.vlan=MAC=VID=ADDR/LEN`` (repeatable)
    once the interface with that MAC is up, an 802.1Q sub-interface ``vVID`` on it
    with this IPv4 address (the guest sees that VLAN tagged).
``kh.ping=ADDR`` or ``kh.ping=ADDR@SIZE`` (repeatable, IPv4 or IPv6)
    every round (0.5 s apart) each target is pinged once (with SIZE payload
    bytes when given), in parallel, with a 1 s timeout, and the guest prints
    ``KH t=<uptime> ping <target> ok|fail``.

The guest answers pings itself (the kernel does).  Lines go to the first
serial port, which the domain (:func:`guest_domain_xml`) sends to a file that
:class:`SerialLog` reads.  ACPI PCI hotplug (acpiphp) is built into the
kernel, so a live detach of a virtio NIC completes and a re-attached one comes
back as a new interface.

    dom, serial = define_guest(conn, cleanup, [iface], {iface.mac: subnet.addr(10)},
                               [subnet.ip(2)])     # the image is built once, cached
    dom.create()
    wait_ready(serial)
    mark = serial.offset()
    ...                                      # flap something
    serial.wait_for_line(rf"ping {re.escape(subnet.ip(2))} ok$", 30, after_offset=mark)

The image needs ``apt-get download`` to work the first time (the kernel and
busybox packages are unpacked into a temporary directory, never installed).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import ipaddress
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from .cleanup import Cleanup
from .domains import Iface, domain_xml, serial_log_path
from .names import unique_name
from .virt import define

CACHE_DIR = Path("/var/cache/kvmhooks-lab")
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

#: Modules /init loads, in this order (dependencies found in the modules'
#: own ``depends=`` are added in front; built-in ones are skipped).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "8021q",
)

#: ``console=ttyS0`` keeps panics visible; ``quiet`` and ``loglevel=3`` keep
#: the rest of the kernel off the serial log; ``panic=-1`` reboots at once.
BASE_CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1"

#: Bump when the image layout changes in a way the hash below cannot see.
IMAGE_FORMAT = 1

INIT_SCRIPT = r"""#!/bin/busybox sh
# kvmhooks lab guest.  Configured by the kernel command line only:
#   kh.ip=MAC=ADDR/LEN (IPv4 one per NIC, IPv6 besides)   kh.mtu=MAC=MTU
#   kh.vlan=MAC=VID=ADDR/LEN (sub-interface vVID)   kh.ping=ADDR[@SIZE] (pinged every round)
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/ttyS0 2>&1

read -r kver _ </proc/sys/kernel/osrelease
echo "KH boot $kver"
while read -r m; do
    [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko"
done </lib/modules/kh-order
ip link set lo up

IPS=""
MTUS=""
VLANS=""
PINGS=""
for w in $(cat /proc/cmdline); do
    case "$w" in
    kh.ip=*=*)
        v=${w#kh.ip=}
        IPS="$IPS $(echo "${v%%=*}" | tr A-F a-f)=${v#*=}" ;;
    kh.mtu=*=*)
        v=${w#kh.mtu=}
        MTUS="$MTUS $(echo "${v%%=*}" | tr A-F a-f)=${v#*=}" ;;
    kh.vlan=*=*=*)
        v=${w#kh.vlan=}
        VLANS="$VLANS $(echo "${v%%=*}" | tr A-F a-f)=${v#*=}" ;;
    kh.ping=*)
        PINGS="$PINGS ${w#kh.ping=}" ;;
    esac
done

mtu_of() {
    for m in $MTUS; do
        [ "${m%%=*}" = "$1" ] && echo "${m#*=}"
    done
}

ready=""
known=""
while :; do
    all=1
    for e in $IPS; do
        mac=${e%%=*}
        cidr=${e#*=}
        have=""
        for d in /sys/class/net/*; do
            a=""
            read -r a 2>/dev/null <"$d/address"
            [ "$a" = "$mac" ] || continue
            n=${d##*/}
            case "$cidr" in
            *:*)
                if ip -6 addr show dev "$n" 2>/dev/null | grep -q "inet6 ${cidr%/*}/"; then
                    have=1
                else
                    echo 0 >"/proc/sys/net/ipv6/conf/$n/accept_dad"
                    ip addr add "$cidr" dev "$n" && ip link set "$n" up && have=1
                fi ;;
            *)
                mtu=$(mtu_of "$mac")
                if ip -4 addr show dev "$n" 2>/dev/null | grep -q "inet "; then
                    have=1
                elif { [ -z "$mtu" ] || ip link set "$n" mtu "$mtu"; } &&
                        ip addr add "$cidr" dev "$n" && ip link set "$n" up; then
                    echo "KH nic $n $mac up"
                    known="$known $n=$mac"
                    have=1
                fi ;;
            esac
        done
        [ -n "$have" ] || all=""
    done
    for e in $VLANS; do
        mac=${e%%=*}
        v=${e#*=}
        vid=${v%%=*}
        [ -e "/sys/class/net/v$vid" ] && continue
        for k in $known; do
            [ "${k#*=}" = "$mac" ] || continue
            ip link add link "${k%%=*}" name "v$vid" type vlan id "$vid" &&
                ip addr add "${v#*=}" dev "v$vid" && ip link set "v$vid" up &&
                echo "KH vlan v$vid on ${k%%=*} up"
        done
    done
    left=""
    for k in $known; do
        if [ -e "/sys/class/net/${k%%=*}" ]; then
            left="$left $k"
        else
            echo "KH nic ${k%%=*} ${k#*=} gone"
        fi
    done
    known=$left
    if [ -z "$ready" ] && [ -n "$all" ]; then
        echo "KH ready"
        ready=1
    fi
    for t in $PINGS; do
        (
            size=""
            [ "${t%@*}" = "$t" ] || size="-s ${t#*@}"
            if ping -c 1 -W 1 $size "${t%@*}" >/dev/null 2>&1; then r=ok; else r=fail; fi
            read -r up _ </proc/uptime
            echo "KH t=$up ping $t $r"
        ) &
    done
    wait
    sleep 0.5
done
"""


# --------------------------------------------------------------------------
# The image


def image_key() -> str:
    """Hash of everything that goes into the image except the package versions."""
    h = hashlib.sha256()
    for part in (str(IMAGE_FORMAT), KERNEL_METAPACKAGE, BUSYBOX_PACKAGE, INIT_SCRIPT, *MODULES):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def ensure_image() -> tuple[str, str]:
    """``(kernel_path, initrd_path)`` of the lab guest, built on first use.

    Cached under /var/cache/kvmhooks-lab/guest-<hash of init script, module
    list, format>/ with an ``info.json`` (kernel version, modules).  Safe to
    call from several processes at once (a lock file serializes builds)."""
    target = CACHE_DIR / f"guest-{image_key()}"
    kernel, initrd = target / "vmlinuz", target / "initrd.gz"
    if kernel.is_file() and initrd.is_file():
        return str(kernel), str(initrd)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE_DIR, 0o755)
    with open(CACHE_DIR / ".guest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (kernel.is_file() and initrd.is_file()):
            _build_image(target)
    return str(kernel), str(initrd)


def _build_image(target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
    try:
        debs = work / "debs"
        debs.mkdir()
        meta = _apt_download(KERNEL_METAPACKAGE, debs)
        kpkg = _kernel_package(meta)
        kdeb = _apt_download(kpkg, debs)
        bdeb = _apt_download(BUSYBOX_PACKAGE, debs)
        root = work / "root"
        for deb in (kdeb, bdeb):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)

        moddirs = sorted((root / "lib/modules").iterdir())
        if len(moddirs) != 1:
            raise RuntimeError(f"expected one kernel in {kpkg}, found {moddirs}")
        moddir = moddirs[0]
        kver = moddir.name
        vmlinuz = root / "boot" / f"vmlinuz-{kver}"
        busybox = root / "bin/busybox"
        modules, builtin = _resolve_modules(moddir, MODULES)

        out = work / "out"
        out.mkdir()
        cpio = _Cpio()
        for d in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp", "run"):
            cpio.add_dir(d)
        cpio.add_device("dev/console", 0o600, 5, 1)
        cpio.add_file("bin/busybox", busybox.read_bytes(), 0o755)
        cpio.add_file("init", INIT_SCRIPT.encode(), 0o755)
        for name, path in modules:
            cpio.add_file(f"lib/modules/{name}.ko", _read_module(path), 0o644)
        order = "".join(f"{name}\n" for name, _ in modules)
        cpio.add_file("lib/modules/kh-order", order.encode(), 0o644)
        (out / "initrd.gz").write_bytes(gzip.compress(cpio.finish(), mtime=0))
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        info = {
            "kernel_package": kpkg,
            "kernel_version": kver,
            "busybox_package": bdeb.name,
            "modules": [name for name, _ in modules],
            "module_files": [p.name for _, p in modules],
            "builtin": builtin,
            "cmdline": BASE_CMDLINE,
            "key": target.name,
        }
        (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        for f in out.iterdir():
            os.chmod(f, 0o644)
        os.chmod(out, 0o755)
        if target.exists():  # a half-finished old attempt
            shutil.rmtree(target)
        os.rename(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _apt_download(package: str, where: Path) -> Path:
    before = set(where.iterdir())
    r = subprocess.run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
    )
    new = [p for p in where.iterdir() if p not in before and p.suffix == ".deb"]
    if r.returncode != 0 or len(new) != 1:
        raise RuntimeError(f"apt-get download {package} failed ({r.returncode}): {r.stderr}")
    return new[0]


def _kernel_package(meta_deb: Path) -> str:
    """The versioned linux-image-*-cloud-amd64 package the metapackage depends on."""
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(meta_deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    for alt in re.split(r"[,|]", depends):
        name = alt.strip().split(" ")[0]
        if re.fullmatch(r"linux-image-[0-9].*-cloud-amd64(-unsigned)?", name):
            return name
    raise RuntimeError(f"no versioned kernel in Depends of {meta_deb.name}: {depends!r}")


_MOD_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def _resolve_modules(moddir: Path, wanted: tuple[str, ...]):
    """``([(name, path)], [built-in names])`` in load order: each module's
    ``depends=`` come before it; modules built into the kernel are left out."""
    files: dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        for suffix in _MOD_SUFFIXES:
            if p.name.endswith(suffix):
                files[_norm(p.name[: -len(suffix)])] = p
    builtin_file = moddir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        for line in builtin_file.read_text().split():
            builtin.add(_norm(Path(line).name.split(".ko")[0]))
    order: list[tuple[str, Path]] = []
    skipped: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            skipped.append(name)
            return
        if name not in files:
            raise RuntimeError(
                f"module {name} (for {' <- '.join(chain) or 'the guest'}) not in {moddir}"
            )
        for dep in _module_depends(_read_module(files[name])):
            visit(dep, (name, *chain))
        order.append((name, files[name]))

    for name in wanted:
        visit(name, ())
    return order, skipped


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _module_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _read_module(path: Path) -> bytes:
    """The module's bytes, decompressed (busybox insmod wants a plain .ko)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise RuntimeError(f"{path.name} is zstd-compressed; install zstd to unpack it")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


class _Cpio:
    """A newc ("070701") cpio archive, built in memory, all owned by root."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(name) + 1,
            0,
        )
        self._ino += 1
        header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
        self._buf.write(header + name.encode() + b"\0")
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_device(self, name: str, perm: int, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\0" * (-self._buf.tell() % 512))
        return self._buf.getvalue()


# --------------------------------------------------------------------------
# Domains


def guest_cmdline(ips: dict[str, str | tuple[str, ...]], pings: list[str] | tuple[str, ...] = (),
                  mtus: dict[str, int] | None = None,
                  vlans: dict[str, dict[int, str]] | None = None) -> str:
    """The kernel command line for ``ips`` ({mac: 'addr/len'}, or {mac: (IPv4 'addr/len',
    IPv6 'addr/len', ...)}), ``pings`` ('addr' or 'addr@size'), ``mtus`` ({mac: mtu})
    and ``vlans`` ({mac: {vid: IPv4 'addr/len'}}: sub-interfaces the guest makes)."""
    parts = [BASE_CMDLINE]
    for mac, cidrs in ips.items():
        if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac):
            raise ValueError(f"bad MAC {mac!r}")
        cidrs = (cidrs,) if isinstance(cidrs, str) else cidrs
        ifaces = [ipaddress.ip_interface(cidr) for cidr in cidrs]
        if [iface.version for iface in ifaces].count(4) != 1 or \
                not all("/" in cidr for cidr in cidrs):
            raise ValueError(f"need one IPv4 'addr/len' and IPv6 ones, got {cidrs!r}")
        parts += [f"kh.ip={mac.lower()}={iface.with_prefixlen}" for iface in ifaces]
    for mac, mtu in (mtus or {}).items():
        parts.append(f"kh.mtu={mac.lower()}={int(mtu)}")
    for mac, by_vid in (vlans or {}).items():
        parts += [f"kh.vlan={mac.lower()}={int(vid)}={ipaddress.IPv4Interface(cidr).with_prefixlen}"
                  for vid, cidr in by_vid.items()]
    for target in pings:
        addr, _, size = target.partition("@")
        parts.append(f"kh.ping={ipaddress.ip_address(addr)}" + (f"@{int(size)}" if size else ""))
    return " ".join(parts)


def guest_domain_xml(
    name: str,
    ifaces: list[Iface],
    ips: dict[str, str],
    pings: list[str] | tuple[str, ...] = (),
    *,
    memory_mib: int = 128,
    mtus: dict[str, int] | None = None,
) -> str:
    """The lab domain (domains.domain_xml) of a booting TCG guest (type='qemu') with
    ``ifaces``, running the lab image with ``ips`` ({mac: 'addr/len'}) and ``pings`` on
    its command line; serial output goes to domains.serial_log_path(name)."""
    kernel, initrd = ensure_image()
    return domain_xml(name, ifaces, virt_type="qemu", memory_mib=memory_mib, kernel=kernel,
                      initrd=initrd, cmdline=guest_cmdline(ips, pings, mtus))


def define_guest(
    conn,
    cleanup: Cleanup,
    ifaces: list[Iface],
    ips: dict[str, str],
    pings: list[str] | tuple[str, ...] = (),
    *,
    name: str | None = None,
    memory_mib: int = 128,
    mtus: dict[str, int] | None = None,
):
    """Define (not start) a lab guest (:func:`guest_domain_xml`), named ``name`` or
    ``kt-g-...``; cleanup removes it and its logs. Returns (virDomain, its SerialLog)."""
    name = name or unique_name("kt-g-")
    dom = define(conn, guest_domain_xml(name, ifaces, ips, pings, memory_mib=memory_mib,
                                        mtus=mtus), cleanup)
    return dom, SerialLog(serial_log_path(name))


# --------------------------------------------------------------------------
# The serial log


class SerialLog:
    """Reads the guest's serial log file (which may not exist yet).

    ``offset()`` marks a moment; ``wait_for_line(regex, timeout,
    after_offset=mark)`` then only looks at lines that began after it.  Only
    complete lines count.  Note that a ping that was in flight at the mark
    reports after it: wait for a ``fail`` first, or for two ``ok`` lines
    (:meth:`wait_for_lines`), when that matters."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def offset(self) -> int:
        """The current end of the log (bytes)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def lines(self, after_offset: int | None = None) -> list[str]:
        """Complete lines (without the newline) that began at or after ``after_offset``."""
        data = self.read()
        start = after_offset or 0
        if start > len(data):  # the file was truncated (domain restarted)
            start = 0
        if start > 0 and data[start - 1 : start] != b"\n":
            nl = data.find(b"\n", start)
            start = len(data) if nl < 0 else nl + 1
        end = data.rfind(b"\n") + 1
        if end <= start:
            return []
        text = data[start:end].decode("utf-8", "replace")
        return [line.rstrip("\r") for line in text.split("\n")[:-1]]

    def wait_for_lines(
        self,
        regex: str | re.Pattern[str],
        timeout: float,
        after_offset: int | None = None,
        count: int = 1,
    ) -> list[re.Match[str]]:
        """Wait until ``count`` lines match ``regex`` (``re.search``); return their matches."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in map(pattern.search, self.lines(after_offset)) if m]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() >= deadline:
                tail = "\n".join(self.lines()[-15:])
                raise TimeoutError(
                    f"{self.path}: no{'' if count == 1 else f' {count} lines'} "
                    f"/{pattern.pattern}/ after offset {after_offset or 0} within {timeout}s; "
                    f"last lines:\n{tail}"
                )
            time.sleep(0.1)

    def wait_for_line(
        self, regex: str | re.Pattern[str], timeout: float, after_offset: int | None = None
    ) -> re.Match[str]:
        """The first line after ``after_offset`` that matches ``regex``
        (``re.search``); TimeoutError, with the log's tail, if none comes."""
        return self.wait_for_lines(regex, timeout, after_offset)[0]


def wait_ready(
    serial: SerialLog | str, timeout: float = 60, after_offset: int | None = None
) -> re.Match[str]:
    """Wait for ``KH ready`` (all configured NICs have their addresses)."""
    if not isinstance(serial, SerialLog):
        serial = SerialLog(serial)
    return serial.wait_for_line(r"^KH ready$", timeout, after_offset)


def ping_line(addr: str, ok: bool = True) -> str:
    """Regex for the guest's ping report about ``addr``."""
    return rf"^KH t=[0-9.]+ ping {re.escape(addr)} {'ok' if ok else 'fail'}$"
