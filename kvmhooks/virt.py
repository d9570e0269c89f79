"""The only module that imports libvirt. Never used from inside a hook: libvirtd waits
for its hooks, and a hook calling back into it deadlocks.

libvirt's client waits for an answer as long as it takes: a daemon that is restarting, or
a guest's qemu that does not answer its monitor, would hold the caller (a NIC handler,
and every handler behind it) forever. So every call here is bounded."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import libvirt

from .errors import HostError, KvmhooksError, LibvirtUnavailable, UsageError

DEFAULT_URI = "qemu:///system"
# libvirt itself gives up on a domain job it cannot start after 30 s.
CALL_TIMEOUT = 30.0
DETACH_TIMEOUT = 20.0
DETACH_POLL = 0.1
ALIAS = re.compile(r"<alias name=['\"]([^'\"]+)['\"]")


def _quiet(_context, _error) -> None:
    """libvirt prints every error to stderr by default; ours become one line each."""


libvirt.registerErrorHandler(_quiet, None)


def _within(timeout: float, what: str, call, *args):
    """call(*args) in a thread of its own, waited for at most timeout seconds. A call
    given up on is left to end in its thread (libvirt connections serve many threads)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, call(*args)))
        except BaseException as error:  # handed to the caller below
            outcome.append((False, error))

    worker = threading.Thread(target=run, name=f"libvirt: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise LibvirtUnavailable(f"{what}: libvirt did not answer within {timeout:.0f} s")
    done, value = outcome[0]
    if not done:
        raise value
    return value


class Libvirt:
    """A libvirt connection, opened again when libvirt closed it (the daemon restarted);
    every call is bounded by CALL_TIMEOUT."""

    def __init__(self, uri: str = DEFAULT_URI):
        self.uri = uri
        self.conn = self._open()

    def _open(self) -> libvirt.virConnect:
        try:
            return _within(CALL_TIMEOUT, f"connect to libvirt at {self.uri}", libvirt.open,
                           self.uri)
        except libvirt.libvirtError as error:
            raise LibvirtUnavailable(f"cannot connect to libvirt at {self.uri}: "
                                     f"{error.get_error_message()}") from None

    def _connection(self) -> libvirt.virConnect:
        if not self.conn.isAlive():
            self.close()
            self.conn = self._open()
        return self.conn

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError, KvmhooksError):
            _within(CALL_TIMEOUT, "close the libvirt connection", self.conn.close)

    def bounded(self, what: str, call, *args):
        """call(*args), a libvirt call, within CALL_TIMEOUT; its failure is one line that
        starts with what."""
        try:
            return _within(CALL_TIMEOUT, what, call, *args)
        except libvirt.libvirtError as error:
            raise self._failure(what, error) from None

    def _failure(self, what: str, error: libvirt.libvirtError) -> HostError:
        """LibvirtUnavailable when the connection died under the call, else HostError."""
        kind = HostError if self.conn.isAlive() else LibvirtUnavailable
        return kind(f"{what}: {error.get_error_message()}")

    def domain(self, name: str) -> libvirt.virDomain:
        try:
            return _within(CALL_TIMEOUT, f"domain {name}: look it up",
                           self._connection().lookupByName, name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise UsageError(f"domain {name}: no such domain") from None
            raise self._failure(f"domain {name}", error) from None

    def domains(self) -> list[libvirt.virDomain]:
        return sorted(self.bounded("list the domains", self._connection().listAllDomains),
                      key=lambda dom: dom.name())

    @staticmethod
    def definition(dom: libvirt.virDomain) -> str:
        """The persistent definition (what the next start uses), secrets included: without
        VIR_DOMAIN_XML_SECURE libvirt leaves out VNC and SPICE passwords, and a definition
        written back from it would lose them."""
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)

    def live(self, dom: libvirt.virDomain) -> str:
        return self.bounded(f"domain {dom.name()}: read its live XML", dom.XMLDesc, 0)

    def running(self, dom: libvirt.virDomain) -> bool:
        return bool(self.bounded(f"domain {dom.name()}: is it running", dom.isActive))

    def define(self, name: str, xml: str) -> None:
        self.bounded(f"domain {name}: define", self._connection().defineXML, xml)

    def update_live_interface(self, dom: libvirt.virDomain, interface_xml: str) -> None:
        self.bounded(f"domain {dom.name()}: update interface", dom.updateDeviceFlags,
                     interface_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def replug(self, dom: libvirt.virDomain, mac: str, old_xml: str | None, new_xml: str,
               timeout: float = DETACH_TIMEOUT) -> None:
        """Live detach (unless old_xml is None) and attach: the guest sees its NIC
        unplugged and plugged again.

        The guest ejects the device (ACPI) a while after it was asked, and only then can
        it be attached again. Detaching by alias only asks (libvirt's by-XML detach would
        hold a daemon worker while the guest takes its time), so many guests can be
        re-plugged at once."""
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        subject = f"domain {dom.name()}"
        if old_xml is not None:
            alias = ALIAS.search(old_xml)
            if alias:
                self.bounded(f"{subject}: detach interface {mac}", dom.detachDeviceAlias,
                             alias.group(1), live)
            else:
                self.bounded(f"{subject}: detach interface {mac}", dom.detachDeviceFlags,
                             old_xml, live)
        deadline = time.monotonic() + timeout
        while f"'{mac}'" in self.live(dom).lower():
            if time.monotonic() > deadline:
                raise HostError(f"{subject} interface {mac}: the guest did not "
                                f"release the interface within {timeout:.0f} s of the detach")
            time.sleep(DETACH_POLL)
        self.bounded(f"{subject}: attach interface {mac}", dom.attachDeviceFlags, new_xml,
                     live)
