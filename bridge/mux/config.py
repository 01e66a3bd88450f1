"""The multiplexor's configuration: a TOML file with one [mux] table, checked as bridge/config.py checks
the server's (every problem at once, each naming the file and the key)."""

import os
from dataclasses import dataclass

from bridge.config import (ConfigError, ListenerTLS, _build, _option, _resolve_paths, _secret_file,
                           parse_host_port, read_first_line, read_toml)

BALANCES = ("least-clients", "hash")


@dataclass(frozen=True)
class MuxConfig(ListenerTLS):
    """Client listeners (STARTTLS, direct TLS, HTTPS for BOSH and WebSocket, with this certificate), the
    nodes, and the bounds."""

    endpoints: list = _option(["tcp:5222"], endpoints=True)
    direct_tls_endpoints: list = _option(["tcp:5223"], endpoints=True)
    https_endpoints: list = _option([], endpoints=True)
    nodes: list = _option([])
    node_tls: bool = _option(False)
    node_ca_file: str = _option("", path=True)
    node_tls_name: str = _option("")
    secret_file: str = _option("", path=True)
    links_per_node: int = _option(2, low=1, high=64)
    balance: str = _option("least-clients", choices=BALANCES)
    max_frame_bytes: int = _option(65536, low=1024, high=16 * 1024 * 1024)
    max_clients_per_link: int = _option(10000, low=1, high=1000000)
    max_buffered_bytes_per_client: int = _option(1048576, low=1024)
    max_pending_connects: int = _option(1000, low=1, high=1000000)
    connect_timeout_seconds: float = _option(30.0, low=1, high=3600)
    reconnect_max_seconds: float = _option(10.0, low=0.1, high=3600)

    def read_secret(self):
        return read_first_line(self.secret_file).encode("utf-8")

    def node_addresses(self):
        """The nodes as (host, port)."""
        return [parse_host_port(node) for node in self.nodes]


def load(path):
    """The [mux] table of ``path`` as a ``MuxConfig``; ConfigError listing every problem."""
    document = read_toml(path)
    problems = [f"{path}: {key}: unknown table or key (the multiplexor reads only [mux])"
                for key in document if key != "mux"]
    table = document.get("mux", {})
    if not isinstance(table, dict):
        raise ConfigError([f"{path}: mux: must be a table"])
    section = _build(MuxConfig, table, "mux.", problems, path)
    section = _resolve_paths(section, os.path.dirname(os.path.abspath(path)))
    problems += _problems(section, path)
    if problems:
        raise ConfigError(problems)
    return section


def _problems(section, where):
    problems = []
    if not section.nodes:
        problems.append(f"{where}: mux.nodes: needs at least one node's mux_listener address (HOST:PORT)")
    for node in section.nodes:
        try:
            _, port = parse_host_port(node)
        except ValueError as error:
            problems.append(f"{where}: mux.nodes: {error}")
            continue
        if port is None:
            problems.append(f"{where}: mux.nodes: {node!r} needs a port (HOST:PORT)")
    for key in ("certificate", "private_key"):
        name = getattr(section, key)
        if not name:
            problems.append(f"{where}: mux.{key}: needed (the multiplexor does the clients' TLS)")
        elif not os.access(name, os.R_OK):
            problems.append(f"{where}: mux.{key}: {name}: not readable")
    if not section.secret_file:
        problems.append(f"{where}: mux.secret_file: needed (the secret the nodes' [mux_listener] share)")
    else:
        _secret_file(where, "mux.secret_file", section.secret_file, problems)
    if section.node_tls and not section.node_ca_file:
        problems.append(f"{where}: mux.node_ca_file: needed with node_tls (the authority of the nodes' certificates)")
    elif section.node_ca_file and not os.access(section.node_ca_file, os.R_OK):
        problems.append(f"{where}: mux.node_ca_file: {section.node_ca_file}: not readable")
    return problems
