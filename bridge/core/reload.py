"""Reloading the configuration of a running server (SIGHUP, ``bridgectl reload``).

A reload reads the file again and checks all of it before it changes anything:
a file that does not load, or a certificate that does not make a TLS context,
is refused, logged, and the running configuration stays.  ``plan`` then sorts
the differences into what the running server takes at once (certificates and
TLS policies, connection limits, host settings and aliases, components) and
what only a restart applies (listening addresses, the data folder, the
sections whose services read their settings when they start): those keep
their running value and are logged as waiting for a restart.

``plan`` is a pure function of two configurations; ``Reloader`` does the
reading, the checks and the swaps, with the steps that ``bridge.tap`` gives it.
"""

import dataclasses
from typing import NamedTuple

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from bridge import config as configuration

log = Logger()

# The TLS keys of every listener section: a new certificate or policy applies to new handshakes.
TLS_KEYS = frozenset(option.name for option in dataclasses.fields(configuration.ListenerTLS))
ALL = "all"  # every key of a section
# What the running server reads only when it starts, by section ("" for the top level).  ALL: the whole
# section except its TLS keys.
STARTUP_ONLY = {
    "": {"data_dir"},
    "c2s": {"endpoints", "direct_tls_endpoints", "unauthenticated_share", "proxy_protocol_trusted_proxies"},
    "s2s": {"endpoints", "direct_tls_endpoints", "dns_server", "proxy_protocol_trusted_proxies"},
    "http": {"endpoints", "tls_endpoints", "web_client_dir", "trusted_proxies", "trusted_proxy_header", "bosh_path",
             "proxy_protocol_trusted_proxies",
             "websocket_path",
             "bosh_sessionless_requests_per_second_per_address", "bosh_sessionless_requests_burst"},
    "component_listener": {"endpoints"},
    "storage": ALL, "quotas": ALL, "push": ALL, "mam": ALL, "pep": ALL, "sms": ALL, "sip": ALL,
    "muc": ALL, "upload": ALL, "smsc": ALL, "pubsub": ALL, "external_services": ALL, "metrics": ALL,
    "cluster": ALL, "ldap": ALL, "proxy65": ALL, "mux_listener": ALL, "api": {"enabled", "path"},
    "smtp": {"archive_recipients"},
    "hosts": {"sip_digest", "ldap"},
}
# Keys whose emptiness turns a service off: set to set applies live, empty to set (or back) needs a restart.
SWITCHES = {("smtp", "relay")}


class Plan(NamedTuple):
    """``config``: what the server runs with after the reload; ``live``: the key paths that changed and
    apply now; ``restart``: the key paths that changed and wait for a restart (their old value stays)."""

    config: object
    live: list
    restart: list


def _startup_only(section, key, before=None, after=None):
    if (section, key) in SWITCHES and not (before and after):
        return True
    keys = STARTUP_ONLY.get(section, set())
    if keys is ALL:
        return key not in TLS_KEYS
    return key in keys


def _merge_section(section, path, old, new, live, restart):
    """``new`` with the keys read only at start put back to ``old``'s values."""
    kept = {}
    for option in dataclasses.fields(new):
        key = option.name
        if getattr(old, key) == getattr(new, key):
            continue
        if _startup_only(section, key, getattr(old, key), getattr(new, key)):
            restart.append(path + key)
            kept[key] = getattr(old, key)
        else:
            live.append(path + key)
    return dataclasses.replace(new, **kept)


def plan(old, new):
    """How the running configuration ``old`` becomes ``new`` (see ``Plan``)."""
    live, restart = [], []
    changes = {}
    for option in dataclasses.fields(configuration.Config):
        name = option.name
        before, after = getattr(old, name), getattr(new, name)
        if name == "source" or before == after:
            continue
        if dataclasses.is_dataclass(before):
            changes[name] = _merge_section(name, f"{name}.", before, after, live, restart)
        elif name == "hosts":
            if set(before) != set(after):
                restart.append("hosts (" + ", ".join(sorted(set(before) ^ set(after))) + " added or removed)")
                changes[name] = before
            else:
                changes[name] = {host: _merge_section("hosts", f"hosts.{host}.", before[host], after[host], live,
                                                      restart) for host in after}
        elif _startup_only("", name) or STARTUP_ONLY.get(name) is ALL:
            restart.append(name)
            changes[name] = before
        else:
            live.append(name)
    return Plan(dataclasses.replace(new, **changes), live, restart)


@implementer(IOpenSSLContextFactory, IOpenSSLServerConnectionCreator)
class ContextHolder:
    """A TLS context factory whose current context can be replaced: listeners keep the holder, and
    each new handshake (a TLS listener's, a STARTTLS) asks it for the context of the moment.
    Connections already encrypted keep the context they began with.

    ``current`` is a ``CertificateOptions``; its own ``serverConnectionForTLS`` makes each connection,
    as it would without the holder (Twisted's shim for a plain context factory costs every connection
    two closures more)."""

    def __init__(self, current):
        self.current = current

    def getContext(self):
        return self.current.getContext()

    def serverConnectionForTLS(self, protocol):
        return self.current.serverConnectionForTLS(protocol)


class Reloader:
    """Reads ``path`` again and applies it to ``server`` through the steps it was given.

    A step is a function of the planned configuration that builds what it
    needs (a TLS context, say) and returns the function that puts it in
    force.  Every step builds before any puts in force, so a certificate that
    does not load leaves all of the running server as it was.
    """

    def __init__(self, server, path, load=configuration.load):
        self.server = server
        self.path = path
        self._load = load
        self._steps = []

    def add_step(self, prepare):
        self._steps.append(prepare)

    def reload(self):
        """Reload; a dict for ``bridgectl reload``: ``ok``, then ``live`` and ``restart``, or ``error``."""
        source = self.path or "(embedded defaults)"
        log.info("reloading the configuration from {source}", source=source)
        try:
            new = self._load(self.path)
        except configuration.ConfigError as error:
            return self._refused(str(error))
        result = plan(self.server.config, new)
        try:
            commits = [prepare(result.config) for prepare in self._steps]
        except (OSError, ValueError, SSL.Error, crypto.Error) as error:
            return self._refused(f"{source}: cannot be applied: {error}")
        self.server.config = result.config
        for commit in commits:
            commit()
        for path in result.live:
            log.info("reload: {key} applied", key=path)
        for path in result.restart:
            log.warn("reload: {key} changed in {source}; it needs a restart, the running value stays", key=path,
                     source=source)
        log.info("configuration reloaded from {source}: {live} changes applied, {restart} waiting for a restart",
                 source=source, live=len(result.live), restart=len(result.restart))
        return {"ok": True, "live": result.live, "restart": result.restart}

    def _refused(self, reason):
        log.error("reload refused, the running configuration stays:\n{reason}", reason=reason)
        return {"ok": False, "error": reason}
