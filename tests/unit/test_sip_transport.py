"""SIP transports (UDP, TCP/TLS streams) in front of the gateway's transaction user, on fake sockets."""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import parse_datagram
from bridge.gateways.sip.transaction import ExcessAllowance
from bridge.gateways.sip.transport import (
    MAX_DATAGRAM_BYTES, SourcePolicy, StreamFactory, UDPServerEndpoint, UDPTransport,
)

from .helpers import Harness, gateway_context
from .test_sip_registrar import PHONE_HEADERS, make_config

PEER = ("192.0.2.7", 40123)


def request_text(method="OPTIONS", branch="z9hG4bK-1", via_port=5062, rport=True, extra="", body="",
                 cseq=None, uri="sip:localhost", phone=True):
    """A request as a phone sends it (``phone``: with the headers of PHONE_HEADERS), as bytes."""
    via = f"SIP/2.0/UDP 192.0.2.99:{via_port};branch={branch}" + (";rport" if rport else "")
    if phone:
        extra += "".join(f"{name}: {value}\r\n" for name, value in PHONE_HEADERS)
    return (f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\nCall-ID: call-{branch}\r\n"
            f"CSeq: {cseq or '1 ' + method}\r\n{extra}Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


class FakeDatagramTransport:
    """What listenUDP gives a DatagramProtocol: write(data, address) recorded."""

    def __init__(self):
        self.written = []

    def write(self, data, address):
        self.written.append((data, address))

    def getHost(self):
        return IPv4Address("UDP", "0.0.0.0", 5060)


class Recorder:
    """A sink that records what a transport hands on."""

    def __init__(self):
        self.messages = []

    def message_received(self, message, transport, address):
        self.messages.append((message, address))


class UDPTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config())
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", self.harness.config.sip))
        self.protocol = UDPTransport(self.gateway, self.gateway.limits)
        self.socket = FakeDatagramTransport()
        self.protocol.makeConnection(self.socket)

    def send(self, data, source=PEER):
        before = len(self.socket.written)
        self.protocol.datagramReceived(data, source)
        return [(parse_datagram(data), address) for data, address in self.socket.written[before:]]

    def test_options_answered_with_allow_and_accept(self):
        """OPTIONS gets 200 with Allow, Accept and a To tag, sent to the source port (rport), with
        received and rport stamped into the Via (RFC 3581)."""
        [(response, address)] = self.send(request_text())
        self.assertEqual(response.status, 200)
        self.assertEqual(address, PEER)
        self.assertIn("REGISTER", response.headers.get_all("Allow"))
        self.assertIn("OPTIONS", response.headers.get_all("Allow"))
        self.assertEqual(response.headers.get_all("Accept"), ["application/sdp"])
        self.assertIsNotNone(response.to_address.tag)
        via = response.top_via
        self.assertEqual((via.received, via.rport), ("192.0.2.7", 40123))

    def test_without_rport_answer_goes_to_via_port(self):
        """Without rport the response goes to the source address at the Via's port (RFC 3261 18.2.2)."""
        [(_, address)] = self.send(request_text(rport=False, via_port=5070))
        self.assertEqual(address, ("192.0.2.7", 5070))

    def test_invite_refused_with_488_statelessly(self):
        """INVITE gets 488 with a Warning, once: no transaction is kept, so nothing is retransmitted
        while no ACK comes, and the ACK that comes reaches no one."""
        [(response, _)] = self.send(request_text("INVITE", branch="z9hG4bK-inv"))
        self.assertEqual(response.status, 488)
        self.assertIn("not supported", response.headers.get("Warning"))
        self.assertEqual(self.gateway.transactions.server, {})
        self.harness.clock.advance(60)
        self.assertEqual(len(self.socket.written), 1)
        tag = response.to_address.tag
        ack = request_text("ACK", branch="z9hG4bK-inv", cseq="1 ACK").replace(
            b"To: <sip:bob@localhost>", f"To: <sip:bob@localhost>;tag={tag}".encode())
        self.assertEqual(self.send(ack), [])
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_unknown_methods_get_501(self):
        """A method the gateway does not know gets 501 with Allow, which lists every method it answers."""
        for index, method in enumerate(("FROBNICATE", "REFER")):
            [(response, _)] = self.send(request_text(method, branch=f"z9hG4bK-m{index}", body="hi"))
            self.assertEqual(response.status, 501, method)
            allowed = {name.strip() for value in response.headers.get_all("Allow") for name in value.split(",")}
            self.assertEqual(allowed, {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE",
                                       "SUBSCRIBE", "NOTIFY", "PUBLISH"})

    def test_cancel_bye_scheme_and_require(self):
        """CANCEL without its INVITE: 481; BYE: 481; a tel: Request-URI: 416; Require: 420 + Unsupported."""
        [(cancel, _)] = self.send(request_text("CANCEL", branch="z9hG4bK-c"))
        self.assertEqual(cancel.status, 481)
        [(bye, _)] = self.send(request_text("BYE", branch="z9hG4bK-b"))
        self.assertEqual(bye.status, 481)
        [(tel, _)] = self.send(request_text(branch="z9hG4bK-t", uri="tel:+15551234567"))
        self.assertEqual(tel.status, 416)
        [(required, _)] = self.send(request_text(branch="z9hG4bK-r", extra="Require: 100rel\r\n"))
        self.assertEqual((required.status, required.headers.get("Unsupported")), (420, "100rel"))

    def test_cancel_of_an_answered_invite(self):
        """A CANCEL of an INVITE gets 481: the INVITE was answered at once and left no transaction."""
        self.send(request_text("INVITE", branch="z9hG4bK-inv2"))
        [(response, _)] = self.send(request_text("CANCEL", branch="z9hG4bK-inv2"))
        self.assertEqual(response.status, 481)

    def test_retransmission_absorbed(self):
        """The same OPTIONS twice: the same response twice (same To tag), one transaction."""
        [(first, _)] = self.send(request_text(branch="z9hG4bK-again"))
        [(second, _)] = self.send(request_text(branch="z9hG4bK-again"))
        self.assertEqual(first.to_bytes(), second.to_bytes())

    def test_malformed_answered_400_and_nothing_else_disturbed(self):
        """A request with a bad Expires gets 400 (the reason names the fault); the next one is served."""
        [(response, address)] = self.send(request_text(extra="Expires: soon\r\n"))
        self.assertEqual(response.status, 400)
        self.assertIn("Expires", response.reason)
        self.assertEqual(address, PEER)
        self.assertEqual(self.gateway.transactions.server, {})
        [(ok, _)] = self.send(request_text(branch="z9hG4bK-2"))
        self.assertEqual(ok.status, 200)

    def test_version_and_size(self):
        """SIP/7.0 gets 505; a body over the limit gets 413."""
        [(response, _)] = self.send(request_text().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1))
        self.assertEqual(response.status, 505)
        [(response, _)] = self.send(request_text("MESSAGE", branch="z9hG4bK-big", body="x" * 70000))
        self.assertEqual(response.status, 413)

    def test_unanswerable_dropped(self):
        """No Via, a garbled start line, a stray response, CRLF keep-alives: nothing is sent."""
        no_via = b"OPTIONS sip:localhost SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
        for data in (no_via, b"\x00\x01garbage\r\n\r\n", b"\r\n\r\n", b"\r\n",
                     b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n"
                     b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: y\r\nCSeq: 1 OPTIONS\r\n\r\n"):
            self.assertEqual(self.send(data), [], data)

    def test_sink_failure_contained(self):
        """An exception in the sink is logged; the transport carries on."""
        class Failing:
            def message_received(self, message, transport, address):
                raise RuntimeError("boom")

        self.protocol.sink = Failing()
        self.protocol.datagramReceived(request_text(), PEER)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_endpoint_listens_with_large_datagrams(self):
        """UDPServerEndpoint listens on the port and interface given, for datagrams of any size."""
        calls = []

        class Reactor:
            def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
                calls.append((port, protocol, interface, maxPacketSize))
                return "the port"

        listening = UDPServerEndpoint(Reactor(), 15060, "127.0.0.1").listen(lambda: UDPTransport(self.gateway))
        self.assertEqual(self.successResultOf(listening), "the port")
        [(port, protocol, interface, size)] = calls
        self.assertEqual((port, interface, size), (15060, "127.0.0.1", MAX_DATAGRAM_BYTES))
        self.assertIsInstance(protocol, UDPTransport)

    def test_via_uses_advertised_address(self):
        """Our Via names advertised_address (with the socket's port unless it gives one), else the realm host."""
        self.assertTrue(self.gateway.via_for(self.protocol).startswith("SIP/2.0/UDP localhost:5060;branch=z9hG4bK"))
        for advertised, expected in (("203.0.113.5", "203.0.113.5:5060"), ("sip.example.com:5080",
                                                                            "sip.example.com:5080")):
            gateway = SIPGateway(gateway_context(self.harness.server, "sip", make_config(advertised_address=advertised).sip))
            self.assertIn(f"UDP {expected};", gateway.via_for(self.protocol))


class StreamTests(SynchronousTestCase):
    def setUp(self):
        self.sink = Recorder()
        self.protocol = StreamFactory(self.sink, name="TCP").buildProtocol(None)
        self.socket = StringTransport(peerAddress=IPv4Address("TCP", *PEER))
        self.protocol.makeConnection(self.socket)

    def test_byte_by_byte_and_back_to_back(self):
        """Messages split anywhere and two in one segment are each handed on once, with the peer address."""
        data = request_text(branch="z9hG4bK-a", body="abc") + request_text(branch="z9hG4bK-b")
        for byte in data[:50]:
            self.protocol.dataReceived(bytes([byte]))
        self.protocol.dataReceived(data[50:])
        self.assertEqual([(m.top_via.branch, a) for m, a in self.sink.messages],
                         [("z9hG4bK-a", PEER), ("z9hG4bK-b", PEER)])
        self.assertEqual(self.sink.messages[0][0].body, b"abc")

    def test_keepalive_ping_answered(self):
        """A CRLFCRLF ping gets a CRLF pong (RFC 5626 3.5.1)."""
        self.protocol.dataReceived(b"\r\n\r\n")
        self.assertEqual(self.socket.value(), b"\r\n")
        self.assertEqual(self.sink.messages, [])

    def test_malformed_message_answered_connection_kept(self):
        """A framed but malformed request gets 400 and the connection goes on."""
        self.protocol.dataReceived(request_text(extra="Contact: <bad uri>\r\n") + request_text(branch="z9hG4bK-ok"))
        response = parse_datagram(self.socket.value())
        self.assertEqual(response.status, 400)
        self.assertFalse(self.socket.disconnecting)
        self.assertEqual(len(self.sink.messages), 1)

    def test_lost_framing_closes_after_answer(self):
        """No Content-Length on a stream: 400, then the connection is closed; sending then fails."""
        data = request_text().replace(b"Content-Length: 0\r\n", b"")
        self.protocol.dataReceived(data)
        self.assertEqual(parse_datagram(self.socket.value()).status, 400)
        self.assertTrue(self.socket.disconnecting)
        self.protocol.dataReceived(request_text(branch="z9hG4bK-late"))
        self.assertEqual(self.sink.messages, [])
        self.protocol.connectionLost(None)
        response = parse_datagram(self.socket.value())
        self.assertRaises(ConnectionError, self.protocol.send, response, PEER)

    def test_oversized_header_dropped_and_closed(self):
        """A header section over the limit without an end is dropped and the connection closed."""
        self.protocol.dataReceived(b"OPTIONS sip:x SIP/2.0\r\nSubject: " + b"a" * 20000)
        self.assertEqual(self.socket.value(), b"")
        self.assertTrue(self.socket.disconnecting)

    def test_responses_over_the_connection(self):
        """The gateway answers on the connection the request came by (TCP is reliable)."""
        harness = Harness(make_config())
        gateway = SIPGateway(gateway_context(harness.server, "sip", harness.config.sip))
        protocol = StreamFactory(gateway, gateway.limits, "TCP").buildProtocol(None)
        socket = StringTransport(peerAddress=IPv4Address("TCP", *PEER))
        protocol.makeConnection(socket)
        protocol.dataReceived(request_text(rport=False, via_port=5999))
        self.assertEqual(parse_datagram(socket.value()).status, 200)
        self.assertTrue(protocol.reliable)


class SourcePolicyTests(SynchronousTestCase):
    """The per-peer limits of the SIP listeners: rate, connections, idle streams."""

    def setUp(self):
        self.clock = Clock()
        sip = configuration.parse({"sip": {"rate_limit_bytes_per_second": 1000, "rate_limit_burst_bytes": 2000,
                                           "max_connections_per_address": 2, "idle_timeout_seconds": 30}},
                                  "test.toml").sip
        self.policy = SourcePolicy(self.clock, sip)
        self.sink = Recorder()

    def test_datagrams_over_the_rate_dropped(self):
        """Past its burst a source's datagrams are dropped (and still count against it) until the rate
        refills; other sources are unaffected."""
        protocol = UDPTransport(self.sink, policy=self.policy)
        protocol.makeConnection(FakeDatagramTransport())
        message = request_text(phone=False)
        for n in range(10):
            protocol.datagramReceived(message, PEER)
        allowed = len(self.sink.messages)
        self.assertEqual(allowed, 2000 // len(message))
        protocol.datagramReceived(request_text(branch="z9hG4bK-other", phone=False), ("192.0.2.8", 5060))
        self.assertEqual(len(self.sink.messages), allowed + 1)
        self.clock.advance(0.5)
        protocol.datagramReceived(request_text(branch="z9hG4bK-early", phone=False), PEER)
        self.assertEqual(len(self.sink.messages), allowed + 1)
        self.clock.advance(2)
        protocol.datagramReceived(request_text(branch="z9hG4bK-later", phone=False), PEER)
        self.assertEqual(len(self.sink.messages), allowed + 2)

    def connect(self):
        protocol = StreamFactory(self.sink, name="TCP", policy=self.policy).buildProtocol(None)
        socket = StringTransport(peerAddress=IPv4Address("TCP", *PEER))
        protocol.makeConnection(socket)
        return protocol, socket

    def test_connections_per_address(self):
        """A third connection from one address is closed at once; a freed place is taken again."""
        first, _ = self.connect()
        self.connect()
        third, socket = self.connect()
        self.assertTrue(socket.disconnecting)
        third.connectionLost(None)
        first.connectionLost(None)
        self.assertFalse(self.connect()[1].disconnecting)

    def test_idle_stream_closed(self):
        """A connection that sends nothing, not even CRLF keep-alives, for idle_timeout_seconds is closed."""
        protocol, socket = self.connect()
        self.clock.advance(20)
        protocol.dataReceived(b"\r\n\r\n")
        self.clock.advance(20)
        self.assertFalse(socket.disconnecting)
        self.clock.advance(11)
        self.assertTrue(socket.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def spoofed(method, index):
    """A short request in a victim's name, as an attacker sends to reflect traffic (no phone headers)."""
    return request_text(method, branch=f"z9hG4bK-spoof{index}", phone=False, uri="sip:localhost",
                        extra="Contact: <sip:bob@192.0.2.99>\r\n" if method == "REGISTER" else "")


class ReflectionTests(SynchronousTestCase):
    """A spoofed UDP source gets no more bytes back than it sent (amplification at most 1), but for the
    small allowance per address (ExcessAllowance) that lets a short ping or REGISTER be answered."""

    def setUp(self):
        self.harness = Harness(make_config())
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", self.harness.config.sip))
        self.protocol = UDPTransport(self.gateway, self.gateway.limits)
        self.socket = FakeDatagramTransport()
        self.protocol.makeConnection(self.socket)

    def flood(self, method, count, interval=0.01):
        """``count`` spoofed requests, ``interval`` seconds apart, then a minute of quiet; (bytes in, bytes out,
        datagrams out)."""
        sent_in = 0
        for index in range(count):
            data = spoofed(method, index)
            sent_in += len(data)
            self.protocol.datagramReceived(data, PEER)
            self.harness.clock.advance(interval)
        for _ in range(70):
            self.harness.clock.advance(1)
        out = [len(data) for data, _ in self.socket.written]
        return sent_in, sum(out), len(out)

    def assert_not_amplified(self, method):
        """One spoofed request draws one answer, within the allowance; a thousand draw no more bytes
        than they sent."""
        sent_in, sent_out, datagrams = self.flood(method, 1)
        self.assertEqual(datagrams, 1)
        self.assertLessEqual(sent_out, sent_in + ExcessAllowance.BURST_BYTES)
        self.setUp()
        sent_in, sent_out, _ = self.flood(method, 1000)
        self.assertLessEqual(sent_out, sent_in)

    def test_spoofed_invite_not_amplified(self):
        """A spoofed INVITE gets one 488 back (its smallest form, within the allowance) and nothing
        afterwards; a flood of them gets no more bytes than it sent.  Before the stateless answer each
        drew 10 retransmitted 488s, about 15 times its size."""
        self.assert_not_amplified("INVITE")

    def test_spoofed_register_flood_not_amplified(self):
        """A single spoofed REGISTER may draw a challenge a little longer than itself (one WWW-Authenticate,
        within the allowance); a flood of them in one victim's name gets in all no more bytes than it sent,
        where before each drew a 401 with two challenges (about twice its size)."""
        self.assert_not_amplified("REGISTER")

    def test_a_phone_still_authenticates(self):
        """The same short REGISTER from a phone gets its challenge: the allowance serves those who
        authenticate now and then."""
        for index in range(5):
            self.protocol.datagramReceived(spoofed("REGISTER", index), PEER)
            self.harness.clock.advance(60)
        responses = [parse_datagram(data) for data, _ in self.socket.written]
        self.assertEqual([response.status for response in responses], [401] * 5)
        self.assertTrue(all(len(r.headers.get_all("WWW-Authenticate")) == 1 for r in responses))
