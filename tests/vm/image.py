"""The systemd host image: a Debian bookworm disk shaped like an EL host that runs kvmhooks.

systemd as PID 1 with udev and dbus under it, NetworkManager owning the NICs, libvirt
socket-activated (``libvirtd.socket`` and friends enabled, ``libvirtd.service`` not: the
daemon starts on the first connection and exits when idle, as EL's modular daemons do),
qemu for nested guests, python3 with kvmhooks' dependencies from Debian's packages,
qemu-guest-agent as the command channel, sshd and python3-apt for Ansible (the tests
that need sshd start it and let root in with a key), and the Debian cloud kernel. The lab's
tiny guest (tests/lab/guest.py) is copied in, so tests boot nested guests inside.

Built once per machine with mmdebstrap and cached under /var/cache/kvmhooks-vm/<key>/,
the key hashing everything below and the lab guest's image. ``python -m tests.vm.image``
builds (or finds) it and prints its directory: ``disk.raw``, ``vmlinuz``, ``initrd.img``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.lab.guest import ensure_image as ensure_lab_guest

CACHE_DIR = Path("/var/cache/kvmhooks-vm")
SUITE = "bookworm"
MIRROR = os.environ.get("KVMHOOKS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DISK_SIZE = "6G"
#: Where the lab guest's kernel and initramfs sit inside the image.
GUEST_DIR = "/var/lib/kvmhooks-lab"

PACKAGES = (
    "systemd-sysv", "udev", "dbus", "network-manager", "iproute2", "iputils-ping",
    "procps", "kmod", "linux-image-cloud-amd64", "initramfs-tools", "qemu-guest-agent",
    "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "python3", "python3-pyroute2", "python3-pyudev", "python3-lxml",
    "python3-libvirt", "python3-pip", "openssh-server", "python3-apt",
)

# Run inside the new root (chroot) after the packages are in.
CUSTOMIZE = r"""
set -eu
echo kvmhost >/etc/hostname
printf '127.0.1.1\tkvmhost\n' >>/etc/hosts
echo '/dev/vda / ext4 defaults,noatime 0 1' >/etc/fstab
passwd -d root
# libvirt as EL runs it: socket-activated, the daemon exiting when idle.
systemctl disable libvirtd.service
systemctl enable libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
    virtlogd.socket virtlockd.socket
# Guests autostart at boot: libvirt-guests connects, which starts the daemon. As on EL,
# a shutdown suspends running guests (managed save) and the boot resumes them.
systemctl enable libvirt-guests.service
sed -i 's/^#\?ON_SHUTDOWN=.*/ON_SHUTDOWN=suspend/; s/^#\?ON_BOOT=.*/ON_BOOT=start/' \
    /etc/default/libvirt-guests
systemctl enable NetworkManager.service
# sshd (about 4 s of each boot under TCG) runs once a test hands root a key and starts it.
systemctl disable ssh.service
# The second NIC (root port 2) is a host's statically run NIC: NetworkManager leaves it.
printf '[keyfile]\nunmanaged-devices=interface-name:enp2s0\n' \
    >/etc/NetworkManager/conf.d/90-kvmhooks-vm.conf
# The default NAT network would take the LAN's DHCP job and a 192.168.122.0/24 route.
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
# Boot fast and quiet: no waiting for a network nobody needs for booting.
systemctl mask systemd-networkd-wait-online.service NetworkManager-wait-online.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service
# Journal in RAM: the overlay stays small, a reboot starts a fresh log.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/etc/systemd/journald.conf.d/kvmhooks-vm.conf
apt-get clean
rm -rf /var/lib/apt/lists/*
"""

#: Bump when the layout changes in a way the key cannot see.
IMAGE_FORMAT = 1
#: The NIC NetworkManager owns (root port 1) and the one it leaves alone (root port 2).
MANAGED_NIC, STATIC_NIC = "enp1s0", "enp2s0"


@dataclass(frozen=True)
class HostImage:
    disk: Path  # raw ext4 filesystem of the whole root (the VM's /dev/vda)
    kernel: Path
    initrd: Path

    @property
    def qemu_capabilities(self) -> Path:
        """Where the cache of QEMU's capabilities that libvirt wrote in a VM of this image
        is kept for the next VMs (KvmhooksHost.warm_qemu_capabilities)."""
        return self.disk.parent / "qemu-capabilities"


def image_key() -> str:
    kernel, initrd = ensure_lab_guest()
    h = hashlib.sha256()
    for part in (str(IMAGE_FORMAT), SUITE, DISK_SIZE, GUEST_DIR, *PACKAGES, CUSTOMIZE,
                 kernel, initrd):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def ensure_image() -> HostImage:
    """The cached image, built first if missing (several callers: one builds)."""
    target = CACHE_DIR / image_key()
    image = HostImage(target / "disk.raw", target / "vmlinuz", target / "initrd.img")
    if image.disk.is_file():
        return image
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.disk.is_file():
            _build(target)
    return image


def _build(target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
    try:
        root = work / "root"
        root.mkdir(mode=0o755)
        guest_kernel, guest_initrd = ensure_lab_guest()
        guest_dir = root / GUEST_DIR.lstrip("/")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
             "--aptopt=Acquire::Retries \"3\"",
             f"--customize-hook=chroot \"$1\" sh -c {shlex.quote(CUSTOMIZE)}",
             f"--customize-hook=mkdir -p \"$1{GUEST_DIR}\"",
             f"--customize-hook=cp {guest_kernel} {guest_initrd} \"$1{GUEST_DIR}/\"",
             SUITE, str(root),
             f"deb {MIRROR} {SUITE} main",
             f"deb {MIRROR} {SUITE}-updates main",
             f"deb {MIRROR.rsplit('/debian', 1)[0]}/debian-security {SUITE}-security main"],
            check=True, stdout=sys.stderr)
        if not (guest_dir / "vmlinuz").is_file():
            raise RuntimeError(f"the lab guest did not reach {guest_dir}")
        out = work / "out"
        out.mkdir()
        boot = root / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise RuntimeError(f"expected one kernel and initrd in {boot}: {kernels} {initrds}")
        shutil.copyfile(kernels[0], out / "vmlinuz")
        shutil.copyfile(initrds[0], out / "initrd.img")
        disk = out / "disk.raw"
        subprocess.run(["truncate", "-s", DISK_SIZE, str(disk)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-L", "kvmhost", "-d", str(root), str(disk)],
                       check=True)
        (out / "info.json").write_text(json.dumps({
            "suite": SUITE, "kernel": kernels[0].name, "packages": list(PACKAGES),
        }, indent=2) + "\n")
        if target.exists():  # a half-finished old attempt
            shutil.rmtree(target)
        os.rename(out, target)
        for stale in CACHE_DIR.iterdir():  # images of other inputs: a disk each
            if stale.is_dir() and stale != target and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(ensure_image().disk.parent)
