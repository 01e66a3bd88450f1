"""SIP transports on Twisted (RFC 3261 section 18, RFC 3581): UDP datagrams, TCP and TLS streams.

Each transport parses what arrives (``parse_datagram`` for UDP, a
``StreamFramer`` per connection for TCP and TLS) and hands every message to
a *sink*, an object with ``message_received(message, transport, address)``
(the gateway, which passes it to the transaction layer).  The transport
itself is what the transaction layer sends through: it has
``send(message, address)``, a ``reliable`` flag and a ``name`` (the Via
transport token).

Malformed input never reaches the sink.  A request that can be answered gets
the status the parser chose (400, 413, 505), sent where a response to it
would go (the source address when the Via asks for rport), over UDP held
to the datagram's size as every answer to an unverified source
(``transaction.answer_bytes``); anything else is dropped and logged.  One bad datagram disturbs nothing else; on a stream a
message whose framing is intact is answered and the connection goes on,
while an error that loses the framing (no or bad Content-Length, a header
section over the limit) closes that connection after the answer.

Keep-alives: on UDP a datagram of only CRLFs is ignored; on a stream a
CRLFCRLF ping is answered with CRLF (RFC 5626 section 3.5.1).
"""

import re

from twisted.internet import defer, protocol
from twisted.logger import Logger

from bridge.core.streams.base import ConnectionsPerAddress, InputRateLimit
from bridge.gateways.sip.message import (
    DEFAULT_LIMITS, KEEPALIVE, GrammarError, SIPParseError, StreamFramer, error_response, parse_datagram,
)
from bridge.gateways.sip.transaction import Encoded, ExcessAllowance, answer_bytes, response_address, stamp_via

log = Logger()

# Large enough for any UDP datagram (Twisted's default is 8192 bytes).
MAX_DATAGRAM_BYTES = 65535
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _error_answer(error, transport, source, size=None):
    """(status, response, destination) for a parse error, or None when it must be dropped; the response
    is encoded already when it was held to the datagram's size.

    ``size``: the bytes of the datagram (UDP), which the answer is held to
    as any answer to an unverified source (``answer_bytes``).
    """
    if error_response(error) is None:
        return None
    request = error.message
    try:
        stamp_via(request, source)
        destination = response_address(request, transport, source)
    except (GrammarError, ValueError, AttributeError):
        return None
    response = error_response(error)
    # The reason phrase says what was wrong, in printable ASCII only.
    detail = _UNPRINTABLE.sub("?", str(error.reason))[:80]
    response.reason = f"{response.reason} ({detail})"
    if size is None:
        return response.status, response, destination
    allowance = transport.policy.allowance if transport.policy is not None else None
    data = answer_bytes(response, size, destination, allowance)
    return None if data is None else (response.status, Encoded(data), destination)


class SourcePolicy:
    """The limits every SIP listener applies per peer address.

    Bytes per second (a token bucket per source: excess UDP datagrams are
    dropped, a stream stops being read), connections per address, and an
    idle timeout for streams.  ``config`` is the ``[sip]`` section.
    """

    MAX_TRACKED_SOURCES = 10000
    VOUCHED_SECONDS = 3600.0

    def __init__(self, clock, config, triage=None):
        self.clock = clock
        self.config = config
        self.triage = triage  # rations the datagrams of sources not vouched for (core/triage.py)
        self.connections = ConnectionsPerAddress(config.max_connections_per_address)
        self.allowance = ExcessAllowance(clock)  # answers longer than the requests of unverified sources
        self._buckets = {}  # source host -> (tokens, time of the last refill)
        self._vouched = {}  # source host -> until when: it answered a digest challenge right

    def vouch(self, host):
        """``host`` proved an account's secret: its datagrams are not rationed by triage for a while."""
        now = self.clock.seconds()
        if len(self._vouched) >= self.MAX_TRACKED_SOURCES and host not in self._vouched:
            self._vouched = {h: until for h, until in self._vouched.items() if until > now}
            if len(self._vouched) >= self.MAX_TRACKED_SOURCES:
                del self._vouched[next(iter(self._vouched))]
        self._vouched.pop(host, None)
        self._vouched[host] = now + self.VOUCHED_SECONDS

    def vouched(self, host):
        return self._vouched.get(host, 0) > self.clock.seconds()

    def allow_datagram(self, host, size):
        """True when ``host`` may send ``size`` more bytes now."""
        now = self.clock.seconds()
        rate, burst = self.config.rate_limit_bytes_per_second, self.config.rate_limit_burst_bytes
        tokens, refilled = self._buckets.get(host, (burst, now))
        tokens = min(burst, tokens + (now - refilled) * rate) - size
        if len(self._buckets) >= self.MAX_TRACKED_SOURCES and host not in self._buckets:
            # Forget the sources whose buckets are full again: they owe nothing.
            self._buckets = {h: (t, r) for h, (t, r) in self._buckets.items()
                             if min(burst, t + (now - r) * rate) < burst}
        self._buckets[host] = (max(tokens, -burst), now)
        return tokens >= 0


class _Transport:
    """What the UDP and stream transports share: the sink, the limits, error answers."""

    name = "?"
    reliable = False

    def __init__(self, sink, limits=DEFAULT_LIMITS, policy=None):
        self.sink = sink
        self.limits = limits
        self.policy = policy

    def _deliver(self, message, source):
        try:
            self.sink.message_received(message, self, source)
        except Exception:
            log.failure("SIP message from {source} could not be handled", source=source)

    def _answer_error(self, error, source, size=None):
        answer = _error_answer(error, self, source, size)
        if answer is None:
            log.info("SIP {transport} input from {source} dropped: {reason}", transport=self.name,
                     source=source, reason=error.reason)
            return
        status, response, destination = answer
        log.info("SIP {transport} request from {source} answered {status}: {reason}", transport=self.name,
                 source=source, status=status, reason=error.reason)
        try:
            self.send(response, destination)
        except Exception:
            log.failure("SIP error answer to {source} not sent", source=source)


class UDPTransport(_Transport, protocol.DatagramProtocol):
    """One UDP socket: every datagram is one message (RFC 3261 18.3)."""

    name = "UDP"
    reliable = False
    noisy = False

    def datagramReceived(self, data, address):
        source = (address[0], address[1])
        policy = self.policy
        if policy is None:
            self._receive(data, source)
            return
        if not policy.allow_datagram(address[0], len(data)):
            return  # over the per-source rate: dropped, as a congested network would
        triage = policy.triage
        if triage is None or policy.vouched(address[0]):
            self._receive(data, source)
        elif triage.allows():
            triage.measure(self._receive, data, source)
        # else: a saturated server drops what sources that proved nothing send; phones retransmit.

    def _receive(self, data, source):
        try:
            message = parse_datagram(data, self.limits)
        except SIPParseError as error:
            self._answer_error(error, source, len(data))
            return
        if message is None:
            return  # a CRLF keep-alive
        self._deliver(message, source)

    def send(self, message, address):
        self.transport.write(message.to_bytes(), address)

    def local_address(self):
        host = self.transport.getHost()
        return host.host, host.port


class StreamTransport(_Transport, protocol.Protocol):
    """One TCP or TLS connection, cut into messages by Content-Length (RFC 3261 18.3).

    Responses always go back on this connection; ``send`` raises
    ``ConnectionError`` once it is gone, which the transaction layer reports
    as a transport error.
    """

    reliable = True

    def __init__(self, sink, limits=DEFAULT_LIMITS, name="TCP", policy=None):
        super().__init__(sink, limits, policy)
        self.name = name
        self.framer = StreamFramer(limits)
        self.address = None
        self.connected = False
        self.counted = False  # counted in the policy's connections per address
        self._rate = None
        self._idle = None
        self._last_activity = None

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.address = (peer.host, peer.port)
        if self.policy is not None:
            self.counted = True
            if not self.policy.connections.admit(peer.host):
                log.info("SIP {transport} connection from {source} refused: too many from that address",
                         transport=self.name, source=self.address)
                self.transport.loseConnection()
                return
            self._rate = InputRateLimit(self.policy.clock, self.policy.config, self.transport)
            self._last_activity = self.policy.clock.seconds()
            self._idle = self.policy.clock.callLater(self.policy.config.idle_timeout_seconds, self._check_idle)
        self.connected = True

    def _check_idle(self):
        """Close a connection silent for idle_timeout_seconds (keep-alive CRLFs count)."""
        clock, timeout = self.policy.clock, self.policy.config.idle_timeout_seconds
        idle = clock.seconds() - self._last_activity
        if idle >= timeout:
            self._idle = None
            log.info("SIP {transport} connection from {source} closed: idle", transport=self.name, source=self.address)
            self.connected = False
            self.transport.loseConnection()
        else:
            self._idle = clock.callLater(timeout - idle, self._check_idle)

    def dataReceived(self, data):
        if not self.connected:
            return
        if self._rate is not None:
            self._last_activity = self.policy.clock.seconds()
            self._rate.consumed(len(data))
        self.framer.receive_data(data)
        while self.connected:
            try:
                item = self.framer.next_message()
            except SIPParseError as error:
                self._answer_error(error, self.address)
                if error.fatal:
                    self.connected = False
                    self.transport.loseConnection()
                    return
                continue
            if item is None:
                return
            if item == KEEPALIVE:
                self.transport.write(b"\r\n")
                continue
            self._deliver(item, self.address)

    def send(self, message, address):
        if not self.connected:
            raise ConnectionError(f"SIP {self.name} connection to {self.address} is closed")
        self.transport.write(message.to_bytes())

    def local_address(self):
        host = self.transport.getHost()
        return host.host, host.port

    def connectionLost(self, reason=None):
        self.connected = False
        if self.counted:
            self.policy.connections.release(self.address[0])
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self._rate is not None:
            self._rate.cancel()
        lost = getattr(self.sink, "connection_lost", None)
        if lost is not None:
            lost(self)


class StreamFactory(protocol.Factory):
    """Builds a ``StreamTransport`` per accepted connection (``name``: "TCP" or "TLS")."""

    noisy = False

    def __init__(self, sink, limits=DEFAULT_LIMITS, name="TCP", policy=None):
        self.sink = sink
        self.limits = limits
        self.name = name
        self.policy = policy

    def buildProtocol(self, addr):
        transport = StreamTransport(self.sink, self.limits, self.name, self.policy)
        transport.factory = self
        return transport


class UDPServerEndpoint:
    """A server "endpoint" for UDP, which Twisted's endpoint strings lack.

    ``listen(factory)`` takes a callable that builds a fresh ``UDPTransport``
    (one per socket) and returns a Deferred of the listening port, like a
    stream endpoint does, so one listener service serves both kinds.
    """

    def __init__(self, reactor, port, interface=""):
        self.reactor = reactor
        self.port = port
        self.interface = interface

    def listen(self, factory):
        return defer.execute(self.reactor.listenUDP, self.port, factory(), interface=self.interface,
                             maxPacketSize=MAX_DATAGRAM_BYTES)


__all__ = ["UDPTransport", "StreamTransport", "StreamFactory", "UDPServerEndpoint", "MAX_DATAGRAM_BYTES"]
