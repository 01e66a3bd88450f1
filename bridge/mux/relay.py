"""The multiplexor's protocols: client connections in, node links out (docs/scaling.md, Multiplexor).

A client is taken through TLS here (STARTTLS, answered by this module up to
<proceed/>, or direct TLS), then handed to a node: a link to it is chosen
(``choose_link``), an OPEN frame carries the client's address, and from then
on the client's bytes, from its new stream header on, go to the node as they
are.  Nothing before TLS reaches a node, so the node treats every stream of
an authenticated link as secure.

HTTP clients (BOSH and WebSocket, on ``https_endpoints``) are handed over
the same way after direct TLS, with ``OPEN_HTTP``; they go to the node that
rendezvous hashing gives their address whatever ``balance`` says, so that
the requests of one BOSH session, each maybe on a connection of its own,
reach the node that holds it.

When a link dies, its XMPP clients get the stream error <system-shutdown/>
(HTTP clients: the connection closes) and are disconnected: they reconnect, through this mux, to a live node and log
in again.  Their sessions are gone with the node (no resumption across
nodes).

Bounds: frames (``max_frame_bytes``), clients per link, the connections not
yet handed to a node (``max_pending_connects``, each within
``connect_timeout_seconds``), and the bytes a node sent that a client does not
read (``max_buffered_bytes_per_client``: the node is told PAUSE at once,
what was under way is counted, and past the bound the client is cut off).
"""

import hashlib
import secrets

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from bridge.core import muxframe
from bridge.core.streams.base import NS_TLS, Reading, stream_error_element, stream_header
from bridge.core.xmlstream import NS_STREAMS, StreamError, StreamParser

log = Logger()

NS_CLIENT = "jabber:client"
# What a client may send before TLS: a stream header and <starttls/>.
PRE_TLS_LIMIT_BYTES = 8192


def choose_link(links_by_node, client_host, balance, max_clients_per_link):
    """The link a new client goes to, or None when no node has room.

    ``links_by_node``: node name -> its authenticated links (each with its
    ``clients``).  ``least-clients``: the node with the fewest clients;
    ``hash``: the node that rendezvous hashing gives the client's address,
    so that a client comes back to the same node while it lives, and only
    the clients of a dead node move.  Within the node, its least busy link.
    """
    open_links = {node: [link for link in links if len(link.clients) < max_clients_per_link]
                  for node, links in links_by_node.items()}
    open_links = {node: links for node, links in open_links.items() if links}
    if not open_links:
        return None
    if balance == "hash":
        node = max(sorted(open_links), key=lambda name: hashlib.sha256(f"{name} {client_host}".encode()).digest())
    else:
        node = min(sorted(open_links), key=lambda name: sum(len(link.clients) for link in links_by_node[name]))
    return min(open_links[node], key=lambda link: len(link.clients))


class NodePool:
    """The authenticated links to every node, and the count of clients not yet handed to one."""

    def __init__(self, clock, section, secret):
        self.clock = clock
        self.section = section
        self.secret = secret
        self.links = {}  # node name -> set of NodeLink
        self.pending = 0

    def link_up(self, link):
        self.links.setdefault(link.node, set()).add(link)
        log.info("mux: link to node {node} up ({count} links)", node=link.node, count=len(self.links[link.node]))

    def link_down(self, link):
        links = self.links.get(link.node, set())
        links.discard(link)
        log.info("mux: link to node {node} down: {clients} clients end ({count} links left)", node=link.node,
                 clients=len(link.clients), count=len(links))

    def choose(self, client_host, http=False):
        balance = "hash" if http else self.section.balance
        return choose_link(self.links, client_host, balance, self.section.max_clients_per_link)


@implementer(IPushProducer)
class NodeLink(Protocol):
    """One link to a node: the handshake, then frames to and from the clients on it."""

    def __init__(self, pool, node):
        self.pool = pool
        self.node = node
        self.decoder = muxframe.FrameDecoder(pool.section.max_frame_bytes)
        self.clients = {}  # client id -> ClientRelay
        self.next_id = 1
        self.mux_nonce = None
        self.node_nonce = None
        self.ready = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def send_frame(self, kind, client_id, payload=b""):
        self.transport.write(muxframe.frame(kind, client_id, payload))

    def send_data(self, client_id, data):
        self.transport.write(muxframe.data_frames(client_id, data, self.pool.section.max_frame_bytes))

    def attach(self, client, address, http=False):
        """Hand ``client`` (from ``address``, ``host:port``; an HTTP client if ``http``) to the node: its
        client id."""
        while self.next_id in self.clients or self.next_id == 0:
            self.next_id = (self.next_id + 1) % 2 ** 32
        client_id, self.next_id = self.next_id, (self.next_id + 1) % 2 ** 32
        self.clients[client_id] = client
        self.send_frame(muxframe.OPEN_HTTP if http else muxframe.OPEN, client_id, address.encode("ascii"))
        return client_id

    def detach(self, client_id):
        if self.clients.pop(client_id, None) is not None:
            self.send_frame(muxframe.CLOSE, client_id)

    def dataReceived(self, data):
        try:
            for kind, client_id, payload in self.decoder.feed(data):
                self._frame(kind, client_id, payload)
        except muxframe.FrameError as problem:
            log.warn("mux: link to node {node} dropped: {problem}", node=self.node, problem=str(problem))
            self.transport.abortConnection()

    def _frame(self, kind, client_id, payload):
        if not self.ready:
            self._handshake(kind, payload)
            return
        client = self.clients.get(client_id)
        if client is None:
            return  # the client left meanwhile
        if kind == muxframe.DATA:
            client.from_node(payload)
        elif kind == muxframe.CLOSE:
            del self.clients[client_id]
            client.node_closed()
        elif kind == muxframe.PAUSE:
            client.node_hold.pauseProducing()
        elif kind == muxframe.RESUME:
            client.node_hold.resumeProducing()
        else:
            raise muxframe.FrameError(f"frame kind {kind} from a node")

    def _handshake(self, kind, payload):
        secret = self.pool.secret
        if kind == muxframe.CHALLENGE and self.node_nonce is None and len(payload) == muxframe.NONCE_BYTES:
            self.node_nonce = payload
            answer, self.mux_nonce = muxframe.auth_payload(secret, payload)
            self.send_frame(muxframe.AUTH, 0, answer)
        elif kind == muxframe.WELCOME and self.mux_nonce is not None and muxframe.check_welcome(
                secret, self.node_nonce, self.mux_nonce, payload):
            self.ready = True
            self.pool.link_up(self)
        else:
            raise muxframe.FrameError("the handshake failed (not the shared secret)")

    # -- IPushProducer: the link is full, every client on it waits ---------

    def pauseProducing(self):
        for client in list(self.clients.values()):
            client.link_hold.pauseProducing()

    def resumeProducing(self):
        for client in list(self.clients.values()):
            client.link_hold.resumeProducing()

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        if self.ready:
            self.pool.link_down(self)
        clients, self.clients = self.clients, {}
        for client in clients.values():
            client.node_lost()


class NodeLinkFactory(Factory):
    """Builds the links to one node (``ClientService`` keeps ``links_per_node`` of them up)."""

    noisy = False

    def __init__(self, pool, node):
        self.pool = pool
        self.node = node

    def buildProtocol(self, address):
        link = NodeLink(self.pool, self.node)
        link.factory = self
        return link


@implementer(IPushProducer)
class ClientRelay(Protocol):
    """One client connection: TLS here, then its bytes to and from a node.  ``http``: a BOSH or WebSocket
    client (direct TLS), not an XMPP stream."""

    def __init__(self, pool, tls_context, direct_tls, http=False):
        self.pool = pool
        self.http = http
        self.tls_context = tls_context
        self.direct_tls = direct_tls
        self.tls_started = direct_tls
        self.link = None
        self.client_id = None
        self.node_spoke = False
        self.header_sent = False  # our own stream header, before TLS or for an error
        self.full = False
        self.unread = 0
        self.closed = False
        self.counted = False
        self.timer = None
        self.parser = None
        self.elements = []
        self.address = "?"  # host:port, as the node is told
        self.host = "?"

    def connectionMade(self):
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        self.address = f"[{host}]:{peer.port}" if ":" in host else f"{host}:{getattr(peer, 'port', 0)}"
        self.host = host
        reading = Reading(self.transport)
        self.node_hold, self.link_hold = reading.hold(), reading.hold()
        if self.pool.pending >= self.pool.section.max_pending_connects:
            log.info("mux: {peer} refused: {count} connections wait for TLS", peer=self.address,
                     count=self.pool.pending)
            self.closed = True
            self.transport.abortConnection()
            return
        self.pool.pending += 1
        self.counted = True
        self.timer = self.pool.clock.callLater(self.pool.section.connect_timeout_seconds, self._timed_out)
        if not self.direct_tls:
            self.parser = StreamParser(self._header, self.elements.append, self._pre_tls_end, PRE_TLS_LIMIT_BYTES,
                                       NS_CLIENT)

    def dataReceived(self, data):
        if self.closed:
            return
        if self.link is not None:
            self.link.send_data(self.client_id, data)
        elif self.tls_started:
            self._hand_over(data)
        else:
            self._before_tls(data)

    # -- before TLS: the stream header and <starttls/> ---------------------

    def _before_tls(self, data):
        try:
            self.parser.feed(data)
        except StreamError as error:
            self._stream_error(error.condition, error.text)
            return
        if self.closed or not self.elements:
            return
        element = self.elements.pop(0)
        if element.uri != NS_TLS or element.name != "starttls":
            self._stream_error("policy-violation", "TLS is required: send <starttls/>")
        elif self.elements or not self.parser.ends_between_stanzas():
            self._stream_error("policy-violation", "nothing may follow <starttls/> before the answer to it")
        else:
            self.transport.write(domish.Element((NS_TLS, "proceed")).toXml().encode("utf-8"))
            self.tls_started = True
            self.transport.startTLS(self.tls_context)

    def _header(self, header):
        attributes = {"id": secrets.token_hex(8), "from": header.getAttribute("to"), "version": "1.0"}
        self.transport.write(stream_header(NS_CLIENT, attributes))
        features = domish.Element((NS_STREAMS, "features"))
        features.addElement((NS_TLS, "starttls")).addElement("required")
        self.transport.write(features.toXml(prefixes={NS_STREAMS: "stream"},
                                            prefixesInScope=["stream"]).encode("utf-8"))
        self.header_sent = True

    def _pre_tls_end(self):
        self._stream_error("policy-violation", "TLS is required")

    def _stream_error(self, condition, text=None):
        """End the client's stream with an error; a header first unless one was sent on this stream.
        An HTTP client gets 503 if nothing was answered yet, else the connection just closes."""
        if self.closed:
            return
        if self.http:
            log.info("mux: HTTP client {peer} closed: {text}", peer=self.address, text=text or "")
            if not self.node_spoke:
                self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
            self._end()
            self.transport.loseConnection()
            return
        log.info("mux: stream error {condition} for {peer}: {text}", condition=condition, peer=self.address,
                 text=text or "")
        if not (self.node_spoke or self.header_sent):
            self.transport.write(stream_header(NS_CLIENT, {"version": "1.0"}))
        error = stream_error_element(condition, text)
        self.transport.write(error.toXml(prefixes={NS_STREAMS: "stream"}, prefixesInScope=["stream"]).encode("utf-8")
                             + b"</stream:stream>")
        self._end()
        self.transport.loseConnection()

    def _timed_out(self):
        self.timer = None
        log.info("mux: {peer} did not finish TLS in time", peer=self.address)
        self.closed = True
        self.transport.abortConnection()

    # -- handing over to a node --------------------------------------------

    def _hand_over(self, data):
        """TLS is done and the client speaks: choose a node and forward from here on."""
        link = self.pool.choose(self.host, self.http)
        self.header_sent = False  # a new stream after TLS
        if link is None:
            self._stream_error("system-shutdown", "no server is available; try again later")
            return
        self._settle()
        self.link = link
        self.client_id = link.attach(self, self.address, self.http)
        log.info("mux: client {peer} to node {node}", peer=self.address, node=link.node)
        self.transport.registerProducer(self, True)
        link.send_data(self.client_id, data)

    def _settle(self):
        """No longer waiting for TLS: uncounted, untimed."""
        if self.counted:
            self.counted = False
            self.pool.pending -= 1
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def from_node(self, data):
        self.node_spoke = True
        self.transport.write(data)
        if self.full:
            self.unread += len(data)
            if self.unread > self.pool.section.max_buffered_bytes_per_client:
                log.info("mux: cutting off {peer}: {count} bytes it does not read", peer=self.address,
                         count=self.unread)
                self._end()
                self.transport.abortConnection()

    def node_closed(self):
        """The node ended the stream (it wrote the end tag): the connection closes."""
        self.link = None
        self._end()
        self.transport.loseConnection()

    def node_lost(self):
        """The node's link died: the client is told to connect again, and is disconnected."""
        self.link = None
        self._stream_error("system-shutdown", "the server of this connection went away; connect again")

    def _end(self):
        self.closed = True
        if self.link is not None:
            self.link.detach(self.client_id)
            self.link = None

    # -- IPushProducer: what the node sends, as the client reads it --------

    def pauseProducing(self):
        if not self.full:
            self.full = True
            self.unread = 0
            if self.link is not None:
                self.link.send_frame(muxframe.PAUSE, self.client_id)

    def resumeProducing(self):
        if self.full:
            self.full = False
            if self.link is not None:
                self.link.send_frame(muxframe.RESUME, self.client_id)

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        self._settle()
        self._end()


class ClientRelayFactory(Factory):
    """Builds the client connections of one listener (STARTTLS, or direct TLS under TLSMemoryBIOFactory;
    ``http``: BOSH and WebSocket clients, under TLSMemoryBIOFactory)."""

    noisy = False

    def __init__(self, pool, tls_context, direct_tls, http=False):
        self.pool = pool
        self.tls_context = tls_context
        self.direct_tls = direct_tls
        self.http = http

    def buildProtocol(self, address):
        relay = ClientRelay(self.pool, self.tls_context, self.direct_tls, self.http)
        relay.factory = self
        return relay
