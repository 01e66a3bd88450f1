"""The twistd entry point: reads the configuration once and builds the service tree.

This is the only module that touches the global reactor; everything below it
receives the clock and the endpoints it needs.
"""

import gc
import importlib
import importlib.util
import os
import signal
import threading

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from bridge import __version__, config as configuration
from bridge.core import datadir, storage as storage_module, tls
from bridge.core.listening import listening_endpoint
from bridge.core.loglevels import LevelFilter
from bridge.core.control import SOCKET_NAME, ControlCommands, ControlFactory
from bridge.core.proxyprotocol import ProxyHeaderFactory
from bridge.core.reload import ContextHolder, Reloader
from bridge.core.server import GatewayContext, Server, load_feature, looping_call
from bridge.core.storage.timed import TimedStorage
from bridge.core.streams.base import OUTPUT_BATCH
from bridge.core.streams.c2s import ClientFactory
from bridge.core.streams.component import ComponentFactory
from bridge.core.streams.muxed import MuxLinkFactory
from bridge.core.streams.s2s import IncomingServerFactory, PeerTLS, RemoteDomains
from bridge.core.triage import AcceptGate
from bridge.core.xmlstream import DORMANCY_PERIOD_SECONDS
from bridge.gateways.bosh import BoshService
from bridge.gateways.http import HTTPFactory

log = Logger()

# The feature modules every local host loads, and those every gateway's or service's domain loads.
FEATURES = ("presence", "roster", "offline", "disco", "ping", "version", "vcard", "private", "blocking",
            "register", "carbons", "push", "mam", "pep", "avatars", "bookmarks", "extdisco", "search",
            "shared_groups", "admin", "alerts")
SERVICE_FEATURES = ("disco", "ping", "version", "gateway")
# Protocol gateways: (name, the configuration section it is given, its module).  Each module's
# ``attach(ctx, reactor, tls_context)`` returns a Gateway, or None when the section leaves it off.
GATEWAYS = (
    ("sip", "sip", "bridge.gateways.sip.gateway"),
    ("sms", "sms", "bridge.gateways.sms.gateway"),
    ("email", "smtp", "bridge.gateways.smtp"),
    ("muc", "muc", "bridge.gateways.muc.service"),
    ("upload", "upload", "bridge.gateways.upload"),
    ("pubsub", "pubsub", "bridge.gateways.pubsub"),
    ("proxy65", "proxy65", "bridge.gateways.proxy65"),
    ("api", "api", "bridge.gateways.api"),
)
# How many collections of the middle generation come before a full one (CPython's default: 10).  Under a
# flood the connections that wait out their timeouts (slowloris, half-open TLS, half-made BOSH sessions)
# fill the oldest generation, and each full collection walked them all: 13 of 113 ms on average in one
# hostile run, 1.5 s of its 35 s of CPU, each a pause for every honest session (docs/performance.md).  What
# reaches the oldest generation is seldom garbage now (a delivered message or a closed connection leaves
# next to none), so fewer full collections keep about as much memory.
FULL_COLLECTION_AFTER = 100


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file (default: embedded defaults)"]]

    def postOptions(self):
        try:
            self["parsed"] = configuration.load(self["config"])
        except configuration.ConfigError as error:
            raise usage.UsageError("invalid configuration:\n" + str(error))
        if self["parsed"].metrics.endpoints and importlib.util.find_spec("prometheus_client") is None:
            raise usage.UsageError("[metrics] endpoints are set, but prometheus-client is not installed: "
                                   "pip install 'bridge[metrics]'")
        if self["parsed"].cluster.enabled and importlib.util.find_spec("redis") is None:
            raise usage.UsageError(f"{self['parsed'].source}: cluster.enabled: needs redis-py "
                                   "(pip install 'bridge[cluster]')")


class ListenerService(service.Service):
    """Listens on one endpoint and logs the address it got (port 0 included).

    A listener that cannot listen stops the start, unless it is not ``required``
    (the control socket): then the server runs on, and the log says why it is missing.
    """

    def __init__(self, kind, description, endpoint, factory, required=True, triage=None):
        self.kind = kind
        self.triage = triage
        self.required = required
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port = None
        self._listening = None
        self._failure = None

    def privilegedStartService(self):
        """twistd: listen before the reactor runs, so a port in use stops the start with an error."""
        super().privilegedStartService()
        self._listen()
        if self._failure is not None:
            self._failure.raiseException()

    def startService(self):
        super().startService()
        if self._listening is None:
            # The ``twist`` runner never calls privilegedStartService.
            self._listen()

    def _listen(self):
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._started, self._failed)

    def _started(self, port):
        self.port = port
        if self.triage is not None and hasattr(port, "stopReading"):
            AcceptGate(self.triage, port)
        address = port.getHost()
        # TCP, or a UNIX socket's path
        where = f"{address.host}:{address.port}" if hasattr(address, "port") else os.fsdecode(address.name)
        log.info("listening {kind} on {where}", kind=self.kind, where=where)

    def _failed(self, failure):
        if not self.required:
            log.error("cannot listen {kind} on {description}: {reason}", kind=self.kind, description=self.description,
                      reason=failure.getErrorMessage())
            return
        self._failure = failure
        log.failure("cannot listen {kind} on {description}", failure, kind=self.kind,
                    description=self.description)
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


class ServerService(service.MultiService):
    """The server's lifetime: storage opened at build, closed at shutdown.

    SIGHUP reloads the configuration (``reloader``).  Neither twistd nor the
    reactor handles that signal, so without a handler it ends the process at
    once, with no shutdown and every session dropped.
    """

    def __init__(self, server, remote, reloader, reactor):
        super().__init__()
        self.server = server
        self.remote = remote
        self.reloader = reloader
        self.reactor = reactor
        self._previous_hangup = None

    def startService(self):
        super().startService()
        if threading.current_thread() is threading.main_thread():
            self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        self.server.triage.start()
        self._dormancy_tick = looping_call(self.server.clock, DORMANCY_PERIOD_SECONDS, self.server.dormancy.tick)
        OUTPUT_BATCH.until_iteration_end(self.server.clock.callLater)
        self.remote.start().addErrback(lambda failure: log.failure("federation start failed", failure))
        log.info("bridge {version} serving {hosts} (configuration: {source})", version=__version__,
                 hosts=", ".join(self.server.hosts), source=self.server.config.source)
        # What the start made (modules, configuration, features, caches) lives as long as the process: out of
        # the collector's generations, a full collection walks only what came after (it paused the honest
        # sessions 143 ms at a time under a flood, docs/performance.md).
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)

    def _hangup(self, number, frame):
        # A signal handler may run between any two bytecodes: the reload waits for the reactor's next turn.
        self.reactor.callFromThread(self.reloader.reload)

    def stopService(self):
        """Federation first, then every child (gateways, listeners), then storage, once all is written."""
        if self._previous_hangup is not None:
            signal.signal(signal.SIGHUP, self._previous_hangup)
            self._previous_hangup = None
        self.server.triage.stop()
        self._dormancy_tick.stop()
        OUTPUT_BATCH.until_iteration_end(None)
        self.server.log_budget.stop()
        d = self.remote.stop()
        d.addBoth(lambda _: super(ServerService, self).stopService())
        d.addBoth(lambda _: self.server.storage.close())
        return d


class GatewayService(service.Service):
    """A gateway's lifetime, the one shape every gateway attaches by.

    A Gateway has ``start()`` and ``stop()`` (each may return a Deferred)
    and ``listeners()``; one whose settings a reload can change has ``prepare_reload(section)``
    (a step of ``bridge.core.reload.Reloader``).  It starts with the server; at shutdown it stops
    (SMSCs unbound, queues left as they are) and then its context undoes
    everything it registered, before storage closes.
    """

    def __init__(self, name, gateway, context):
        self.name = name
        self.gateway = gateway
        self.context = context

    def startService(self):
        super().startService()
        started = defer.maybeDeferred(self.gateway.start)
        started.addErrback(lambda failure: log.failure("{name} gateway failed to start", failure, name=self.name))

    def stopService(self):
        super().stopService()
        stopped = defer.maybeDeferred(self.gateway.stop)
        stopped.addErrback(lambda failure: log.failure("{name} gateway failed to stop", failure, name=self.name))
        stopped.addBoth(lambda _: self.context.unload())
        return stopped


def feature_modules(names):
    return [(name, importlib.import_module(f"bridge.features.{name}")) for name in names]


def load_features(server):
    """Give every feature module its context on every local host; they register their hooks."""
    modules = feature_modules(FEATURES)
    for host in server.hosts.values():
        for name, module in modules:
            load_feature(server, host, name, module)


def attach_gateways(server, reactor, top, listen_on, tls_holder, reloader):
    """Attach every gateway its configuration section turns on, as children of ``top``.

    A gateway's TLS context follows its section in the configuration of the moment (``tls_holder``), and
    so do its settings when it can take them while it runs (``prepare_reload``).
    """
    service_features = feature_modules(SERVICE_FEATURES)

    for name, section, module_name in GATEWAYS:
        def tls_context(_, section=section):
            return tls_holder(lambda config: listener_context(config, getattr(config, section)))

        context = GatewayContext(server, name, getattr(server.config, section), service_features)
        gateway = importlib.import_module(module_name).attach(context, reactor, tls_context)
        if gateway is None:
            continue
        GatewayService(name, gateway, context).setServiceParent(top)
        if hasattr(gateway, "prepare_reload"):
            reloader.add_step(lambda new, gateway=gateway, section=section: gateway.prepare_reload(
                getattr(new, section)))
        for kind, description, endpoint, factory in gateway.listeners():
            listen_on(kind, description, endpoint, factory, triage=server.triage)


class ClusterService(service.Service):
    """The node's membership of a cluster ([cluster], docs/scaling.md): joins at start, leaves at shutdown."""

    def __init__(self, cluster):
        self.cluster = cluster

    def startService(self):
        super().startService()
        self.cluster.start()

    def stopService(self):
        super().stopService()
        return self.cluster.stop()


def join_cluster(server, reactor, top):
    """Make this process a node of the cluster that [cluster] names (redis-py is imported only then)."""
    from bridge.core.cluster import Cluster
    from bridge.core.redislink import RedisLink

    section = server.config.cluster
    server.cluster = Cluster(server, RedisLink(section, reactor), reactor, section)
    server.ownership = server.cluster.ownership
    ClusterService(server.cluster).setServiceParent(top)
    log.info("cluster: node {node}, session table in Redis at {address}", node=section.node_name,
             address=section.redis_address)


def host_certificates(config):
    """Certificates by host name, chosen by SNI on every TLS listener (docs/configuration.md), or None."""
    return tls.HostCertificates(config.tls.certificates_dir) if config.tls.certificates_dir else None


def listener_context(config, section, alpn=()):
    """The TLS context of a listener section: its certificate (or the shared one, or the one SNI names) and its
    policy."""
    return tls.server_context(*tls.certificate_paths(config, section), section.tls_min_version, section.tls_ciphers,
                              alpn=alpn, certificates=host_certificates(config))


def peer_tls(config):
    s2s = config.s2s
    return PeerTLS(*tls.certificate_paths(config, s2s), s2s.tls_min_version, s2s.tls_ciphers, s2s.ca_file,
                   host_certificates(config))


def build(config, reactor, config_path=None):
    """The service tree for ``config`` (read from ``config_path``, which a reload reads again), on ``reactor``."""
    datadir.private_folder(config.data_dir)
    secret = datadir.server_secret(config.data_path("server.secret"))
    store = TimedStorage(storage_module.open_storage(config, reactor))  # timed for the metrics listener
    directories = {}
    if config.ldap:
        from bridge.core import ldap  # ldaptor is needed only where a directory is configured

        directories, directory_service = ldap.directory_accounts(config, store, reactor)
    server = Server(config, store, reactor, secret=secret, directories=directories)
    load_features(server)
    server.load_blocked_domains().addErrback(
        lambda failure: log.failure("reading the domains blocked by administrators failed", failure))
    reloader = Reloader(server, os.path.abspath(config_path) if config_path else None)

    def tls_holder(make):
        """A TLS context made by ``make(config)``, made again from the new configuration at each reload."""
        holder = ContextHolder(make(config))

        def prepare(new):
            context = make(new)
            return lambda: setattr(holder, "current", context)

        reloader.add_step(prepare)
        return holder

    remote = RemoteDomains(server, peer_tls(config), reactor)
    server.router.default_route = remote
    top = ServerService(server, remote, reloader, reactor)
    if config.cluster.enabled:
        join_cluster(server, reactor, top)
    if directories:
        directory_service.setServiceParent(top)

    def listen_on(kind, description, endpoint, factory, required=True, triage=None):
        listener = ListenerService(kind, description, endpoint, factory, required, triage)
        listener.setServiceParent(top)
        return listener

    def listen(kind, descriptions, factory, section=None):
        """Listen on each of ``descriptions``; ``section``'s proxy_protocol_trusted_proxies, if any, send a
        PROXY header first (bridge/core/proxyprotocol.py), read before anything else, TLS included."""
        if section is not None and section.proxy_protocol_trusted_proxies:
            factory = ProxyHeaderFactory(factory, section.proxy_protocol_trusted_proxies, reactor, server.log_budget)
        return [listen_on(kind, description, listening_endpoint(reactor, description), factory, triage=server.triage)
                for description in descriptions]

    c2s = config.c2s
    context = tls_holder(lambda new: listener_context(new, new.c2s, alpn=(b"xmpp-client",)))
    clients = [ClientFactory(server, c2s, context), ClientFactory(server, c2s, context, direct_tls=True)]
    listen("c2s", c2s.endpoints, clients[0], c2s)
    listen("c2s-direct-tls", c2s.direct_tls_endpoints, TLSMemoryBIOFactory(context, False, clients[1]), c2s)
    s2s_direct = ContextHolder(remote.tls.options)
    listen("s2s", config.s2s.endpoints, IncomingServerFactory(server, remote), config.s2s)
    listen("s2s-direct-tls", config.s2s.direct_tls_endpoints,
           TLSMemoryBIOFactory(s2s_direct, False, IncomingServerFactory(server, remote, direct_tls=True)),
           config.s2s)
    components = ComponentFactory(server)
    # Configured components answer service-unavailable until they connect.
    components.register_offline_routes()
    listen("component", config.component_listener.endpoints, components)
    # Browsers: BOSH, WebSocket and the web client on one HTTP listener, plain and TLS.
    http = config.http
    bosh = BoshService(server, http)
    bosh.setServiceParent(top)
    web = [HTTPFactory(server, http, bosh, tls=False)]
    for listener in listen("http", http.endpoints, web[0], http):
        server.http_listeners.append((False, listener))
    mux = config.mux_listener
    if mux.endpoints or mux.tls_endpoints:
        links = MuxLinkFactory(server, mux, mux.read_secret(), HTTPFactory(server, http, bosh, tls=True))
        clients.append(links.clients)
        web.append(links.web)
        listen("mux", mux.endpoints, links)
        listen("mux-tls", mux.tls_endpoints, TLSMemoryBIOFactory(context, False, links))
    if http.tls_endpoints:
        web.append(HTTPFactory(server, http, bosh, tls=True))
        http_context = tls_holder(lambda new: listener_context(new, new.http, alpn=(b"http/1.1",)))
        for listener in listen("https", http.tls_endpoints, TLSMemoryBIOFactory(http_context, False, web[-1]),
                               http):
            server.http_listeners.append((True, listener))
    # Prometheus metrics, on a listener of their own (docs/operations.md).
    if config.metrics.endpoints:
        from bridge.metrics import metrics_site  # prometheus-client, the "metrics" extra: imported when used

        listen("metrics", config.metrics.endpoints, metrics_site(server, remote))
    # SIP, SMS, email, the MUC and upload services (docs/sip.md, docs/sms.md, docs/email.md, docs/muc.md,
    # docs/web.md).
    attach_gateways(server, reactor, top, listen_on, tls_holder, reloader)
    # Every module is imported by now: their loggers go through the levels of [log].
    levels = LevelFilter(config.log)
    levels.install()
    reloader.add_step(levels.prepare_reload)

    def prepare_peers(new):
        peers = peer_tls(new)

        def commit():
            remote.tls = peers
            s2s_direct.current = peers.options

        return commit

    reloader.add_step(prepare_peers)
    reloader.add_step(lambda new: lambda: apply_settings(server, new, remote, clients, web, bosh, components))
    commands = ControlCommands(server, reloader.reload, lambda: queue_sizes(server, remote, bosh), reactor.seconds())
    # The server serves its users without it (a data_dir path too long for a UNIX socket, say): bridgectl then
    # says that it cannot reach the server, and the log why.
    control_path = config.data_path(SOCKET_NAME)
    listen_on("control", control_path, endpoints.UNIXServerEndpoint(reactor, control_path, mode=0o600, wantPID=True),
              ControlFactory(commands), required=False)
    return top


def apply_settings(server, config, remote, clients, web, bosh, components):
    """Put a reloaded configuration's settings in force where they were copied at start: connection
    limits of new connections, host settings and aliases, the configured components."""
    for factory in clients:
        factory.listener = config.c2s
        factory.connections.limit = config.c2s.max_connections_per_address
    remote.config = config.s2s
    remote.connections.limit = config.s2s.max_connections_per_address
    for factory in web:
        factory.reconfigure(config)
    bosh.config = config.http
    bosh.per_address.limit = config.http.bosh_max_sessions_per_address
    for name, host in server.hosts.items():
        old_names, host.config = {name, *host.config.aliases}, config.hosts[name]
        for alias in old_names - {name, *host.config.aliases}:
            server.router.removeRoute(alias, host)
        for alias in host.config.aliases:
            server.router.addRoute(alias, host)
    components.reconfigure(config.components)


def queue_sizes(server, remote, bosh):
    """What waits in the server's queues, by name, for ``bridgectl status``."""
    return {"s2s_links": len(remote.links),
            "s2s_queued_stanzas": sum(len(link.queue) for link in remote.links.values()),
            "bosh_sessions": len(bosh.sessions),
            "resumable_sessions": len(server.resumable_sessions)}


def makeService(options):
    from twisted.internet import reactor

    return build(options["parsed"], reactor, options["config"])
