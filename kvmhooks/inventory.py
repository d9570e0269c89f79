"""A snapshot of host links (dataclasses, no I/O); netlink.py fills it in."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .names import Mark, parse_mark

LOWER_KINDS = ("macvlan", "macvtap")  # kinds whose IFLA_LINK is a parent on this host


@dataclass(frozen=True)
class Route:
    """A route through a link that is not the kernel's own prefix route."""

    dst: str  # "default" or a prefix such as "198.18.5.0/24"
    family: int
    gateway: str | None = None
    priority: int | None = None
    source: str | None = None  # prefsrc

    def describe(self) -> str:
        text = self.dst + (f" via {self.gateway}" if self.gateway else "")
        return text + (f" metric {self.priority}" if self.priority is not None else "")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None = None  # "bridge", "macvtap", "macvlan", "tun", "veth", ... or None
    mac: str | None = None
    alias: str | None = None
    master: int | None = None
    parent: int | None = None  # lower device of a macvlan or macvtap
    up: bool = False
    mode: str | None = None  # macvlan/macvtap mode, in the contract's words
    addresses: tuple[str, ...] = ()  # global-scope addresses with prefix, "198.18.1.1/24"
    routes: tuple[Route, ...] = ()  # routes through the link that are not the kernel's
    prefix_routes: tuple[Route, ...] = ()  # the kernel's routes for the link's addresses
    id_path: str | None = None  # udev ID_PATH, when it was asked for
    permanent_mac: str | None = None

    @property
    def mark(self) -> Mark | None:
        return parse_mark(self.alias)

    @property
    def marked(self) -> bool:
        return self.mark is not None


@dataclass(frozen=True)
class Inventory:
    links: tuple[Link, ...] = ()
    _by_name: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {link.name: link for link in self.links})

    def by_name(self, name: str) -> Link | None:
        return self._by_name.get(name)

    def by_index(self, index: int | None) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def children(self, link: Link) -> tuple[Link, ...]:
        """macvlan and macvtap devices whose lower device is link."""
        return tuple(child for child in self.links
                     if child.kind in LOWER_KINDS and child.parent == link.index)

    def ports(self, link: Link) -> tuple[Link, ...]:
        return tuple(port for port in self.links if port.master == link.index)

    def marked_with(self, mark: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.alias == mark)

    def orphans(self, running_uuids: set[str]) -> tuple[tuple[Link, str], ...]:
        """kvmhooks' per-guest devices of domains that do not run (a prepare killed before
        it could undo, a release that never came), each with its domain's UUID."""
        return tuple((link, link.mark.subject) for link in self.links
                     if link.mark is not None and link.mark.kind == "guest"
                     and link.mark.subject not in running_uuids)


def with_creating_marks(inventory: Inventory, marks: dict[str, str]) -> Inventory:
    """The links kvmhooks was creating when it was stopped carry no mark yet: give them
    the one the creation journal holds for them."""
    if not marks:
        return inventory
    return Inventory(tuple(replace(link, alias=marks[link.name])
                           if link.alias is None and link.name in marks else link
                           for link in inventory.links))
