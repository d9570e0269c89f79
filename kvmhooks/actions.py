"""The typed steps of a plan (data only) and the step that undoes each.

apply.py runs them; planner.py decides them; explain prints them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace

from .inventory import Route


@dataclass(frozen=True)
class Action:
    def describe(self) -> str:
        raise NotImplementedError

    def undo(self) -> Action | None:
        """The step that reverses this one, or None when it cannot be reversed."""
        return None

    def as_dict(self) -> dict:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        return {"action": name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class CreateBridge(Action):
    name: str
    mac: str | None
    mark: str

    def describe(self) -> str:
        return f"create bridge {self.name}" + (f" with MAC {self.mac}" if self.mac else "")

    def undo(self) -> Action:
        return DeleteLink(self.name, "undo")


@dataclass(frozen=True)
class CreateTap(Action):
    name: str
    mac: str
    bridge: str
    mark: str

    def describe(self) -> str:
        return f"create tap {self.name} with MAC {self.mac} on bridge {self.bridge}"

    def undo(self) -> Action:
        return DeleteLink(self.name, "undo")


@dataclass(frozen=True)
class CreateMacvtap(Action):
    name: str
    mac: str
    parent: str
    mode: str
    mark: str

    def describe(self) -> str:
        return (f"create macvtap {self.name} with MAC {self.mac} on {self.parent}, "
                f"mode {self.mode}")

    def undo(self) -> Action:
        return DeleteLink(self.name, "undo")


@dataclass(frozen=True)
class CreateShim(Action):
    name: str
    parent: str
    address: str
    mark: str

    def describe(self) -> str:
        return f"create shim {self.name} (macvlan bridge mode) on {self.parent} with {self.address}"

    def undo(self) -> Action:
        return DeleteLink(self.name, "undo")


@dataclass(frozen=True)
class SetUp(Action):
    name: str

    def describe(self) -> str:
        return f"set {self.name} up"

    def undo(self) -> Action:
        return SetDown(self.name)


@dataclass(frozen=True)
class SetDown(Action):
    name: str

    def describe(self) -> str:
        return f"set {self.name} down"

    def undo(self) -> Action:
        return SetUp(self.name)


@dataclass(frozen=True)
class SetMaster(Action):
    name: str
    master: str | None
    previous: str | None = None

    def describe(self) -> str:
        if self.master is None:
            return f"release {self.name} from bridge {self.previous}"
        return f"enslave {self.name} to bridge {self.master}"

    def undo(self) -> Action:
        return SetMaster(self.name, self.previous, self.master)


@dataclass(frozen=True)
class AddAddress(Action):
    name: str
    address: str

    def describe(self) -> str:
        return f"add address {self.address} to {self.name}"

    def undo(self) -> Action:
        return DelAddress(self.name, self.address)


@dataclass(frozen=True)
class DelAddress(Action):
    name: str
    address: str

    def describe(self) -> str:
        return f"remove address {self.address} from {self.name}"

    def undo(self) -> Action:
        return AddAddress(self.name, self.address)


@dataclass(frozen=True)
class MoveRoute(Action):
    route: Route
    source: str
    target: str

    def describe(self) -> str:
        return f"move route {self.route.describe()} from {self.source} to {self.target}"

    def undo(self) -> Action:
        return MoveRoute(self.route, self.target, self.source)


@dataclass(frozen=True)
class SetRouteMetric(Action):
    """Change the metric of a prefix route (the kernel's route for an address)."""

    route: Route
    dev: str
    metric: int

    def describe(self) -> str:
        return f"set metric {self.metric} on route {self.route.dst} dev {self.dev}"

    def undo(self) -> Action:
        return SetRouteMetric(replace(self.route, priority=self.metric), self.dev,
                              self.route.priority or 0)


@dataclass(frozen=True)
class DeleteLink(Action):
    name: str
    reason: str

    def describe(self) -> str:
        return f"delete {self.name} ({self.reason})"


@dataclass(frozen=True)
class WriteSource(Action):
    """Rewrite a native interface's type and <source> in the domain XML."""

    mac: str
    type: str
    bridge: str | None = None
    dev: str | None = None
    mode: str | None = None
    network: str | None = None

    def describe(self) -> str:
        if self.type == "bridge":
            source = f"bridge='{self.bridge}'"
        elif self.type == "direct":
            source = f"dev='{self.dev}' mode='{self.mode}'"
        else:
            source = f"network='{self.network}'"
        return f"write interface {self.mac}: type='{self.type}' <source {source}/>"
