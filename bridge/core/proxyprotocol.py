"""The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): the client's address from a trusted proxy.

A TCP proxy in front of the server (HAProxy with ``send-proxy``, nginx's
``proxy_protocol on``) makes every connection come from its own address,
so every client would share one address's limits and the logs would name
only the proxy.  A listener given ``proxy_protocol_trusted_proxies``
(``[c2s]``, ``[s2s]``, ``[http]``) reads, from a connection whose peer is
in that list, the header the proxy sends before anything else, and the
connection then counts and logs as coming from the address the header
gives.  A trusted peer must send the header: without one (or with a
malformed one, a longer one than the protocol allows, or none within
HEADER_TIMEOUT_SECONDS) the connection is closed.  A peer not in the list
that starts with a PROXY header is closed too (it claims to speak for
someone else); any other peer is served as before, its own address counted.

``parse_header`` is the protocol, with no I/O; ``ProxyHeaderFactory`` wraps
a listener's factory (outside TLS: the header comes before the handshake).
"""

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

from bridge.gateways.http import TrustedProxies

log = Logger()

V1_PREFIX = b"PROXY "
# Version 1 is one line of at most 107 bytes, CRLF included.
V1_MAX_BYTES = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16
# Version 2 addresses and TLVs (which are skipped) past the fixed part; a longer header is refused.
V2_MAX_PAYLOAD_BYTES = 520
MAX_HEADER_BYTES = V2_FIXED_BYTES + V2_MAX_PAYLOAD_BYTES
# How long a trusted proxy has to send its header after connecting (it sends it at once).
HEADER_TIMEOUT_SECONDS = 10
_V2_ADDRESS_BYTES = {0x11: 4, 0x21: 16}  # TCP over IPv4, over IPv6
# The kind of the lines (and of the refusals metric) of the connections closed here.
REFUSALS = "PROXY refusals"


class ProxyHeaderError(ValueError):
    """A header that does not follow the protocol."""


def may_be_header(data):
    """Whether ``data``, the first bytes of a connection, begins (or may still begin) a PROXY header."""
    return any(data[:len(prefix)] == prefix[:len(data)] for prefix in (V1_PREFIX, V2_SIGNATURE))


def parse_header(data):
    """(client address or None, length of the header) of the header at the start of ``data``; None when
    more bytes are needed.  The address is an ``IPv4Address`` or ``IPv6Address`` (TCP); None when the
    header says the connection is the proxy's own (v2 LOCAL, a health check) or of a family other than
    TCP over IP (v1 UNKNOWN), which then counts as the proxy's.  ProxyHeaderError when malformed."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _parse_v2(data)
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("the connection does not start with a PROXY header")


def _parse_v1(data):
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"a version 1 header is at most {V1_MAX_BYTES} bytes")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return None, end + 2
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"not a version 1 header: {data[:end]!r}")
    family, source, _, source_port, destination_port = fields[1:]
    try:
        address = ipaddress.ip_address(source.decode("ascii"))
        ports = [_port(source_port), _port(destination_port)]
    except (ValueError, UnicodeError):
        raise ProxyHeaderError(f"bad address or port in {data[:end]!r}")
    if address.version != (4 if family == b"TCP4" else 6):
        raise ProxyHeaderError(f"{family.decode()} with the address {address}")
    return _client(address, ports[0]), end + 2


def _client(address, port):
    """The Twisted address of the client ``address`` (an ``ipaddress`` one), an IPv4 address mapped into IPv6
    given as IPv4, as the listeners' own peers are counted (``bridge.gateways.http.parse_address``)."""
    address = getattr(address, "ipv4_mapped", None) or address
    kind = IPv4Address if address.version == 4 else IPv6Address
    return kind("TCP", str(address), port)


def _port(text):
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise ValueError(text)
    return int(text)


def _parse_v2(data):
    if len(data) < V2_FIXED_BYTES:
        return None
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyHeaderError(f"version 2 header with version/command byte {version_command:#04x}")
    if length > V2_MAX_PAYLOAD_BYTES:
        raise ProxyHeaderError(f"version 2 header of {length} bytes past its fixed part, more than "
                               f"{V2_MAX_PAYLOAD_BYTES}")
    if len(data) < V2_FIXED_BYTES + length:
        return None
    total = V2_FIXED_BYTES + length
    if version_command & 0x0F == 0 or family not in _V2_ADDRESS_BYTES:
        return None, total  # LOCAL, or a family this server does not listen on
    size = _V2_ADDRESS_BYTES[family]
    if length < 2 * size + 4:
        raise ProxyHeaderError(f"version 2 header too short for its addresses ({length} bytes)")
    payload = data[V2_FIXED_BYTES:total]
    (port,) = struct.unpack("!H", payload[2 * size:2 * size + 2])
    return _client(ipaddress.ip_address(payload[:size]), port), total


class ProxyHeaderReader(ProtocolWrapper):
    """Reads the PROXY header of a trusted peer, then builds the listener's own protocol for the address
    it gave; for any other peer, builds it at once (counted and timed as ever) and refuses a PROXY header
    among its first bytes."""

    def __init__(self, factory, peer):
        super().__init__(factory, None)
        self.peer = peer
        self.client = peer
        self._buffer = b""
        self._timer = None
        self._watching = False
        self._refused = False  # closed here: what still arrives is dropped

    def logPrefix(self):
        return self.__class__.__name__ if self.wrappedProtocol is None else super().logPrefix()

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        self.factory.registerProtocol(self)
        if self.factory.proxies.trusts(getattr(self.peer, "host", None)):
            self._timer = self.factory.clock.callLater(HEADER_TIMEOUT_SECONDS, self._refuse, "no PROXY header in time")
        else:
            self._watching = True
            self._start()

    def getPeer(self):
        return self.client

    def dataReceived(self, data):
        if self._refused:
            return
        if self._watching:
            self._watch(data)
        elif self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
        else:
            self._read_header(data)

    def _read_header(self, data):
        self._buffer += data
        try:
            parsed = parse_header(self._buffer[:MAX_HEADER_BYTES])
        except ProxyHeaderError as error:
            self._refuse(str(error))
            return
        if parsed is None:
            if len(self._buffer) >= MAX_HEADER_BYTES:
                self._refuse(f"no complete PROXY header in {MAX_HEADER_BYTES} bytes")
            return
        client, length = parsed
        self._timer.cancel()
        self._timer = None
        if client is not None:
            self.client = client
        rest, self._buffer = self._buffer[length:], b""
        self._start()
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _watch(self, data):
        """The first bytes of an untrusted peer: a PROXY header is refused, anything else is handed on."""
        self._buffer += data
        if self._buffer.startswith(V1_PREFIX) or self._buffer.startswith(V2_SIGNATURE):
            self._refuse("a PROXY header from an address not in proxy_protocol_trusted_proxies")
        elif not may_be_header(self._buffer):
            head, self._buffer, self._watching = self._buffer, b"", False
            self.wrappedProtocol.dataReceived(head)

    def _start(self):
        self.wrappedProtocol = self.factory.wrappedFactory.buildProtocol(self.client)
        if self.wrappedProtocol is None:
            self._refused = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol.makeConnection(self)

    def _refuse(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.factory.log_budget.allows(REFUSALS):
            log.info("closing the connection from {peer}: {reason}", peer=_describe(self.peer), reason=reason)
        self._refused = True
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None


def _describe(address):
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"


class ProxyHeaderFactory(WrappingFactory):
    """Wraps a listener's factory: connections from ``trusted`` networks (a list of addresses and
    networks, as ``[http] trusted_proxies``) begin with a PROXY header; ``clock`` times it; the server's
    ``log_budget`` bounds the lines of the connections closed (kind ``REFUSALS``)."""

    protocol = ProxyHeaderReader
    noisy = False

    def __init__(self, wrapped_factory, trusted, clock, log_budget):
        super().__init__(wrapped_factory)
        self.proxies = TrustedProxies(trusted)
        self.clock = clock
        self.log_budget = log_budget

    def buildProtocol(self, address):
        return self.protocol(self, address)
