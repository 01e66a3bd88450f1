"""XMPP over WebSocket (RFC 7395): a framing for ``ClientStream`` on the HTTP listener.

The HTTP channel hands over an upgrade request; ``handshake`` checks it with
wsproto and accepts only the ``xmpp`` subprotocol.  ``WebSocketStream`` then
carries one client stream: every text message is one complete XML element
(``<open/>``, a stanza, ``<close/>``), parsed by the same restricted parser as
TCP (fed a synthetic stream header once, then each message), and the
elements drive a ``ClientStream`` exactly as ``TCPClientProtocol`` does.

Output: one text message per element; stanzas carry xmlns='jabber:client'
(RFC 7395 section 3.3.3), stream features and errors the ``stream:`` prefix
with its declaration, which is what Strophe.js looks for.  There is no
STARTTLS: a WebSocket is secure when its listener is TLS, or when a trusted
proxy says the client reached it over TLS.  Over plain HTTP, SASL waits for
nothing on loopback only; elsewhere ``[c2s] require_encryption`` refuses it.

Keepalive: a WebSocket ping every ``websocket_ping_interval_seconds``; no
pong by the next one closes the stream.  Backpressure: the ``BoundedOutput``
of the TCP streams; while the transport's buffer is full, reading from the
client stops, and a client that does not read while more than
``max_buffered_bytes`` pile up is cut off with <policy-violation/>.
"""

import re
from typing import NamedTuple

from twisted.logger import Logger
from twisted.words.xish import domish
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request,
                            TextMessage)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from bridge.core.streams.base import CLOSE_TIMEOUT_SECONDS, BoundedOutput, InputRateLimit, Reading
from bridge.core.streams.c2s import NS_CLIENT, ClientStream
from bridge.core.xmlstream import NS_STREAMS, StreamError, StreamParser, serialize

log = Logger()

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
SYNTHETIC_HEADER = f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'>".encode()
_DECLARATIONS = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


class Refusal(NamedTuple):
    """An upgrade request answered with an HTTP error."""

    status: int
    headers: list
    body: bytes


def handshake(request):
    """(WSConnection, the 101 answer's bytes) for an acceptable upgrade, else a ``Refusal``."""
    connection = WSConnection(ConnectionType.SERVER)
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()]
    target = request.path + (f"?{request.query}" if request.query else "")
    try:
        connection.initiate_upgrade_connection(headers, target)
        events = list(connection.events())
    except RemoteProtocolError as error:
        # wsproto's hint: 426 with Sec-WebSocket-Version for a version it does not speak, else 400.
        hint = error.event_hint
        extra = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in getattr(hint, "headers", [])]
        return Refusal(getattr(hint, "status_code", 400), [("Content-Type", "text/plain; charset=utf-8")] + extra,
                       f"not a WebSocket handshake: {error}\n".encode())
    except Exception as error:
        return Refusal(400, [("Content-Type", "text/plain; charset=utf-8")],
                       f"not a WebSocket handshake: {error}\n".encode())
    upgrade = next((event for event in events if isinstance(event, Request)), None)
    if upgrade is None or SUBPROTOCOL not in upgrade.subprotocols:
        # RFC 7395 section 3.2: the client asks for 'xmpp'; without it no stream can be framed.
        return Refusal(400, [("Content-Type", "text/plain; charset=utf-8")],
                       b"the WebSocket subprotocol 'xmpp' (RFC 7395) is required\n")
    return connection, connection.send(AcceptConnection(subprotocol=SUBPROTOCOL))


def _qualified(element):
    """``element`` (a stanza in no namespace inside the server) as a jabber:client element.

    A new top element shares the children, so that the (possibly shared)
    stanza is not touched; children in no namespace inherit jabber:client.
    """
    top = domish.Element((NS_CLIENT, element.name), defaultUri=NS_CLIENT)
    top.attributes = element.attributes
    top.localPrefixes = element.localPrefixes
    top.children = element.children
    return top


class WebSocketStream:
    """One RFC 7395 connection: the framing of its ``ClientStream``.

    ``request``: the upgrade request (``bridge.gateways.http.HTTPRequest``),
    which tells who the client is and how it is connected.
    """

    can_start_tls = False
    kind = "websocket"  # what carries the session, as bridgectl and the metrics show it

    def __init__(self, server, config, transport, connection, request):
        self.server = server
        self.config = config
        self.transport = transport
        self.connection = connection
        self.secure = request.secure
        self.peer = request.peer
        # Without TLS, a local client may still authenticate: nobody else sees its bytes.
        self.may_authenticate_in_clear = request.local
        self._tls_transport = request.tls_transport
        self.clock = server.clock
        self.stream = None
        self.parser = None
        self.gone = False
        self.closing = False
        self._expect_open = True
        self._parts = []
        self._size = 0
        self._found = []
        self._close_code = CloseReason.NORMAL_CLOSURE
        self._ping_timer = None
        self._awaiting_pong = False
        self._close_timer = None
        self._aborted = False
        reading = Reading(transport)
        self.rate = InputRateLimit(self.clock, server.config.c2s, reading.hold())
        self.output = BoundedOutput(transport, config.max_buffered_bytes, self._overflowed, reading=reading.hold())

    def start(self, data=b""):
        """The 101 answer has been written; ``data``: bytes the client sent after its request."""
        self.output.register()
        c2s = self.server.config.c2s
        self.parser = StreamParser(lambda header: None, self._found.append, self._root_closed,
                                   c2s.stanza_size_limit_bytes, NS_CLIENT, self.server.dormancy)
        self.parser.feed(SYNTHETIC_HEADER)
        self.stream = ClientStream(self.server, self, c2s, secure=self.secure)
        self._schedule_ping()
        if data:
            self.data_received(data)

    # -- input -----------------------------------------------------------------

    def data_received(self, data):
        if self.gone:
            return
        self.stream.data_seen()
        self.rate.consumed(len(data))
        try:
            self.connection.receive_data(data)
        except LocalProtocolError:
            return  # the WebSocket is already closed
        for event in self.connection.events():
            if self.gone:
                return
            if isinstance(event, TextMessage):
                self._text(event)
            elif isinstance(event, BytesMessage):
                self._close_code = CloseReason.UNSUPPORTED_DATA
                self.stream.stream_error("unsupported-encoding", "RFC 7395 frames XMPP in text messages only")
            elif isinstance(event, Ping):
                self._write(self.connection.send(event.response()))
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                self._remote_close(event)

    def _text(self, event):
        if self.stream.closed:
            return
        chunk = event.data.encode("utf-8")
        self._size += len(chunk)
        if self._size > self.config.websocket_max_message_bytes:
            self._close_code = CloseReason.MESSAGE_TOO_BIG
            self.stream.stream_error("policy-violation", "WebSocket message too large")
            return
        self._parts.append(chunk)
        if event.message_finished:
            message = b"".join(self._parts)
            self._parts, self._size = [], 0
            self._message(message)

    def _message(self, data):
        if not data.strip():
            return
        try:
            self.parser.feed(data)
        except StreamError as error:
            self._found.clear()
            condition = error.condition
            if condition == "not-well-formed" and _DECLARATIONS.search(data):
                # A DTD after the (synthetic) stream header is an expat syntax
                # error; it is still what RFC 6120 section 11.1 forbids.
                condition = "restricted-xml"
            self.stream.stream_error(condition, error.text)
            return
        found, self._found[:] = list(self._found), []
        if len(found) != 1:
            self.stream.stream_error("not-well-formed", "a WebSocket message holds exactly one complete "
                                                        "XML element (RFC 7395 section 3.3.3)")
            return
        self._element(found[0])

    def _root_closed(self):
        raise StreamError("not-well-formed", "</stream:stream> is not part of RFC 7395 framing")

    def _element(self, element):
        if element.uri == NS_FRAMING and element.name == "open":
            if not self._expect_open:
                self.stream.stream_error("policy-violation", "<open/> only starts or restarts a stream")
                return
            self._expect_open = False
            if self.config.websocket_see_other_uri:
                # RFC 7395 section 3.6.1: this listener sends its clients elsewhere.
                self.close(see_other_uri=self.config.websocket_see_other_uri)
                return
            self.stream.stream_opened(element)
        elif element.uri == NS_FRAMING and element.name == "close":
            self.stream.stream_closed()
        elif self._expect_open:
            self.stream.stream_error("policy-violation", "<open/> expected")
        else:
            self.stream.element_received(element)

    def _remote_close(self, event):
        """The client's close frame: answer it (unless it answers ours) and end the connection."""
        if self.connection.state is ConnectionState.REMOTE_CLOSING:
            self._write(self.connection.send(event.response()))
        self.closing = True
        self.output.unregister()
        self.transport.loseConnection()

    # -- the framing interface of ClientStream -------------------------------------

    def open(self, stream_id, host):
        self._send_text(f"<open xmlns='{NS_FRAMING}' from='{domish.escapeToXml(host, True)}' "
                        f"id='{domish.escapeToXml(stream_id, True)}' version='1.0' xml:lang='en'/>")

    def send(self, element):
        if element.uri == NS_STREAMS:
            text = element.toXml(prefixes={NS_STREAMS: "stream"})
        elif element.uri is None:
            text = serialize(_qualified(element))
        else:
            text = serialize(element)
        self._send_text(text)

    def close(self, see_other_uri=None):
        """<close/>, then the WebSocket close handshake (bounded in time)."""
        if self.closing or self.gone:
            return
        if see_other_uri:
            self._send_text(f"<close xmlns='{NS_FRAMING}' see-other-uri='{domish.escapeToXml(see_other_uri, True)}'/>")
        else:
            self._send_text(f"<close xmlns='{NS_FRAMING}'/>")
        self.closing = True
        if self.connection.state is ConnectionState.OPEN:
            self._write(self.connection.send(CloseConnection(code=self._close_code)))
        self._cancel_ping()
        if self.output.over:
            self._abort()
            return
        self._close_timer = self.clock.callLater(CLOSE_TIMEOUT_SECONDS, self._abort)

    def reset(self):
        """After SASL success the client sends a new <open/>; the parser stays valid."""
        self._expect_open = True

    def start_tls(self):
        raise NotImplementedError("no STARTTLS over WebSocket")

    def answered(self):
        """Nothing waits: each message is handled as it arrives, and the output bound cuts a client off."""

    def tls_transport(self):
        return self._tls_transport

    # -- output ----------------------------------------------------------------

    def _send_text(self, text):
        if self.gone or self.closing or self.connection.state is not ConnectionState.OPEN:
            return
        self._write(self.connection.send(TextMessage(data=text)))

    def _write(self, data):
        if self.gone or not data:
            return
        self.output.write(data)

    def _overflowed(self, count):
        log.info("cutting off {peer}: {count} bytes it does not read", peer=self.peer, count=count)
        self.stream.stream_error("policy-violation", "the client does not read what it is sent")
        self._abort()

    def _abort(self):
        """Drop the connection without waiting for the client to read what is buffered."""
        self._close_timer = None
        if not (self.gone or self._aborted):
            self._aborted = True
            self.output.unregister()
            self.transport.abortConnection()

    # -- keepalive ---------------------------------------------------------------

    def _schedule_ping(self):
        interval = self.config.websocket_ping_interval_seconds
        if interval:
            self._ping_timer = self.clock.callLater(interval, self._ping)

    def _ping(self):
        self._ping_timer = None
        if self.gone or self.closing:
            return
        if self._awaiting_pong:
            self.stream.stream_error("connection-timeout", "no answer to the WebSocket ping")
            return
        self._awaiting_pong = True
        self._write(self.connection.send(Ping(payload=b"bridge")))
        self._schedule_ping()

    def _cancel_ping(self):
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        self._ping_timer = None

    # -- end -----------------------------------------------------------------------

    def connection_lost(self):
        if self.gone:
            return
        self.gone = True
        self._cancel_ping()
        self.rate.cancel()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        if self.stream is not None:
            self.stream.connection_lost()
