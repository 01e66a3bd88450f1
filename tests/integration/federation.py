"""Tools of the federation tests: a test certificate authority, bridge and Prosody processes.

Servers find each other without DNS.  bridge reads ``[s2s] static_routes``;
Prosody resolves with libunbound, whose ``hoststxt`` option makes it read a
hosts file of our own.  Names under ``.test`` are a zone that libunbound
answers locally (RFC 6761), so Prosody's SRV lookup of
``_xmpp-server._tcp.a.test`` is answered NXDOMAIN at once, without any DNS
traffic, and Prosody falls back to port 5269 of the address the hosts file
gives.  That fixed port is why each server has a loopback address of its own
(``loopback_block``).
"""

import dataclasses
import os
import random
import re
import shutil
import socket
import subprocess
import threading

from bridge import config as bridge_config

from .harness import SERVER_START_TIMEOUT, ServerProcess, add_users, server_env

S2S_PORT = 5269
# connect_timeout_seconds of every bridge started here.
CONNECT_TIMEOUT = 5
PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")


# -- bridge -------------------------------------------------------------------

def _toml_string(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_bridge_config(directory, domain, address, certificate, private_key, ca_file, routes, dialback=True,
                        certificate_authentication=True, s2s_options="", tables=""):
    """A complete bridge configuration serving ``domain`` with s2s on ``address``:5269; its path.

    ``routes``: {domain: "host:port"}, the static routes to the peers; ``tables``: further tables.
    """
    table = ", ".join(f"{_toml_string(name)} = {_toml_string(target)}" for name, target in routes.items())
    lines = [
        f"data_dir = {_toml_string(os.path.join(directory, 'data'))}",
        "[c2s]",
        'endpoints = ["tcp:0:interface=127.0.0.1"]',
        "direct_tls_endpoints = []",
        "[s2s]",
        f"endpoints = [{_toml_string(f'tcp:{S2S_PORT}:interface={address}')}]",
        f"certificate = {_toml_string(certificate)}",
        f"private_key = {_toml_string(private_key)}",
        f"ca_file = {_toml_string(ca_file)}",
        f"dialback = {'true' if dialback else 'false'}",
        f"certificate_authentication = {'true' if certificate_authentication else 'false'}",
        f"connect_timeout_seconds = {CONNECT_TIMEOUT}",
        f"static_routes = {{ {table} }}",
        s2s_options,
        *_other_listeners_off(),
        f"[hosts.{_toml_string(domain)}]",
    ]
    path = os.path.join(directory, "bridge.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n" + tables)
    return path


def _other_listeners_off():
    """Tables that turn off every listener but c2s and s2s (components, HTTP, ...).

    Their default ports are fixed (5347, 5280, ...), so two processes would fight over them;
    the list is read from bridge's configuration defaults so that new listener kinds are
    covered too.
    """
    tables = []
    defaults = bridge_config.Config()
    for section in dataclasses.fields(defaults):
        value = getattr(defaults, section.name)
        if section.name in ("c2s", "s2s") or not dataclasses.is_dataclass(value):
            continue
        keys = [option.name for option in dataclasses.fields(value)
                if option.name.endswith("endpoints") and getattr(value, option.name)]
        if keys:
            tables.append(f"[{section.name}]")
            tables.extend(f"{key} = []" for key in keys)
    return tables


def start_bridge(directory, domain, address, accounts, **options):
    """A started bridge process serving ``domain`` (accounts created first), listening s2s on ``address``."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    config_path = write_bridge_config(directory, domain, address, **options)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    try:
        process.start(wait_for=("c2s",))
        line = wait_logged(process, rf"(listening|cannot listen) s2s on (tcp:{S2S_PORT}:interface=)?"
                                    rf"{re.escape(address)}(:{S2S_PORT})?\b", what="the s2s listener")
        # A listener that cannot bind does not stop bridge: fail here, with the reason.
        assert "cannot listen" not in line, (f"{address}:{S2S_PORT} is taken (another process?):\n"
                                             + process.tail(20))
    except BaseException:
        process.stop()
        raise
    return process


def wait_logged(process, pattern, timeout=10.0, start=0, what=None):
    """The first log line of ``process`` (from index ``start``) matching the regex ``pattern``.

    Lines already logged are searched first, then new ones are awaited (bounded).
    """
    regex = re.compile(pattern)
    for line in list(process.lines[start:]):
        if regex.search(line):
            return line
    return process.wait_for_line(lambda line: regex.search(line) is not None, timeout,
                                 what=what or f"a line matching {pattern!r}")


def logged(process, pattern, start=0):
    """The log lines of ``process`` (from index ``start``) matching the regex ``pattern``."""
    regex = re.compile(pattern)
    return [line for line in list(process.lines[start:]) if regex.search(line)]


# -- addresses ----------------------------------------------------------------

def _s2s_port_free(address):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, S2S_PORT))
        except OSError:
            return False
    return True


def loopback_block(count, attempts=50):
    """``count`` addresses .2, .3, ... of a random 127.X.Y.0/24 block, port 5269 free on each.

    Prosody reaches a peer on the fixed port 5269, so each server needs an address of its own;
    a random block per run keeps concurrent runs (CI jobs, other engineers' experiments on a
    shared machine) from taking each other's listeners.
    """
    chooser = random.SystemRandom()
    for _ in range(attempts):
        prefix = f"127.{chooser.randint(1, 254)}.{chooser.randint(1, 254)}"
        addresses = [f"{prefix}.{number}" for number in range(2, 2 + count)]
        if all(_s2s_port_free(address) for address in addresses):
            return addresses
    raise RuntimeError(f"no loopback block with port {S2S_PORT} free after {attempts} attempts")


# -- Prosody ------------------------------------------------------------------

def free_port(address="127.0.0.1"):
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _lua_string(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProsodyProcess(ServerProcess):
    """Prosody in the foreground (``prosody -F``), in a directory of its own, logging to stdout.

    Its s2s listener is ``address``:5269, its c2s listener 127.0.0.1:``port``;
    ``hosts`` ({domain: address}) is the hosts file its resolver reads.
    """

    ACTIVATED = re.compile(r"Activated service '(c2s|s2s)' on \[?([0-9.]+)\]?:(\d+)")

    def __init__(self, directory, domain, address, certificate, private_key, ca_file, hosts, accounts,
                 secure_auth=True, dialback=True):
        self.directory = str(directory)
        self.domain = domain
        self.address = address
        os.makedirs(os.path.join(self.directory, "data"), exist_ok=True)
        certs = os.path.join(self.directory, "certs")
        os.makedirs(certs, exist_ok=True)
        # Prosody finds the certificate of VirtualHost D as certs/D.crt and certs/D.key.
        shutil.copyfile(certificate, os.path.join(certs, f"{domain}.crt"))
        shutil.copyfile(private_key, os.path.join(certs, f"{domain}.key"))
        os.chmod(os.path.join(certs, f"{domain}.key"), 0o600)
        hosts_path = os.path.join(self.directory, "hosts")
        with open(hosts_path, "w", encoding="utf-8") as handle:
            handle.writelines(f"{ip} {name}\n" for name, ip in hosts.items())
        config_path = os.path.join(self.directory, "prosody.cfg.lua")
        port = free_port()
        # As in Debian's default configuration, smacks included: Prosody 0.12 does XEP-0198 on s2s too.
        modules = ["roster", "saslauth", "tls", "disco", "ping", "smacks"] + (["dialback"] if dialback else [])
        lines = [
            "-- generated by tests/integration/federation.py",
            f"pidfile = {_lua_string(os.path.join(self.directory, 'prosody.pid'))}",
            f"data_path = {_lua_string(os.path.join(self.directory, 'data'))}",
            f"certificates = {_lua_string(certs)}",
            'log = { { levels = { min = "debug" }, to = "console" } }',
            'c2s_interfaces = { "127.0.0.1" }',
            f"c2s_ports = {{ {port} }}",
            "c2s_direct_tls_ports = { }",
            f"s2s_interfaces = {{ {_lua_string(address)} }}",
            f"s2s_ports = {{ {S2S_PORT} }}",
            "s2s_direct_tls_ports = { }",
            "modules_enabled = { " + ", ".join(_lua_string(name) for name in modules) + " }",
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            f"s2s_secure_auth = {'true' if secure_auth else 'false'}",
            "s2s_timeout = 10",
            "authentication = \"internal_plain\"",
            "storage = \"internal\"",
            f"ssl = {{ cafile = {_lua_string(ca_file)} }}",
            # libunbound: the hosts file gives the peers' addresses.  Names under .test are a zone
            # libunbound serves itself, so no query leaves the process (SRV: NXDOMAIN in < 1 ms).
            # Do not point "resolvconf" at an address where nothing listens: SRV lookups of other
            # names then take ~17 s to SERVFAIL and A lookups longer.
            f"unbound = {{ hoststxt = {_lua_string(hosts_path)} }}",
        ]
        if os.getuid() == 0:
            lines.append("run_as_root = true")
        lines.append(f"VirtualHost {_lua_string(domain)}")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        super().__init__(config_path, accounts, command=[PROSODY, "--config", config_path, "-F"])
        self.port = port
        self._register(accounts)

    def _register(self, accounts):
        for jid, password in accounts.items():
            user, host = jid.split("@", 1)
            done = subprocess.run([PROSODYCTL, "--config", self.config_path, "register", user, host, password],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"prosodyctl register {jid} failed: {done.stdout}{done.stderr}"

    def start(self, timeout=SERVER_START_TIMEOUT):
        """Start Prosody and wait until both its listeners are active."""
        self.process = subprocess.Popen(self.command, env=server_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=self.directory)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        seen = set()

        def activated(line):
            match = self.ACTIVATED.search(line)
            if match:
                seen.add(match.group(1))
            return {"c2s", "s2s"} <= seen

        try:
            self.wait_for_line(activated, timeout, what="Prosody's c2s and s2s listeners")
        except BaseException:
            self.stop()
            raise
        return self


def prosody_available():
    return PROSODY is not None and PROSODYCTL is not None
