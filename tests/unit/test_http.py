"""The HTTP listener over an in-memory transport: keep-alive, ordering, limits, CORS, the web page."""

import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways.http import ClientAddress, FileBody, HTTPFactory, TrustedProxies
from tests.unit.helpers import Harness

LISTENER = IPv4Address("TCP", "127.0.0.1", 5280)


def http_config(hosts=None, **http):
    """A test configuration: SASL without TLS on c2s, the given [http] options."""
    document = {"c2s": {"require_encryption": False}, "http": http, "hosts": hosts or {"localhost": {}}}
    return configuration.parse(document, "test.toml")


class StubBosh:
    """Records what the HTTP layer hands to BOSH; a test answers when it likes."""

    def __init__(self, answer_now=False):
        self.answer_now = answer_now
        self.calls = []

    def handle(self, request, responder):
        self.calls.append((request, responder))
        if self.answer_now:
            responder.respond(200, [("Content-Type", "text/xml; charset=utf-8")], b"<body/>" + request.body)


def parse_responses(data):
    """[(status, {lowercase header: value}, body)] of the complete responses in ``data``."""
    responses = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            raise AssertionError(f"incomplete response head: {data!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses


class HTTPClient:
    """One connection to an HTTPFactory over a StringTransport."""

    def __init__(self, factory, address="127.0.0.1", port=40000):
        peer = IPv4Address("TCP", address, port)
        self.channel = factory.buildProtocol(peer)
        self.transport = StringTransport(hostAddress=LISTENER, peerAddress=peer)
        self.channel.makeConnection(self.transport)

    def send(self, data):
        self.channel.dataReceived(data.encode("latin-1") if isinstance(data, str) else data)

    def request(self, method, path, body=b"", headers=(), host="localhost:5280"):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def responses(self):
        data = self.transport.value()
        self.transport.clear()
        return parse_responses(data)

    def drop(self):
        self.channel.connectionLost(None)


class HTTPTestCase(SynchronousTestCase):
    def make(self, bosh=None, tls=False, **http):
        self.harness = Harness(http_config(**http))
        self.bosh = bosh if bosh is not None else StubBosh()
        self.factory = HTTPFactory(self.harness.server, self.harness.config.http, self.bosh, tls)
        return self.factory

    def connect(self, **options):
        return HTTPClient(self.factory, **options)


class KeepAliveTests(HTTPTestCase):
    def test_sequential_requests_on_one_connection(self):
        """Two requests one after the other are both answered and the connection stays open."""
        self.make(bosh=StubBosh(answer_now=True))
        client = self.connect()
        client.request("POST", "/http-bind", b"<body rid='1'/>")
        [(status, headers, body)] = client.responses()
        self.assertEqual((status, body), (200, b"<body/><body rid='1'/>"))
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertIn("date", headers)
        client.request("POST", "/http-bind", b"<body rid='2'/>")
        [(status, _, body)] = client.responses()
        self.assertEqual((status, body), (200, b"<body/><body rid='2'/>"))
        self.assertFalse(client.transport.disconnecting)

    def test_date_follows_the_clock(self):
        """Date is the clock's time of each answer (formatted once a second, never kept past it)."""
        self.make(bosh=StubBosh(answer_now=True))
        dates = []
        for advance in (0, 0.5, 0.5, 86400):
            self.harness.clock.advance(advance)
            client = self.connect()
            client.request("POST", "/http-bind", b"<body rid='1'/>")
            [(_, headers, _)] = client.responses()
            dates.append(headers["date"])
        self.assertEqual(dates, ["Thu, 01 Jan 1970 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT",
                                 "Thu, 01 Jan 1970 00:00:01 GMT", "Fri, 02 Jan 1970 00:00:01 GMT"])

    def test_request_attributes(self):
        """The BOSH handler gets method, path, query, lowercase headers, body, peer and security."""
        self.make()
        client = self.connect(port=41234)
        client.request("POST", "/http-bind?x=1", b"<body/>", headers=[("Content-Type", "text/xml"),
                                                                      ("X-Twice", "a"), ("X-Twice", "b")])
        [(request, responder)] = self.bosh.calls
        self.assertEqual((request.method, request.path, request.query), ("POST", "/http-bind", "x=1"))
        self.assertEqual(request.headers["content-type"], "text/xml")
        self.assertEqual(request.headers["x-twice"], "a, b")
        self.assertEqual((request.body, request.peer, request.secure), (b"<body/>", "127.0.0.1:41234", False))
        self.assertEqual((request.address, request.local), ("127.0.0.1", True))
        self.assertIs(request.transport, client.transport)
        self.assertIsNone(request.tls_transport)
        self.assertFalse(responder.lost)

    def test_pipelined_answers_in_request_order(self):
        """A held first request does not stop the second from being dispatched, and its answer
        still goes out first: answers follow request order whatever the handler's order."""
        self.make()
        client = self.connect()
        client.request("POST", "/http-bind", b"<body rid='1'/>")
        client.request("POST", "/http-bind", b"<body rid='2'/>")
        self.assertEqual(len(self.bosh.calls), 2)
        (_, first), (_, second) = self.bosh.calls
        second.respond(200, [], b"second")
        self.assertEqual(client.responses(), [])
        self.harness.clock.advance(30)
        first.respond(200, [], b"first")
        self.assertEqual([body for _, _, body in client.responses()], [b"first", b"second"])
        self.assertFalse(client.transport.disconnecting)

    def test_both_requests_in_one_packet(self):
        """Two requests arriving in one read are parsed and dispatched in order."""
        self.make(bosh=StubBosh(answer_now=True))
        client = self.connect()
        one = b"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\none"
        two = b"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\ntwo"
        client.send(one + two)
        self.assertEqual([body for _, _, body in client.responses()], [b"<body/>one", b"<body/>two"])

    def test_pipelining_is_bounded(self):
        """Past 16 requests awaiting their answers, reading pauses; an answer resumes it."""
        self.make()
        client = self.connect()
        for rid in range(20):
            client.request("POST", "/http-bind", f"<body rid='{rid}'/>".encode())
        self.assertEqual(len(self.bosh.calls), 16)
        self.assertEqual(client.transport.producerState, "paused")
        self.bosh.calls[0][1].respond(200, [], b"first")
        self.assertEqual(len(self.bosh.calls), 17)
        self.assertEqual(self.bosh.calls[16][0].body, b"<body rid='16'/>")
        for index in range(1, 20):
            self.bosh.calls[index][1].respond(200, [], b"")
        self.assertEqual(len(self.bosh.calls), 20)
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(len(client.responses()), 20)

    def test_connection_close_is_honoured(self):
        """A request with Connection: close gets its answer with Connection: close, then the close."""
        self.make(bosh=StubBosh(answer_now=True))
        client = self.connect()
        client.request("POST", "/http-bind", b"x", headers=[("Connection", "close")])
        [(status, headers, _)] = client.responses()
        self.assertEqual((status, headers["connection"]), (200, "close"))
        self.assertTrue(client.transport.disconnecting)

    def test_lost_connection_tells_the_handler(self):
        """on_lost callbacks run when the connection goes before the answer; answering then writes nothing."""
        self.make()
        client = self.connect()
        client.request("POST", "/http-bind", b"<body/>")
        [(_, responder)] = self.bosh.calls
        lost = []
        responder.on_lost(lambda: lost.append(True))
        client.drop()
        self.assertEqual(lost, [True])
        self.assertTrue(responder.lost)
        responder.respond(200, [], b"late")
        self.assertEqual(client.transport.value(), b"")

    def test_respond_twice_is_an_error(self):
        """A handler that answers twice is told so."""
        self.make(bosh=StubBosh(answer_now=True))
        client = self.connect()
        client.request("POST", "/http-bind", b"")
        [(_, responder)] = self.bosh.calls
        self.assertRaises(RuntimeError, responder.respond, 200, [], b"")

    def test_handler_failure_is_a_500(self):
        """An exception in the handler is logged and answered 500; the connection goes on."""
        class Broken:
            def handle(self, request, responder):
                raise ValueError("boom")

        self.make(bosh=Broken())
        client = self.connect()
        client.request("POST", "/http-bind", b"")
        [(status, _, _)] = client.responses()
        self.assertEqual(status, 500)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertFalse(client.transport.disconnecting)

    def test_malformed_request(self):
        """Something that is not HTTP gets 400 and the connection is closed."""
        self.make()
        client = self.connect()
        client.send(b"HELLO THERE\r\n\r\n")
        [(status, headers, _)] = client.responses()
        self.assertEqual((status, headers["connection"]), (400, "close"))
        self.assertTrue(client.transport.disconnecting)


class LimitTests(HTTPTestCase):
    def test_oversize_body_by_content_length(self):
        """A declared body over max_request_bytes is refused with 413 before it is read."""
        self.make(max_request_bytes=2048)
        client = self.connect()
        client.send("POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 4000\r\n\r\n")
        [(status, headers, _)] = client.responses()
        self.assertEqual((status, headers["connection"]), (413, "close"))
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.bosh.calls, [])

    def test_oversize_chunked_body(self):
        """A chunked body growing past max_request_bytes is refused with 413 too."""
        self.make(max_request_bytes=2048)
        client = self.connect()
        client.send("POST /http-bind HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"800\r\n" + b"x" * 2048 + b"\r\n")
        self.assertEqual(client.responses(), [])
        client.send(b"10\r\n" + b"y" * 16 + b"\r\n")
        [(status, _, _)] = client.responses()
        self.assertEqual(status, 413)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.bosh.calls, [])

    def test_slow_loris(self):
        """A client that has not finished its request head in header_timeout_seconds is closed."""
        self.make(header_timeout_seconds=10)
        client = self.connect()
        client.send("POST /http-bind HTTP/1.1\r\nHost: h\r\n")
        for _ in range(9):
            self.harness.clock.advance(1)
            client.send("X-Slow: 1\r\n")
        self.assertFalse(client.transport.disconnecting)
        self.harness.clock.advance(1.5)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.bosh.calls, [])

    def test_idle_keep_alive_connection_is_closed(self):
        """After its answer, a connection that sends nothing more is closed after the same timeout."""
        self.make(bosh=StubBosh(answer_now=True), header_timeout_seconds=10)
        client = self.connect()
        client.request("POST", "/http-bind", b"")
        self.harness.clock.advance(9)
        self.assertFalse(client.transport.disconnecting)
        self.harness.clock.advance(2)
        self.assertTrue(client.transport.disconnecting)

    def test_held_request_is_not_timed_out(self):
        """While an answer is pending (a held BOSH request) the request timer does not run."""
        self.make(header_timeout_seconds=10)
        client = self.connect()
        client.request("POST", "/http-bind", b"")
        self.harness.clock.advance(60)
        self.assertFalse(client.transport.disconnecting)
        self.bosh.calls[0][1].respond(200, [], b"")
        self.assertEqual(len(client.responses()), 1)

    def test_connections_per_address(self):
        """Past c2s's max_connections_per_address, a connection gets 503 and is closed."""
        self.harness = Harness(configuration.parse({"c2s": {"max_connections_per_address": 2}}, "t.toml"))
        self.factory = HTTPFactory(self.harness.server, self.harness.config.http, StubBosh(), False)
        first, second, third = self.connect(), self.connect(), self.connect()
        self.assertFalse(first.transport.disconnecting or second.transport.disconnecting)
        [(status, _, _)] = third.responses()
        self.assertEqual(status, 503)
        self.assertTrue(third.transport.disconnecting)
        third.drop()
        first.drop()
        self.assertFalse(self.connect().transport.disconnecting)


class ClientAddressTests(SynchronousTestCase):
    """Who is behind a request: only a listed proxy's X-Forwarded-* are believed."""

    proxies = TrustedProxies(["10.0.0.0/8", "fd00::1"])

    def check(self, cases):
        for host, headers, tls, expected in cases:
            self.assertEqual(self.proxies.client(host, headers, tls), ClientAddress(*expected), (host, headers, tls))

    def test_direct_clients(self):
        """A direct client is its peer address; it is local on loopback (IPv4, IPv6, mapped, UNIX socket)
        unless it says it forwards for someone, and secure on the TLS listener only."""
        self.check([
            ("127.0.0.1", {}, False, ("127.0.0.1", False, True)),
            ("127.8.9.10", {}, True, ("127.8.9.10", True, True)),
            ("::1", {}, False, ("::1", False, True)),
            ("::ffff:127.0.0.1", {}, False, ("127.0.0.1", False, True)),
            (None, {}, False, (None, False, True)),
            ("192.0.2.7", {}, False, ("192.0.2.7", False, False)),
            ("::ffff:192.0.2.7", {}, True, ("192.0.2.7", True, False)),
            ("127.0.0.1", {"x-forwarded-for": "192.0.2.7"}, False, ("127.0.0.1", False, False)),
            ("127.0.0.1", {"x-real-ip": "192.0.2.7"}, False, ("127.0.0.1", False, False)),
            ("127.0.0.1", {"forwarded": "for=192.0.2.7"}, False, ("127.0.0.1", False, False)),
        ])

    def test_headers_of_strangers_are_ignored(self):
        """A peer not listed in trusted_proxies cannot claim TLS or another address."""
        self.check([
            ("192.0.2.7", {"x-forwarded-for": "10.1.1.1", "x-forwarded-proto": "https"}, False,
             ("192.0.2.7", False, False)),
            ("192.0.2.7", {"x-forwarded-proto": "http"}, True, ("192.0.2.7", True, False)),
        ])

    def test_trusted_proxy(self):
        """A listed proxy's X-Forwarded-For is read from the right past trusted proxies only, and its
        X-Forwarded-Proto (its own, last entry) alone makes the client secure; it is never local."""
        self.check([
            ("10.0.0.1", {"x-forwarded-for": "198.51.100.1", "x-forwarded-proto": "https"}, False,
             ("198.51.100.1", True, False)),
            ("10.0.0.1", {"x-forwarded-for": "203.0.113.66, 198.51.100.1, 10.2.2.2", "x-forwarded-proto": "wss"},
             False, ("198.51.100.1", True, False)),
            ("fd00::1", {"x-forwarded-for": "[2001:db8::5]:4711"}, False, ("2001:db8::5", False, False)),
            ("10.0.0.1", {"x-forwarded-for": "198.51.100.1:4711", "x-forwarded-proto": "https, http"}, True,
             ("198.51.100.1", False, False)),
            ("10.0.0.1", {"x-forwarded-for": "198.51.100.1", "x-forwarded-proto": "http, https"}, False,
             ("198.51.100.1", True, False)),
            ("10.0.0.1", {"x-forwarded-for": "unknown"}, False, ("10.0.0.1", False, False)),
            ("10.0.0.1", {}, True, ("10.0.0.1", False, False)),
        ])

    def test_trusted_proxy_forwarded_header(self):
        """With trusted_proxy_header = "forwarded", a listed proxy's RFC 7239 Forwarded (for=, the last
        element's proto=) is read from the right past trusted proxies, and X-Forwarded-* are ignored."""
        proxies = TrustedProxies(["10.0.0.0/8", "fd00::1"], "forwarded")
        cases = [
            ("10.0.0.1", {"forwarded": "for=198.51.100.1;proto=https"}, False, ("198.51.100.1", True, False)),
            ("10.0.0.1", {"forwarded": 'for=203.0.113.66, for="198.51.100.1:4711";proto=http, '
                                       'For=10.2.2.2;Proto=HTTPS'}, False, ("198.51.100.1", True, False)),
            ("fd00::1", {"forwarded": 'for="[2001:db8::5]:4711";by=10.0.0.1'}, True, ("2001:db8::5", False, False)),
            ("10.0.0.1", {"forwarded": "for=unknown;proto=https"}, False, ("10.0.0.1", True, False)),
            ("10.0.0.1", {"forwarded": 'for="_hidden, for=192.0.2.99", for=198.51.100.1'}, False,
             ("198.51.100.1", False, False)),
            ("10.0.0.1", {"x-forwarded-for": "198.51.100.1", "x-forwarded-proto": "https"}, False,
             ("10.0.0.1", False, False)),
            ("192.0.2.7", {"forwarded": "for=10.1.1.1;proto=https"}, False, ("192.0.2.7", False, False)),
        ]
        for host, headers, tls, expected in cases:
            self.assertEqual(proxies.client(host, headers, tls), ClientAddress(*expected), (host, headers))

    def test_x_forwarded_for_mode_ignores_forwarded(self):
        """By default a listed proxy's Forwarded header (which it may pass on as the client wrote it) is
        not read."""
        self.check([("10.0.0.1", {"forwarded": "for=192.0.2.99;proto=https"}, False, ("10.0.0.1", False, False))])

    def test_bad_proxy_entries_are_configuration_errors(self):
        """trusted_proxies takes addresses and networks; anything else names the key."""
        config = configuration.parse({"http": {"trusted_proxies": ["10.0.0.0/8", "::1", "192.0.2.1/32"]}}, "t.toml")
        self.assertEqual(config.http.trusted_proxies, ["10.0.0.0/8", "::1", "192.0.2.1/32"])
        error = self.assertRaises(configuration.ConfigError, configuration.parse,
                                  {"http": {"trusted_proxies": ["10.0.0.0/8", "proxy.example"]}}, "t.toml")
        self.assertEqual(error.problems,
                         ["t.toml: http.trusted_proxies: 'proxy.example' is not an IP address or network"])
        error = self.assertRaises(configuration.ConfigError, configuration.parse,
                                  {"http": {"trusted_proxy_header": "x-real-ip"}}, "t.toml")
        self.assertIn("t.toml: http.trusted_proxy_header: must be one of x-forwarded-for, forwarded",
                      error.problems[0])


class ProxyTests(HTTPTestCase):
    """The listener behind a reverse proxy."""

    def test_request_through_a_trusted_proxy(self):
        """Behind a listed proxy the handler sees the forwarded client and its TLS; channel binding is not
        offered (the TLS the client did is not ours), even on the TLS listener."""
        self.make(tls=True, trusted_proxies=["10.0.0.1"])
        client = self.connect(address="10.0.0.1")
        client.request("POST", "/http-bind", b"<body/>", headers=[("X-Forwarded-For", "198.51.100.1"),
                                                                  ("X-Forwarded-Proto", "https")])
        [(request, _)] = self.bosh.calls
        self.assertEqual((request.peer, request.address, request.secure, request.local),
                         ("198.51.100.1:?", "198.51.100.1", True, False))
        self.assertIsNone(request.tls_transport)

    def test_forwarded_header_through_the_listener(self):
        """``trusted_proxy_header = "forwarded"`` reaches the listener: the handler sees Forwarded's client."""
        self.make(trusted_proxies=["10.0.0.1"], trusted_proxy_header="forwarded")
        client = self.connect(address="10.0.0.1")
        client.request("POST", "/http-bind", b"<body/>", headers=[("Forwarded", 'for="[2001:db8::7]";proto=https')])
        [(request, _)] = self.bosh.calls
        self.assertEqual((request.peer, request.address, request.secure), ("2001:db8::7:?", "2001:db8::7", True))

    def test_tls_listener_gives_the_transport_for_channel_binding(self):
        """A direct client on the TLS listener: the request carries its TLS transport."""
        self.make(tls=True)
        client = self.connect(address="192.0.2.7")
        client.request("POST", "/http-bind", b"<body/>")
        [(request, _)] = self.bosh.calls
        self.assertEqual((request.address, request.secure, request.local), ("192.0.2.7", True, False))
        self.assertIs(request.tls_transport, client.transport)

    def test_proxy_connections_are_not_counted_per_address(self):
        """A trusted proxy carries many clients: its connections are not limited per address; others are."""
        self.harness = Harness(configuration.parse({"c2s": {"max_connections_per_address": 2},
                                                    "http": {"trusted_proxies": ["10.0.0.1"]}}, "t.toml"))
        self.factory = HTTPFactory(self.harness.server, self.harness.config.http, StubBosh(), False)
        proxied = [self.connect(address="10.0.0.1") for _ in range(5)]
        self.assertFalse(any(client.transport.disconnecting for client in proxied))
        direct = [self.connect(address="10.0.0.2") for _ in range(3)]
        self.assertEqual([client.transport.disconnecting for client in direct], [False, False, True])


ORIGIN = "https://chat.example"


class CORSTests(HTTPTestCase):
    def preflight(self, client, origin, path="/http-bind"):
        client.request("OPTIONS", path, headers=[("Origin", origin), ("Access-Control-Request-Method", "POST"),
                                                 ("Access-Control-Request-Headers", "content-type")])
        [(status, headers, _)] = client.responses()
        return status, headers

    def test_preflight_allowed_origin(self):
        """A preflight from an allowed origin is answered with the methods, headers and origin."""
        self.make(allowed_origins=[ORIGIN], cors_allowed_headers=["Content-Type"])
        client = self.connect()
        status, headers = self.preflight(client, ORIGIN)
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertIn("POST", headers["access-control-allow-methods"])
        self.assertEqual(headers["access-control-allow-headers"], "Content-Type")
        self.assertNotIn("access-control-allow-credentials", headers)
        self.assertEqual(self.bosh.calls, [])

    def test_preflight_on_the_websocket_path(self):
        """The WebSocket path answers preflights too."""
        self.make(allowed_origins=[ORIGIN])
        status, headers = self.preflight(self.connect(), ORIGIN, "/xmpp-websocket")
        self.assertEqual((status, headers["access-control-allow-origin"]), (204, ORIGIN))

    def test_preflight_denied_origin(self):
        """A preflight from an origin not listed gets 403 and no CORS headers."""
        self.make(allowed_origins=[ORIGIN])
        status, headers = self.preflight(self.connect(), "https://evil.example")
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_request_from_allowed_origin(self):
        """An allowed origin's request reaches BOSH; its answer carries the CORS headers (credentials too)."""
        self.make(bosh=StubBosh(answer_now=True), allowed_origins=[ORIGIN], cors_allow_credentials=True)
        client = self.connect()
        client.request("POST", "/http-bind", b"<body/>", headers=[("Origin", ORIGIN)])
        [(status, headers, _)] = client.responses()
        self.assertEqual(status, 200)
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual(headers["access-control-allow-credentials"], "true")

    def test_request_from_denied_origin(self):
        """A browser request from an origin not listed is refused with 403 and never reaches BOSH."""
        self.make(allowed_origins=[ORIGIN])
        client = self.connect()
        client.request("POST", "/http-bind", b"<body/>", headers=[("Origin", "https://evil.example")])
        [(status, headers, _)] = client.responses()
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(self.bosh.calls, [])

    def test_empty_list_is_same_origin_only(self):
        """With no allowed origins the page's own origin works, without any CORS header, and others are refused."""
        self.make(bosh=StubBosh(answer_now=True))
        client = self.connect()
        client.request("POST", "/http-bind", b"", headers=[("Origin", "http://localhost:5280")])
        [(status, headers, _)] = client.responses()
        self.assertEqual(status, 200)
        self.assertFalse([name for name in headers if name.startswith("access-control")])
        client.request("POST", "/http-bind", b"", headers=[("Origin", ORIGIN)])
        [(status, _, _)] = client.responses()
        self.assertEqual(status, 403)

    def test_wildcard(self):
        """'*' allows any origin, answered with Access-Control-Allow-Origin: *."""
        self.make(bosh=StubBosh(answer_now=True), allowed_origins=["*"])
        client = self.connect()
        client.request("POST", "/http-bind", b"", headers=[("Origin", "https://anywhere.example")])
        [(status, headers, _)] = client.responses()
        self.assertEqual((status, headers["access-control-allow-origin"]), (200, "*"))

    def test_no_origin_no_cors_headers(self):
        """A request without Origin (not a browser) gets no CORS headers."""
        self.make(bosh=StubBosh(answer_now=True), allowed_origins=["*"])
        client = self.connect()
        client.request("POST", "/http-bind", b"")
        [(status, headers, _)] = client.responses()
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers)


class WebClientTests(HTTPTestCase):
    def install(self):
        """A fake Converse.js dist folder; its path."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        dist = os.path.join(folder, "node_modules", "converse.js", "dist")
        os.makedirs(os.path.join(dist, "webfonts"))
        for name, content in (("converse.min.js", b"export default {};"), ("converse.min.css", b"body{}"),
                              ("webfonts/icons.woff2", b"\0font")):
            with open(os.path.join(dist, name), "wb") as handle:
                handle.write(content)
        with open(os.path.join(folder, "secret.txt"), "wb") as handle:
            handle.write(b"do not serve")
        return dist

    def get(self, path, host="chat.example:5280", headers=()):
        client = self.connect()
        client.request("GET", path, host=host, headers=headers)
        [response] = client.responses()
        return response

    def test_page_without_converse(self):
        """With the folder missing, the page says so but shows anonymous visitors no path of the server:
        the folder and the npm command that installs Converse.js go to the log, once."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.make(web_client_dir="/nonexistent/web/node_modules/converse.js/dist")
        status, headers, body = self.get("/")
        self.get("/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn(b"not installed", body)
        self.assertNotIn(b"/nonexistent", body)
        self.assertNotIn(b"npm install", body)
        logged = [formatEvent(event) for event in events if "web client is not installed" in formatEvent(event)]
        self.assertEqual(len(logged), 1)
        self.assertIn("npm install --prefix /nonexistent/web --no-audit --no-fund converse.js@14", logged[0])

    def test_page_with_converse(self):
        """The page loads Converse.js and points it at this listener, found from the Host header."""
        self.make(web_client_dir=self.install(), hosts={"example.org": {}, "localhost": {}})
        status, _, body = self.get("/", host="chat.example:5280")
        self.assertEqual(status, 200)
        self.assertIn(b'src="/converse/converse.min.js"', body)
        self.assertIn(b'"websocket_url": "ws://chat.example:5280/xmpp-websocket"', body)
        self.assertIn(b'"bosh_service_url": "http://chat.example:5280/http-bind"', body)
        self.assertIn(b'"view_mode": "fullscreen"', body)
        self.assertIn(b'"default_domain": "example.org"', body)

    def test_page_on_tls_listener(self):
        """Over TLS the page uses https and wss."""
        self.make(tls=True, web_client_dir=self.install())
        _, _, body = self.get("/", host="chat.example")
        self.assertIn(b'"websocket_url": "wss://chat.example/xmpp-websocket"', body)

    def test_hostile_host_header(self):
        """A Host header that is not a host name is not written into the page."""
        self.make(web_client_dir=self.install())
        _, _, body = self.get("/", host="x</script><script>alert(1)")
        self.assertNotIn(b"alert", body)
        self.assertIn(b'"websocket_url": "ws://127.0.0.1:5280/xmpp-websocket"', body)

    def test_static_files(self):
        """Converse.js's files are served under /converse/ with their content types."""
        self.make(web_client_dir=self.install())
        status, headers, body = self.get("/converse/converse.min.js")
        self.assertEqual((status, body), (200, b"export default {};"))
        self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(self.get("/converse/converse.min.css")[1]["content-type"], "text/css; charset=utf-8")
        self.assertEqual(self.get("/converse/webfonts/icons.woff2")[1]["content-type"], "font/woff2")

    def test_revalidation(self):
        """A file asked again with its ETag is answered 304 without a body."""
        self.make(web_client_dir=self.install())
        _, headers, _ = self.get("/converse/converse.min.js")
        status, _, body = self.get("/converse/converse.min.js", headers=[("If-None-Match", headers["etag"])])
        self.assertEqual((status, body), (304, b""))

    def test_no_directory_traversal(self):
        """Nothing outside the folder is reachable, encoded or not; folders are not listed."""
        self.make(web_client_dir=self.install())
        for path in ("/converse/../../../secret.txt", "/converse/%2e%2e/%2e%2e/%2e%2e/secret.txt",
                     "/converse/..%2f..%2f..%2fsecret.txt", "/converse/webfonts", "/converse/",
                     "/converse//etc/passwd", "/converse/%00", "/secret.txt"):
            status, _, body = self.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"do not serve", body)

    def test_head_and_methods(self):
        """HEAD gets the headers without the body; other methods get 405."""
        self.make(web_client_dir=self.install())
        client = self.connect()
        client.request("HEAD", "/converse/converse.min.js")
        data = client.transport.value()
        self.assertIn(b"Content-Length: 18\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\n"))
        client.transport.clear()
        client.request("DELETE", "/")
        [(status, _, _)] = client.responses()
        self.assertEqual(status, 405)

    def test_websocket_path_without_upgrade(self):
        """A plain GET on the WebSocket path is told to upgrade (426)."""
        self.make()
        status, headers, _ = self.get("/xmpp-websocket")
        self.assertEqual((status, headers["upgrade"]), (426, "websocket"))


class ThrottlingTransport(StringTransport):
    """A transport whose buffer is 'full' past ``limit`` bytes: it pauses its streaming producer then."""

    def __init__(self, limit, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def write(self, data):
        super().write(data)
        if self.producer is not None and len(self.value()) >= self.limit:
            self.producer.pauseProducing()


class FileServer:
    """A gateway route answering every GET with ``FileBody`` over a file of ``size`` bytes (the last
    one opened is kept to check it is closed)."""

    def __init__(self, directory, size):
        self.path = os.path.join(directory, "file")
        with open(self.path, "wb") as handle:
            handle.write(bytes(range(256)) * (size // 256))
        self.opened = None

    def open_body(self, method, path, query, headers):
        return None  # bodies are read as usual

    def handle(self, request, responder):

        self.opened = open(self.path, "rb")
        responder.respond(200, [("Content-Type", "application/octet-stream")],
                          FileBody(self.opened, 10, os.path.getsize(self.path) - 10))


class FileBodyTests(HTTPTestCase):
    size = 1024 * 1024

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.make()
        self.files = FileServer(directory, self.size)
        self.harness.server.http_routes["/files/"] = self.files

    def connect_throttled(self, limit):
        peer = IPv4Address("TCP", "127.0.0.1", 40001)
        client = HTTPClient.__new__(HTTPClient)
        client.channel = self.factory.buildProtocol(peer)
        client.transport = ThrottlingTransport(limit, hostAddress=LISTENER, peerAddress=peer)
        client.channel.makeConnection(client.transport)
        return client

    def test_file_is_sent_as_the_client_reads_and_the_next_answer_waits(self):
        """A FileBody is written a chunk at a time while the transport takes it: paused at a full buffer, the
        rest follows on resume, then a pipelined request's answer; the bytes are the file's from the offset,
        and the file is closed at the end."""
        client = self.connect_throttled(limit=200 * 1024)
        client.request("GET", "/files/a")
        client.request("GET", "/nope")  # answered by the web client (404), after the file
        written = len(client.transport.value())
        self.assertLess(written, 300 * 1024)
        producer = client.transport.producer
        while client.transport.producer is not None:
            client.transport.limit = len(client.transport.value()) + 200 * 1024
            producer.resumeProducing()
        responses = client.responses()
        self.assertEqual([status for status, _, _ in responses], [200, 404])
        status, headers, body = responses[0]
        self.assertEqual(int(headers["content-length"]), self.size - 10)
        with open(self.files.path, "rb") as handle:
            self.assertEqual(body, handle.read()[10:])
        self.assertTrue(self.files.opened.closed)

    def test_head_and_lost_connections_close_the_file(self):
        """A HEAD answer with a FileBody sends only the head (its length) and closes the file; a connection
        lost in the middle of a file closes it too."""
        client = self.connect()
        client.request("HEAD", "/files/a")
        [(status, headers, body)] = client.responses()
        self.assertEqual((status, headers["content-length"], body), (200, str(self.size - 10), b""))
        self.assertTrue(self.files.opened.closed)
        client = self.connect_throttled(limit=100 * 1024)
        client.request("GET", "/files/a")
        self.assertFalse(self.files.opened.closed)
        client.drop()
        self.assertTrue(self.files.opened.closed)
