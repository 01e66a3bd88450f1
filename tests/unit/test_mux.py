"""The multiplexor: link framing and handshake, the node's end of a link, the choice of node, the client relay."""

import dataclasses
import os
import shutil
import tempfile
import tomllib

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import muxframe
from bridge.core.streams.muxed import HANDSHAKE_TIMEOUT_SECONDS, MuxLinkFactory
from bridge.gateways.http import HTTPFactory
from bridge.mux import config as mux_configuration
from bridge.mux.relay import ClientRelay, NodeLink, NodePool, choose_link

from tests.unit.helpers import STREAM_OPEN, BufferingTransport, Harness, scram_login

SECRET = b"the shared secret"


class FramingTests(SynchronousTestCase):
    def test_frames_whole_and_byte_by_byte(self):
        """A run of frames decodes to the same (kind, client id, payload) fed whole or one byte at a time."""
        wire = (muxframe.frame(muxframe.OPEN, 7, b"192.0.2.1:5000") + muxframe.frame(muxframe.DATA, 7, b"<x/>")
                + muxframe.frame(muxframe.CLOSE, 7))
        expected = [(muxframe.OPEN, 7, b"192.0.2.1:5000"), (muxframe.DATA, 7, b"<x/>"), (muxframe.CLOSE, 7, b"")]
        self.assertEqual(muxframe.FrameDecoder(1024).feed(wire), expected)
        decoder = muxframe.FrameDecoder(1024)
        self.assertEqual([frame for index in range(len(wire)) for frame in decoder.feed(wire[index:index + 1])],
                         expected)

    def test_oversized_frame_is_refused_from_its_header(self):
        """A header announcing more than the limit is an error at once, before its payload is held."""
        decoder = muxframe.FrameDecoder(1024)
        self.assertRaises(muxframe.FrameError, decoder.feed, muxframe.HEADER.pack(muxframe.DATA, 1, 1025))

    def test_unknown_kind_is_refused(self):
        """A frame kind that is not in the protocol is an error."""
        self.assertRaises(muxframe.FrameError, muxframe.FrameDecoder(1024).feed, muxframe.frame(99, 1, b""))

    def test_data_is_split_under_the_limit(self):
        """Data longer than one frame's payload goes out as several DATA frames, in order."""
        frames = muxframe.FrameDecoder(4).feed(muxframe.data_frames(3, b"0123456789", 4))
        self.assertEqual([payload for _, _, payload in frames], [b"0123", b"4567", b"89"])
        self.assertEqual({(kind, client) for kind, client, _ in frames}, {(muxframe.DATA, 3)})

    def test_handshake_proves_the_secret_both_ways(self):
        """The mux's AUTH checks out with the same secret only; so does the node's WELCOME."""
        node_nonce = muxframe.new_nonce()
        payload, mux_nonce = muxframe.auth_payload(SECRET, node_nonce)
        self.assertEqual(muxframe.check_auth(SECRET, node_nonce, payload), mux_nonce)
        self.assertIsNone(muxframe.check_auth(b"another secret", node_nonce, payload))
        self.assertIsNone(muxframe.check_auth(SECRET, muxframe.new_nonce(), payload))
        welcome = muxframe.proof(SECRET, b"node", node_nonce, mux_nonce)
        self.assertTrue(muxframe.check_welcome(SECRET, node_nonce, mux_nonce, welcome))
        # The mux's own proof replayed as the node's does not pass.
        self.assertFalse(muxframe.check_welcome(SECRET, node_nonce, mux_nonce, payload[muxframe.NONCE_BYTES:]))

    def test_client_addresses(self):
        """OPEN payloads give host and port, IPv6 in brackets; anything else is a framing error."""
        self.assertEqual(muxframe.parse_address(b"192.0.2.1:5222"), ("192.0.2.1", 5222))
        self.assertEqual(muxframe.parse_address(b"[2001:db8::1]:5222"), ("2001:db8::1", 5222))
        for bad in (b"192.0.2.1", b":5222", b"host:99999", b"host:port", b"a" * 300 + b":1"):
            self.assertRaises(muxframe.FrameError, muxframe.parse_address, bad)


class FakeLink:
    def __init__(self, count):
        self.clients = dict.fromkeys(range(count))


class ChooseLinkTests(SynchronousTestCase):
    def test_least_clients(self):
        """The node with the fewest clients over all its links is chosen, then its least busy link."""
        quiet = [FakeLink(3), FakeLink(1)]
        links = {"node1": [FakeLink(2), FakeLink(3)], "node2": quiet}
        self.assertIs(choose_link(links, "192.0.2.1", "least-clients", 100), quiet[1])

    def test_full_links_are_skipped(self):
        """A link at max_clients_per_link takes no more; with every link full there is no choice."""
        room = FakeLink(1)
        links = {"node1": [FakeLink(3), room], "node2": [FakeLink(2)]}
        self.assertIs(choose_link(links, "h", "least-clients", 2), room)
        self.assertIsNone(choose_link({"node1": [FakeLink(2)]}, "h", "least-clients", 2))
        self.assertIsNone(choose_link({"node1": []}, "h", "least-clients", 2))

    def test_hash_moves_only_the_clients_of_a_lost_node(self):
        """With hash, an address goes to the same node every time, and losing a node moves only the
        addresses that were on it."""
        links = {name: [FakeLink(0)] for name in ("node1", "node2", "node3")}
        hosts = [f"192.0.2.{number}" for number in range(60)]
        before = {host: choose_link(links, host, "hash", 10) for host in hosts}
        self.assertEqual(before, {host: choose_link(links, host, "hash", 10) for host in hosts})
        self.assertEqual(len(set(before.values())), 3)
        lost = links.pop("node2")[0]
        for host in hosts:
            after = choose_link(links, host, "hash", 10)
            if before[host] is not lost:
                self.assertIs(after, before[host])
            else:
                self.assertIsNot(after, lost)


class NodeEnd:
    """A node's mux listener on an in-memory server, and a link to it after the handshake."""

    def __init__(self, test, max_clients_per_link=10, max_buffered_bytes=None, authenticate=True):
        c2s = {"max_buffered_bytes": max_buffered_bytes} if max_buffered_bytes else {}
        self.harness = Harness(configuration.parse({"c2s": {"require_encryption": True, **c2s},
                                                    "hosts": {"localhost": {}}}, "test.toml"))
        self.harness.add_user("alice@localhost")
        section = dataclasses.replace(configuration.MuxListenerConfig(), max_frame_bytes=1024,
                                      max_clients_per_link=max_clients_per_link)
        web = HTTPFactory(self.harness.server, self.harness.config.http, None, tls=True)
        self.factory = MuxLinkFactory(self.harness.server, section, SECRET, web)
        self.link = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.link.factory = self.factory
        self.transport = BufferingTransport(buffer_bytes=10**7)
        self.link.makeConnection(self.transport)
        self.decoder = muxframe.FrameDecoder(10**7)
        (kind, _, nonce), = self.frames()
        test.assertEqual(kind, muxframe.CHALLENGE)
        if authenticate:
            payload, mux_nonce = muxframe.auth_payload(SECRET, nonce)
            self.send(muxframe.AUTH, 0, payload)
            (kind, _, welcome), = self.frames()
            test.assertEqual(kind, muxframe.WELCOME)
            test.assertTrue(muxframe.check_welcome(SECRET, nonce, mux_nonce, welcome))

    def send(self, kind, client_id, payload=b""):
        self.link.dataReceived(muxframe.frame(kind, client_id, payload))

    def frames(self):
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def client_bytes(self, client_id):
        return b"".join(payload for kind, client, payload in self.frames()
                        if kind == muxframe.DATA and client == client_id)


class NodeSideTests(SynchronousTestCase):
    def test_wrong_secret_drops_the_link(self):
        """An AUTH made with another secret, or a client frame before the handshake, drops the link
        and opens no stream."""
        for first in (muxframe.frame(muxframe.AUTH, 0, muxframe.auth_payload(b"wrong", b"x" * 32)[0]),
                      muxframe.frame(muxframe.OPEN, 1, b"192.0.2.1:5000")):
            node = NodeEnd(self, authenticate=False)
            node.link.dataReceived(first)
            self.assertTrue(node.transport.disconnecting)
            self.assertEqual(node.link.clients, {})

    def test_handshake_is_bounded_in_time_and_size(self):
        """A link that does not prove the secret within the handshake timeout is dropped; before the
        handshake, a frame larger than an AUTH is refused from its header."""
        node = NodeEnd(self, authenticate=False)
        node.harness.clock.advance(HANDSHAKE_TIMEOUT_SECONDS)
        self.assertTrue(node.transport.disconnecting)
        node = NodeEnd(self, authenticate=False)
        node.link.dataReceived(muxframe.HEADER.pack(muxframe.AUTH, 0, muxframe.AUTH_BYTES + 1))
        self.assertTrue(node.transport.disconnecting)
        node = NodeEnd(self)
        node.harness.clock.advance(HANDSHAKE_TIMEOUT_SECONDS)
        self.assertFalse(node.transport.disconnecting)
        node.send(muxframe.OPEN, 1, b"198.51.100.7:1")
        node.send(muxframe.DATA, 1, b" " * 1000)
        self.assertFalse(node.transport.disconnecting)

    def test_a_client_is_a_secure_c2s_stream(self):
        """A client opened on an authenticated link gets the ordinary c2s stream: no STARTTLS offered
        (the mux did TLS), SASL allowed though require_encryption is on, logs in and binds; its
        address is the client's, not the link's."""
        node = NodeEnd(self)
        node.send(muxframe.OPEN, 5, b"198.51.100.7:4242")
        node.send(muxframe.DATA, 5, STREAM_OPEN.format(host="localhost").encode())
        data = node.client_bytes(5)
        self.assertIn(b"<mechanisms", data)
        self.assertNotIn(b"starttls", data)
        protocol = node.link.clients[5].protocol
        self.assertEqual(protocol.peer, "198.51.100.7:4242")
        self.assertTrue(protocol.stream.secure)
        self.assertEqual(node.factory.clients.connections.counts, {"198.51.100.7": 1})

        class Wire:
            """scram_login's view of the client: send, and the elements received."""
            def send(wire, text):
                node.send(muxframe.DATA, 5, text.encode())

            def received(wire):
                from bridge.core.xmlstream import parse_element
                text = node.client_bytes(5).decode()
                return [parse_element(text)] if text else []

        self.assertEqual(scram_login(Wire(), "alice", "secret").name, "success")

    def test_an_http_client_is_an_http_channel(self):
        """OPEN_HTTP gives the client the node's HTTP channel (here: a request for an unknown path is
        answered 404), not an XMPP stream."""
        node = NodeEnd(self)
        node.send(muxframe.OPEN_HTTP, 6, b"198.51.100.7:4242")
        node.send(muxframe.DATA, 6, b"GET /nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(node.client_bytes(6).startswith(b"HTTP/1.1 404"))

    def test_close_frame_ends_the_stream(self):
        """CLOSE from the mux ends the client's stream as a lost connection does, and frees its count."""
        node = NodeEnd(self)
        node.send(muxframe.OPEN, 5, b"198.51.100.7:4242")
        node.send(muxframe.CLOSE, 5)
        self.assertEqual(node.link.clients, {})
        self.assertEqual(node.factory.clients.connections.counts, {})

    def test_clients_per_link_are_bounded(self):
        """Past max_clients_per_link, an OPEN is answered CLOSE and no stream is made."""
        node = NodeEnd(self, max_clients_per_link=1)
        node.send(muxframe.OPEN, 1, b"198.51.100.7:1")
        node.send(muxframe.OPEN, 2, b"198.51.100.7:2")
        self.assertEqual(sorted(node.link.clients), [1])
        self.assertIn((muxframe.CLOSE, 2, b""), node.frames())

    def test_stream_error_closes_the_client_on_the_mux(self):
        """A stream error from the c2s code (here: a stanza before the stream header parses as bad XML)
        goes to the client and is followed by CLOSE for its id."""
        node = NodeEnd(self)
        node.send(muxframe.OPEN, 3, b"198.51.100.7:1")
        node.send(muxframe.DATA, 3, b"<not-a-stream/>")
        node.harness.clock.advance(0)
        frames = node.frames()
        self.assertIn(b"stream:error", b"".join(payload for kind, _, payload in frames if kind == muxframe.DATA))
        self.assertEqual(frames[-1], (muxframe.CLOSE, 3, b""))
        self.assertEqual(node.link.clients, {})

    def test_pause_and_bounded_holding(self):
        """When the stream stops reading its client the mux is told PAUSE; bytes that still come are
        held, and past max_buffered_bytes the client is cut off."""
        node = NodeEnd(self, max_buffered_bytes=2048)
        node.send(muxframe.OPEN, 3, b"198.51.100.7:1")
        client = node.link.clients[3]
        client.pauseProducing()
        self.assertIn((muxframe.PAUSE, 3, b""), node.frames())
        node.send(muxframe.DATA, 3, b" " * 1000)
        self.assertEqual(client.held_bytes, 1000)
        node.send(muxframe.DATA, 3, b" " * 1000)
        self.assertEqual(node.frames(), [])
        node.send(muxframe.DATA, 3, b" " * 100)
        node.harness.clock.advance(0)
        self.assertIn((muxframe.CLOSE, 3, b""), node.frames())
        self.assertEqual(node.link.clients, {})

    def test_output_waits_for_the_client_and_the_link(self):
        """PAUSE from the mux (its client does not read) pauses that stream's output; the link draining
        does not resume it, only RESUME does, and not while the link is full."""
        node = NodeEnd(self)
        node.send(muxframe.OPEN, 3, b"198.51.100.7:1")
        output = node.link.clients[3].protocol.output
        node.send(muxframe.PAUSE, 3)
        self.assertTrue(output.full)
        node.link.pauseProducing()
        node.link.resumeProducing()
        self.assertTrue(output.full)
        node.link.pauseProducing()
        node.send(muxframe.RESUME, 3)
        self.assertTrue(output.full)
        node.link.resumeProducing()
        self.assertFalse(output.full)

    def test_link_lost_ends_every_stream(self):
        """The link going away ends every stream on it."""
        node = NodeEnd(self)
        for client_id in (1, 2):
            node.send(muxframe.OPEN, client_id, b"198.51.100.7:1")
        node.link.connectionLost(None)
        self.assertEqual(node.link.clients, {})
        self.assertEqual(node.factory.clients.connections.counts, {})


def mux_section(**options):
    values = {"max_frame_bytes": 1024, "max_pending_connects": 2, "max_buffered_bytes_per_client": 2048,
              "connect_timeout_seconds": 5.0}
    values.update(options)
    return dataclasses.replace(mux_configuration.MuxConfig(), **values)


class MuxSideTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = NodePool(self.clock, mux_section(), SECRET)

    def up_link(self, node="node1"):
        """A link to ``node`` through its handshake."""
        link = NodeLink(self.pool, node)
        link.makeConnection(StringTransport())
        node_nonce = muxframe.new_nonce()
        link.dataReceived(muxframe.frame(muxframe.CHALLENGE, 0, node_nonce))
        (_, _, payload), = muxframe.FrameDecoder(4096).feed(link.transport.value())
        link.transport.clear()
        mux_nonce = payload[:muxframe.NONCE_BYTES]
        link.dataReceived(muxframe.frame(muxframe.WELCOME, 0, muxframe.proof(SECRET, b"node", node_nonce, mux_nonce)))
        return link

    def relay(self, port=1000):
        relay = ClientRelay(self.pool, "tls context", direct_tls=False)
        transport = BufferingTransport(buffer_bytes=1024)
        transport.peerAddr = IPv4Address("TCP", "192.0.2.9", port)
        relay.makeConnection(transport)
        return relay, transport

    def secure(self, relay, transport):
        relay.dataReceived(STREAM_OPEN.format(host="localhost").encode() + b"<starttls xmlns='urn:ietf:params:xml:ns:"
                           b"xmpp-tls'/>")
        self.assertEqual(transport.tls, ["tls context"])
        transport.clear()

    def test_a_bad_welcome_keeps_the_link_out(self):
        """A WELCOME that does not prove the secret drops the link, which is never used for clients."""
        link = NodeLink(self.pool, "node1")
        link.makeConnection(StringTransport())
        link.dataReceived(muxframe.frame(muxframe.CHALLENGE, 0, muxframe.new_nonce()))
        link.dataReceived(muxframe.frame(muxframe.WELCOME, 0, b"x" * 32))
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(self.pool.links, {})

    def test_starttls_then_forwarding(self):
        """The mux answers the stream header with STARTTLS required, starts TLS on <starttls/>, and
        only what the client sends after TLS goes to the node, after an OPEN with its address."""
        link = self.up_link()
        relay, transport = self.relay()
        relay.dataReceived(STREAM_OPEN.format(host="localhost").encode())
        self.assertIn(b"<required/>", transport.value())
        relay.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertIn(b"<proceed", transport.value())
        self.assertEqual(transport.tls, ["tls context"])
        self.assertEqual(link.transport.value(), b"")
        relay.dataReceived(b"<stream:stream after TLS>")
        self.assertEqual(muxframe.FrameDecoder(4096).feed(link.transport.value()),
                         [(muxframe.OPEN, 1, b"192.0.2.9:1000"), (muxframe.DATA, 1, b"<stream:stream after TLS>")])
        self.assertEqual(self.pool.pending, 0)

    def test_bytes_with_starttls_are_refused(self):
        """Bytes that come in the same read as <starttls/> end the stream with <policy-violation/>,
        and TLS is not started."""
        relay, transport = self.relay()
        relay.dataReceived(STREAM_OPEN.format(host="localhost").encode()
                           + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq/>")
        self.assertEqual(transport.tls, [])
        self.assertIn(b"policy-violation", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_stream_end_with_starttls_starts_no_tls(self):
        """A client that ends its stream in the read that carries <starttls/> gets no <proceed/> and no TLS."""
        relay, transport = self.relay()
        relay.dataReceived(STREAM_OPEN.format(host="localhost").encode()
                           + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>")
        self.assertEqual(transport.tls, [])
        self.assertNotIn(b"proceed", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_pending_connects_are_bounded(self):
        """Past max_pending_connects connections not yet handed to a node, new ones are dropped; one
        that does not finish TLS within connect_timeout_seconds is dropped too."""
        first, second = self.relay(1), self.relay(2)
        _, third_transport = self.relay(3)
        self.assertTrue(third_transport.disconnected)
        self.assertFalse(first[1].disconnected)
        self.clock.advance(5)
        self.assertTrue(first[1].disconnected and second[1].disconnected)
        for relay, _ in (first, second):
            relay.connectionLost(None)
        self.assertEqual(self.pool.pending, 0)

    def test_no_node_is_a_stream_error(self):
        """With no live link, a client after TLS gets a stream header and <system-shutdown/>."""
        relay, transport = self.relay()
        self.secure(relay, transport)
        relay.dataReceived(b"<stream:stream ...>")
        self.assertIn(b"<stream:stream", transport.value())
        self.assertIn(b"system-shutdown", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_link_lost_tells_its_clients_to_reconnect(self):
        """When a node's link dies, its clients get <system-shutdown/> after what the node sent, with no
        second stream header, and are disconnected; the link leaves the pool."""
        link = self.up_link()
        relay, transport = self.relay()
        self.secure(relay, transport)
        relay.dataReceived(b"<stream:stream ...>")
        link.dataReceived(muxframe.frame(muxframe.DATA, 1, b"<stream:stream from='localhost'>"))
        link.connectionLost(None)
        self.assertEqual(transport.value().count(b"<stream:stream"), 1)
        self.assertIn(b"system-shutdown", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.links, {"node1": set()})

    def test_http_clients_go_by_hash_and_get_http_answers(self):
        """An HTTPS client goes to its address's node by hash even under least-clients, with OPEN_HTTP;
        with no node it gets 503, not an XMPP stream error."""
        links = [self.up_link("node1"), self.up_link("node2")]
        expected = choose_link(self.pool.links, "192.0.2.9", "hash", 10)
        expected.clients.update({100: None, 101: None})  # the busier node, which least-clients would avoid
        relay = ClientRelay(self.pool, "tls context", direct_tls=True, http=True)
        transport = BufferingTransport()
        transport.peerAddr = IPv4Address("TCP", "192.0.2.9", 1000)
        relay.makeConnection(transport)
        relay.dataReceived(b"POST /http-bind HTTP/1.1\r\n")
        self.assertIs(relay.link, expected)
        self.assertEqual(muxframe.FrameDecoder(4096).feed(expected.transport.value())[0],
                         (muxframe.OPEN_HTTP, relay.client_id, b"192.0.2.9:1000"))
        for fake in (100, 101):
            del expected.clients[fake]
        for link in links:
            link.connectionLost(None)
        self.assertNotIn(b"stream", transport.value())
        self.assertTrue(transport.disconnecting)
        relay = ClientRelay(self.pool, "tls context", direct_tls=True, http=True)
        transport = BufferingTransport()
        relay.makeConnection(transport)
        relay.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))

    def test_client_that_does_not_read_is_cut_off(self):
        """When the client's socket is full the node is told PAUSE; past max_buffered_bytes_per_client
        unread, the client is cut off and the node told CLOSE."""
        link = self.up_link()
        relay, transport = self.relay()
        self.secure(relay, transport)
        relay.dataReceived(b"<stream:stream ...>")
        link.transport.clear()
        link.dataReceived(muxframe.frame(muxframe.DATA, 1, b"x" * 1000))
        link.dataReceived(muxframe.frame(muxframe.DATA, 1, b"x" * 1000))
        self.assertIn((muxframe.PAUSE, 1, b""), muxframe.FrameDecoder(4096).feed(link.transport.value()))
        self.assertFalse(transport.disconnected)
        link.dataReceived(muxframe.frame(muxframe.DATA, 1, b"x" * 1000))
        link.dataReceived(muxframe.frame(muxframe.DATA, 1, b"x" * 1000))
        self.assertTrue(transport.disconnected)
        self.assertEqual(muxframe.FrameDecoder(4096).feed(link.transport.value())[-1], (muxframe.CLOSE, 1, b""))
        self.assertEqual(link.clients, {})


class MuxConfigTests(SynchronousTestCase):
    def write(self, text):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "bridge-mux.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return folder, path

    def test_problems_name_file_and_key(self):
        """Every problem of a [mux] file is reported at once, naming the file and the key."""
        folder, path = self.write('[mux]\nnodes = ["node1"]\nbalance = "random"\nlinks_per_node = 0\n'
                                  'secret_file = "secret"\n[c2s]\n')
        secret = os.path.join(folder, "secret")
        with open(secret, "w", encoding="utf-8") as handle:
            handle.write("s\n")
        os.chmod(secret, 0o644)
        error = self.assertRaises(configuration.ConfigError, mux_configuration.load, path)
        text = str(error)
        for expected in ("mux.balance: must be one of", "mux.links_per_node: must be at least 1", f"{path}: c2s:"):
            self.assertIn(expected, text)
        folder, path = self.write('[mux]\nnodes = ["node1"]\nsecret_file = "secret"\n')
        with open(os.path.join(folder, "secret"), "w", encoding="utf-8") as handle:
            handle.write("s\n")
        os.chmod(os.path.join(folder, "secret"), 0o644)
        text = str(self.assertRaises(configuration.ConfigError, mux_configuration.load, path))
        for expected in ("mux.nodes: 'node1' needs a port", "mux.certificate: needed", "mux.secret_file:",
                         "readable by others"):
            self.assertIn(expected, text)

    def test_node_listener_needs_a_private_secret(self):
        """[mux_listener] with endpoints needs secret_file, and the file must be 0600."""
        folder, path = self.write('[mux_listener]\nendpoints = ["tcp:0"]\n')
        text = str(self.assertRaises(configuration.ConfigError, configuration.load, path, {}))
        self.assertIn("mux_listener.secret_file: needed", text)
        folder, path = self.write('[mux_listener]\nendpoints = ["tcp:0"]\nsecret_file = "secret"\n')
        with open(os.path.join(folder, "secret"), "w", encoding="utf-8") as handle:
            handle.write("s\n")
        os.chmod(os.path.join(folder, "secret"), 0o640)
        text = str(self.assertRaises(configuration.ConfigError, configuration.load, path, {}))
        self.assertIn("mux_listener.secret_file:", text)
        self.assertIn("0600", text)
        os.chmod(os.path.join(folder, "secret"), 0o600)
        self.assertEqual(configuration.load(path, {}).mux_listener.read_secret(), b"s")

    def test_sample_documents_every_key(self):
        """conf/bridge-mux.toml shows every [mux] key, each with its default, except the ones it must
        be given (shown with examples)."""
        path = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "bridge-mux.toml")
        with open(path, "rb") as handle:
            table = tomllib.load(handle)["mux"]
        defaults = mux_configuration.MuxConfig()
        self.assertEqual(set(table), {option.name for option in dataclasses.fields(defaults)})
        given = {"nodes", "certificate", "private_key", "secret_file"}
        self.assertEqual({key: value for key, value in table.items() if key not in given},
                         {key: getattr(defaults, key) for key in table if key not in given})
