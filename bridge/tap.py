"""The twistd entry point: reads the configuration once and builds the service tree.

This is the only module that touches the global reactor; everything below it
receives the clock and the endpoints it needs.
"""

import importlib

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from bridge import __version__, config as configuration
from bridge.core import datadir, storage as storage_module, tls
from bridge.core.server import FeatureContext, Server
from bridge.core.streams.c2s import ClientFactory
from bridge.core.streams.component import ComponentFactory
from bridge.core.streams.s2s import IncomingServerFactory, PeerTLS, RemoteDomains
from bridge.gateways.bosh import BoshService
from bridge.gateways.http import HTTPFactory
from bridge.gateways.sip import transport as sip_transport
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sms.gateway import SMSGateway
from bridge.gateways import smtp as smtp_gateway

log = Logger()

FEATURES = ("presence", "roster", "offline", "disco", "ping", "version", "vcard", "private", "blocking",
            "register")


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
        self.remote.start().addErrback(lambda failure: log.failure("federation start failed", failure))
        log.info("bridge {version} serving {hosts} (configuration: {source})", version=__version__,
                 hosts=", ".join(self.server.hosts), source=self.server.config.source)

    def stopService(self):
        d = self.remote.stop()
        d.addBoth(lambda _: super(ServerService, self).stopService())
        d.addBoth(lambda result: (self.server.storage.close(), result)[1])
        return d


class GatewayService(service.Service):
    """A gateway's lifetime: ``start()`` with the server, ``stop()`` (a Deferred or None) before
    storage closes (SMSCs unbound, BOSH sessions ended with system-shutdown)."""

    def __init__(self, name, gateway):
        self.name = name
        self.gateway = gateway

    def startService(self):
        super().startService()
        if hasattr(self.gateway, "start"):
            started = self.gateway.start()
            if started is not None:
                started.addErrback(lambda failure: log.failure("{name} failed to start", failure, name=self.name))

    def stopService(self):
        super().stopService()
        return self.gateway.stop()


def smsc_connector(reactor):
    """``connect(name, smsc_config)`` for SMSGateway: an endpoint's connect, TLS when configured."""

    def connect(name, smsc):
        endpoint = endpoints.HostnameEndpoint(reactor, smsc.host, smsc.port, timeout=30)
        if smsc.tls:
            from twisted.internet import ssl

            trust = ssl.Certificate.loadPEM(open(smsc.ca_file, "rb").read()) if smsc.ca_file else None
            endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(smsc.host, trustRoot=trust), endpoint)
        return endpoint.connect

    return connect


def load_features(server):
    """Give every feature module its context; they register their hooks."""
    for name in FEATURES:
        module = importlib.import_module(f"bridge.features.{name}")
        context = server.features[name] = FeatureContext(server, name)
        module.setup(context)


def build(config, reactor):
    """The service tree for ``config``, on ``reactor``."""
    datadir.private_folder(config.data_dir)
    secret = datadir.server_secret(config.data_path("server.secret"))
    store = storage_module.open_storage(config)
    server = Server(config, store, reactor, secret=secret)
    load_features(server)
    s2s = config.s2s
    peer_tls = PeerTLS(*tls.certificate_paths(config, s2s), s2s.tls_min_version, s2s.tls_ciphers, s2s.ca_file)
    remote = RemoteDomains(server, peer_tls, reactor)
    server.router.default_route = remote
    top = ServerService(server, remote)
    if config.sms.enabled:
        gateway = SMSGateway(server, config, smsc_connector(reactor))
        gateway.setup()
        # A child of the server's service: stopped (unbound) before storage closes.
        GatewayService("SMS gateway", gateway).setServiceParent(top)

    def listen(kind, descriptions, factory):
        for description in descriptions:
            endpoint = endpoints.serverFromString(reactor, description)
            ListenerService(kind, description, endpoint, factory).setServiceParent(top)

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
    GatewayService("BOSH", bosh).setServiceParent(top)
    listen("http", http.endpoints, HTTPFactory(server, http, bosh, tls=False))
    if http.tls_endpoints:
        http_context = tls.server_context(*tls.certificate_paths(config, http), http.tls_min_version,
                                          http.tls_ciphers, alpn=(b"http/1.1",))
        listen("https", http.tls_endpoints,
               TLSMemoryBIOFactory(http_context, False, HTTPFactory(server, http, bosh, tls=True)))
    # The SIP gateway (docs/sip.md): UDP, TCP and TLS listeners in front of one transaction layer.
    if config.sip.enabled:
        setup_sip(config, server, reactor, top, listen)
    # Email (offline notification, conversation archive) when [smtp] names a relay.
    email = smtp_gateway.setup(server, reactor)
    if email is not None:
        email.setServiceParent(top)
    return top


def setup_sip(config, server, reactor, top, listen):
    """The SIP gateway and its listeners, children of ``top``."""
    sip = config.sip
    gateway = SIPGateway(server, config, reactor)
    gateway.setup()
    GatewayService("SIP gateway", gateway).setServiceParent(top)
    policy = sip_transport.SourcePolicy(reactor, sip)  # per-peer limits, shared by every SIP listener
    for description in sip.udp_endpoints:
        port, interface = configuration.parse_udp_endpoint(description)
        endpoint = sip_transport.UDPServerEndpoint(reactor, port, interface)
        ListenerService("sip-udp", description, endpoint,
                        lambda: gateway.add_transport(sip_transport.UDPTransport(gateway, gateway.limits, policy))
                        ).setServiceParent(top)
    listen("sip-tcp", sip.tcp_endpoints, sip_transport.StreamFactory(gateway, gateway.limits, "TCP", policy))
    if sip.tls_endpoints:
        context = tls.server_context(*tls.certificate_paths(config, sip), sip.tls_min_version, sip.tls_ciphers)
        listen("sip-tls", sip.tls_endpoints,
               TLSMemoryBIOFactory(context, False,
                                   sip_transport.StreamFactory(gateway, gateway.limits, "TLS", policy)))
    return gateway


def makeService(options):
    from twisted.internet import reactor

    return build(options["parsed"], reactor)
