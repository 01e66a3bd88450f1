"""The PROXY protocol (versions 1 and 2): honoured from trusted proxies only, bounded, timed, refused when
malformed or when an untrusted peer sends it."""

import socket
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import proxyprotocol
from bridge.core.logbudget import LogBudget
from bridge.core.proxyprotocol import ProxyHeaderError, ProxyHeaderFactory, parse_header


def v2(command=0x21, family=0x11, source="192.0.2.9", destination="127.0.0.1", ports=(40000, 5222), extra=b""):
    """A version 2 header: PROXY (0x21) or LOCAL (0x20), TCP over IPv4 (0x11) or IPv6 (0x21)."""
    kind = socket.AF_INET if family == 0x11 else socket.AF_INET6
    payload = socket.inet_pton(kind, source) + socket.inet_pton(kind, destination) + struct.pack("!HH", *ports)
    payload += extra
    return proxyprotocol.V2_SIGNATURE + struct.pack("!BBH", command, family, len(payload)) + payload


class ParserTests(SynchronousTestCase):
    def test_v1_tcp4_and_tcp6(self):
        """A version 1 line gives the source address and port, and its own length (CRLF included)."""
        line = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 5222\r\n"
        self.assertEqual(parse_header(line + b"<stream"), (IPv4Address("TCP", "192.0.2.9", 40000), len(line)))
        line = b"PROXY TCP6 2001:db8::9 ::1 40000 5222\r\n"
        self.assertEqual(parse_header(line), (IPv6Address("TCP", "2001:db8::9", 40000), len(line)))

    def test_mapped_ipv4_is_ipv4(self):
        """An IPv4 address mapped into IPv6 is given as IPv4, in either version, as the listeners count peers."""
        self.assertEqual(parse_header(b"PROXY TCP6 ::ffff:192.0.2.9 ::1 40000 5222\r\n")[0],
                         IPv4Address("TCP", "192.0.2.9", 40000))
        self.assertEqual(parse_header(v2(family=0x21, source="::ffff:192.0.2.9", destination="::1"))[0],
                         IPv4Address("TCP", "192.0.2.9", 40000))

    def test_v1_unknown_keeps_the_peer(self):
        """PROXY UNKNOWN gives no address: the connection counts as the proxy's."""
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\nrest"), (None, 15))
        self.assertEqual(parse_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), (None, 35))

    def test_v2_ipv4_ipv6_local_and_tlvs(self):
        """Version 2 gives the source address of TCP over IPv4 or IPv6, skips TLVs, and LOCAL keeps the peer."""
        header = v2()
        self.assertEqual(parse_header(header + b"<x"), (IPv4Address("TCP", "192.0.2.9", 40000), len(header)))
        header = v2(family=0x21, source="2001:db8::9", destination="::1", extra=b"\x04\x00\x01x")
        self.assertEqual(parse_header(header), (IPv6Address("TCP", "2001:db8::9", 40000), len(header)))
        header = v2(command=0x20)
        self.assertEqual(parse_header(header), (None, len(header)))

    def test_byte_at_a_time(self):
        """Fed one byte more at a time, the parser asks for more until the header is whole."""
        for header in (b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 5222\r\n", v2()):
            for end in range(1, len(header)):
                self.assertIsNone(parse_header(header[:end]), (header, end))
            self.assertEqual(parse_header(header)[1], len(header))

    def test_malformed(self):
        """Bad lines, families, addresses, ports, versions and sizes are errors."""
        for data in (b"PROXY TCP4 192.0.2.9 127.0.0.1 40000\r\n",
                     b"PROXY TCP5 192.0.2.9 127.0.0.1 1 2\r\n",
                     b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
                     b"PROXY TCP4 192.0.2.300 127.0.0.1 1 2\r\n",
                     b"PROXY TCP4 192.0.2.9 127.0.0.1 65536 2\r\n",
                     b"PROXY TCP4 192.0.2.9 127.0.0.1 -1 2\r\n",
                     b"PROXY TCP4 " + b"1" * 120,
                     b"GET / HTTP/1.1\r\n",
                     v2(command=0x31),
                     v2(command=0x22),
                     proxyprotocol.V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4) + b"\0" * 4,
                     proxyprotocol.V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000)):
            self.assertRaises(ProxyHeaderError, parse_header, data)


class Recorder(Protocol):
    def __init__(self, address):
        self.address = address
        self.received = b""
        self.made = False
        self.lost = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class RecordingFactory(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, address):
        protocol = Recorder(address)
        self.built.append(protocol)
        return protocol


class ReaderTests(SynchronousTestCase):
    def connect(self, peer="127.0.0.1"):
        self.clock = Clock()
        self.inner = RecordingFactory()
        self.budget = LogBudget(self.clock)
        factory = ProxyHeaderFactory(self.inner, ["127.0.0.0/8"], self.clock, self.budget)
        address = IPv4Address("TCP", peer, 50000)
        self.transport = StringTransport(peerAddress=address)
        protocol = factory.buildProtocol(address)
        protocol.makeConnection(self.transport)
        return protocol

    def test_trusted_v1_gives_the_client_address(self):
        """From a trusted proxy, the listener's protocol is built for the header's address, sees that address
        as its peer, and gets the bytes after the header."""
        protocol = self.connect()
        self.assertEqual(self.inner.built, [])
        protocol.dataReceived(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 5222\r\n<stream")
        [inner] = self.inner.built
        self.assertEqual(inner.address, IPv4Address("TCP", "192.0.2.9", 40000))
        self.assertEqual(inner.transport.getPeer(), IPv4Address("TCP", "192.0.2.9", 40000))
        self.assertTrue(inner.made)
        self.assertEqual(inner.received, b"<stream")
        protocol.dataReceived(b"/>")
        self.assertEqual(inner.received, b"<stream/>")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_trusted_v2_in_pieces(self):
        """A version 2 header split over reads is read whole before anything is passed on."""
        protocol = self.connect()
        header = v2(family=0x21, source="2001:db8::9", destination="::1")
        for byte in header:
            protocol.dataReceived(bytes([byte]))
        [inner] = self.inner.built
        self.assertEqual(inner.transport.getPeer(), IPv6Address("TCP", "2001:db8::9", 40000))
        self.assertEqual(inner.received, b"")

    def test_trusted_local_keeps_the_proxy(self):
        """A LOCAL header (a health check) leaves the proxy's own address."""
        protocol = self.connect()
        protocol.dataReceived(v2(command=0x20))
        self.assertEqual(self.inner.built[0].address, IPv4Address("TCP", "127.0.0.1", 50000))

    def test_trusted_without_header_is_closed(self):
        """A trusted peer that sends something else than a PROXY header is cut off; nothing is built."""
        protocol = self.connect()
        protocol.dataReceived(b"<stream:stream>")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.inner.built, [])
        protocol.dataReceived(b"more")
        self.assertEqual(self.inner.built, [])

    def test_header_size_is_bounded(self):
        """A version 1 line past 107 bytes without its end is refused without waiting for more."""
        protocol = self.connect()
        protocol.dataReceived(b"PROXY TCP4 " + b"9" * 200)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.inner.built, [])

    def test_header_timeout(self):
        """A trusted peer that sends no header within HEADER_TIMEOUT_SECONDS is closed."""
        protocol = self.connect()
        protocol.dataReceived(b"PROXY TCP4 192.0.2.9")
        self.clock.advance(proxyprotocol.HEADER_TIMEOUT_SECONDS - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.inner.built, [])

    def test_connection_lost_while_reading_cancels_the_timer(self):
        """A connection lost before its header leaves no timer behind."""
        protocol = self.connect()
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_untrusted_header_is_closed(self):
        """A PROXY header (v1 or v2) from a peer not in the list closes the connection; none is believed."""
        for header in (b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 5222\r\n", v2()):
            protocol = self.connect(peer="198.51.100.7")
            [inner] = self.inner.built
            self.assertEqual(inner.address, IPv4Address("TCP", "198.51.100.7", 50000))
            for byte in header[:12]:
                protocol.dataReceived(bytes([byte]))
            self.assertTrue(self.transport.disconnecting)
            self.assertEqual(inner.received, b"")
            self.assertEqual(self.budget.totals, {proxyprotocol.REFUSALS: 1})

    def test_untrusted_plain_traffic_passes(self):
        """Any other first bytes from an untrusted peer reach the protocol, built at once for the peer's own
        address, including a first byte that could begin a version 2 signature."""
        protocol = self.connect(peer="198.51.100.7")
        [inner] = self.inner.built
        self.assertTrue(inner.made)
        protocol.dataReceived(b"<?xml version='1.0'?>")
        self.assertEqual(inner.received, b"<?xml version='1.0'?>")
        protocol = self.connect(peer="198.51.100.7")
        protocol.dataReceived(b"\r")
        self.assertEqual(self.inner.built[0].received, b"")
        protocol.dataReceived(b"\nGET")
        self.assertEqual(self.inner.built[0].received, b"\r\nGET")
        self.assertFalse(self.transport.disconnecting)


class ConfigTests(SynchronousTestCase):
    def test_trusted_proxies_are_networks(self):
        """proxy_protocol_trusted_proxies must list IP addresses or networks, in each section that has it."""
        with self.assertRaises(configuration.ConfigError) as raised:
            configuration.parse({"c2s": {"proxy_protocol_trusted_proxies": ["10.0.0.0/8", "proxy.example"]},
                                 "http": {"proxy_protocol_trusted_proxies": ["nope"]}}, "b.toml")
        self.assertEqual(raised.exception.problems,
                         ["b.toml: c2s.proxy_protocol_trusted_proxies: 'proxy.example' is not an IP address or network",
                          "b.toml: http.proxy_protocol_trusted_proxies: 'nope' is not an IP address or network"])
