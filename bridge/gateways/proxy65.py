"""SOCKS5 Bytestreams proxy (XEP-0065) on ``proxy.<host>``: file transfer between clients behind NAT.

A local user asks ``proxy.<host>`` for its address (the streamhost query)
and hands it to the other party.  Both parties then open a SOCKS5
connection to the proxy's TCP listener, each naming the same DST.ADDR:
hex SHA1(SID + initiator JID + target JID).  The two connections with one
address are a pair; the initiator activates it with an IQ naming the
target, and from then on the proxy relays bytes both ways.

Only the initiator can activate: the proxy computes the address from the
IQ's authenticated sender, so nobody else's IQ names the pair.  A pair
is activated only when both of its connections have finished their SOCKS5
greeting.  The relay keeps no buffer of its own: each side's transport is
the producer of the other side's, so a reader is paused while its writer's
buffer is full (and while it is over ``max_bytes_per_second_per_stream``).

Bounds (``[proxy65]``): connections not yet relaying, per address and in
all; a deadline for them; relaying streams in all.  ``Socks5Greeting`` is
the protocol (bytes in, replies out, no I/O).
"""

import hashlib
import re

from twisted.internet import protocol
from twisted.logger import Logger

from bridge.core.listening import listening_endpoint
from bridge.core.stanza import error_reply, parse_jid, result_reply
from bridge.core.streams.base import ConnectionsPerAddress

log = Logger()

NS_BYTESTREAMS = "http://jabber.org/protocol/bytestreams"
SOCKS_VERSION = 5
NO_AUTHENTICATION = 0
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 1
DOMAIN_NAME = 3
# Reply codes (RFC 1928 section 6).
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, COMMAND_NOT_SUPPORTED, ADDRESS_TYPE_NOT_SUPPORTED = 0, 1, 2, 7, 8
DESTINATION = re.compile(rb"^[0-9a-fA-F]{40}$")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def attach(ctx, reactor, tls_context):
    """The service of ``ctx.config`` (the [proxy65] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return Proxy65Service(ctx, reactor)


def destination(sid, initiator, target):
    """The DST.ADDR both parties name (XEP-0065 section 5.3.2): hex SHA1 of SID + initiator + target."""
    return hashlib.sha1(f"{sid}{initiator}{target}".encode("utf-8")).hexdigest()


def reply(code, address=b""):
    """A SOCKS5 reply carrying ``address`` as a domain name, port 0."""
    return bytes((SOCKS_VERSION, code, 0, DOMAIN_NAME, len(address))) + address + b"\x00\x00"


class Socks5Greeting:
    """The server side of a SOCKS5 greeting and CONNECT request, as XEP-0065 uses them.

    What it waits for is bounded by the protocol (2 + 255 bytes, then
    7 + 255), so it keeps no more than that plus one read.
    ``receive(data)`` answers (bytes to send, outcome): the outcome is None
    while more is needed, ("connect", lowercase hex address, bytes that came
    after the request) once a request has been read, or ("refused", None,
    b"") when the peer is answered with a failure and must be dropped.
    """

    def __init__(self):
        self.buffer = b""
        self.methods_read = False

    def receive(self, data):
        self.buffer += data
        out = b""
        if not self.methods_read:
            if len(self.buffer) < 2:
                return out, None
            if self.buffer[0] != SOCKS_VERSION:
                return b"", ("refused", None, b"")
            count = self.buffer[1]
            if len(self.buffer) < 2 + count:
                return out, None
            methods, self.buffer = self.buffer[2:2 + count], self.buffer[2 + count:]
            if NO_AUTHENTICATION not in methods:
                return bytes((SOCKS_VERSION, NO_ACCEPTABLE_METHOD)), ("refused", None, b"")
            self.methods_read = True
            out = bytes((SOCKS_VERSION, NO_AUTHENTICATION))
        if len(self.buffer) < 5:
            return out, None
        version, command, _, address_type, length = self.buffer[:5]
        if version != SOCKS_VERSION:
            return out, ("refused", None, b"")
        if command != CONNECT:
            return out + reply(COMMAND_NOT_SUPPORTED), ("refused", None, b"")
        if address_type != DOMAIN_NAME:
            return out + reply(ADDRESS_TYPE_NOT_SUPPORTED), ("refused", None, b"")
        if len(self.buffer) < 5 + length + 2:
            return out, None
        address, rest = self.buffer[5:5 + length], self.buffer[5 + length + 2:]
        self.buffer = b""
        if not DESTINATION.match(address):
            return out + reply(NOT_ALLOWED), ("refused", None, b"")
        return out, ("connect", address.decode("ascii").lower(), rest)


class Direction:
    """One direction of a relay: the producer registered on the writing transport, pacing the reading one.

    The reading transport is paused for either of two reasons, the writer's
    full buffer or the rate limit, and resumed only when neither holds.
    """

    def __init__(self, reader, clock, bytes_per_second):
        self.reader = reader
        self.clock = clock
        self.bytes_per_second = bytes_per_second
        self.reasons = set()
        self.allowed_at = 0.0  # when the bytes relayed so far have been paid for, at the rate
        self.wake = None

    def counted(self, size):
        """``size`` bytes went through: pause the reader until the rate has paid for them."""
        if not self.bytes_per_second:
            return
        now = self.clock.seconds()
        self.allowed_at = max(self.allowed_at, now) + size / self.bytes_per_second
        if self.allowed_at > now and self.wake is None:
            self._pause("rate")
            self.wake = self.clock.callLater(self.allowed_at - now, self._rate_paid)

    def _rate_paid(self):
        self.wake = None
        self._resume("rate")

    def _pause(self, reason):
        if not self.reasons:
            self.reader.pauseProducing()
        self.reasons.add(reason)

    def _resume(self, reason):
        self.reasons.discard(reason)
        if not self.reasons:
            self.reader.resumeProducing()

    # IPushProducer, as the writing transport calls it
    def pauseProducing(self):
        self._pause("full")

    def resumeProducing(self):
        self._resume("full")

    def stopProducing(self):
        self.cancel()
        self.reader.loseConnection()

    def cancel(self):
        if self.wake is not None and self.wake.active():
            self.wake.cancel()
        self.wake = None


class Socks5Connection(protocol.Protocol):
    """One party's connection: the greeting, then waiting for its pair and the activation, then relaying."""

    def __init__(self, service):
        self.service = service
        self.greeting = Socks5Greeting()
        self.address = None  # the DST.ADDR, once read
        self.peer = None  # the other connection, once relaying
        self.direction = None  # the Direction that paces this connection's reading
        self.early = b""  # bytes that came before the relay started (at most one read)
        self.timeout = None

    def connectionMade(self):
        if not self.service.admit(self):
            self.transport.abortConnection()

    def dataReceived(self, data):
        if self.peer is not None:
            self.peer.transport.write(data)
            self.direction.counted(len(data))
            return
        if self.address is not None:  # before activation: keep it, read no more
            self.early += data
            self.transport.pauseProducing()
            return
        out, outcome = self.greeting.receive(data)
        if out:
            self.transport.write(out)
        if outcome is None:
            return
        kind, address, rest = outcome
        if kind == "refused" or not self.service.pair(self, address):
            if kind != "refused":
                self.transport.write(reply(GENERAL_FAILURE))
            self.transport.loseConnection()
            return
        self.address = address
        self.transport.write(reply(SUCCEEDED, address.encode("ascii")))
        if rest:
            self.early = rest
            self.transport.pauseProducing()

    def start_relay(self, peer, clock, bytes_per_second):
        """Relay to ``peer`` from now on: what came early first."""
        self.peer = peer
        self.direction = Direction(self.transport, clock, bytes_per_second)
        peer.transport.registerProducer(self.direction, True)
        if self.early:
            early, self.early = self.early, b""
            peer.transport.write(early)
            self.direction.counted(len(early))
        if not self.direction.reasons:
            self.transport.resumeProducing()

    def connectionLost(self, reason):
        if self.direction is not None:
            self.direction.cancel()
        self.service.lost(self)
        if self.peer is not None:
            self.peer.transport.unregisterProducer()
            self.peer.transport.loseConnection()


class Socks5Factory(protocol.Factory):
    def __init__(self, service):
        self.service = service

    def buildProtocol(self, address):
        connection = Socks5Connection(self.service)
        connection.factory = self
        return connection


class NotingEndpoint:
    """A listening endpoint that tells the service the port it got (its streamhost address)."""

    def __init__(self, endpoint, noted):
        self.endpoint = endpoint
        self.noted = noted

    def listen(self, factory):
        listening = self.endpoint.listen(factory)
        listening.addCallback(self._note)
        return listening

    def _note(self, port):
        self.noted.append(port)
        return port


class Proxy65Service:
    """The streamhost of every ``proxy.<host>``, its listener, and the pairs it relays."""

    def __init__(self, ctx, reactor):
        self.ctx = ctx
        self.config = ctx.config
        self.clock = ctx.clock
        self.reactor = reactor
        self.ports = []  # the listening ports, as they come up
        self.waiting = {}  # address -> [connections with it, not yet relaying]
        self.pending = set()  # every connection not yet relaying
        self.per_address = ConnectionsPerAddress(self.config.max_pending_connections_per_address)
        self.relaying = 0  # streams (pairs) relaying
        for host in ctx.host_names():
            ctx.serve(f"{self.config.subdomain}.{host}".lower(), ("proxy", "bytestreams", "SOCKS5 Bytestreams"),
                      listed_on=host)
        ctx.add_feature(NS_BYTESTREAMS)
        ctx.hook(f"iq-get/host/{NS_BYTESTREAMS}:query", self.on_streamhost_query)
        ctx.hook(f"iq-set/host/{NS_BYTESTREAMS}:query", self.on_activate)

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        factory = Socks5Factory(self)
        return [("proxy65", description,
                 NotingEndpoint(listening_endpoint(self.reactor, description), self.ports), factory)
                for description in self.config.endpoints]

    def start(self):
        pass

    def stop(self):
        for connection in list(self.pending):
            connection.transport.abortConnection()

    # -- connections ------------------------------------------------------------------

    def _peer_address(self, connection):
        return getattr(connection.transport.getPeer(), "host", None)

    def admit(self, connection):
        """A new connection: within the bounds of pending ones, with its deadline set."""
        within = self.per_address.admit(self._peer_address(connection))
        self.pending.add(connection)
        if not within or len(self.pending) > self.config.max_pending_connections:
            return False
        connection.timeout = self.clock.callLater(self.config.pending_timeout_seconds, self._expired, connection)
        return True

    def _expired(self, connection):
        connection.timeout = None
        connection.transport.abortConnection()

    def pair(self, connection, address):
        """``connection`` names ``address``: the first or the second of a pair; a third is refused."""
        waiting = self.waiting.setdefault(address, [])
        if len(waiting) >= 2:
            return False
        waiting.append(connection)
        return True

    def lost(self, connection):
        if connection in self.pending:
            self.pending.discard(connection)
            self.per_address.release(self._peer_address(connection))
            if connection.timeout is not None and connection.timeout.active():
                connection.timeout.cancel()
            waiting = self.waiting.get(connection.address)
            if waiting is not None and connection in waiting:
                waiting.remove(connection)
                if not waiting:
                    del self.waiting[connection.address]
        elif connection.peer is not None and connection.peer.peer is connection:
            # the first of a relaying pair to go: the stream ends (its peer's loss then finds it undone)
            connection.peer.peer = None
            self.relaying -= 1

    def activate(self, address):
        """Start relaying the pair with ``address``; why not, when it cannot be."""
        waiting = self.waiting.get(address, [])
        if len(waiting) < 2:
            return "item-not-found", "no pair of connections with this stream's address"
        if self.relaying >= self.config.max_active_streams:
            return "resource-constraint", "the proxy relays as many streams as it may"
        target, initiator = waiting
        del self.waiting[address]
        for connection in waiting:
            self.pending.discard(connection)
            self.per_address.release(self._peer_address(connection))
            if connection.timeout is not None and connection.timeout.active():
                connection.timeout.cancel()
            connection.timeout = None
        self.relaying += 1
        rate = self.config.max_bytes_per_second_per_stream
        target.start_relay(initiator, self.clock, rate)
        initiator.start_relay(target, self.clock, rate)
        return None

    # -- XMPP --------------------------------------------------------------------------------

    def _local_sender(self, event):
        sender = event.sender
        if sender is None or sender.user is None or self.ctx.local_host(sender.host) is None:
            event.reply(error_reply(event.stanza, "forbidden", "only local users may use this proxy"))
            return None
        return sender

    def on_streamhost_query(self, event):
        """The streamhost query (XEP-0065 section 6.3.1): the proxy's host and port."""
        if self._local_sender(event) is None:
            return True
        host = self.streamhost_host(event.to.host)
        if host is None:
            event.reply(error_reply(event.stanza, "service-unavailable", "the proxy is not listening"))
            return True
        answer = result_reply(event.stanza)
        query = answer.addElement((NS_BYTESTREAMS, "query"))
        streamhost = query.addElement("streamhost")
        streamhost["jid"] = event.to.host
        streamhost["host"], streamhost["port"] = host
        event.reply(answer)
        return True

    def streamhost_host(self, domain):
        """(host, port) clients connect to: ``public_host``, else the listener's address, else the host's name."""
        if not self.ports:
            return None
        address = self.ports[0].getHost()
        host = self.config.public_host or (
            address.host if address.host not in WILDCARD_ADDRESSES else domain.partition(".")[2])
        return host, str(address.port)

    def on_activate(self, event):
        """Activation (XEP-0065 section 6.3.4): by the initiator, whose JID is part of the address."""
        stanza = event.stanza
        sender = self._local_sender(event)
        if sender is None:
            return True
        query = next(stanza.elements(NS_BYTESTREAMS, "query"))
        activate = next(query.elements(NS_BYTESTREAMS, "activate"), None)
        target = parse_jid(str(activate).strip()) if activate is not None else None
        sid = query.getAttribute("sid", "")
        if target is None or not sid:
            event.reply(error_reply(stanza, "bad-request", "activation needs a sid and the target's JID"))
            return True
        problem = self.activate(destination(sid, sender.full(), target.full()))
        if problem is not None:
            event.reply(error_reply(stanza, *problem))
            return True
        event.reply(result_reply(stanza))
        return True

