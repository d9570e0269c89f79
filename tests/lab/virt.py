"""libvirt for the lab: the connection, domains defined for one test and removed at
cleanup (destroyed, undefined, their logs gone), and what libvirt reports about a
running domain's interfaces.

libvirt is imported where it is used, so that a host without libvirt-python can still
import the lab (conftest.py then fails the system tests with one clear line).
"""

from __future__ import annotations

from lxml import etree

from .cleanup import Cleanup, remove_file
from .domains import serial_log_path

LIBVIRT_URI = "qemu:///system"


def connect(uri: str = LIBVIRT_URI):
    """A read-write libvirt connection (raises libvirt.libvirtError)."""
    import libvirt

    # errors arrive as exceptions; keep libvirt from also printing them
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(uri)


def undefine_flags() -> int:
    import libvirt

    flags = 0
    for flag in (
        "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
        "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
        "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
        "VIR_DOMAIN_UNDEFINE_NVRAM",
    ):
        flags |= getattr(libvirt, flag, 0)
    return flags


def destroy_and_undefine(conn, name: str) -> None:
    """Destroy (if running) and undefine domain ``name`` if it exists. A connection
    that died under a libvirtd restart (the benchmark restarts it) is replaced."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if conn.isAlive():
            raise
        fresh = connect()
        try:
            destroy_and_undefine(fresh, name)
        finally:
            fresh.close()
        return
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise  # "domain is not running" raced us: fine
    if dom.isPersistent():
        dom.undefineFlags(undefine_flags())


def define(conn, xml: str, cleanup: Cleanup):
    """Define a persistent domain; cleanup destroys and undefines it (with its managed
    save, snapshot metadata and nvram) and removes its logs. Returns virDomain."""
    dom = conn.defineXML(xml)
    name = dom.name()
    for log in (serial_log_path(name), f"/var/log/libvirt/qemu/{name}.log"):
        cleanup.add(remove_file, log, _what=f"remove {log}")
    cleanup.add(destroy_and_undefine, conn, name, _what=f"destroy+undefine domain {name}")
    return dom


def define_and_start(conn, xml: str, cleanup: Cleanup):
    """:func:`define`, then start it."""
    dom = define(conn, xml, cleanup)
    dom.create()
    return dom


def live_interface(dom, mac: str) -> etree._Element | None:
    """The <interface> with this MAC in the running domain's XML, or None."""
    root = etree.fromstring(dom.XMLDesc(0).encode())
    return next((i for i in root.findall("devices/interface")
                 if i.find("mac").get("address") == mac), None)


def live_target(dom, mac: str) -> str | None:
    """The host device libvirt reports for the interface with this MAC."""
    interface = live_interface(dom, mac)
    target = interface.find("target") if interface is not None else None
    return target.get("dev") if target is not None else None
