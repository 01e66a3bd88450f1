"""The node's end of multiplexor links ([mux_listener], docs/scaling.md): each client a c2s stream.

A multiplexor holds the clients' sockets and their TLS, and forwards their
bytes over a few long-lived links (``bridge.core.muxframe``).  Here each
client id gets a ``MuxedTransport``, a transport in all but the socket, and
the ordinary ``TCPClientProtocol`` on top of it, built by the ordinary
``ClientFactory``: SASL, binding, limits per address (the client's own
address, as the mux saw it), triage and output bounds are the TCP code's.
An HTTP client (``OPEN_HTTP``: BOSH, WebSocket) gets the ordinary HTTP
channel of an ``HTTPFactory`` for TLS connections instead.
The stream is secure (the mux did TLS) only because the link proved the
shared secret before any client frame was taken.

Flow control per client: when the stream stops reading its client (rate,
triage, output the client does not read), the mux is told PAUSE and stops
reading that socket; what was already under way is held here, bounded by
``max_buffered_bytes``.  When the mux says its client is full, the stream's
output is paused and bounded as over TCP.  When the link itself is full,
every stream on it is.
"""

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from bridge.core import muxframe
from bridge.core.streams.c2s import ClientFactory

log = Logger()

# A link that has not proved the secret within this time is dropped.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


@implementer(ITransport, IConsumer, IPushProducer)
class MuxedTransport:
    """One client of a mux link, as a transport for ``TCPClientProtocol``."""

    disconnecting = False

    def __init__(self, link, client_id, address):
        self.link = link
        self.client_id = client_id
        self.address = address
        self.protocol = None
        self.producer = None
        self.paused = False  # the stream does not read: the mux was told PAUSE
        self.client_full = False  # the client does not read: the mux said PAUSE
        self.held = []  # bytes that came while reading was paused
        self.held_bytes = 0
        self.ended = False

    # -- from the link -----------------------------------------------------

    def receive(self, data):
        if self.ended:
            return
        if self.paused or self.held:
            self.held.append(data)
            self.held_bytes += len(data)
            if self.held_bytes > self.link.factory.max_buffered_bytes:
                log.info("mux client {peer}: {count} bytes arrived while paused; cut off",
                         peer=self.address, count=self.held_bytes)
                self.abortConnection()
            return
        self.protocol.dataReceived(data)

    def lost(self, reason):
        """The client or the link is gone: the stream ends as over TCP."""
        if self.ended:
            return
        self.ended = True
        self.held = []
        self.link.forget(self)
        self.protocol.connectionLost(failure.Failure(reason))

    # -- ITransport --------------------------------------------------------

    def write(self, data):
        if not self.disconnecting and data:
            self.link.send_data(self.client_id, data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        self._close(error.ConnectionDone())

    def abortConnection(self):
        self._close(error.ConnectionAborted())

    def _close(self, reason):
        if self.disconnecting:
            return
        self.disconnecting = True
        self.link.send_frame(muxframe.CLOSE, self.client_id)
        # After the current call returns, as a socket's close is seen by its protocol.
        self.link.factory.clock.callLater(0, self.lost, reason)

    def getPeer(self):
        return self.address

    def getHost(self):
        return self.link.transport.getHost()

    # -- IConsumer: the stream's output ------------------------------------

    def registerProducer(self, producer, streaming):
        self.producer = producer
        self.update_output()

    def update_output(self):
        """The stream's output waits while the link or the client (the mux says PAUSE) is full."""
        if self.producer is not None:
            if self.link.full or self.client_full:
                self.producer.pauseProducing()
            else:
                self.producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    # -- IPushProducer: reading from the client ----------------------------

    def pauseProducing(self):
        if not self.paused and not self.disconnecting:
            self.paused = True
            self.link.send_frame(muxframe.PAUSE, self.client_id)

    def resumeProducing(self):
        if not self.paused or self.disconnecting:
            return
        self.paused = False
        self.link.send_frame(muxframe.RESUME, self.client_id)
        while self.held and not self.paused and not self.ended:
            data = self.held.pop(0)
            self.held_bytes -= len(data)
            self.protocol.dataReceived(data)

    def stopProducing(self):
        self.abortConnection()


@implementer(IPushProducer)
class MuxLinkProtocol(Protocol):
    """One link from a multiplexor: the handshake, then client ids to c2s streams."""

    def __init__(self):
        self.decoder = None
        self.nonce = muxframe.new_nonce()
        self.authenticated = False
        self.clients = {}  # client id -> MuxedTransport
        self.full = False
        self.peer = "?"
        self._handshake_timer = None

    def connectionMade(self):
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        # Until the handshake is done, nothing larger than an AUTH is taken.
        self.decoder = muxframe.FrameDecoder(muxframe.AUTH_BYTES)
        self.transport.registerProducer(self, True)
        self.send_frame(muxframe.CHALLENGE, 0, self.nonce)
        self._handshake_timer = self.factory.clock.callLater(HANDSHAKE_TIMEOUT_SECONDS, self._handshake_timed_out)

    def _handshake_timed_out(self):
        log.info("mux link from {peer} dropped: no handshake within {seconds}s", peer=self.peer,
                 seconds=HANDSHAKE_TIMEOUT_SECONDS)
        self.transport.abortConnection()

    def send_frame(self, kind, client_id, payload=b""):
        self.transport.write(muxframe.frame(kind, client_id, payload))

    def send_data(self, client_id, data):
        self.transport.write(muxframe.data_frames(client_id, data, self.factory.max_frame_bytes))

    def dataReceived(self, data):
        try:
            for kind, client_id, payload in self.decoder.feed(data):
                self._frame(kind, client_id, payload)
        except muxframe.FrameError as problem:
            log.warn("mux link from {peer} dropped: {problem}", peer=self.peer, problem=str(problem))
            self.transport.abortConnection()

    def _frame(self, kind, client_id, payload):
        if not self.authenticated:
            self._handshake(kind, payload)
            return
        if kind in (muxframe.OPEN, muxframe.OPEN_HTTP):
            self._open(client_id, payload, kind == muxframe.OPEN_HTTP)
            return
        client = self.clients.get(client_id)
        if client is None:
            return  # a frame for a client that ended meanwhile
        if kind == muxframe.DATA:
            client.receive(payload)
        elif kind == muxframe.CLOSE:
            client.disconnecting = True
            client.lost(error.ConnectionDone())
        elif kind in (muxframe.PAUSE, muxframe.RESUME):
            client.client_full = kind == muxframe.PAUSE
            client.update_output()
        else:
            raise muxframe.FrameError(f"frame kind {kind} after the handshake")

    def _handshake(self, kind, payload):
        mux_nonce = muxframe.check_auth(self.factory.secret, self.nonce, payload) if kind == muxframe.AUTH else None
        if mux_nonce is None:
            raise muxframe.FrameError("the handshake failed (not the shared secret)")
        self.authenticated = True
        self._handshake_timer.cancel()
        self.decoder.max_payload_bytes = self.factory.max_frame_bytes
        self.send_frame(muxframe.WELCOME, 0, muxframe.proof(self.factory.secret, b"node", self.nonce, mux_nonce))
        log.info("mux link from {peer} authenticated", peer=self.peer)

    def _open(self, client_id, payload, http):
        host, port = muxframe.parse_address(payload)
        if client_id in self.clients or len(self.clients) >= self.factory.max_clients_per_link:
            self.send_frame(muxframe.CLOSE, client_id)
            return
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        transport = MuxedTransport(self, client_id, address)
        if http:
            protocol = self.factory.web.buildProtocol(address)
        else:
            protocol = self.factory.clients.buildProtocol(address)
            protocol.kind = "mux"
        transport.protocol = protocol
        self.clients[client_id] = transport
        protocol.makeConnection(transport)

    def forget(self, client):
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]

    # -- IPushProducer: the link's output to the mux ----------------------

    def pauseProducing(self):
        self.full = True
        for client in list(self.clients.values()):
            client.update_output()

    def resumeProducing(self):
        self.full = False
        for client in list(self.clients.values()):
            client.update_output()

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        if self.authenticated:
            log.info("mux link from {peer} lost: {count} clients end", peer=self.peer, count=len(self.clients))
        for client in list(self.clients.values()):
            client.lost(error.ConnectionLost())


class MuxLinkFactory(Factory):
    """Accepts links from multiplexors that know ``secret``; their clients are built by ``ClientFactory``,
    their HTTP clients by ``web`` (an ``HTTPFactory`` for TLS connections)."""

    protocol = MuxLinkProtocol
    noisy = False

    def __init__(self, server, section, secret, web):
        self.clock = server.clock
        self.web = web
        self.clients = ClientFactory(server, server.config.c2s, None, direct_tls=True)
        self.secret = secret
        self.max_frame_bytes = section.max_frame_bytes
        self.max_clients_per_link = section.max_clients_per_link
        self.max_buffered_bytes = server.config.c2s.max_buffered_bytes

