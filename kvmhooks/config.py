"""Host config: TOML text -> frozen Config (pure); reading the file is one thin function.

Every error names the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ConfigError
from .names import IFNAMSIZ_MAX, ifname_problem, normalize_mac, shim_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEFAULT_PATH = "/etc/kvmhooks/kvmhooks.toml"

_UPLINK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_UPLINK_KEYS = {"nic", "mac", "path", "bridge", "host_address", "domains", "mtu",
                "vlan_filtering"}
MTU_RANGE = (68, 65535)  # IPv4's smallest MTU, IP's largest packet
_NETWORK_KEYS = {"uplink"}
_TOML_LINE = re.compile(r"at line (\d+)")


@dataclass(frozen=True)
class Uplink:
    name: str
    nic: str | None = None
    mac: str | None = None
    path: str | None = None
    bridge: str | None = None
    # The shim's addresses, IPv4 and IPv6; none: no shim.
    host_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    domains: tuple[str, ...] | None = None
    mtu: int | None = None  # None: every device takes its lower device's MTU
    # VLAN filtering on a bridge kvmhooks did not create (its own filter when asked)
    vlan_filtering: bool = False

    @property
    def shim(self) -> str:
        return shim_name(self.name)

    def selector(self) -> str:
        """How this uplink names its NIC, for messages."""
        if self.nic:
            return f"nic = \"{self.nic}\""
        if self.mac:
            return f"mac = \"{self.mac}\""
        return f"path = \"{self.path}\""

    def allows(self, domain: str) -> bool:
        if self.domains is None:
            return True
        return any(fnmatch.fnmatchcase(domain, pattern) for pattern in self.domains)


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    uplink: str


@dataclass(frozen=True)
class Config:
    path: str
    uplinks: Mapping[str, Uplink]
    networks: Mapping[str, NetworkEntry]


def config_path() -> str:
    return os.environ.get("KVMHOOKS_CONFIG", DEFAULT_PATH)


def load(path: str | None = None) -> Config:
    """Read and parse the host config (the only I/O in this module)."""
    path = path or config_path()
    try:
        with open(path, "rb") as stream:
            _refuse_untrusted(path, os.fstat(stream.fileno()))
            data = stream.read()
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except OSError as error:
        raise ConfigError(path, f"cannot read config: {error.strerror}") from None
    return parse(data, path)


def _refuse_untrusted(path: str, info: os.stat_result) -> None:
    """kvmhooks acts as root on what the config says: the file and every directory above
    it (where it is, and where a link to it leads) must belong to root or to the user
    kvmhooks runs as, and none may be writable by others. A sticky directory further up
    (like /tmp) may be: there others cannot replace what is not theirs. The config's own
    directory may not, sticky or not: others could have put the file there first."""
    _refuse_changeable_by_others(path, "config file", path, info)
    seen = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        directory, own = os.path.dirname(start), True
        while directory not in seen:
            seen.add(directory)
            try:
                status = os.stat(directory)
            except OSError as error:
                raise ConfigError(path, f"directory {directory}: {error.strerror}") from None
            sticky_above = not own and status.st_mode & stat.S_ISVTX
            _refuse_changeable_by_others(path, "directory", directory, status, sticky_above)
            directory, own = os.path.dirname(directory), False


def _refuse_changeable_by_others(path: str, what: str, where: str, status: os.stat_result,
                                 others_may_write: bool = False) -> None:
    if status.st_uid not in (0, os.geteuid()):
        raise ConfigError(path, f"{what} {where} belongs to uid {status.st_uid}, not to root; "
                          "kvmhooks refuses it (chown root)")
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not others_may_write:
        raise ConfigError(path, f"{what} {where} is writable by others; kvmhooks refuses it "
                          "(chmod go-w)")


def load_if_present(path: str | None = None) -> Config | None:
    """The config, or None where the host has none (kvmhooks is not set up there)."""
    path = path or config_path()
    return load(path) if is_present(path) else None


def is_present(path: str | None = None) -> bool:
    return os.path.lexists(path or config_path())


def names_network(name: str, path: str | None = None) -> bool:
    """Whether the config file has a [network.NAME] table for this network, judged from
    its text alone: a config that does not load fails only the networks it names."""
    try:
        with open(path or config_path(), "rb") as stream:
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return False
    header = re.compile(r'^\s*\[\s*network\s*\.\s*(["\']?)' + re.escape(name)
                        + r"\1\s*\]", re.MULTILINE)
    return header.search(text) is not None


def parse(data: bytes, path: str) -> Config:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, f"not UTF-8 text (byte {error.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = _TOML_LINE.search(str(error))
        line = int(match.group(1)) if match else None
        raise ConfigError(path, f"TOML syntax error: {error}", line=line) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(path, "nested too deeply to be a kvmhooks config") from None
    return _Parser(path, text).config(document)


class _Parser:
    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()

    def error(self, table: str, key: str | None, message: str) -> ConfigError:
        dotted = f"{table}.{key}" if key else table
        return ConfigError(self.path, message, key=dotted, line=self.line_of(table, key))

    def line_of(self, table: str | None, key: str | None) -> int | None:
        """Best-effort line of `key` in `[table]` (top level when table is None), or of
        the first header that starts with table."""
        start = -1
        if table is not None:
            parts = r"\s*\.\s*".join(r'"?' + re.escape(p) + r'"?' for p in table.split("."))
            header = re.compile(r"^\s*\[\s*" + parts + r"\s*[.\]]")
            start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
            if start is None:
                return None
            if key is None:
                return start + 1
        key_line = re.compile(r'^\s*"?' + re.escape(key) + r'"?\s*=')
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if key_line.match(self.lines[i]):
                return i + 1
        return start + 1 if start >= 0 else None

    def config(self, document: dict) -> Config:
        for key in sorted(set(document) - {"uplink", "network"}):
            if isinstance(document[key], dict):
                raise ConfigError(self.path, "unknown table (expected [uplink.NAME] or "
                                  "[network.NAME])", key=key, line=self.line_of(key, None))
            raise ConfigError(self.path, "unknown key outside any table (expected "
                              "[uplink.NAME] or [network.NAME] tables)", key=key,
                              line=self.line_of(None, key))
        uplinks = {name: self.uplink(name, body)
                   for name, body in self.tables(document, "uplink").items()}
        networks = {name: self.network(name, body, uplinks)
                    for name, body in self.tables(document, "network").items()}
        bridges: dict[str, str] = {}
        for uplink in uplinks.values():
            if uplink.bridge and uplink.bridge in bridges:
                raise self.error(f"uplink.{uplink.name}", "bridge",
                                 f"bridge '{uplink.bridge}' is already the bridge of "
                                 f"uplink '{bridges[uplink.bridge]}'")
            if uplink.bridge:
                bridges[uplink.bridge] = uplink.name
        return Config(self.path, MappingProxyType(uplinks), MappingProxyType(networks))

    def tables(self, document: dict, kind: str) -> dict:
        tables = document.get(kind, {})
        if not isinstance(tables, dict):
            raise ConfigError(self.path, f"must be tables [{kind}.NAME]", key=kind)
        for name, body in tables.items():
            pattern = _UPLINK_NAME if kind == "uplink" else _NETWORK_NAME
            if not pattern.match(name):
                raise self.error(f"{kind}.{name}", None, "name may hold only letters, "
                                 "digits, '-' and '_'")
            if not isinstance(body, dict):
                raise ConfigError(self.path, f"[{kind}] holds keys directly; name the "
                                  f"{kind}: [{kind}.NAME]", key=f"{kind}.{name}",
                                  line=self.line_of(kind, name))
        return tables

    def uplink(self, name: str, body: dict) -> Uplink:
        table = f"uplink.{name}"
        if len(shim_name(name)) > IFNAMSIZ_MAX:
            raise self.error(table, None, f"uplink name is over {IFNAMSIZ_MAX - 3} characters "
                             f"(its shim is named '{shim_name(name)}')")
        for key in sorted(set(body) - _UPLINK_KEYS):
            raise self.error(table, key, "unknown key (expected one of: "
                             + ", ".join(sorted(_UPLINK_KEYS)) + ")")
        selectors = [key for key in ("nic", "mac", "path") if key in body]
        if len(selectors) != 1:
            raise self.error(table, selectors[1] if len(selectors) > 1 else None,
                             "needs exactly one of nic, mac or path")
        values = {key: self.string(table, key, body[key])
                  for key in ("nic", "mac", "path", "bridge") if key in body}
        for key in ("nic", "bridge"):
            if key in values and (problem := ifname_problem(values[key])):
                raise self.error(table, key, problem)
        if "mac" in values:
            mac = normalize_mac(values["mac"])
            if mac is None:
                raise self.error(table, "mac", f"'{values['mac']}' is not a MAC address")
            values["mac"] = mac
        if values.get("bridge") and values.get("nic") == values["bridge"]:
            raise self.error(table, "bridge", "the bridge cannot be the NIC itself")
        host_addresses = self.host_addresses(table, body.get("host_address"))
        domains = None
        if "domains" in body:
            domains = body["domains"]
            if not isinstance(domains, list) or not all(isinstance(d, str) and d
                                                        for d in domains):
                raise self.error(table, "domains", "must be a list of domain name patterns")
            domains = tuple(domains)
        mtu = body.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]):
            raise self.error(table, "mtu", f"must be a whole number from {MTU_RANGE[0]} to "
                             f"{MTU_RANGE[1]}")
        vlan_filtering = body.get("vlan_filtering", False)
        if not isinstance(vlan_filtering, bool):
            raise self.error(table, "vlan_filtering", "must be true or false")
        if vlan_filtering and not values.get("bridge"):
            raise self.error(table, "vlan_filtering", "takes a bridge: VLAN filtering is "
                             "done by the uplink's bridge")
        return Uplink(name=name, nic=values.get("nic"), mac=values.get("mac"),
                      path=values.get("path"), bridge=values.get("bridge"),
                      host_addresses=host_addresses, domains=domains, mtu=mtu,
                      vlan_filtering=vlan_filtering)

    def host_addresses(self, table: str, value: object) -> tuple:
        """host_address: one CIDR or a list of them, IPv4 and IPv6."""
        if value is None:
            return ()
        texts = value if isinstance(value, list) else [value]
        if not texts:
            raise self.error(table, "host_address", "must be an address with prefix or a "
                             "non-empty list of them")
        addresses = []
        for item in texts:
            text = self.string(table, "host_address", item)
            if "/" not in text:
                raise self.error(table, "host_address", f"'{text}' needs a prefix length "
                                 "(for example 192.0.2.10/24 or 2001:db8::10/64)")
            try:
                address = ipaddress.ip_interface(text)
            except ValueError:
                raise self.error(table, "host_address",
                                 f"'{text}' is not an address with prefix") from None
            if address.ip in [known.ip for known in addresses]:
                raise self.error(table, "host_address", f"'{text}' is listed twice")
            addresses.append(address)
        return tuple(addresses)

    def network(self, name: str, body: dict, uplinks: dict) -> NetworkEntry:
        table = f"network.{name}"
        for key in sorted(set(body) - _NETWORK_KEYS):
            raise self.error(table, key, "unknown key (expected: uplink)")
        if "uplink" not in body:
            raise self.error(table, None, "needs uplink")
        uplink = self.string(table, "uplink", body["uplink"])
        if uplink not in uplinks:
            raise self.error(table, "uplink", f"no [uplink.{uplink}] in this config")
        return NetworkEntry(name=name, uplink=uplink)

    def string(self, table: str, key: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(table, key, "must be a non-empty string")
        return value
