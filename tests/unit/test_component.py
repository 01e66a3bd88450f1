"""External components (XEP-0114): handshake, routing both ways, stream errors, offline bounces."""

import hashlib

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.streams.component import HANDSHAKE_TIMEOUT_SECONDS, ComponentFactory
from bridge.core.xmlstream import NS_STREAMS
from tests.unit.helpers import BufferingTransport, Harness, WireClient

SECRET = "s3cret-of-the-muc"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


def component_config(**listener):
    document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}},
                "components": {"muc.localhost": {"secret": SECRET}}, "component_listener": listener}
    return configuration.parse(document, "test.toml")


class FakeComponent(WireClient):
    """A component connection to the in-memory server."""

    def __init__(self, factory, transport=None):
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 41000))
        super().__init__(protocol, "jabber:component:accept", ("127.0.0.1", 41000), transport)

    def open(self, domain="muc.localhost"):
        self.send(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{NS_STREAMS}' to='{domain}'>")
        self.received()
        return self.headers[-1]

    def handshake(self, secret=SECRET, domain="muc.localhost"):
        header = self.open(domain)
        digest = hashlib.sha1((header["id"] + secret).encode()).hexdigest()
        self.send(f"<handshake>{digest}</handshake>")
        return self.received()


def stream_error_of(elements):
    for element in elements:
        if element.uri == NS_STREAMS and element.name == "error":
            for child in element.elements():
                if child.uri == NS_STREAM_ERRORS and child.name != "text":
                    return child.name
    return None


def stanza_error_of(stanza):
    for child in stanza.error.elements():
        if child.uri == NS_STANZAS and child.name != "text":
            return child.name
    return None


class ComponentTestCase(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(component_config())
        self.server = self.harness.server
        self.factory = ComponentFactory(self.server)
        self.factory.register_offline_routes()
        self.harness.add_user("alice@localhost")

    def connected(self):
        component = FakeComponent(self.factory)
        answer = component.handshake()
        self.assertEqual([(e.uri, e.name) for e in answer], [(None, "handshake")])
        return component


class HandshakeTests(ComponentTestCase):
    def test_header_and_successful_handshake(self):
        """The server answers the component's header with a random stream id from the component's
        domain; the right SHA-1 handshake is acknowledged with an empty <handshake/>, the domain
        is routed to the stream and listed in the host's disco#items."""
        component = FakeComponent(self.factory)
        header = component.open()
        self.assertEqual(header.getAttribute("from"), "muc.localhost")
        self.assertTrue(header.getAttribute("id"))
        other = FakeComponent(self.factory).open()
        self.assertNotEqual(header["id"], other["id"])
        digest = hashlib.sha1((header["id"] + SECRET).encode()).hexdigest()
        component.send(f"<handshake>{digest}</handshake>")
        answer = component.received()
        self.assertEqual([(e.uri, e.name, str(e)) for e in answer], [(None, "handshake", "")])
        self.assertIs(self.server.router.lookup("muc.localhost"), component.protocol)
        alice = self.harness.login("alice@localhost/desk")
        reply = alice.iq(f"<iq type='get' id='items' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
        self.assertIn("muc.localhost", [item["jid"] for item in reply.query.elements()])

    def test_wrong_secret_is_not_authorized(self):
        """A handshake computed with a wrong secret ends the stream with not-authorized, and the
        domain stays unrouted to that stream."""
        component = FakeComponent(self.factory)
        answer = component.handshake(secret="wrong")
        self.assertEqual(stream_error_of(answer), "not-authorized")
        self.assertTrue(component.closed_by_server)
        self.assertTrue(component.transport.disconnecting)
        self.assertIsNot(self.server.router.lookup("muc.localhost"), component.protocol)

    def test_unknown_domain_is_host_unknown(self):
        """A stream header naming a domain that is not a configured component gets host-unknown."""
        component = FakeComponent(self.factory)
        component.send(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{NS_STREAMS}' "
                       "to='nothing.localhost'>")
        self.assertEqual(stream_error_of(component.received()), "host-unknown")
        self.assertTrue(component.transport.disconnecting)

    def test_stanza_before_handshake_is_not_authorized(self):
        """A stanza sent before the handshake ends the stream with not-authorized and is not routed."""
        component = FakeComponent(self.factory)
        component.open()
        alice = self.harness.login("alice@localhost/desk")
        component.send("<message from='room@muc.localhost' to='alice@localhost/desk'><body>x</body></message>")
        self.assertEqual(stream_error_of(component.received()), "not-authorized")
        self.assertEqual([e for e in alice.received() if e.name == "message"], [])

    def test_second_connection_is_conflict(self):
        """While a component is connected, a second connection for its domain with the right
        secret is refused with conflict; the first keeps the route."""
        first = self.connected()
        second = FakeComponent(self.factory)
        self.assertEqual(stream_error_of(second.handshake()), "conflict")
        self.assertTrue(second.transport.disconnecting)
        second.drop()
        self.assertIs(self.server.router.lookup("muc.localhost"), first.protocol)
        self.assertFalse(first.transport.disconnecting)

    def test_handshake_timeout(self):
        """A component that never completes its handshake is disconnected with connection-timeout
        after the handshake timeout."""
        component = FakeComponent(self.factory)
        component.open()
        self.harness.clock.advance(HANDSHAKE_TIMEOUT_SECONDS + 1)
        self.assertEqual(stream_error_of(component.received()), "connection-timeout")
        self.assertTrue(component.transport.disconnecting)

    def test_timer_cancelled_on_disconnect(self):
        """A connection lost before the handshake leaves no pending timer on the clock."""
        component = FakeComponent(self.factory)
        component.open()
        component.drop()
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])


class RoutingTests(ComponentTestCase):
    def test_messages_both_ways(self):
        """A message from a logged-in client to room@muc.localhost reaches the component with the
        client's full JID as sender, and a message from the component reaches the client."""
        component = self.connected()
        alice = self.harness.login("alice@localhost/desk")
        alice.send("<message to='room@muc.localhost' type='chat' id='m1'><body>hello</body></message>")
        messages = [e for e in component.received() if e.name == "message"]
        self.assertEqual(len(messages), 1)
        self.assertEqual(messages[0]["from"], "alice@localhost/desk")
        self.assertEqual(messages[0]["to"], "room@muc.localhost")
        self.assertEqual(str(messages[0].body), "hello")
        component.send("<message from='room@muc.localhost/bot' to='alice@localhost/desk' type='chat' id='m2'>"
                       "<body>hi back</body></message>")
        replies = [e for e in alice.received() if e.name == "message"]
        self.assertEqual([(m["id"], m["from"], str(m.body)) for m in replies],
                         [("m2", "room@muc.localhost/bot", "hi back")])

    def test_foreign_from_is_invalid_from(self):
        """A stanza whose 'from' is outside the component's domain (another host, or a subdomain)
        ends the stream with invalid-from and is not delivered."""
        for sender in ("alice@localhost", "x@sub.muc.localhost"):
            component = self.connected()
            alice = self.harness.login("alice@localhost/desk")
            component.send(f"<message from='{sender}' to='alice@localhost/desk'><body>x</body></message>")
            self.assertEqual(stream_error_of(component.received()), "invalid-from")
            self.assertEqual([e for e in alice.received() if e.name == "message"], [])
            component.drop()
            alice.drop()

    def test_disconnected_component_bounces_service_unavailable(self):
        """After the component disconnects, its route and disco item are gone and a message to its
        domain is answered service-unavailable from the addressed JID."""
        component = self.connected()
        component.drop()
        self.assertNotIn("muc.localhost", [jid for jid, _, _ in self.server.hosts["localhost"].disco.items])
        alice = self.harness.login("alice@localhost/desk")
        alice.send("<message to='room@muc.localhost' id='b1'><body>anyone?</body></message>")
        errors = [e for e in alice.received() if e.name == "message" and e.getAttribute("type") == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["from"], "room@muc.localhost")
        self.assertEqual(errors[0]["id"], "b1")
        self.assertEqual(stanza_error_of(errors[0]), "service-unavailable")
        self.assertEqual(component.transport.value(), b"")

    def test_never_connected_component_bounces_service_unavailable(self):
        """A configured component that never connected answers service-unavailable (not federation)."""
        alice = self.harness.login("alice@localhost/desk")
        reply = alice.iq("<iq type='get' id='q1' to='muc.localhost'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply["from"], "muc.localhost")
        self.assertEqual(stanza_error_of(reply), "service-unavailable")

    def test_reconnect_after_disconnect(self):
        """A component may connect again after its previous stream went away, and receives again."""
        self.connected().drop()
        component = self.connected()
        alice = self.harness.login("alice@localhost/desk")
        alice.send("<message to='room@muc.localhost' id='again'><body>back?</body></message>")
        self.assertEqual([e["id"] for e in component.received() if e.name == "message"], ["again"])


class BackpressureTests(SynchronousTestCase):
    def test_component_that_never_reads_is_cut_off(self):
        """A component that stops reading while stanzas for its domain keep coming is cut off with
        <policy-violation/> past max_buffered_bytes; its domain answers service-unavailable again."""
        harness = Harness(component_config(max_buffered_bytes=4096))
        factory = ComponentFactory(harness.server)
        factory.register_offline_routes()
        harness.add_user("alice@localhost")
        component = FakeComponent(factory, BufferingTransport(buffer_bytes=8192))
        component.handshake()
        alice = harness.login("alice@localhost/desk")
        for number in range(100):
            alice.send(f"<message to='room@muc.localhost' id='m{number}'><body>{'x' * 500}</body></message>")
            if component.transport.disconnected:
                break
        self.assertTrue(component.transport.disconnected)
        self.assertLess(len(component.transport.value()), 8192 + 4096 + 2000)
        self.assertEqual(stream_error_of(component.received()), "policy-violation")
        alice.send("<message to='room@muc.localhost' id='after'><body>x</body></message>")
        bounce = [e for e in alice.received() if e.getAttribute("id") == "after"][0]
        self.assertEqual(stanza_error_of(bounce), "service-unavailable")
