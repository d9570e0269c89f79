"""Error classes: each carries the one line a user sees, and the exit status it maps to.

Exit status follows the contract: 1 for host or runtime failures, 2 for bad input
(usage, config, metadata).
"""

from __future__ import annotations

# hookclient.py runs alone under `python3 -I -S`; its error lines and ours share one_line.
from .hookclient import one_line

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


class KvmhooksError(Exception):
    """Base class: str(error) is the complete line shown to the user, always one line
    (input text quoted in it has its line breaks escaped)."""

    exit_status = EXIT_RUNTIME

    def __init__(self, message: str):
        super().__init__(one_line(message))


class BadInput(KvmhooksError):
    exit_status = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """The host config is missing, malformed or inconsistent; names file, key and line."""

    def __init__(self, path: str, message: str, key: str | None = None, line: int | None = None):
        where = path if line is None else f"{path}:{line}"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)
        self.path, self.key, self.line = path, key, line


class MetadataError(BadInput):
    """A domain's XML or kvmhooks metadata is malformed or inconsistent."""

    def __init__(self, domain: str, message: str, mac: str | None = None):
        subject = f"domain {domain}" + (f" interface {mac}" if mac else "")
        super().__init__(f"{subject}: {message}")
        self.domain, self.mac = domain, mac


class NotAllowed(BadInput):
    def __init__(self, domain: str, uplink: str, config_path: str):
        super().__init__(
            f"domain {domain}: may not use uplink '{uplink}' "
            f"(not matched by uplink.{uplink}.domains in {config_path})"
        )


class UsageError(BadInput):
    pass


class NicAbsent(KvmhooksError):
    def __init__(self, uplink: str, how: str):
        super().__init__(f"uplink '{uplink}': no NIC on this host matches {how}")


class SourceMismatch(KvmhooksError):
    """A native interface names a source that is not this host's resolution."""

    def __init__(self, domain: str, mac: str, differs: str):
        super().__init__(
            f"domain {domain} interface {mac}: {differs}; run 'kvmhooks apply {domain}'"
        )


class ForeignDevice(KvmhooksError):
    """A device kvmhooks would create or change exists and is not kvmhooks'."""

    def __init__(self, name: str, why: str):
        super().__init__(f"device {name}: {why}; kvmhooks leaves devices without its mark alone")


class NetworkRefused(BadInput):
    """A libvirt network definition that cannot work on this host."""


class HostError(KvmhooksError):
    """The kernel or libvirt refused a change."""


class LeaseOnNic(KvmhooksError):
    """A NIC to enslave holds a DHCP lease: its client would stay on the NIC, a bridge
    port, where it can never renew the lease the bridge got."""

    def __init__(self, uplink: str, nic: str, bridge: str, lease: str):
        super().__init__(
            f"uplink '{uplink}': NIC {nic} holds the DHCP lease {lease}; its DHCP client "
            f"cannot renew it once {nic} is a port of {bridge}, so kvmhooks leaves {nic} "
            f"alone: run the DHCP client on the bridge and give kvmhooks its name "
            f"(README: \"A NIC with a DHCP lease\")")


class LibvirtUnavailable(HostError):
    """libvirt cannot be reached, closed the connection, or did not answer in time."""


class ApplyError(KvmhooksError):
    """A step of a plan failed; the message says which, and what could not be undone."""

    def __init__(self, failed_step: str, cause: str, undo_failures: tuple[str, ...] = ()):
        text = f"{failed_step} failed: {cause}"
        if undo_failures:
            text += "; could not undo: " + "; ".join(undo_failures)
        else:
            text += "; earlier steps were undone"
        super().__init__(text)
        self.failed_step, self.undo_failures = failed_step, undo_failures
