"""The only module that imports libvirt. Never used from inside a hook: libvirtd waits
for its hooks, and a hook calling back into it deadlocks."""

from __future__ import annotations

import re
import time

import libvirt

from .errors import HostError, UsageError

DEFAULT_URI = "qemu:///system"
DETACH_TIMEOUT = 20.0
DETACH_POLL = 0.1
ALIAS = re.compile(r"<alias name=['\"]([^'\"]+)['\"]")


def _quiet(_context, _error) -> None:
    """libvirt prints every error to stderr by default; ours become one line each."""


libvirt.registerErrorHandler(_quiet, None)


class Libvirt:
    def __init__(self, uri: str = DEFAULT_URI):
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as error:
            raise HostError(f"cannot connect to libvirt at {uri}: "
                            f"{error.get_error_message()}") from None

    def close(self) -> None:
        self.conn.close()

    def domain(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise UsageError(f"domain {name}: no such domain") from None
            raise HostError(f"domain {name}: {error.get_error_message()}") from None

    def domains(self) -> list[libvirt.virDomain]:
        return sorted(self.conn.listAllDomains(), key=lambda dom: dom.name())

    @staticmethod
    def definition(dom: libvirt.virDomain) -> str:
        """The persistent definition (what the next start uses), secrets included: without
        VIR_DOMAIN_XML_SECURE libvirt leaves out VNC and SPICE passwords, and a definition
        written back from it would lose them."""
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)

    @staticmethod
    def live(dom: libvirt.virDomain) -> str:
        return dom.XMLDesc(0)

    @staticmethod
    def running(dom: libvirt.virDomain) -> bool:
        return bool(dom.isActive())

    def define(self, name: str, xml: str) -> None:
        self._do(name, "define", lambda: self.conn.defineXML(xml))

    def update_live_interface(self, dom: libvirt.virDomain, interface_xml: str) -> None:
        self._do(dom.name(), "update interface",
                 lambda: dom.updateDeviceFlags(interface_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def replug(self, dom: libvirt.virDomain, mac: str, old_xml: str | None, new_xml: str,
               timeout: float = DETACH_TIMEOUT) -> None:
        """Live detach (unless old_xml is None) and attach: the guest sees its NIC
        unplugged and plugged again.

        The guest ejects the device (ACPI) a while after it was asked, and only then can
        it be attached again. Detaching by alias only asks (libvirt's by-XML detach would
        hold a daemon worker while the guest takes its time), so many guests can be
        re-plugged at once."""
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if old_xml is not None:
            alias = ALIAS.search(old_xml)
            if alias:
                self._do(dom.name(), f"detach interface {mac}",
                         lambda: dom.detachDeviceAlias(alias.group(1), live))
            else:
                self._do(dom.name(), f"detach interface {mac}",
                         lambda: dom.detachDeviceFlags(old_xml, live))
        deadline = time.monotonic() + timeout
        while f"'{mac}'" in dom.XMLDesc(0).lower():
            if time.monotonic() > deadline:
                raise HostError(f"domain {dom.name()} interface {mac}: the guest did not "
                                f"release the interface within {timeout:.0f} s of the detach")
            time.sleep(DETACH_POLL)
        self._do(dom.name(), f"attach interface {mac}",
                 lambda: dom.attachDeviceFlags(new_xml, live))

    @staticmethod
    def _do(name: str, what: str, call) -> None:
        try:
            call()
        except libvirt.libvirtError as error:
            raise HostError(f"domain {name}: {what}: {error.get_error_message()}") from None
