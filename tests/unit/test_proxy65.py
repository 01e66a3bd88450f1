"""SOCKS5 bytestreams proxy (XEP-0065): the greeting parser, the streamhost query, pairing, activation,
relaying with flow control and a rate, and the bounds of connections waiting for their pair."""

import hashlib
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.xmlstream import parse_element
from bridge.gateways import proxy65
from tests.unit.helpers import Harness, gateway_context

NS = proxy65.NS_BYTESTREAMS
GREETING = b"\x05\x01\x00"


def connect_request(address):
    return b"\x05\x01\x00\x03" + bytes((len(address),)) + address + b"\x00\x00"


def condition(stanza):
    return next(child.name for child in stanza.error.elements() if child.name != "text")


class GreetingTests(SynchronousTestCase):
    address = proxy65.destination("s1", "a@localhost/r", "b@localhost/r").encode("ascii")

    def test_whole_and_byte_at_a_time(self):
        """The method selection is answered with no-authentication and the CONNECT request yields its
        (lowercased) address and the bytes after it, whether it comes at once or one byte at a time."""
        wire = GREETING + connect_request(self.address.upper()) + b"early"
        greeting = proxy65.Socks5Greeting()
        self.assertEqual(greeting.receive(wire), (b"\x05\x00", ("connect", self.address.decode(), b"early")))
        greeting, out, outcome = proxy65.Socks5Greeting(), b"", None
        for index in range(len(wire) - len(b"early")):
            sent, outcome = greeting.receive(wire[index:index + 1])
            out += sent
            if outcome is not None:
                self.assertEqual(index, len(wire) - len(b"early") - 1)
        self.assertEqual((out, outcome), (b"\x05\x00", ("connect", self.address.decode(), b"")))

    def test_refusals(self):
        """Another SOCKS version, no acceptable method, a command other than CONNECT, an address that is not
        a domain name and an address that is not a SHA1 in hex are each refused, with
        the RFC 1928 reply where there is one."""
        cases = [
            (b"\x04\x01\x00", b""),
            (b"\x05\x01\x02", b"\x05\xff"),
            (GREETING + b"\x05\x02\x00\x03\x28" + self.address + b"\x00\x00", b"\x05\x00" + proxy65.reply(7)),
            (GREETING + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", b"\x05\x00" + proxy65.reply(8)),
            (GREETING + connect_request(b"x" * 40), b"\x05\x00" + proxy65.reply(2)),
            (GREETING + connect_request(b"ab"), b"\x05\x00" + proxy65.reply(2)),
        ]
        for wire, answer in cases:
            self.assertEqual(proxy65.Socks5Greeting().receive(wire), (answer, ("refused", None, b"")), wire)

    def test_destination(self):
        """The address is hex SHA1 of SID, initiator and target, as XEP-0065's example gives it."""
        self.assertEqual(proxy65.destination("mySID", "requester@example.com/foo", "target@example.org/bar"),
                         hashlib.sha1(b"mySIDrequester@example.com/footarget@example.org/bar").hexdigest())


class FakePort:
    def __init__(self, host, port):
        self.address = IPv4Address("TCP", host, port)

    def getHost(self):
        return self.address


class ProxyTestCase(SynchronousTestCase):
    options = {}

    def setUp(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        document = {"c2s": {"require_encryption": False}, "data_dir": folder, "hosts": {"localhost": {}},
                    "proxy65": {"enabled": True, **self.options}}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        for user in ("alice", "bob", "eve"):
            self.harness.add_user(f"{user}@localhost")
        self.context = gateway_context(self.harness.server, "proxy65", self.harness.config.proxy65)
        self.clock = self.harness.clock
        self.service = proxy65.attach(self.context, self.clock, None)
        self.service.ports.append(FakePort("192.0.2.7", 7777))
        self.factory = proxy65.Socks5Factory(self.service)
        self.alice = self.harness.login("alice@localhost/a")

    def connect(self, address=None, source="127.0.0.1"):
        """A SOCKS5 connection from ``source``, greeted and requesting ``address`` when given."""
        connection = self.factory.buildProtocol(None)
        connection.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", source, 40000)))
        if address is not None:
            connection.dataReceived(GREETING + connect_request(address.encode("ascii")))
        return connection

    def close(self, connection):
        connection.connectionLost(None)

    def activate(self, client, sid="s1", target="bob@localhost/b"):
        return client.iq(f"<iq type='set' id='act' to='proxy.localhost'><query xmlns='{NS}' sid='{sid}'>"
                         f"<activate>{target}</activate></query></iq>")

    def pair(self, sid="s1"):
        address = proxy65.destination(sid, "alice@localhost/a", "bob@localhost/b")
        target, initiator = self.connect(address, "127.0.0.8"), self.connect(address, "127.0.0.9")
        for connection in (target, initiator):
            self.assertEqual(connection.transport.value(), b"\x05\x00" + proxy65.reply(0, address.encode()))
            connection.transport.clear()
        return target, initiator


class StreamhostTests(ProxyTestCase):
    def test_disco_and_streamhost(self):
        """proxy.localhost is a proxy/bytestreams identity with the bytestreams feature, and the streamhost
        query names the proxy's JID and the listener's address and port."""
        info = self.alice.iq("<iq type='get' id='i' to='proxy.localhost'>"
                             "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        disco = "http://jabber.org/protocol/disco#info"
        identity = next(info.query.elements(disco, "identity"))
        self.assertEqual((identity["category"], identity["type"]), ("proxy", "bytestreams"))
        self.assertIn(NS, [feature["var"] for feature in info.query.elements(disco, "feature")])
        answer = self.alice.iq(f"<iq type='get' id='q' to='proxy.localhost'><query xmlns='{NS}'/></iq>")
        streamhost = next(next(answer.elements(NS, "query")).elements(NS, "streamhost"))
        self.assertEqual((streamhost["jid"], streamhost["host"], streamhost["port"]),
                         ("proxy.localhost", "192.0.2.7", "7777"))

    def test_wildcard_listener_names_the_host(self):
        """A listener on every address is announced by the local host's name."""
        self.service.ports[0] = FakePort("0.0.0.0", 7777)
        answer = self.alice.iq(f"<iq type='get' id='q' to='proxy.localhost'><query xmlns='{NS}'/></iq>")
        self.assertEqual(next(next(answer.elements(NS, "query")).elements(NS, "streamhost"))["host"], "localhost")


class PublicHostTests(ProxyTestCase):
    options = {"public_host": "files.example.org"}

    def test_public_host(self):
        """``public_host`` is what the streamhost query names."""
        answer = self.alice.iq(f"<iq type='get' id='q' to='proxy.localhost'><query xmlns='{NS}'/></iq>")
        self.assertEqual(next(next(answer.elements(NS, "query")).elements(NS, "streamhost"))["host"],
                         "files.example.org")


class RelayTests(ProxyTestCase):
    def test_activation_relays_both_ways(self):
        """Once the initiator activates the pair, bytes go from each connection to the other, what came
        early first; the end of one connection ends the other."""
        target, initiator = self.pair()
        initiator.dataReceived(b"early")
        self.assertEqual(initiator.transport.producerState, "paused")
        reply = self.activate(self.alice)
        self.assertEqual(reply["type"], "result")
        self.assertEqual(target.transport.value(), b"early")
        self.assertEqual(initiator.transport.producerState, "producing")
        initiator.dataReceived(b"file bytes")
        target.dataReceived(b"back")
        self.assertEqual((target.transport.value(), initiator.transport.value()), (b"earlyfile bytes", b"back"))
        self.assertEqual(self.service.relaying, 1)
        self.close(initiator)
        self.assertTrue(target.transport.disconnecting)
        self.close(target)
        self.assertEqual((self.service.relaying, self.service.pending, self.service.waiting), (0, set(), {}))

    def test_only_the_initiator_activates(self):
        """Another user's activation of the same sid and target names no pair (the address holds the
        initiator's JID): item-not-found, and nothing is relayed."""
        target, initiator = self.pair()
        eve = self.harness.login("eve@localhost/a")
        self.assertEqual(condition(self.activate(eve)), "item-not-found")
        initiator.dataReceived(b"secret")
        self.assertEqual(target.transport.value(), b"")

    def test_activation_needs_both_connections(self):
        """An activation while only one connection has its address is item-not-found."""
        self.connect(proxy65.destination("s1", "alice@localhost/a", "bob@localhost/b"))
        self.assertEqual(condition(self.activate(self.alice)), "item-not-found")

    def test_bad_activation(self):
        """An activation without a sid or with a target that is not a JID is bad-request."""
        self.assertEqual(condition(self.activate(self.alice, sid="")), "bad-request")
        self.assertEqual(condition(self.activate(self.alice, target="@@")), "bad-request")

    def test_remote_users_are_refused(self):
        """A user of another server gets forbidden, for the streamhost query and the activation."""
        sent = []
        self.harness.server.router.default_route = type("Remote", (), {"deliver": lambda _, s: sent.append(s)})()
        for kind, payload in (("get", ""), ("set", "<activate>bob@localhost/b</activate>")):
            self.harness.server.router.route(parse_element(
                f"<iq type='{kind}' id='r' from='mallory@remote.example/x' to='proxy.localhost'>"
                f"<query xmlns='{NS}' sid='s1'>{payload}</query></iq>"))
        self.assertEqual([condition(stanza) for stanza in sent], ["forbidden", "forbidden"])

    def test_third_connection_is_refused(self):
        """A third connection naming a pair's address gets a general failure and is closed."""
        self.pair()
        third = self.connect(proxy65.destination("s1", "alice@localhost/a", "bob@localhost/b"))
        self.assertEqual(third.transport.value(), b"\x05\x00" + proxy65.reply(1))
        self.assertTrue(third.transport.disconnecting)

    def test_full_writer_pauses_the_reader(self):
        """When the target's transport says its buffer is full, the initiator's reading pauses, and
        resumes when it drains."""
        target, initiator = self.pair()
        self.activate(self.alice)
        target.transport.producer.pauseProducing()
        self.assertEqual(initiator.transport.producerState, "paused")
        target.transport.producer.resumeProducing()
        self.assertEqual(initiator.transport.producerState, "producing")


class RateTests(ProxyTestCase):
    options = {"max_bytes_per_second_per_stream": 1000}

    def test_rate_pauses_the_reader(self):
        """Past max_bytes_per_second_per_stream the reading side pauses until the clock has paid for what
        went through; a full writer meanwhile keeps it paused after that."""
        target, initiator = self.pair()
        self.activate(self.alice)
        initiator.dataReceived(b"x" * 500)
        self.assertEqual(initiator.transport.producerState, "paused")
        target.transport.producer.pauseProducing()
        self.clock.advance(0.5)
        self.assertEqual(initiator.transport.producerState, "paused")
        target.transport.producer.resumeProducing()
        self.assertEqual(initiator.transport.producerState, "producing")
        initiator.dataReceived(b"x" * 2000)
        self.clock.advance(1.9)
        self.assertEqual(initiator.transport.producerState, "paused")
        self.clock.advance(0.1)
        self.assertEqual(initiator.transport.producerState, "producing")


class BoundTests(ProxyTestCase):
    options = {"max_pending_connections_per_address": 2, "max_pending_connections": 3,
               "pending_timeout_seconds": 30}

    def test_pending_per_address_and_in_all(self):
        """Past max_pending_connections_per_address from one address, and past max_pending_connections
        in all, a new connection is dropped at once; a dropped connection frees its place."""
        first, second = self.connect(), self.connect()
        self.assertFalse(second.transport.disconnecting)
        third = self.connect()
        self.assertTrue(third.transport.disconnecting)
        self.close(third)
        self.connect(source="127.0.0.2")
        fourth = self.connect(source="127.0.0.3")
        self.assertTrue(fourth.transport.disconnecting)
        self.close(fourth)
        self.close(first)
        self.assertFalse(self.connect(source="127.0.0.3").transport.disconnecting)

    def test_timeout(self):
        """A connection that is not relaying after pending_timeout_seconds is dropped; an activated one is
        not."""
        waiting = self.connect(proxy65.destination("s9", "x@localhost/a", "y@localhost/b"))
        target, initiator = self.pair()
        self.activate(self.alice)
        self.clock.advance(30)
        self.assertTrue(waiting.transport.disconnecting)
        self.assertFalse(target.transport.disconnecting or initiator.transport.disconnecting)


class ConfigTests(SynchronousTestCase):
    def test_subdomain_clash_and_listener(self):
        """An enabled proxy whose subdomain is another service's, or without a listener, is a config error
        naming the key."""
        for section, key in (({"enabled": True, "subdomain": "upload"}, "proxy65.subdomain"),
                             ({"enabled": True, "endpoints": []}, "proxy65.endpoints")):
            with self.assertRaises(configuration.ConfigError) as raised:
                configuration.parse({"proxy65": section}, "test.toml")
            self.assertIn(key, str(raised.exception))
