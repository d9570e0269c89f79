"""`kvmhooks status --prometheus`: what status reports, and kvmhooks' counts since boot,
in Prometheus' text exposition format (version 0.0.4), the format node_exporter's
textfile collector reads (pure).

An interface's state is a "state set": one sample per state a row can have, 1 for the
row's state and 0 for the others, so that an alert matches
`kvmhooks_interface_state{state="missing"} == 1` and an interface that changes state
starts no new series. A label with nothing to say ("-" in the table) is empty, which
Prometheus treats as no label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .state import Counters
from .status import HostStatus, InterfaceStatus

STATES = ("ok", "missing", "stale", "orphan")  # every state an InterfaceStatus has
PREFIX = "kvmhooks_"


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]  # (name, value), in the order written
    value: int


@dataclass(frozen=True)
class Family:
    """One metric: its name after the prefix (a counter's ends in _total), its type
    ("gauge" or "counter"), its help and its samples."""

    name: str
    type: str
    help: str
    samples: tuple[Sample, ...] = ()


def exposition(status: HostStatus, counters: Counters) -> str:
    """The text node_exporter's textfile collector reads, one metric family after the
    other, each with its HELP and TYPE lines (written even without samples)."""
    return "".join(_family(family) for family in families(status, counters))


def families(status: HostStatus, counters: Counters) -> tuple[Family, ...]:
    uplinks = status.uplinks
    return (
        Family("interface_state", "gauge",
               "State of a tagged interface (ok, missing, stale, orphan): 1 for the "
               "interface's state, 0 for the others.",
               tuple(sample for row in status.interfaces for sample in _states(row))),
        Family("uplink_nic_present", "gauge",
               "Whether the uplink's NIC is on this host.",
               tuple(Sample((("uplink", u.uplink), ("nic", u.nic)), int(u.nic_present))
                     for u in uplinks)),
        Family("uplink_bridge_present", "gauge",
               "Whether the uplink's bridge exists (uplinks with a bridge).",
               tuple(Sample((("uplink", u.uplink), ("bridge", u.bridge)),
                            int(u.bridge_present)) for u in uplinks if u.bridge is not None)),
        Family("uplink_shim_present", "gauge",
               "Whether kvmhooks' shim of the uplink exists (uplinks with a host_address).",
               tuple(Sample((("uplink", u.uplink), ("shim", u.shim)), int(u.shim_present))
                     for u in uplinks if u.shim is not None)),
        Family("unreadable_domains", "gauge",
               "Domains whose XML or kvmhooks metadata could not be read: their "
               "interfaces are missing from kvmhooks_interface_state.",
               (Sample((), len(status.errors)),)),
        Family("nic_events_total", "counter",
               "NIC events (add, move, remove) on an uplink's NIC handled since boot.",
               (Sample((), counters.nic_events),)),
        Family("replugs_total", "counter",
               "Live detach and attach of a guest's interface done since boot (by NIC "
               "events and kvmhooks apply).",
               (Sample((), counters.replugs),)),
    )


def _states(row: InterfaceStatus) -> Iterable[Sample]:
    labels = (("domain", row.domain), ("mac", row.mac), ("uplink", row.uplink),
              ("nic", row.nic), ("device", row.device))
    labels = tuple((key, "" if value == "-" else value) for key, value in labels)
    for state in STATES:
        yield Sample(labels + (("state", state),), int(row.state == state))


def _family(family: Family) -> str:
    name = PREFIX + family.name
    lines = [f"# HELP {name} {_escape_help(family.help)}", f"# TYPE {name} {family.type}"]
    for sample in family.samples:
        pairs = ",".join(f'{key}="{escape_label(value)}"' for key, value in sample.labels)
        lines.append(f"{name}{{{pairs}}} {sample.value}" if pairs
                     else f"{name} {sample.value}")
    return "\n".join(lines) + "\n"


def escape_label(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and line
    feed escaped, everything else as it is."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
