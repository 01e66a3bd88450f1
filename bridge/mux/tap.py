"""``twistd bridge-mux``: reads the [mux] configuration once and builds the multiplexor's services.

The only module of the multiplexor that touches the global reactor.
"""

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints, ssl
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from bridge import __version__
from bridge.config import ConfigError
from bridge.core import tls
from bridge.core.listening import listening_endpoint
from bridge.mux import config as configuration
from bridge.mux.relay import ClientRelayFactory, NodeLinkFactory, NodePool
from bridge.tap import ListenerService

log = Logger()


class Options(usage.Options):
    optParameters = [["config", "c", None, "TOML configuration file with a [mux] table (required)"]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config is required: the multiplexor needs its nodes and its certificate")
        try:
            self["parsed"] = configuration.load(self["config"])
        except ConfigError as error:
            raise usage.UsageError("invalid configuration:\n" + str(error))


def node_endpoint(reactor, section, host, port):
    """The client endpoint of one node's mux_listener: TCP, under TLS checked against node_ca_file if node_tls."""
    endpoint = endpoints.HostnameEndpoint(reactor, host.strip("[]"), port)
    if not section.node_tls:
        return endpoint
    options = ssl.optionsForClientTLS(section.node_tls_name or host.strip("[]"),
                                      trustRoot=tls.trust_roots(section.node_ca_file))
    return endpoints.wrapClientTLS(options, endpoint)


class MuxService(service.MultiService):
    """The multiplexor: its listeners and node links; says so in the log once they are started."""

    def __init__(self, section):
        super().__init__()
        self.section = section

    def startService(self):
        super().startService()
        log.info("bridge {version} multiplexor serving nodes {nodes} ({links} links each, {balance})",
                 version=__version__, nodes=", ".join(self.section.nodes), links=self.section.links_per_node,
                 balance=self.section.balance)


def build(section, reactor):
    top = MuxService(section)
    pool = NodePool(reactor, section, section.read_secret())
    retry = backoffPolicy(maxDelay=section.reconnect_max_seconds)
    for host, port in section.node_addresses():
        node = f"{host}:{port}"
        factory = NodeLinkFactory(pool, node)
        for _ in range(section.links_per_node):
            ClientService(node_endpoint(reactor, section, host, port), factory, retryPolicy=retry,
                          clock=reactor).setServiceParent(top)
    context = tls.server_context(section.certificate, section.private_key, section.tls_min_version,
                                 section.tls_ciphers, alpn=(b"xmpp-client",))
    http_context = tls.server_context(section.certificate, section.private_key, section.tls_min_version,
                                      section.tls_ciphers, alpn=(b"http/1.1",))
    listeners = [("mux-c2s", section.endpoints, ClientRelayFactory(pool, context, direct_tls=False)),
                 ("mux-c2s-direct-tls", section.direct_tls_endpoints,
                  TLSMemoryBIOFactory(context, False, ClientRelayFactory(pool, context, direct_tls=True))),
                 ("mux-https", section.https_endpoints,
                  TLSMemoryBIOFactory(http_context, False, ClientRelayFactory(pool, http_context, True, http=True)))]
    for kind, descriptions, factory in listeners:
        for description in descriptions:
            ListenerService(kind, description, listening_endpoint(reactor, description), factory).setServiceParent(top)
    return top


def makeService(options):
    from twisted.internet import reactor

    return build(options["parsed"], reactor)
