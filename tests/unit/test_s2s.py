"""Server-to-server streams in memory: dialback, stanza acceptance, outgoing links and their failures."""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.streams.s2s import (IncomingServerStream, LinkFailed, OutgoingServerStream, RemoteDomains,
                                     dialback_key)
from bridge.core.xmlstream import NS_STREAMS
from tests.unit.helpers import BufferingTransport, Harness, WireClient, result_of

PEER_HEADER = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
               "xmlns:db='jabber:server:dialback' from='remote.test' to='localhost' version='1.0'>")


class NoTLS:
    """The TLS half of the s2s code, for streams that stay in clear in these tests."""

    options = None

    def verify(self, transport, domain):
        return "no TLS"

    def client(self, hostname, origin):
        raise AssertionError("no TLS in these tests")


class FakeResolver:
    def __init__(self, records=None, failure=None):
        self.records = records or []
        self.failure = failure
        self.asked = []

    def lookupService(self, name):
        self.asked.append(name)
        if self.failure is not None:
            return defer.fail(self.failure)
        answers = [dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(priority, weight, port, target))
                   for priority, weight, port, target in self.records]
        return defer.succeed((answers, [], []))


def s2s_harness(**s2s):
    """A server with federation: ``s2s`` options are loaded as from a file."""
    s2s.setdefault("require_encryption", False)
    harness = Harness(configuration.parse({"c2s": {"require_encryption": False}, "s2s": s2s,
                                           "hosts": {"localhost": {}}}, "test.toml"))
    harness.reactor = MemoryReactorClock()
    harness.resolver = FakeResolver()
    harness.remote = RemoteDomains(harness.server, NoTLS(), harness.reactor, resolver=harness.resolver)
    harness.server.router.default_route = harness.remote
    return harness


def server_peer(protocol, transport=None):
    """The far end of a server stream."""
    return WireClient(protocol, "jabber:server", ("127.0.0.9", 5269), transport)


READY_LINK = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
              b" xmlns:db='jabber:server:dialback' id='p' version='1.0'><stream:features>"
              b"<dialback xmlns='urn:xmpp:features:dialback'/><sm xmlns='urn:xmpp:sm:3'/>"
              b"</stream:features><db:result type='valid' from='remote.test' to='localhost'/>")


class DialbackKeyTests(SynchronousTestCase):
    def test_key_depends_on_every_input(self):
        """The key changes with the secret, either domain and the stream id (XEP-0185)."""
        base = dialback_key(b"s", "a.test", "b.test", "id1")
        self.assertEqual(len(base), 64)
        self.assertEqual(base, dialback_key(b"s", "a.test", "b.test", "id1"))
        for other in (dialback_key(b"t", "a.test", "b.test", "id1"), dialback_key(b"s", "b.test", "a.test", "id1"),
                      dialback_key(b"s", "a.test", "b.test", "id2")):
            self.assertNotEqual(base, other)


class IncomingTests(SynchronousTestCase):
    def setUp(self):
        self.harness = s2s_harness()
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/a")
        self.alice.send("<presence/>")
        self.alice.received()
        self.peer = server_peer(IncomingServerStream(self.harness.server, self.harness.remote))

    def test_features_offer_dialback(self):
        """An incoming stream is answered with our header and features offering STARTTLS and dialback."""
        self.peer.send(PEER_HEADER)
        features = self.peer.received()[-1]
        self.assertEqual(features.name, "features")
        names = {child.name for child in features.elements()}
        self.assertEqual(names, {"starttls", "dialback", "sm"})
        self.assertEqual(self.peer.headers[-1]["from"], "localhost")

    def test_dialback_then_stanzas(self):
        """After a valid dialback, stanzas from the peer's domain reach local users."""
        checks = []
        self.harness.remote.verify_dialback = lambda *args: checks.append(args) or defer.succeed(True)
        self.peer.send(PEER_HEADER)
        self.peer.received()
        self.peer.send("<db:result from='remote.test' to='localhost'>abc</db:result>")
        result = self.peer.received()[-1]
        self.assertEqual((result.name, result["type"]), ("result", "valid"))
        stream_id = self.peer.headers[-1]["id"]
        self.assertEqual(checks, [("remote.test", "localhost", stream_id, "abc")])
        self.peer.send("<message from='bob@remote.test/x' to='alice@localhost' type='chat'><body>hi</body></message>")
        delivered = [e for e in self.alice.received() if e.name == "message"]
        self.assertEqual(delivered[0]["from"], "bob@remote.test/x")

    def test_invalid_dialback(self):
        """A key the authoritative server disowns gets type='invalid' and no authentication."""
        self.harness.remote.verify_dialback = lambda *args: defer.succeed(False)
        self.peer.send(PEER_HEADER)
        self.peer.send("<db:result from='remote.test' to='localhost'>forged</db:result>")
        self.assertEqual(self.peer.received()[-1]["type"], "invalid")
        self.peer.send("<message from='bob@remote.test' to='alice@localhost'><body>x</body></message>")
        error = self.peer.received()[-1]
        self.assertEqual(next(error.elements()).name, "invalid-from")
        self.assertEqual([e for e in self.alice.received() if e.name == "message"], [])

    def test_stream_management_counts_handled_stanzas(self):
        """After <enable/>, the peer's <r/> is answered with the number of stanzas handled."""
        self.harness.remote.verify_dialback = lambda *args: defer.succeed(True)
        self.peer.send(PEER_HEADER)
        self.peer.send("<db:result from='remote.test' to='localhost'>k</db:result>")
        self.peer.send("<enable xmlns='urn:xmpp:sm:3'/>")
        for n in range(3):
            self.peer.send(f"<message from='bob@remote.test' to='alice@localhost/a'><body>{n}</body></message>")
        self.peer.send("<r xmlns='urn:xmpp:sm:3'/>")
        received = self.peer.received()
        self.assertIn("enabled", [e.name for e in received])
        self.assertEqual(received[-1]["h"], "3")

    def test_authoritative_verify(self):
        """As authoritative server we confirm our own keys and only those."""
        remote = self.harness.remote
        good = dialback_key(remote.secret, "remote.test", "localhost", "sid")
        self.peer.send(PEER_HEADER)
        self.peer.received()
        self.peer.send(f"<db:verify from='remote.test' to='localhost' id='sid'>{good}</db:verify>")
        self.peer.send("<db:verify from='remote.test' to='localhost' id='sid'>bad</db:verify>")
        answers = [e["type"] for e in self.peer.received() if e.name == "verify"]
        self.assertEqual(answers, ["valid", "invalid"])

    def test_denied_domain(self):
        """A denied domain is refused at the stream header."""
        harness = s2s_harness(denied_domains=["remote.test"])
        peer = server_peer(IncomingServerStream(harness.server, harness.remote))
        peer.send(PEER_HEADER)
        error = peer.received()[-1]
        self.assertEqual(next(error.elements()).name, "policy-violation")

    def test_denied_domain_in_any_case(self):
        """A domain denied in capitals is refused in lower case, at the header and for SASL EXTERNAL alike."""
        harness = s2s_harness(denied_domains=["Remote.TEST"])
        self.assertFalse(harness.remote.permitted("remote.test"))
        self.assertFalse(harness.remote.permitted("REMOTE.test"))
        peer = server_peer(IncomingServerStream(harness.server, harness.remote))
        peer.send(PEER_HEADER)
        self.assertEqual(next(peer.received()[-1].elements()).name, "policy-violation")

    def test_domain_blocked_at_run_time(self):
        """A domain an administrator blocked (XEP-0133 edit-blacklist) is refused like a denied one, and
        stanzas to it bounce; unblocked, it may federate again."""
        harness = s2s_harness()
        result_of(harness.server.set_blocked_domains({"remote.test"}))
        self.assertFalse(harness.remote.permitted("Remote.Test"))
        peer = server_peer(IncomingServerStream(harness.server, harness.remote))
        peer.send(PEER_HEADER)
        self.assertEqual(next(peer.received()[-1].elements()).name, "policy-violation")
        result_of(harness.server.set_blocked_domains(set()))
        self.assertTrue(harness.remote.permitted("remote.test"))

    def test_allowed_domain_in_any_case(self):
        """A domain allowed in capitals may federate, whatever the case its peers write it in."""
        harness = s2s_harness(allowed_domains=["Remote.TEST"])
        self.assertTrue(harness.remote.permitted("remote.test"))
        self.assertTrue(harness.remote.permitted("Remote.Test"))
        self.assertFalse(harness.remote.permitted("other.test"))

    def test_tls_required(self):
        """With encryption required, dialback before STARTTLS is refused."""
        harness = s2s_harness(require_encryption=True)
        peer = server_peer(IncomingServerStream(harness.server, harness.remote))
        peer.send(PEER_HEADER)
        features = peer.received()[-1]
        self.assertEqual([c.name for c in features.elements()], ["starttls"])
        peer.send("<db:result from='remote.test' to='localhost'>abc</db:result>")
        self.assertEqual(next(peer.received()[-1].elements()).name, "not-authorized")


class DialbackLimitTests(SynchronousTestCase):
    """What a peer can make bridge do before it is authenticated is bounded."""

    def setUp(self):
        self.harness = s2s_harness(dialback_max_pending_per_stream=2, dialback_max_pending=3,
                                   pre_auth_timeout_seconds=30, max_connections_per_address=2)
        self.checks = []

        def connect(origin, target, verify=None):
            # A verification that has not finished: the connection to the claimed domain is under way.
            self.checks.append((origin, target, verify))
            return defer.Deferred()

        self.harness.remote.connect = connect

    def peer(self, address="127.0.0.9"):
        peer = WireClient(IncomingServerStream(self.harness.server, self.harness.remote), "jabber:server",
                          (address, 5269))
        peer.send(PEER_HEADER)
        peer.received()
        return peer

    def results(self, peer, *domains):
        for domain in domains:
            peer.send(f"<db:result from='{domain}' to='localhost'>key</db:result>")
        return [(e["to"], e["type"], e.error and next(e.error.elements()).name) for e in peer.received()
                if e.name == "result"]

    def test_pending_verifications_per_stream(self):
        """Past dialback_max_pending_per_stream checks under way, a stream's <db:result/> is answered
        type='error' <resource-constraint/> without a connection; a finished check frees its place."""
        peer = self.peer()
        self.assertEqual(self.results(peer, "one.test", "two.test", "three.test"),
                         [("three.test", "error", "resource-constraint")])
        self.assertEqual([target for _, target, _ in self.checks], ["one.test", "two.test"])
        self.checks[0][2][3].callback(False)
        self.assertEqual(self.results(peer, "four.test"), [("one.test", "invalid", None)])
        self.assertEqual(len(self.checks), 3)

    def test_pending_verifications_in_all(self):
        """Past dialback_max_pending checks under way on all streams together, no new one is started."""
        first, second = self.peer(), self.peer("127.0.0.10")
        self.results(first, "one.test", "two.test")
        self.assertEqual(self.results(second, "three.test", "four.test"),
                         [("four.test", "error", "resource-constraint")])
        self.assertEqual(len(self.checks), 3)

    def test_no_check_for_our_own_or_malformed_domains(self):
        """A <db:result/> claiming one of our own domains, or no valid domain, gets an error and no connection."""
        peer = self.peer()
        answers = self.results(peer, "localhost", "a@b.test", "bad..domain")
        self.assertEqual([condition for _, kind, condition in answers], ["item-not-found"] * 3)
        self.assertEqual(self.checks, [])

    def test_pre_auth_timeout(self):
        """An incoming stream not authenticated within pre_auth_timeout_seconds ends with <connection-timeout/>;
        an authenticated one stays."""
        silent = self.peer()
        self.harness.remote.verify_dialback = lambda *args: defer.succeed(True)
        authenticated = self.peer("127.0.0.10")
        authenticated.send("<db:result from='remote.test' to='localhost'>key</db:result>")
        authenticated.received()
        self.harness.clock.advance(29)
        self.assertFalse(silent.transport.disconnecting)
        self.harness.clock.advance(2)
        self.assertEqual(next(silent.received()[-1].elements()).name, "connection-timeout")
        self.assertTrue(silent.transport.disconnecting)
        self.assertFalse(authenticated.transport.disconnecting)

    def test_connections_per_address(self):
        """Past max_connections_per_address incoming streams from one address, the next is refused with
        <policy-violation/>; a closed one frees its place, and other addresses are not affected."""
        first = self.peer()
        self.peer()
        third = WireClient(IncomingServerStream(self.harness.server, self.harness.remote), "jabber:server",
                           ("127.0.0.9", 5269))
        self.assertEqual(next(third.received()[-1].elements()).name, "policy-violation")
        self.assertTrue(third.transport.disconnecting)
        self.assertFalse(self.peer("127.0.0.10").transport.disconnecting)
        third.drop()
        first.drop()
        self.assertFalse(self.peer().transport.disconnecting)


class StartTLSTests(SynchronousTestCase):
    """STARTTLS on server links, with transports that record the switch to TLS."""

    INJECTED = PEER_HEADER + "<db:result from='remote.test' to='localhost'>key</db:result>"

    def setUp(self):
        self.harness = s2s_harness(require_encryption=True)
        self.checks = []
        self.harness.remote.verify_dialback = lambda *args: self.checks.append(args) or defer.succeed(True)

    def incoming(self):
        peer = server_peer(IncomingServerStream(self.harness.server, self.harness.remote), BufferingTransport())
        peer.send(PEER_HEADER)
        self.assertEqual([c.name for c in peer.received()[-1].elements()], ["starttls"])
        return peer

    def test_incoming_starttls(self):
        """<starttls/> alone is answered <proceed/> and the link switches to TLS."""
        peer = self.incoming()
        peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertEqual([e.name for e in peer.received()], ["proceed"])
        self.assertEqual(len(peer.transport.tls), 1)

    def test_incoming_plaintext_after_starttls(self):
        """Bytes after <starttls/> in its read (a new header and a dialback request, which would be
        taken as sent under TLS) end the stream with <policy-violation/>; TLS never starts and no
        dialback check is made."""
        peer = self.incoming()
        peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + self.INJECTED)
        received = peer.received()
        self.assertEqual([e.name for e in received], ["error"])
        self.assertEqual(next(received[0].elements()).name, "policy-violation")
        self.assertEqual((peer.transport.tls, self.checks), ([], []))
        self.assertTrue(peer.transport.disconnecting)

    def outgoing(self):
        self.harness.remote.tls = type("ClientTLS", (NoTLS,), {"client": lambda self, name, origin: ("TLS to", name)})()
        stream = OutgoingServerStream(self.harness.remote, "localhost", "remote.test")
        peer = server_peer(stream, BufferingTransport())
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                            b"id='x' version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                            b"</stream:features>")
        self.assertEqual(peer.received()[-1].name, "starttls")
        return stream, peer

    def test_outgoing_proceed(self):
        """The peer's <proceed/> switches our link to TLS and a new stream header follows."""
        stream, peer = self.outgoing()
        stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertEqual(peer.transport.tls, [("TLS to", "remote.test")])
        self.assertTrue(stream.secure)
        self.assertIn(b"<stream:stream", peer.transport.value())

    def test_outgoing_plaintext_after_proceed(self):
        """Bytes after the peer's <proceed/> in its read (features, a dialback answer) end our stream with
        <policy-violation/>; TLS never starts and the link fails."""
        stream, peer = self.outgoing()
        failures = []
        stream.ready.addErrback(failures.append)
        stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><stream:features>"
                            b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        received = peer.received()
        self.assertEqual(next(received[-1].elements()).name, "policy-violation")
        self.assertEqual(peer.transport.tls, [])
        self.assertFalse(stream.secure)
        self.assertNotIn("result", [e.name for e in received])
        stream.connectionLost(None)
        self.assertIn("policy-violation", str(failures[0].value))


class OutgoingTests(SynchronousTestCase):
    def test_dialback_negotiation(self):
        """The outgoing stream sends our dialback key for the peer's stream id and is ready when valid."""
        harness = s2s_harness()
        stream = OutgoingServerStream(harness.remote, "localhost", "remote.test")
        peer = server_peer(stream)
        peer.received()
        self.assertEqual(peer.headers[-1]["to"], "remote.test")
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                            b"xmlns:db='jabber:server:dialback' id='peer-id' version='1.0'>"
                            b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        key = [e for e in peer.received() if e.name == "result"][0]
        self.assertEqual(str(key), dialback_key(harness.remote.secret, "remote.test", "localhost", "peer-id"))
        ready = []
        stream.ready.addCallback(ready.append)
        stream.dataReceived(b"<db:result from='remote.test' to='localhost' type='valid'/>")
        self.assertEqual(ready, [stream])

    def certificate_fails(self, **s2s):
        """An outgoing stream over TLS to a peer whose certificate does not verify and which offers
        dialback; the elements it sends after the peer's features."""
        harness = s2s_harness(require_encryption=True, **s2s)
        harness.remote.tls = type("UntrustedTLS", (NoTLS,), {
            "verify": lambda self, transport, domain: "untrusted certificate: self-signed"})()
        stream = OutgoingServerStream(harness.remote, "localhost", "remote.test")
        stream.secure = True  # direct TLS, done
        peer = server_peer(stream)
        peer.received()
        failures = []
        stream.ready.addErrback(failures.append)
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                            b"xmlns:db='jabber:server:dialback' id='peer-id' version='1.0'><stream:features>"
                            b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        return stream, peer.received(), failures

    def test_no_dialback_fallback_by_default(self):
        """A peer whose certificate does not verify is not used: the link fails, no dialback key is sent."""
        stream, sent, failures = self.certificate_fails()
        self.assertNotIn("result", [e.name for e in sent])
        stream.connectionLost(None)
        self.assertIn("untrusted certificate", str(failures[0].value))
        self.assertIn("dialback_fallback_domains", str(failures[0].value))

    def test_dialback_fallback_for_listed_domains(self):
        """For a domain in dialback_fallback_domains (in any case), the link is authenticated by dialback
        despite the certificate."""
        stream, sent, failures = self.certificate_fails(dialback_fallback_domains=["Remote.Test"])
        self.assertEqual([e.name for e in sent], ["result"])
        stream.dataReceived(b"<db:result from='remote.test' to='localhost' type='valid'/>")
        self.assertTrue(stream.ready.called)
        self.assertEqual(failures, [])

    def test_no_tls_offered_when_required(self):
        """A peer that offers no STARTTLS fails the link when encryption is required."""
        harness = s2s_harness(require_encryption=True)
        stream = OutgoingServerStream(harness.remote, "localhost", "remote.test")
        server_peer(stream)
        failures = []
        stream.ready.addErrback(failures.append)
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                            b"id='x' version='1.0'><stream:features/>")
        stream.connectionLost(None)
        self.assertIn("no TLS", str(failures[0].value))


class LinkTests(SynchronousTestCase):
    def setUp(self):
        self.harness = s2s_harness()
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/a")
        self.attempts = []
        self.harness.remote.connect = lambda origin, target: self.attempts.append(defer.Deferred()) or \
            self.attempts[-1]

    def test_queued_then_sent_in_order(self):
        """Stanzas wait while the link is set up, then leave in order over one stream."""
        for n in range(3):
            self.alice.send(f"<message to='bob@remote.test' id='m{n}'><body>{n}</body></message>")
        self.assertEqual(len(self.attempts), 1)
        sent = []
        stream = type("Stream", (), {"closed": False, "send_stanza": lambda self, stanza: sent.append(stanza["id"])})()
        self.attempts[0].callback(stream)
        self.assertEqual(sent, ["m0", "m1", "m2"])

    def test_failure_bounces_to_senders(self):
        """When the remote server cannot be reached, every queued stanza is bounced to its sender."""
        self.alice.send("<message to='bob@remote.test' id='m1'><body>x</body></message>")
        self.alice.send("<iq to='remote.test' type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.attempts[0].errback(LinkFailed("connection refused"))
        errors = [e for e in self.alice.received() if e.getAttribute("type") == "error"]
        self.assertEqual(sorted(e["id"] for e in errors), ["i1", "m1"])
        self.assertEqual({next(e.error.elements()).name for e in errors}, {"remote-server-not-found"})

    def test_waiting_messages_survive_a_restart(self):
        """Messages still waiting for a link at shutdown are stored and sent again at the next start."""
        self.alice.send("<message to='bob@remote.test' id='m1'><body>x</body></message>")
        self.alice.send("<presence to='bob@remote.test'/>")
        self.harness.remote.stop()
        restarted = RemoteDomains(self.harness.server, NoTLS(), self.harness.reactor, resolver=FakeResolver())
        self.harness.server.router.default_route = restarted
        attempts = []
        restarted.connect = lambda origin, target: attempts.append((origin, target)) or defer.Deferred()
        restarted.start()
        self.assertEqual(attempts, [("localhost", "remote.test")])
        link = restarted.links[("localhost", "remote.test")]
        self.assertEqual([stanza["id"] for stanza in link.queue], ["m1"])
        self.assertEqual(self.harness.storage.items("localhost", "", "s2s-pending").result, [])
        restarted.stop()

    def test_disallowed_domain(self):
        """Federation with a domain outside allowed_domains is refused without a connection."""
        harness = s2s_harness(allowed_domains=["friend.test"])
        harness.add_user("alice@localhost")
        alice = harness.login("alice@localhost/a")
        alice.send("<message to='bob@remote.test' id='m'><body>x</body></message>")
        error = [e for e in alice.received() if e.getAttribute("type") == "error"][0]
        self.assertEqual(next(error.error.elements()).name, "remote-server-not-found")


class ResendTests(SynchronousTestCase):
    """Stanzas a dying link did not get acknowledged are sent again, and bounced if it keeps dying."""

    def setUp(self):
        self.harness = s2s_harness()
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/a")
        self.streams = []

        def connect(origin, target):
            stream = OutgoingServerStream(self.harness.remote, origin, target)
            peer = server_peer(stream)
            stream.dataReceived(READY_LINK)
            self.streams.append((stream, peer))
            return stream.ready

        self.harness.remote.connect = connect

    def sent_ids(self, peer):
        return [e["id"] for e in peer.received() if e.name == "message"]

    def test_unacknowledged_are_sent_again(self):
        """Only the stanzas after the last <a/> are sent again on the new stream."""
        for n in range(3):
            self.alice.send(f"<message to='bob@remote.test' id='m{n}'><body>{n}</body></message>")
        stream, peer = self.streams[0]
        self.assertEqual(self.sent_ids(peer), ["m0", "m1", "m2"])
        stream.dataReceived(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
        stream.connectionLost(None)
        self.assertEqual(self.sent_ids(self.streams[1][1]), ["m1", "m2"])
        self.assertEqual([e for e in self.alice.received() if e.getAttribute("type") == "error"], [])

    def test_link_that_keeps_dying_bounces(self):
        """After repeated losses the unacknowledged stanza is bounced with remote-server-timeout."""
        self.alice.send("<message to='bob@remote.test' id='m'><body>x</body></message>")
        for attempt in range(4):
            self.streams[-1][0].connectionLost(None)
        errors = [e for e in self.alice.received() if e.getAttribute("type") == "error"]
        self.assertEqual([next(e.error.elements()).name for e in errors], ["remote-server-timeout"])


class OutputTests(SynchronousTestCase):
    """Links are bounded by what the peer reads, and kept open only by what it sends."""

    def make(self, **s2s):
        self.harness = s2s_harness(**s2s)
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/a")
        self.peers = []

        def connect(origin, target):
            stream = OutgoingServerStream(self.harness.remote, origin, target)
            self.peers.append(server_peer(stream, BufferingTransport(buffer_bytes=8192)))
            stream.dataReceived(READY_LINK)
            return stream.ready

        self.harness.remote.connect = connect

    def test_peer_that_never_reads_is_cut_off(self):
        """A remote server that stops reading our stream is cut off with <policy-violation/> once
        max_buffered_bytes more pile up; what was written stays bounded."""
        self.make(max_buffered_bytes=4096)
        for number in range(100):
            self.alice.send(f"<message to='bob@remote.test' id='m{number}'><body>{'x' * 500}</body></message>")
            if self.peers[0].transport.disconnected:
                break
        peer = self.peers[0]
        self.assertTrue(peer.transport.disconnected)
        self.assertLess(len(peer.transport.value()), 8192 + 4096 + 2000)
        self.assertEqual(next(peer.received()[-1].elements()).name, "policy-violation")

    def test_only_what_the_peer_sends_keeps_a_link_open(self):
        """A link on which we keep writing but the peer sends nothing is closed after
        idle_timeout_seconds; one on which the peer sends (a whitespace keepalive) stays open."""
        self.make(idle_timeout_seconds=60)
        self.harness.remote.start()
        self.addCleanup(self.harness.remote.stop)
        self.harness.remote.verify_dialback = lambda *args: defer.succeed(True)
        incoming = server_peer(IncomingServerStream(self.harness.server, self.harness.remote))
        incoming.send(PEER_HEADER)
        incoming.send("<db:result from='remote.test' to='localhost'>key</db:result>")
        for second in range(0, 90, 10):
            self.alice.send(f"<message to='bob@remote.test' id='m{second}'><body>x</body></message>")
            self.peers[0].received()
            incoming.send(" ")
            self.harness.clock.advance(10)
        self.assertTrue(self.peers[0].transport.disconnecting)
        self.assertFalse(incoming.transport.disconnecting)


class AddressTests(SynchronousTestCase):
    def addresses(self, harness, domain):
        found = []
        harness.remote.addresses(domain).addCallback(found.append)
        return found[0]

    def test_static_route(self):
        """A static route wins over DNS."""
        harness = s2s_harness(static_routes={"b.test": "127.0.0.3:15269"})
        self.assertEqual(self.addresses(harness, "b.test"), [("127.0.0.3", 15269, False)])
        self.assertEqual(harness.resolver.asked, [])
        harness = s2s_harness(static_routes={"b.test": "tls:127.0.0.3:5270"})
        self.assertEqual(self.addresses(harness, "b.test"), [("127.0.0.3", 5270, True)])

    def test_srv_order_and_fallback(self):
        """SRV targets are tried by priority; no SRV record falls back to the domain on 5269."""
        harness = s2s_harness()
        harness.resolver.records = [(20, 0, 5270, "backup.b.test"), (10, 5, 5269, "xmpp.b.test")]
        found = self.addresses(harness, "b.test")
        self.assertEqual([address[:2] for address in found][:2], [("xmpp.b.test", 5269), ("xmpp.b.test", 5269)])
        self.assertEqual(found[0][2], True)
        self.assertEqual(found[-1][:2], ("backup.b.test", 5270))
        self.assertEqual(harness.resolver.asked, ["_xmpps-server._tcp.b.test", "_xmpp-server._tcp.b.test"])
        harness.resolver.failure = DNSNameError()
        self.assertEqual(self.addresses(harness, "c.test"), [("c.test", 5269, False)])

    def test_no_service(self):
        """A single SRV target '.' means the domain does not federate."""
        harness = s2s_harness()
        harness.resolver.records = [(0, 0, 0, b"")]  # the root name, "."
        self.assertEqual(self.addresses(harness, "b.test"), [])
