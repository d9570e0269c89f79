"""What the one-host vm tests share: the VM's NICs as uplinks, nested guests on them
pinging the LAN host, a NIC's PCI re-plug, and the VM's devices as the kernel and
NetworkManager see them."""

from __future__ import annotations

from tests.lab.domains import Iface
from tests.lab.names import guest_mac
from tests.lab.wait import wait_for

from .image import MANAGED_NIC

NIC = MANAGED_NIC  # QMP device "uplink": NetworkManager runs DHCP on it
BRIDGE = "br-kt"  # a bridge kvmhooks makes in the VM


def configure_bridged(host, cleanup, nic: str, extra: str = "") -> None:
    """The host config: uplink lan on ``nic`` with bridge br-kt (removed at cleanup), and
    ``extra`` TOML."""
    cleanup.add(host.sh, f"ip link del {BRIDGE}", _what=f"remove {BRIDGE}")
    host.configure(f'[uplink.lan]\nnic = "{nic}"\nbridge = "{BRIDGE}"\n{extra}')


def guest_pinging(host, cleanup, iface: Iface, last_octet: int, *,
                  autostart: bool = False):
    """A nested guest with ``iface`` at ``last_octet``, pinging the LAN host."""
    guest = host.start_guest(cleanup, [iface],
                             {iface.mac: host.lan.subnet.addr(last_octet)}, [host.lan.host],
                             autostart=autostart)
    guest.wait_pinging(host.lan.host)
    return guest


def guest_on_macvtap(host, cleanup, last_octet: int):
    """A nested guest on uplink lan (hook-owned macvtap, bridge mode) at ``last_octet``,
    pinging the LAN host."""
    iface = Iface(guest_mac(), "direct", "lan", "bridge")
    return iface, guest_pinging(host, cleanup, iface, last_octet)


def guest_on_bridge(host, cleanup, last_octet: int):
    """A nested guest on uplink lan's bridge (hook-owned tap) at ``last_octet``, pinging
    the LAN host."""
    iface = Iface(guest_mac(), "bridge", "lan")
    return iface, guest_pinging(host, cleanup, iface, last_octet)


def nm_state(host, device: str) -> str:
    """NetworkManager's state of ``device``: "10 (unmanaged)", "100 (connected)"..."""
    return host.check(f"nmcli -g GENERAL.STATE device show {device}").strip()


def replug(host, name: str, device: str = "uplink") -> None:
    """A PCI hot-unplug and plug of QMP ``device``; it comes back as ``name``."""
    host.vm.unplug(device)
    host.vm.plug(device)
    try:
        wait_for(lambda: host.sh(f"test -e /sys/class/net/{name}").returncode == 0, 30,
                 what=f"the NIC back as {name}")
    except TimeoutError as error:
        seen = host.sh("ip -br link; journalctl -b -k --no-pager | tail -n 15").stdout
        raise TimeoutError(f"{error}; in the VM:\n{seen}") from None
    host.settle()  # the handlers of the NIC's events are done


def macvtap_lower(host, dev: str) -> str:
    """The name of the device ``dev`` (a macvtap) sits on, in the VM."""
    out = host.check(f"ip -o link show {dev}")
    return out.split("@", 1)[1].split(":", 1)[0]
