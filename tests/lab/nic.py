"""The stand-in NIC: a veth pair whose host end plays a physical NIC and whose peer, in a
network namespace of its own, plays the LAN host behind it."""

from __future__ import annotations

from pyroute2 import IPRoute, NetNS

from .cleanup import Cleanup
from .daemons import settle_nic_events
from .links import (
    PROTECTED_LINKS,
    create_netns,
    delete_link,
    link_exists,
    link_index,
    link_info,
    ping,
)
from .names import IFNAMSIZ, TEST_PREFIX, random_mac, unique_name


class StandInNic:
    """A veth pair standing in for a physical NIC and its LAN.

    The host end is ``name`` (the "NIC"); the peer ``lan0`` lives in a new
    network namespace ``self.ns`` (the "LAN") with ``lan_address``.  The host
    end is up and, if ``host_address`` is given, carries it.  The NIC keeps
    its MAC across :meth:`unplug`/:meth:`plug` like a real NIC does.

        nic = StandInNic(cleanup, unique_name("ktnic"), subnet.addr(1), subnet.addr(2))
        ping(subnet.ip(2))          # host -> LAN
        nic.unplug(); nic.plug()    # the NIC goes away and comes back
    """

    PEER = "lan0"

    def __init__(
        self,
        cleanup: Cleanup,
        name: str | None = None,
        host_address: str | None = None,
        lan_address: str | None = None,
        mac: str | None = None,
    ) -> None:
        self.cleanup = cleanup
        self.name = name or unique_name(TEST_PREFIX + "nic")
        if self.name in PROTECTED_LINKS or len(self.name) > IFNAMSIZ:
            raise ValueError(f"bad stand-in NIC name {self.name!r}")
        self.host_address = host_address
        self.lan_address = lan_address
        self.mac = mac
        self.ns = create_netns(cleanup)
        # registered once: deletes whatever name the NIC has at cleanup time
        cleanup.add(lambda: delete_link(self.name), _what=f"delete stand-in NIC {self.name}")
        self.plug()
        # The NIC's add event runs kvmhooks' udev rule; let it finish before the test
        # writes a config, so that it never acts on a half-made lab.
        settle_nic_events()

    # -- lifecycle -------------------------------------------------------

    def plug(self, name: str | None = None, host_address: str | None = None) -> None:
        """(Re)create the veth pair: the NIC appears (under ``name`` if given).

        ``host_address`` replaces the address the NIC gets (``""``: none, as
        when kvmhooks had moved it to a bridge that still exists)."""
        if name:
            self.name = name
        if host_address is not None:
            self.host_address = host_address
        if link_exists(self.name):
            raise RuntimeError(f"stand-in NIC {self.name} already exists")
        tmp_peer = unique_name(TEST_PREFIX + "p")
        # An explicit MAC at creation makes the kernel mark it "set", so
        # udevd's MACAddressPolicy=persistent leaves it alone (it rewrites
        # random MACs of new virtual links asynchronously otherwise).
        self.mac = self.mac or random_mac()
        # The LAN host keeps its MAC too, as a real one does when only our NIC flaps
        # (a new one would sit behind the guests' stale ARP entries).
        self.lan_mac = getattr(self, "lan_mac", None) or random_mac()
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.name, kind="veth", address=self.mac,
                     peer={"ifname": tmp_peer, "address": self.lan_mac})
            try:
                peer_idx = ipr.link_lookup(ifname=tmp_peer)[0]
                ipr.link("set", index=peer_idx, net_ns_fd=self.ns)
                idx = ipr.link_lookup(ifname=self.name)[0]
                if self.host_address:
                    ip, plen = self.host_address.split("/")
                    ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
                ipr.link("set", index=idx, state="up")
            except BaseException:
                delete_link(self.name)
                raise
        with NetNS(self.ns, flags=0) as ns:
            pidx = ns.link_lookup(ifname=tmp_peer)[0]
            ns.link("set", index=pidx, ifname=self.PEER)
            if self.lan_address:
                ip, plen = self.lan_address.split("/")
                ns.addr("add", index=pidx, address=ip, prefixlen=int(plen))
            ns.link("set", index=pidx, state="up")

    def unplug(self) -> None:
        """The NIC disappears (its LAN peer with it; the namespace stays)."""
        delete_link(self.name)

    def recreate(self, name: str | None = None, host_address: str | None = None) -> None:
        """Delete the NIC and create it again, under ``name`` if given."""
        self.unplug()
        self.plug(name, host_address)

    def rename(self, new_name: str) -> None:
        """Rename the NIC in place (down, rename, up), like a udev rename."""
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, state="down")
            ipr.link("set", index=idx, ifname=new_name)
            ipr.link("set", index=idx, state="up")
        self.name = new_name

    # -- queries ---------------------------------------------------------

    @property
    def index(self) -> int | None:
        return link_index(self.name)

    def read_mac(self) -> str:
        """The NIC's current MAC (lower case)."""
        info = link_info(self.name)
        if info is None:
            raise RuntimeError(f"stand-in NIC {self.name} does not exist")
        return info["mac"]

    def lan_ping(self, address: str, count: int = 1, timeout: float = 2.0) -> bool:
        """Ping ``address`` from inside the LAN namespace."""
        return ping(address, ns=self.ns, count=count, timeout=timeout)
