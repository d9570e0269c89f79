"""The state directory: the host lock that serializes every change kvmhooks makes,
the record of what was built for each domain, and the counts `status --prometheus`
reports."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, fields

from .errors import HostError

# hookclient.py runs alone under `python3 -I -S` and reads records too: their paths live there.
from .hookclient import record_path, state_dir

log = logging.getLogger("kvmhooks")
COUNTERS_FILE = "counters.json"


def state_directory() -> str:
    """The state directory, made root-only when missing and refused when others may
    write it."""
    return _directory()


def _directory(*parts: str) -> str:
    path = os.path.join(state_dir(), *parts)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as error:
        raise HostError(f"state directory {path}: {error.strerror}") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HostError(f"state directory {path} is writable by others; "
                        "kvmhooks refuses to use it (chmod go-w)")
    return path


@contextlib.contextmanager
def _flock(path: str):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def host_lock():
    """One lock for all host changes, whether from a hook, udev or the command line."""
    with _flock(os.path.join(_directory(), "lock")):
        yield


@contextlib.contextmanager
def nic_event_lock(ifname: str):
    """Serializes the guests' part of NIC event handlers (taps, re-plugs) among
    themselves, collapsing bursts: while one handler for ifname waits, later ones for the
    same NIC leave at once (yielding False), since the waiting one will look at the host
    after their event happened. Only handlers of an uplink's NIC take it, after they
    repaired its shared devices; what they do while they hold it is bounded.

    It is not the host lock: a handler calls libvirt, and libvirt may be waiting for a
    hook that waits for the host lock. Handlers take the host lock only around their
    own host changes, and never call libvirt while they hold it."""
    with waiting_slot(ifname, "lock") as release:
        if release is None:
            yield False
            return
        with _flock(os.path.join(_directory(), "nic-events.lock")):
            release()
            yield True


@contextlib.contextmanager
def waiting_slot(ifname: str, purpose: str):
    """The one place in line behind whoever holds a lock, for NIC ``ifname``'s ``purpose``:
    yields a function that gives the place up (call it once the lock is held), or None
    when another holds the place already; that one looks at the host after the caller's
    event happened, so the caller has nothing left to do. A burst of events thus costs
    two handlers' work, not one per event."""
    path = os.path.join(_directory("pending"),
                        f"{_file_name('interface name', ifname)}.{purpose}")
    slot = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    held = [slot]

    def release() -> None:
        if held:
            os.close(held.pop())
    try:
        try:
            fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield release
    finally:
        release()


class CreationJournal:
    """Devices being created: a device exists a moment before it carries kvmhooks' mark
    (the kernel takes no alias at creation), and a hook killed in that moment would leave
    a device kvmhooks could never claim. The name is written here first and removed once
    the device is marked or gone, so the next snapshot knows it for kvmhooks'."""

    def __init__(self):
        self.directory = _directory("creating")

    def begin(self, name: str, mark: str) -> None:
        with open(os.path.join(self.directory, name), "w", encoding="utf-8") as stream:
            stream.write(mark)

    def end(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, name))


def forget_creating(existing: set[str]) -> None:
    """Drop journal entries of devices that do not exist; only under the host lock, where
    no creation is under way."""
    for name in set(creating_marks()) - existing:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir(), "creating", name))


def creating_marks() -> dict[str, str]:
    """Device name -> mark, for devices whose creation was begun and never ended."""
    directory = os.path.join(state_dir(), "creating")
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            with contextlib.suppress(OSError), \
                    open(os.path.join(directory, name), encoding="utf-8") as stream:
                found[name] = stream.read().strip()
    return found


def _file_name(what: str, name: str) -> str:
    """name, checked to stay a plain file name inside the state directory."""
    if not name or "/" in name or name.startswith("."):
        raise HostError(f"{what} '{name}' cannot name a state file")
    return name


def _record_path(uuid: str) -> str:
    _directory("domains")
    return record_path(_file_name("domain UUID", uuid))


def write_record(uuid: str, record: dict) -> None:
    """What the last prepare of this domain did (the plan, as explain prints it)."""
    _write_json(_record_path(uuid), record, indent=1)


def _write_json(path: str, data: dict, indent: int | None = None) -> None:
    """path holds data or what it held before, never half of it (a reader may look at any
    moment; callers serialize writers)."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=indent, sort_keys=True)
    os.replace(temporary, path)


def recorded_since(since_ns: int) -> set[str]:
    """UUIDs of domains whose prepare wrote its record at or after since_ns (time.time_ns)."""
    directory = os.path.join(state_dir(), "domains")
    found = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.endswith(".json") and entry.stat().st_mtime_ns >= since_ns:
                found.add(entry.name[:-len(".json")])
    return found


def drop_record(uuid: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_record_path(uuid))


def has_record(uuid: str) -> bool:
    """Whether the domain's prepare built what it needs and its release has not run:
    under the host lock, whether it runs as far as kvmhooks is concerned."""
    return bool(uuid) and os.path.exists(record_path(_file_name("domain UUID", uuid)))


@dataclass(frozen=True)
class Counters:
    """What kvmhooks did since boot: the state directory is on tmpfs (/run)."""

    nic_events: int = 0  # NIC events that concerned an uplink's NIC
    replugs: int = 0  # live detach and attach of a guest's interface, done


COUNTER_NAMES = tuple(field.name for field in fields(Counters))


def count(name: str) -> None:
    """Add one to a counter. Several NIC event handlers may count at once: the file is
    read and replaced under a lock of its own. A count that fails is a warning, never
    the failure of what it counts."""
    if name not in COUNTER_NAMES:
        raise ValueError(f"no counter '{name}'")
    try:
        directory = _directory()
        path = os.path.join(directory, COUNTERS_FILE)
        with _flock(os.path.join(directory, "counters.lock")):
            try:
                counts = asdict(_read_counters(path))
            except HostError as error:
                log.warning("%s; counting from 0 again", error)
                counts = asdict(Counters())
            counts[name] += 1
            _write_json(path, counts)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        log.warning("counter %s not updated: %s%s", name, where, error.strerror)
    except HostError as error:
        log.warning("counter %s not updated: %s", name, error)


def counters() -> Counters:
    """The counts so far; all 0 when nothing was counted since boot."""
    return _read_counters(os.path.join(state_dir(), COUNTERS_FILE))


def _read_counters(path: str) -> Counters:
    try:
        with open(path, encoding="utf-8") as stream:
            counts = json.load(stream)
    except FileNotFoundError:
        return Counters()
    except OSError as error:
        raise HostError(f"{path}: {error.strerror}") from None
    except ValueError:  # JSON and UTF-8 errors alike
        raise HostError(f"{path}: not JSON") from None
    if not isinstance(counts, dict) or not all(
            type(counts.get(name, 0)) is int and counts.get(name, 0) >= 0
            for name in COUNTER_NAMES):
        raise HostError(f"{path}: not a JSON object of counts")
    return Counters(**{name: counts.get(name, 0) for name in COUNTER_NAMES})
