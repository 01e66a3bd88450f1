"""XMPP over WebSocket (RFC 7395) on the HTTP listener, over an in-memory transport and a fake clock."""

import dataclasses

from twisted.trial.unittest import SynchronousTestCase
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection,
                            Request, TextMessage)

from bridge.core.xmlstream import NS_STREAMS, parse_element
from bridge.gateways.http import HTTPFactory
from tests.unit.helpers import Harness, scram_login
from tests.unit.test_http import HTTPClient, StubBosh, http_config, parse_responses

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
OPEN = f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>"


class WebSocketClient(HTTPClient):
    """A wsproto client on one HTTP connection; ``received()`` parses the server's messages.

    It answers pings unless ``answer_pings`` is false and records the close frame it gets.
    """

    def __init__(self, factory, origin=None, subprotocols=("xmpp",), host="localhost:5280", extra=(),
                 address="127.0.0.1"):
        super().__init__(factory, address=address)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = True
        self.pings = 0
        self.close_code = None
        self.texts = []
        headers = [("Origin", origin)] if origin else []
        headers += list(extra)
        self.send(self.ws.send(Request(host=host, target="/xmpp-websocket", subprotocols=list(subprotocols),
                                       extra_headers=headers)))
        data = self.transport.value()
        self.transport.clear()
        self.ws.receive_data(data)
        self.handshake = [event for event in self.ws.events()]
        self.accepted = isinstance(self.handshake[0], AcceptConnection)
        if not self.accepted:
            self.http_response = parse_responses(data)[0]

    def send(self, data):
        """A str is sent as one text message, bytes as they are."""
        if isinstance(data, str):
            data = self.ws.send(TextMessage(data=data))
        self.channel.dataReceived(data)

    send_text = send

    def received(self):
        """Elements the server sent since the last call, one per text message."""
        data = self.transport.value()
        self.transport.clear()
        if self.ws.state is ConnectionState.CLOSED:
            return []
        self.ws.receive_data(data)
        elements = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                assert event.message_finished
                self.texts.append(event.data)
                elements.append(parse_element(event.data))
            elif isinstance(event, Ping):
                self.pings += 1
                if self.answer_pings:
                    self.send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.send(self.ws.send(event.response()))
        return elements

    def login(self, user, password="secret", resource="web"):
        self.send_text(OPEN)
        self.received()
        outcome = scram_login(self, user, password)
        assert outcome.name == "success", outcome.toXml()
        self.send_text(OPEN)
        opened, features = self.received()
        assert features.bind is not None, features.toXml()
        self.send_text(f"<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                       f"<resource>{resource}</resource></bind></iq>")
        [reply] = self.received()
        assert reply["type"] == "result", reply.toXml()
        return str(reply.bind.jid)


def stream_error_of(elements):
    for element in elements:
        if element.uri == NS_STREAMS and element.name == "error":
            return next(element.elements()).name
    return None


class WebSocketTestCase(SynchronousTestCase):
    def make(self, tls=False, hosts=None, c2s=None, **http):
        config = http_config(hosts=hosts, **http)
        if c2s:
            config = dataclasses.replace(config, c2s=dataclasses.replace(config.c2s, **c2s))
        self.harness = Harness(config)
        self.harness.add_user("alice@localhost")
        self.harness.add_user("bob@localhost")
        self.factory = HTTPFactory(self.harness.server, config.http, StubBosh(), tls)
        return self.factory

    def connect(self, **options):
        return WebSocketClient(self.factory, **options)


class HandshakeTests(WebSocketTestCase):
    def test_xmpp_subprotocol_accepted(self):
        """An upgrade asking for 'xmpp' is accepted with that subprotocol."""
        self.make()
        client = self.connect()
        self.assertTrue(client.accepted)
        self.assertEqual(client.handshake[0].subprotocol, "xmpp")
        self.assertIs(client.transport.producer, client.channel.websocket.output)

    def test_without_xmpp_subprotocol(self):
        """Without the 'xmpp' subprotocol the upgrade is refused with 400 and the connection closed."""
        self.make()
        for subprotocols in ((), ("chat",)):
            client = self.connect(subprotocols=subprotocols)
            self.assertFalse(client.accepted)
            self.assertIsInstance(client.handshake[0], RejectConnection)
            self.assertEqual(client.http_response[0], 400)
            self.assertTrue(client.transport.disconnecting)

    def test_unsupported_websocket_version(self):
        """A WebSocket version other than 13 gets 426 with Sec-WebSocket-Version: 13 (RFC 6455 section 4.4)."""
        self.make()
        client = HTTPClient(self.factory)
        client.request("GET", "/xmpp-websocket", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "8"), ("Sec-WebSocket-Protocol", "xmpp")])
        [(status, headers, _)] = client.responses()
        self.assertEqual((status, headers["sec-websocket-version"]), (426, "13"))

    def test_bad_origin_refused(self):
        """An Origin not in allowed_origins gets 403; a listed one is accepted."""
        self.make(allowed_origins=["https://chat.example"])
        refused = self.connect(origin="https://evil.example")
        self.assertFalse(refused.accepted)
        self.assertEqual(refused.http_response[0], 403)
        self.assertTrue(refused.transport.disconnecting)
        self.assertTrue(self.connect(origin="https://chat.example").accepted)

    def test_same_origin_only_by_default(self):
        """With no allowed origins, the listener's own origin is accepted and another refused."""
        self.make()
        self.assertTrue(self.connect(origin="http://localhost:5280").accepted)
        self.assertEqual(self.connect(origin="https://evil.example").http_response[0], 403)

    def test_early_frames_are_kept(self):
        """A message sent right behind the upgrade request, in the same packet, is not lost."""
        self.make()
        ws = WSConnection(ConnectionType.CLIENT)
        client = HTTPClient(self.factory)
        request = ws.send(Request(host="localhost", target="/xmpp-websocket", subprotocols=["xmpp"]))
        client.send(request + _client_frame(OPEN))
        self.assertIn(b"HTTP/1.1 101", client.transport.value())
        self.assertIn(b"urn:ietf:params:xml:ns:xmpp-framing", client.transport.value())

    def test_upgrade_waits_for_earlier_answers(self):
        """An upgrade pipelined behind a held BOSH request gets its 101 after that answer, and a
        message the client sent meanwhile is not lost."""
        self.make()
        client = HTTPClient(self.factory)
        client.request("POST", "/http-bind", b"<body/>")
        ws = WSConnection(ConnectionType.CLIENT)
        client.send(ws.send(Request(host="localhost", target="/xmpp-websocket", subprotocols=["xmpp"])))
        client.send(_client_frame(OPEN))
        self.assertEqual(client.transport.value(), b"")
        [(_, responder)] = self.factory.bosh.calls
        responder.respond(200, [], b"held")
        data = client.transport.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"))
        self.assertLess(data.index(b"held"), data.index(b"HTTP/1.1 101"))
        self.assertIn(NS_FRAMING.encode(), data.split(b"HTTP/1.1 101", 1)[1])


def _client_frame(text):
    """A masked text frame as a client sends it."""
    from wsproto.frame_protocol import FrameProtocol

    return bytes(FrameProtocol(client=True, extensions=[]).send_data(text, True))


class StreamTests(WebSocketTestCase):
    def test_open_and_features(self):
        """<open/> is answered with <open/> and stream features carrying the stream prefix; without TLS
        SCRAM is offered and PLAIN is not."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        opened, features = client.received()
        self.assertEqual((opened.uri, opened.name), (NS_FRAMING, "open"))
        self.assertEqual((opened["from"], opened["version"]), ("localhost", "1.0"))
        self.assertTrue(opened["id"])
        self.assertTrue(client.texts[1].startswith(f"<stream:features xmlns:stream='{NS_STREAMS}'>"))
        mechanisms = [str(mechanism) for mechanism in features.mechanisms.elements()]
        self.assertEqual(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        self.assertIsNone(features.starttls)

    def test_see_other_uri(self):
        """With websocket_see_other_uri set, <open/> is answered <close see-other-uri/> and the socket closed."""
        self.make(websocket_see_other_uri="wss://other.example/xmpp-websocket")
        client = self.connect()
        client.send_text(OPEN)
        (closed,) = client.received()
        self.assertEqual((closed.uri, closed.name), (NS_FRAMING, "close"))
        self.assertEqual(closed["see-other-uri"], "wss://other.example/xmpp-websocket")
        self.assertIsNotNone(client.close_code)
        self.assertEqual(len(self.harness.server.sessions), 0)

    def test_plain_only_when_secure(self):
        """On the TLS listener the stream is secure and PLAIN is offered, even with require_encryption."""
        self.make(tls=True, c2s={"require_encryption": True})
        client = self.connect()
        client.send_text(OPEN)
        _, features = client.received()
        self.assertIn("PLAIN", [str(mechanism) for mechanism in features.mechanisms.elements()])

    def test_sasl_on_loopback_despite_require_encryption(self):
        """require_encryption does not lock out a plain-HTTP WebSocket client on loopback (a browser on the
        server's machine, where nobody else sees its bytes): SCRAM works (there is no STARTTLS)."""
        self.make(c2s={"require_encryption": True})
        client = self.connect()
        self.assertTrue(client.login("alice").startswith("alice@localhost/"))

    def test_no_sasl_in_clear_from_elsewhere(self):
        """With require_encryption, a plain-HTTP WebSocket client that is not on loopback is offered no
        mechanism, and its <auth/> gets <encryption-required/> before any credential is looked at."""
        self.make(c2s={"require_encryption": True})
        client = self.connect(address="192.0.2.7")
        client.send_text(OPEN)
        _, features = client.received()
        self.assertIsNone(features.mechanisms)
        outcome = scram_login(client, "alice", "secret")
        self.assertEqual((outcome.uri, outcome.name, next(outcome.elements()).name),
                         (NS_SASL, "failure", "encryption-required"))
        self.assertEqual(len(self.harness.server.sessions), 0)

    def test_sasl_in_clear_when_encryption_is_not_required(self):
        """require_encryption = false lets any plain-HTTP client log in, as the administrator chose."""
        self.make(c2s={"require_encryption": False})
        self.assertTrue(self.connect(address="192.0.2.7").login("alice").startswith("alice@localhost/"))

    def test_tls_said_by_a_trusted_proxy(self):
        """Behind a listed proxy that says X-Forwarded-Proto: https the stream is secure (PLAIN offered);
        the same headers from a peer not listed change nothing."""
        self.make(c2s={"require_encryption": True}, trusted_proxies=["10.0.0.1"])
        headers = [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https")]
        proxied = self.connect(address="10.0.0.1", extra=headers)
        proxied.send_text(OPEN)
        _, features = proxied.received()
        self.assertIn("PLAIN", [str(mechanism) for mechanism in features.mechanisms.elements()])
        self.assertEqual(proxied.channel.websocket.peer, "198.51.100.1:?")
        stranger = self.connect(address="192.0.2.7", extra=headers)
        stranger.send_text(OPEN)
        _, features = stranger.received()
        self.assertIsNone(features.mechanisms)

    def test_login_and_messages_with_a_tcp_client(self):
        """Open, SCRAM, bind over WebSocket; a message to a TCP client and its answer, qualified by jabber:client."""
        self.make()
        bob = self.harness.login("bob@localhost/tcp")
        client = self.connect()
        jid = client.login("alice", resource="web")
        self.assertEqual(jid, "alice@localhost/web")
        client.send_text("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'>"
                         "<body>hi bob</body></message>")
        [message] = bob.received()
        self.assertEqual((message["from"], str(message.body)), ("alice@localhost/web", "hi bob"))
        bob.send("<message to='alice@localhost/web' type='chat'><body>hi alice</body></message>")
        [reply] = client.received()
        self.assertEqual((reply.uri, reply.name, reply["from"]), ("jabber:client", "message", "bob@localhost/tcp"))
        self.assertEqual(str(reply.body), "hi alice")
        self.assertTrue(client.texts[-1].startswith("<message xmlns='jabber:client'"))
        self.assertIsNotNone(self.harness.server.sessions.get(jid))

    def test_close(self):
        """<close/> is answered with <close/> and a close frame; the session ends with the connection."""
        self.make()
        client = self.connect()
        jid = client.login("alice")
        client.send_text(f"<close xmlns='{NS_FRAMING}'/>")
        [closed] = client.received()
        self.assertEqual((closed.uri, closed.name), (NS_FRAMING, "close"))
        self.assertEqual(client.close_code, 1000)
        self.assertTrue(client.transport.disconnecting)
        self.assertIsNone(client.transport.producer)
        client.drop()
        self.assertIsNone(self.harness.server.sessions.get(jid))

    def test_client_close_frame(self):
        """A close frame from the client is answered and the connection closed."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send(client.ws.send(CloseConnection(code=1000)))
        client.received()
        self.assertIs(client.ws.state, ConnectionState.CLOSED)
        self.assertTrue(client.transport.disconnecting)
        # A TLS transport only closes once its producer is gone.
        self.assertIsNone(client.transport.producer)

    def test_stanza_before_open(self):
        """A stanza before <open/> gets an <open/>, then a stream error and <close/>."""
        self.make()
        client = self.connect()
        client.send_text("<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>")
        elements = client.received()
        self.assertEqual(elements[0].name, "open")
        self.assertEqual(stream_error_of(elements), "policy-violation")
        self.assertEqual(elements[-1].name, "close")

    def test_unknown_host(self):
        """An <open/> to a host not served here is host-unknown, with the stream prefix."""
        self.make()
        client = self.connect()
        client.send_text(f"<open xmlns='{NS_FRAMING}' to='elsewhere.example' version='1.0'/>")
        self.assertEqual(stream_error_of(client.received()), "host-unknown")
        self.assertTrue(client.texts[1].startswith("<stream:error xmlns:stream="))


class HostileInputTests(WebSocketTestCase):
    def test_dtd_refused(self):
        """A DTD in a message is restricted-xml (RFC 6120 section 11.1)."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send_text("<!DOCTYPE lolz [<!ENTITY lol 'lol'>]><message xmlns='jabber:client'>&lol;</message>")
        self.assertEqual(stream_error_of(client.received()), "restricted-xml")
        self.assertTrue(client.transport.disconnecting or client.close_code is not None)

    def test_comment_refused(self):
        """A comment is restricted-xml too."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send_text("<!-- hello --><presence xmlns='jabber:client'/>")
        self.assertEqual(stream_error_of(client.received()), "restricted-xml")

    def test_one_element_per_message(self):
        """Two elements in one message, or half of one, are not-well-formed."""
        self.make()
        for text in ("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>",
                     "<message xmlns='jabber:client'><body>"):
            client = self.connect()
            client.send_text(OPEN)
            client.received()
            client.send_text(text)
            self.assertEqual(stream_error_of(client.received()), "not-well-formed", text)

    def test_message_size_limit(self):
        """A message over websocket_max_message_bytes ends the stream; the close frame says 1009."""
        self.make(websocket_max_message_bytes=4096)
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send_text("<message xmlns='jabber:client'><body>" + "x" * 5000 + "</body></message>")
        self.assertEqual(stream_error_of(client.received()), "policy-violation")
        self.assertEqual(client.close_code, 1009)

    def test_binary_message_refused(self):
        """RFC 7395 frames XMPP in text messages: a binary message ends the stream."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send(client.ws.send(BytesMessage(data=b"<presence/>")))
        self.assertEqual(stream_error_of(client.received()), "unsupported-encoding")
        self.assertEqual(client.close_code, 1003)

    def test_unexpected_open(self):
        """A second <open/> without a restart is a policy violation."""
        self.make()
        client = self.connect()
        client.send_text(OPEN)
        client.received()
        client.send_text(OPEN)
        self.assertEqual(stream_error_of(client.received()), "policy-violation")


class KeepaliveTests(WebSocketTestCase):
    def test_ping_answered(self):
        """Pings go out every interval; a client that answers stays connected."""
        self.make(websocket_ping_interval_seconds=30, c2s={"pre_auth_timeout_seconds": 3600})
        client = self.connect()
        for _ in range(3):
            self.harness.clock.advance(30)
            client.received()
        self.assertEqual(client.pings, 3)
        self.assertFalse(client.transport.disconnecting)

    def test_no_pong_closes(self):
        """No pong by the next ping closes the stream with connection-timeout."""
        self.make(websocket_ping_interval_seconds=30, c2s={"pre_auth_timeout_seconds": 3600})
        client = self.connect()
        client.answer_pings = False
        self.harness.clock.advance(30)
        self.assertEqual(client.received(), [])
        self.assertEqual(client.pings, 1)
        self.harness.clock.advance(30)
        self.assertEqual(stream_error_of(client.received()), "connection-timeout")
        self.assertTrue(client.close_code is not None)

    def test_close_handshake_is_bounded(self):
        """A client that never answers our close frame is dropped after a few seconds."""
        self.make()
        client = self.connect()
        client.send_text(f"<open xmlns='{NS_FRAMING}' to='elsewhere.example' version='1.0'/>")
        self.assertFalse(client.transport.disconnecting)
        self.harness.clock.advance(10)
        self.assertTrue(client.transport.disconnected)


class BackpressureTests(WebSocketTestCase):
    def test_client_that_never_reads_is_cut_off(self):
        """While the transport is full, reading stops; past max_buffered_bytes the client is cut off
        (policy-violation) and its session ends with the connection."""
        self.make(max_buffered_bytes=4096)
        client = self.connect()
        jid = client.login("alice")
        bob = self.harness.login("bob@localhost/tcp")
        # The kernel buffer is full: Twisted pauses its producer, the WebSocket.
        client.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        for number in range(20):
            bob.send(f"<message to='{jid}'><body>{'x' * 200} {number}</body></message>")
            if client.transport.disconnected:
                break
        self.assertTrue(client.transport.disconnected)
        self.assertLess(number, 19)
        self.assertEqual(stream_error_of(client.received()), "policy-violation")
        client.drop()
        self.assertIsNone(self.harness.server.sessions.get(jid))

    def test_resumed_client_is_kept(self):
        """A client whose transport drains (resume) is read again and its count starts over."""
        self.make(max_buffered_bytes=4096)
        client = self.connect()
        jid = client.login("alice")
        bob = self.harness.login("bob@localhost/tcp")
        websocket = client.transport.producer
        for _ in range(4):
            websocket.pauseProducing()
            for number in range(5):
                bob.send(f"<message to='{jid}'><body>{'x' * 200}</body></message>")
            websocket.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(len(client.received()), 20)


class ConnectionLimitTests(WebSocketTestCase):
    def test_websockets_count_per_address(self):
        """WebSockets count against [c2s] max_connections_per_address: past it the next connection from
        that address gets 503; a closed one frees its place."""
        self.make(c2s={"max_connections_per_address": 2})
        first, second = self.connect(address="192.0.2.7"), self.connect(address="192.0.2.7")
        self.assertTrue(first.accepted and second.accepted)
        third = HTTPClient(self.factory, address="192.0.2.7")
        [(status, _, _)] = third.responses()
        self.assertEqual(status, 503)
        third.drop()
        first.drop()
        self.assertTrue(self.connect(address="192.0.2.7").accepted)

    def test_websockets_through_a_proxy_count_per_client(self):
        """A trusted proxy's WebSockets count against each forwarded client's address: a third from one
        client gets 503 while another client behind the same proxy is accepted."""
        self.make(c2s={"max_connections_per_address": 2}, trusted_proxies=["10.0.0.1"])

        def through_proxy(client):
            return self.connect(address="10.0.0.1", extra=[("X-Forwarded-For", client)])

        first, second = through_proxy("198.51.100.1"), through_proxy("198.51.100.1")
        self.assertTrue(first.accepted and second.accepted)
        third = through_proxy("198.51.100.1")
        self.assertFalse(third.accepted)
        self.assertEqual(third.http_response[0], 503)
        self.assertTrue(third.transport.disconnecting)
        self.assertTrue(through_proxy("198.51.100.2").accepted)
        third.drop()
        first.drop()
        self.assertTrue(through_proxy("198.51.100.1").accepted)
