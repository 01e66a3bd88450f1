"""Configuration: a TOML file (or nothing) becomes frozen dataclasses.

The file is read once, by ``load``; every component receives the section it
needs through its constructor.  Every key has a default, so no file at all
gives a working server.  Unknown keys, wrong types and values out of range are
errors that name the file and the key path, and all of them are reported at
once so an administrator fixes a file in one pass.
"""

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field

TLS_VERSIONS = ("1.2", "1.3")
RESOURCE_CONFLICT_POLICIES = ("replace", "refuse", "rename")
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _option(default, *, low=None, high=None, choices=None, doc=""):
    """A dataclass field whose metadata carries the checks made at load time."""
    if isinstance(default, (list, dict)):
        return field(
            default_factory=lambda: type(default)(default),
            metadata={"low": low, "high": high, "choices": choices, "doc": doc},
        )
    return field(default=default, metadata={"low": low, "high": high, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class TLSConfig:
    """The certificate shared by every listener unless a listener names its own."""

    certificate: str = _option("", doc="PEM certificate chain; empty: generated under data_dir")
    private_key: str = _option("", doc="PEM private key; empty: generated under data_dir")


@dataclass(frozen=True)
class C2SConfig:
    """Client-to-server listeners and the limits applied to each connection."""

    endpoints: list = _option(["tcp:5222"])
    direct_tls_endpoints: list = _option(["tcp:5223"])
    require_encryption: bool = _option(True)
    tls_min_version: str = _option("1.2", choices=TLS_VERSIONS)
    tls_ciphers: str = _option(DEFAULT_CIPHERS)
    certificate: str = _option("")
    private_key: str = _option("")
    stanza_size_limit_bytes: int = _option(262144, low=1024, high=64 * 1024 * 1024)
    rate_limit_bytes_per_second: int = _option(20000, low=100)
    rate_limit_burst_bytes: int = _option(200000, low=1024)
    pre_auth_timeout_seconds: float = _option(30.0, low=1, high=3600)
    ping_interval_seconds: float = _option(300.0, low=0, high=86400)
    ping_timeout_seconds: float = _option(60.0, low=1, high=3600)
    max_sessions_per_user: int = _option(10, low=1)
    max_connections_per_address: int = _option(20, low=1)
    resource_conflict: str = _option("replace", choices=RESOURCE_CONFLICT_POLICIES)


@dataclass(frozen=True)
class HostConfig:
    """One virtual host: its own users, and the names that answer for it."""

    aliases: list = _option([])
    registration: bool = _option(False)


@dataclass(frozen=True)
class StorageConfig:
    backend: str = _option("sqlite", choices=("sqlite", "memory"))
    path: str = _option("bridge.sqlite")


@dataclass(frozen=True)
class OfflineConfig:
    max_messages_per_user: int = _option(1000, low=0)


@dataclass(frozen=True)
class Config:
    data_dir: str = _option("data")
    tls: TLSConfig = field(default_factory=TLSConfig)
    c2s: C2SConfig = field(default_factory=C2SConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    hosts: dict = field(default_factory=lambda: {"localhost": HostConfig()})
    source: str = "(embedded defaults)"

    def data_path(self, name):
        """``name`` resolved against ``data_dir`` (absolute names stay as they are)."""
        return os.path.join(self.data_dir, name)

    def host_for(self, domain):
        """The hosted domain that ``domain`` names, directly or as an alias, or None."""
        if domain in self.hosts:
            return domain
        for name, host in self.hosts.items():
            if domain in host.aliases:
                return name
        return None


_SECTIONS = {"tls": TLSConfig, "c2s": C2SConfig, "storage": StorageConfig,
             "offline": OfflineConfig}


def _type_name(kind):
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list of strings"}[kind]


def _check_value(kind, value, meta):
    """The reason ``value`` does not fit, or None."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        return f"must be {_type_name(kind)}, not {value!r}"
    if kind is list and not all(isinstance(item, str) for item in value):
        return f"must be {_type_name(kind)}, not {value!r}"
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, not {value!r}"
    if meta.get("low") is not None and value < meta["low"]:
        return f"must be at least {meta['low']}, not {value!r}"
    if meta.get("high") is not None and value > meta["high"]:
        return f"must be at most {meta['high']}, not {value!r}"
    return None


def _build(cls, table, path, problems, where):
    """Instantiate ``cls`` from ``table``, appending every problem found."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields or key == "source":
            problems.append(f"{where}: {path}{key}: unknown key")
            continue
        reason = _check_value(hints[key], value, fields[key].metadata)
        if reason:
            problems.append(f"{where}: {path}{key}: {reason}")
        else:
            values[key] = float(value) if hints[key] is float else value
    return cls(**values)


def parse(document, where):
    """A ``Config`` from a parsed TOML document; ``where`` names it in errors."""
    problems = []
    top = {}
    sections = {}
    hosts = None
    for key, value in document.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{where}: {key}: must be a table")
            else:
                sections[key] = _build(_SECTIONS[key], value, f"{key}.", problems, where)
        elif key == "hosts":
            if not isinstance(value, dict) or not value:
                problems.append(f"{where}: hosts: must be a table of at least one [hosts.NAME]")
                continue
            hosts = {}
            for name, table in value.items():
                if not isinstance(table, dict):
                    problems.append(f"{where}: hosts.{name}: must be a table")
                    continue
                hosts[name.lower()] = _build(HostConfig, table, f"hosts.{name}.", problems, where)
        else:
            top[key] = value
    base = _build(Config, top, "", problems, where)
    names = {}
    for name, host in (hosts or {}).items():
        for alias in [name, *host.aliases]:
            if alias.lower() in names:
                problems.append(f"{where}: hosts.{name}.aliases: {alias!r} already names host {names[alias.lower()]!r}")
            names[alias.lower()] = name
    if problems:
        raise ConfigError(problems)
    changes = dict(sections, source=where)
    if hosts is not None:
        changes["hosts"] = hosts
    return dataclasses.replace(base, **changes)


def load(path=None):
    """Read ``path`` (a TOML file); with None, the embedded defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError([f"{path}: cannot be read: {error.strerror}"])
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"])
    config = parse(document, path)
    if not os.path.isabs(config.data_dir):
        base = os.path.dirname(os.path.abspath(path))
        config = dataclasses.replace(config, data_dir=os.path.join(base, config.data_dir))
    return config
