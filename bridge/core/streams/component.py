"""External components (XEP-0114, "jabber:component:accept"): the server side.

A component opens a stream to the domain it serves, receives a header with a
random stream id and proves that it knows the shared secret by sending
``<handshake>`` with the hex SHA-1 of the stream id followed by the secret.
Once accepted, its stream is the route of that domain in the routing table:
stanzas addressed to the domain are written to the stream, and stanzas the
component sends (from its own domain only) go to the router.

While a configured component is not connected, its domain keeps an
``OfflineComponent`` route that answers ``service-unavailable``, so that
stanzas for it are neither lost nor handed to federation.
"""

import base64
import hashlib
import hmac
import os

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.stanza import parse_jid
from bridge.core.streams.base import XMLStreamProtocol

log = Logger()

NS_COMPONENT = "jabber:component:accept"
STANZAS = ("message", "presence", "iq")
# A component has this long after connecting to complete its handshake.
HANDSHAKE_TIMEOUT_SECONDS = 30.0


def _stream_id():
    return base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")


def handshake_digest(stream_id, secret):
    """The XEP-0114 handshake value: hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


class OfflineComponent:
    """The route of a configured component that is not connected: stanzas bounce."""

    def __init__(self, router, domain):
        self.router = router
        self.domain = domain

    def deliver(self, stanza):
        self.router.bounce(stanza, "service-unavailable", f"{self.domain} is not connected")


class ComponentStream(XMLStreamProtocol):
    """One component connection; once the handshake succeeds, the route of its domain."""

    content_namespace = NS_COMPONENT

    def __init__(self, server, factory):
        super().__init__(server.clock, server.config.component_listener, server.dormancy)
        self.server = server
        self.factory = factory
        self.stream_id = None
        self.domain = None
        self.accepted = False
        self._handshake_timer = None

    def connectionMade(self):
        super().connectionMade()
        self._handshake_timer = self.clock.callLater(HANDSHAKE_TIMEOUT_SECONDS, self._handshake_timeout)

    # -- input -------------------------------------------------------------

    def header_received(self, header):
        to = (header.getAttribute("to") or "").strip().lower()
        self.stream_id = _stream_id()
        self.write_header({"id": self.stream_id, "from": to or None})
        if not to:
            self.stream_error("improper-addressing", "the stream header names no domain")
            return
        if to not in self.server.config.components:
            self.stream_error("host-unknown", f"{to!r} is not a component of this server")
            return
        self.domain = to

    def element_received(self, element):
        if self.closed:
            return
        if not self.accepted:
            if element.uri is None and element.name == "handshake" and self.domain is not None:
                self._handshake(str(element).strip())
            else:
                self.stream_error("not-authorized", "the handshake comes first")
        elif element.uri is None and element.name in STANZAS:
            self.server.counters.stanzas_in["component"][element.name] += 1
            self._stanza(element)
        else:
            self.stream_error("unsupported-stanza-type", f"<{element.name}/> in {element.uri}")

    def _handshake(self, value):
        try:
            secret = self.server.config.components[self.domain].read_secret()
        except OSError as error:
            log.error("cannot read the secret of component {domain}: {error}", domain=self.domain, error=error)
            self.stream_error("internal-server-error")
            return
        expected = handshake_digest(self.stream_id, secret).encode("ascii")
        # An empty secret would let anyone in: such a component is never accepted.
        if not secret or not hmac.compare_digest(expected, value.lower().encode("utf-8")):
            log.info("component handshake for {domain} refused from {peer}", domain=self.domain, peer=self.peer)
            self.stream_error("not-authorized", "wrong handshake")
            return
        if self.factory.connected.get(self.domain) is not None:
            self.stream_error("conflict", f"{self.domain} is already connected")
            return
        self._cancel_timer()
        self.accepted = True
        self.factory.component_connected(self)
        self.send(domish.Element((None, "handshake")))
        log.info("component {domain} connected from {peer}", domain=self.domain, peer=self.peer)

    def _stanza(self, stanza):
        sender_text = stanza.getAttribute("from")
        if not sender_text or not stanza.getAttribute("to"):
            self.stream_error("improper-addressing", "stanzas from a component need 'from' and 'to'")
            return
        sender = parse_jid(sender_text)
        if sender is None or sender.host != self.domain:
            self.stream_error("invalid-from", f"{sender_text!r} is not in {self.domain}")
            return
        self.server.router.route(stanza)

    def end_received(self):
        self.close()

    # -- output and end ----------------------------------------------------

    def deliver(self, stanza):
        """The routing table's entry point: a stanza for the component's domain."""
        if self.closed:
            self.server.router.bounce(stanza, "service-unavailable", f"{self.domain} is not connected")
            return
        counts = self.server.counters.stanzas_out["component"]
        if stanza.name in counts:
            counts[stanza.name] += 1
        self.send(stanza)

    def stream_error(self, condition, text=None):
        if self.closed:
            return
        if self.stream_id is None:
            # An error before the component's header still opens our stream.
            self.stream_id = _stream_id()
            self.write_header({"id": self.stream_id})
        self.send_stream_error(condition, text)

    def close(self):
        self._gone()
        super().close()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._cancel_timer()
        self._gone()

    def _gone(self):
        if self.accepted:
            self.accepted = False
            self.factory.component_disconnected(self)
            log.info("component {domain} disconnected ({peer})", domain=self.domain, peer=self.peer)

    def _cancel_timer(self):
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _handshake_timeout(self):
        self._handshake_timer = None
        self.stream_error("connection-timeout", "no handshake in time")


class ComponentFactory(Factory):
    """Accepts component connections and keeps the routes of the configured components.

    ``register_offline_routes`` gives each configured domain its offline
    route at startup; a connected component's stream replaces it, and it
    comes back when the component goes.
    """

    noisy = False

    def __init__(self, server):
        self.server = server
        self.router = server.router
        self.offline = {domain: OfflineComponent(self.router, domain) for domain in server.config.components}
        self.connected = {}

    def register_offline_routes(self):
        for domain, route in self.offline.items():
            if domain not in self.connected:
                self.router.addRoute(domain, route)

    def reconfigure(self, components):
        """A reload's ``[components.DOMAIN]`` tables: a new domain is routed (offline until it connects), a
        removed one's route goes, and its stream ends.  A changed secret applies at the next handshake."""
        for domain in set(self.offline) - set(components):
            self.router.removeRoute(domain, self.offline.pop(domain))
            stream = self.connected.get(domain)
            if stream is not None:
                stream.stream_error("not-authorized", "this component was removed from the configuration")
        for domain in set(components) - set(self.offline):
            self.offline[domain] = OfflineComponent(self.router, domain)
        self.register_offline_routes()

    def buildProtocol(self, address):
        protocol = ComponentStream(self.server, self)
        protocol.factory = self
        return protocol

    def component_connected(self, stream):
        domain = stream.domain
        self.connected[domain] = stream
        self.router.addRoute(domain, stream)
        self.server.list_service(domain, None, stream)

    def component_disconnected(self, stream):
        domain = stream.domain
        if self.connected.get(domain) is not stream:
            return
        del self.connected[domain]
        self.router.removeRoute(domain, stream)
        self.server.unlist_services(stream)
        offline = self.offline.get(domain)
        if offline is not None:
            self.router.addRoute(domain, offline)
