"""The twistd entry point: reads the configuration once and builds the service tree.

This is the only module that touches the global reactor; everything below it
receives the clock and the endpoints it needs.
"""

import importlib

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from bridge import __version__, config as configuration
from bridge.core import datadir, storage as storage_module, tls
from bridge.core.server import GatewayContext, Server, load_feature
from bridge.core.streams.c2s import ClientFactory
from bridge.core.streams.component import ComponentFactory
from bridge.core.streams.s2s import IncomingServerFactory, PeerTLS, RemoteDomains
from bridge.gateways.bosh import BoshService
from bridge.gateways.http import HTTPFactory

log = Logger()

# The feature modules every local host loads, and those every gateway's or service's domain loads.
FEATURES = ("presence", "roster", "offline", "disco", "ping", "version", "vcard", "private", "blocking",
            "register", "carbons", "push", "mam", "pep", "search", "shared_groups")
SERVICE_FEATURES = ("disco", "ping", "version", "gateway")
# Protocol gateways: (name, the configuration section it is given, its module).  Each module's
# ``attach(ctx, reactor, tls_context)`` returns a Gateway, or None when the section leaves it off.
GATEWAYS = (
    ("sip", "sip", "bridge.gateways.sip.gateway"),
    ("sms", "sms", "bridge.gateways.sms.gateway"),
    ("email", "smtp", "bridge.gateways.smtp"),
    ("muc", "muc", "bridge.gateways.muc.service"),
    ("upload", "upload", "bridge.gateways.upload"),
)


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file (default: embedded defaults)"]]

    def postOptions(self):
        try:
            self["parsed"] = configuration.load(self["config"])
        except configuration.ConfigError as error:
            raise usage.UsageError("invalid configuration:\n" + str(error))


class ListenerService(service.Service):
    """Listens on one endpoint and logs the address it got (port 0 included)."""

    def __init__(self, kind, description, endpoint, factory):
        self.kind = kind
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
        address = port.getHost()
        log.info("listening {kind} on {host}:{port}", kind=self.kind, host=address.host, port=address.port)

    def _failed(self, failure):
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
    """The server's lifetime: storage opened at build, closed at shutdown."""

    def __init__(self, server, remote):
        super().__init__()
        self.server = server
        self.remote = remote

    def startService(self):
        super().startService()
        self.server.triage.start()
        self.remote.start().addErrback(lambda failure: log.failure("federation start failed", failure))
        log.info("bridge {version} serving {hosts} (configuration: {source})", version=__version__,
                 hosts=", ".join(self.server.hosts), source=self.server.config.source)

    def stopService(self):
        """Federation first, then every child (gateways, listeners), then storage, once all is written."""
        self.server.triage.stop()
        self.server.log_budget.stop()
        d = self.remote.stop()
        d.addBoth(lambda _: super(ServerService, self).stopService())
        d.addBoth(lambda _: self.server.storage.close())
        return d


class GatewayService(service.Service):
    """A gateway's lifetime, the one shape every gateway attaches by.

    A Gateway has ``start()`` and ``stop()`` (each may return a Deferred)
    and ``listeners()``.  It starts with the server; at shutdown it stops
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


def attach_gateways(server, reactor, top, listen_on):
    """Attach every gateway its configuration section turns on, as children of ``top``."""
    config = server.config
    service_features = feature_modules(SERVICE_FEATURES)

    def tls_context(section):
        return tls.server_context(*tls.certificate_paths(config, section), section.tls_min_version,
                                  section.tls_ciphers)

    for name, section, module_name in GATEWAYS:
        context = GatewayContext(server, name, getattr(config, section), service_features)
        gateway = importlib.import_module(module_name).attach(context, reactor, tls_context)
        if gateway is None:
            continue
        GatewayService(name, gateway, context).setServiceParent(top)
        for kind, description, endpoint, factory in gateway.listeners():
            listen_on(kind, description, endpoint, factory)


def build(config, reactor):
    """The service tree for ``config``, on ``reactor``."""
    datadir.private_folder(config.data_dir)
    secret = datadir.server_secret(config.data_path("server.secret"))
    store = storage_module.open_storage(config, reactor)
    directories = {}
    if config.ldap:
        from bridge.core import ldap  # ldaptor is needed only where a directory is configured

        directories, directory_service = ldap.directory_accounts(config, store, reactor)
    server = Server(config, store, reactor, secret=secret, directories=directories)
    load_features(server)
    s2s = config.s2s
    peer_tls = PeerTLS(*tls.certificate_paths(config, s2s), s2s.tls_min_version, s2s.tls_ciphers, s2s.ca_file)
    remote = RemoteDomains(server, peer_tls, reactor)
    server.router.default_route = remote
    top = ServerService(server, remote)
    if directories:
        directory_service.setServiceParent(top)

    def listen_on(kind, description, endpoint, factory):
        listener = ListenerService(kind, description, endpoint, factory)
        listener.setServiceParent(top)
        return listener

    def listen(kind, descriptions, factory):
        return [listen_on(kind, description, endpoints.serverFromString(reactor, description), factory)
                for description in descriptions]

    c2s = config.c2s
    cert, key = tls.certificate_paths(config, c2s)
    context = tls.server_context(cert, key, c2s.tls_min_version, c2s.tls_ciphers, alpn=(b"xmpp-client",))
    listen("c2s", c2s.endpoints, ClientFactory(server, c2s, context))
    listen("c2s-direct-tls", c2s.direct_tls_endpoints,
           TLSMemoryBIOFactory(context, False, ClientFactory(server, c2s, context, direct_tls=True)))
    listen("s2s", s2s.endpoints, IncomingServerFactory(server, remote))
    listen("s2s-direct-tls", s2s.direct_tls_endpoints,
           TLSMemoryBIOFactory(peer_tls.options, False, IncomingServerFactory(server, remote, direct_tls=True)))
    components = ComponentFactory(server)
    # Configured components answer service-unavailable until they connect.
    components.register_offline_routes()
    listen("component", config.component_listener.endpoints, components)
    # Browsers: BOSH, WebSocket and the web client on one HTTP listener, plain and TLS.
    http = config.http
    bosh = BoshService(server, http)
    bosh.setServiceParent(top)
    for listener in listen("http", http.endpoints, HTTPFactory(server, http, bosh, tls=False)):
        server.http_listeners.append((False, listener))
    if http.tls_endpoints:
        http_context = tls.server_context(*tls.certificate_paths(config, http), http.tls_min_version,
                                          http.tls_ciphers, alpn=(b"http/1.1",))
        for listener in listen("https", http.tls_endpoints,
                               TLSMemoryBIOFactory(http_context, False, HTTPFactory(server, http, bosh, tls=True))):
            server.http_listeners.append((True, listener))
    # SIP, SMS, email, the MUC and upload services (docs/sip.md, docs/sms.md, docs/email.md, docs/muc.md,
    # docs/web.md).
    attach_gateways(server, reactor, top, listen_on)
    return top


def makeService(options):
    from twisted.internet import reactor

    return build(options["parsed"], reactor)
