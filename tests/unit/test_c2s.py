"""Client streams over an in-memory transport: features, SASL, binding, limits."""

import base64
import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.streams.base import OUTPUT_BATCH
from bridge.core.streams.c2s import MAX_REQUESTS_IN_WORK, ClientFactory
from bridge.core.xmlstream import parse_element

from tests.unit.helpers import STREAM_OPEN, BufferingTransport, Harness, LateStorage, make_config, scram_login

NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


def stream_error(elements):
    for element in elements:
        if element.name == "error" and element.uri == "http://etherx.jabber.org/streams":
            return next(element.elements()).name
    return None


class StreamTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        self.harness.add_user("alice@localhost")

    def test_features_before_auth(self):
        """Without TLS available, SCRAM is offered and PLAIN is not."""
        client = self.harness.connect()
        features = client.open_stream()[-1]
        self.assertEqual(features.name, "features")
        mechanisms = [str(m) for m in features.mechanisms.elements()]
        self.assertEqual(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-1"])

    def test_unknown_host(self):
        """A stream to a host not served here ends with host-unknown."""
        client = self.harness.connect()
        self.assertEqual(stream_error(client.open_stream("elsewhere.test")), "host-unknown")
        self.assertTrue(client.transport.disconnecting)

    def test_login_and_bind(self):
        """SCRAM-SHA-1 and -256 logins; the server makes a resource when none is asked."""
        client = self.harness.connect()
        jid = client.login("alice@localhost", mechanism="SCRAM-SHA-1")
        self.assertTrue(jid.startswith("alice@localhost/"))
        self.assertGreater(len(jid), len("alice@localhost/") + 8)
        self.assertIsNotNone(self.harness.server.sessions.get(jid))

    def test_legacy_session_establishment(self):
        """The RFC 3921 session IQ that older clients send is answered with a result."""
        client = self.harness.login("alice@localhost/a")
        reply = client.iq("<iq type='set' id='s' to='localhost'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        self.assertEqual((reply["type"], reply["from"]), ("result", "localhost"))

    def test_wrong_password(self):
        """A wrong password gets <not-authorized/>; three failures close the stream."""
        client = self.harness.connect()
        client.open_stream()
        for attempt in range(2):
            outcome = scram_login(client, "alice", "wrong")
            self.assertEqual((outcome.name, next(outcome.elements()).name), ("failure", "not-authorized"))
            self.assertFalse(client.transport.disconnecting)
        scram_login(client, "alice", "wrong")
        self.assertTrue(client.transport.disconnecting)

    def test_unknown_user_gets_a_stable_salt(self):
        """SCRAM for a name without an account is challenged, on every connection, with the salt the
        server's secret gives that name on this host, and fails as a wrong password does."""
        salts = []
        for attempt in range(2):
            client = self.harness.connect()
            client.open_stream()
            payload = base64.b64encode(b"n,,n=mallory,r=abc").decode()
            client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{payload}</auth>")
            challenge = client.received()[-1]
            salts.append(dict(part.split("=", 1) for part in base64.b64decode(str(challenge)).decode().split(","))["s"])
        expected = self.harness.server.decoys.credentials("localhost", "mallory")["SCRAM-SHA-256"]["salt"]
        self.assertEqual(salts, [expected, expected])
        client = self.harness.connect()
        client.open_stream()
        outcome = scram_login(client, "mallory", "guess")
        self.assertEqual((outcome.name, next(outcome.elements()).name), ("failure", "not-authorized"))

    def test_guessing_from_one_address_is_cut_off(self):
        """After ten wrong passwords in a minute from one address, even the right one gets
        <temporary-auth-failure/> there, until the minute has passed; other addresses are not affected."""
        for attempt in range(5):
            client = self.harness.connect()
            client.open_stream()
            scram_login(client, "alice", "wrong")
            scram_login(client, "alice", "wrong")
        client = self.harness.connect()
        client.open_stream()
        refused = scram_login(client, "alice", "secret")
        self.assertEqual((refused.name, next(refused.elements()).name), ("failure", "temporary-auth-failure"))
        self.harness.connect("127.0.0.2").login("alice@localhost/elsewhere")
        self.harness.clock.advance(61)
        self.harness.login("alice@localhost/later")

    def test_address_with_an_empty_label(self):
        """A message to an address whose domain has an empty label ('a..b', on which Twisted's nameprep
        raises IndexError) is answered jid-malformed; the stream goes on."""
        client = self.harness.login("alice@localhost/a")
        client.send("<message to='bob@bad..domain' id='m'><body>x</body></message>")
        reply = client.received()[-1]
        self.assertEqual((reply["id"], reply["type"], next(reply.error.elements()).name),
                         ("m", "error", "jid-malformed"))
        self.assertFalse(client.transport.disconnecting)

    def test_stanza_before_auth(self):
        """A message before authentication is not-authorized."""
        client = self.harness.connect()
        client.open_stream()
        client.send("<message to='alice@localhost'><body>hi</body></message>")
        self.assertEqual(stream_error(client.received()), "not-authorized")

    def test_pre_auth_timeout(self):
        """A silent unauthenticated connection is closed after the timeout."""
        client = self.harness.connect()
        self.harness.clock.advance(29)
        self.assertFalse(client.transport.disconnecting)
        self.harness.clock.advance(2)
        self.assertEqual(stream_error(client.received()), "connection-timeout")
        self.assertTrue(client.transport.disconnecting)

    def test_billion_laughs_on_the_wire(self):
        """The stream answers a DTD with <restricted-xml/> and closes."""
        from tests.unit.test_xmlstream import BILLION_LAUGHS

        client = self.harness.connect()
        client.send(BILLION_LAUGHS)
        self.assertEqual(stream_error(client.received()), "restricted-xml")
        self.assertTrue(client.transport.disconnecting)

    def test_oversize_stanza(self):
        """A stanza over the configured size ends the stream with policy-violation."""
        harness = Harness(make_config(stanza_size_limit_bytes=2048))
        harness.add_user("alice@localhost")
        client = harness.login("alice@localhost/a")
        client.send("<message to='alice@localhost'><body>" + "x" * 5000 + "</body></message>")
        self.assertEqual(stream_error(client.received()), "policy-violation")

    def test_connections_per_address(self):
        """Past the per-address limit, new connections are refused with policy-violation."""
        harness = Harness(make_config(max_connections_per_address=2))
        first, second, third = harness.connect(), harness.connect(), harness.connect()
        self.assertFalse(first.transport.disconnecting or second.transport.disconnecting)
        self.assertEqual(stream_error(third.received()), "policy-violation")
        third.drop()
        first.drop()
        self.assertFalse(harness.connect().transport.disconnecting)

    def test_rate_limit_pauses_reading(self):
        """A client past its byte budget is paused, then resumed by the clock."""
        harness = Harness(make_config(rate_limit_bytes_per_second=1000, rate_limit_burst_bytes=2000))
        client = harness.connect()
        client.open_stream()
        client.send(" " * 3000)
        self.assertEqual(client.transport.producerState, "paused")
        harness.clock.advance(2)
        self.assertEqual(client.transport.producerState, "producing")

    def test_sessions_per_user(self):
        """Binding more resources than allowed is a resource-constraint."""
        harness = Harness(make_config(max_sessions_per_user=1))
        harness.add_user("alice@localhost")
        harness.login("alice@localhost/one")
        client = harness.connect()
        client.open_stream()
        scram_login(client, "alice", "secret")
        client.restart("localhost")
        client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    "<resource>two</resource></bind></iq>")
        reply = client.received()[-1]
        self.assertEqual(reply["type"], "error")
        self.assertEqual(next(reply.error.elements()).name, "resource-constraint")


class EndedConnectionTests(SynchronousTestCase):
    """A connection that has ended is freed by its last reference, not by the cycle collector.

    A flood of connections that are cut at once would otherwise fill the
    heap that every full collection walks.
    """

    def setUp(self):
        self.harness = Harness()
        self.harness.add_user("alice@localhost")

    def assert_freed(self, client):
        client.drop()
        client.transport.producer = None  # as Twisted's transport does when the connection is lost
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        protocol, stream = weakref.ref(client.protocol), weakref.ref(client.protocol.stream)
        client.protocol = None
        self.assertEqual((protocol(), stream()), (None, None))

    def test_connection_cut_for_garbage(self):
        """A connection ended by a stream error at its first bytes."""
        client = self.harness.connect()
        client.send("<?xml version='1.0'?>garbage<<<")
        self.assertEqual([e.name for e in client.received()][-1], "error")
        self.assert_freed(client)

    def test_an_answer_after_the_end_goes_nowhere(self):
        """A SASL exchange whose credentials are read after the connection ended (storage answers late)
        ends quietly: nothing is written, nothing fails."""
        storage = LateStorage()
        harness = Harness(storage=storage)
        harness.add_user("alice@localhost")
        client = harness.connect()
        client.open_stream()
        storage.late = True
        plain = base64.b64encode(b"\0alice\0secret").decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>")
        client.drop()
        client.transport.clear()
        storage.late = False
        storage.answer()
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIsNone(harness.server.sessions.get("alice@localhost/a"))

    def test_session_that_ended(self):
        """A bound session whose socket went away."""
        client = self.harness.login("alice@localhost/a")
        client.send("<presence/>")
        client.received()
        self.assert_freed(client)


class ConflictTests(SynchronousTestCase):
    def bind_twice(self, policy):
        harness = Harness(make_config(resource_conflict=policy))
        harness.add_user("alice@localhost")
        first = harness.login("alice@localhost/phone")
        second = harness.connect()
        second.open_stream()
        scram_login(second, "alice", "secret")
        second.restart("localhost")
        second.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    "<resource>phone</resource></bind></iq>")
        return harness, first, second.received()[-1]

    def test_replace(self):
        """'replace' closes the old session with <conflict/> and binds the new one."""
        harness, first, reply = self.bind_twice("replace")
        self.assertEqual(reply["type"], "result")
        self.assertEqual(stream_error(first.received()), "conflict")

    def test_refuse(self):
        """'refuse' keeps the old session and answers the new bind with <conflict/>."""
        harness, first, reply = self.bind_twice("refuse")
        self.assertEqual(reply["type"], "error")
        self.assertIsNotNone(harness.server.sessions.get("alice@localhost/phone"))

    def test_rename(self):
        """'rename' binds the new session under another resource."""
        harness, first, reply = self.bind_twice("rename")
        jid = str(reply.bind.jid)
        self.assertTrue(jid.startswith("alice@localhost/phone-"))
        self.assertEqual(len(harness.server.sessions.resources("alice@localhost")), 2)


class KeepaliveTests(SynchronousTestCase):
    def test_idle_client_pinged_then_closed(self):
        """A silent client is pinged; no answer closes it; an answer keeps it."""
        harness = Harness(make_config(ping_interval_seconds=60, ping_timeout_seconds=10))
        harness.add_user("alice@localhost")
        quiet = harness.login("alice@localhost/quiet")
        lively = harness.login("alice@localhost/lively")
        harness.clock.advance(61)
        ping = lively.received()[-1]
        self.assertEqual(ping.ping.uri, "urn:xmpp:ping")
        lively.send(f"<iq type='result' id='{ping['id']}' to='localhost'/>")
        quiet.received()
        harness.clock.advance(11)
        self.assertEqual(stream_error(quiet.received()), "connection-timeout")
        self.assertFalse(lively.transport.disconnecting)


class BackpressureTests(SynchronousTestCase):
    """Output to a client is bounded by what it reads (the transport's buffer is 16 KiB here)."""

    PHOTO = "A" * 20000

    def setUp(self):
        self.harness = Harness(make_config(max_buffered_bytes=8192))
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.alice = self.harness.connect(transport=BufferingTransport(buffer_bytes=16384))
        self.alice.login("alice@localhost/phone")
        reply = self.alice.iq(f"<iq type='set' id='v'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>{self.PHOTO}"
                              "</BINVAL></PHOTO></vCard></iq>")
        self.assertEqual(reply["type"], "result")
        self.bob = self.harness.login("bob@localhost/desk")

    def ask_for_vcards(self, count):
        self.alice.send("".join(f"<iq type='get' id='v{n}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>"
                                for n in range(count)))

    def test_client_that_never_reads(self):
        """A client that asks for a large vCard again and again and never reads: once its transport is
        full, reading from it stops and its requests wait unanswered; what others send it piles up to
        max_buffered_bytes, then it is cut off with <policy-violation/>.  What was written stays bounded."""
        transport = self.alice.transport
        self.ask_for_vcards(50)
        self.assertEqual(transport.producerState, "paused")
        written = len(transport.value())
        self.assertLess(written, 16384 + 2 * len(self.PHOTO))
        self.ask_for_vcards(50)
        self.assertEqual(len(transport.value()), written)
        for number in range(100):
            self.bob.send(f"<message to='alice@localhost/phone'><body>{'x' * 500} {number}</body></message>")
            if transport.disconnected:
                break
        self.assertTrue(transport.disconnected)
        self.assertLess(len(transport.value()), written + 8192 + 2000)
        self.assertEqual(stream_error(self.alice.received()), "policy-violation")
        self.alice.drop()
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/phone"))
        self.assertFalse(self.bob.transport.disconnecting)

    def test_client_that_reads_gets_every_answer(self):
        """A client that asks for fifty large vCards at once but reads gets every answer, in order, as
        fast as it reads: far more than max_buffered_bytes in all, never more than one answer beyond
        its transport's buffer at a time."""
        self.ask_for_vcards(50)
        answers = []
        for _ in range(100):
            self.assertLess(len(self.alice.transport.value()), 16384 + 2 * len(self.PHOTO))
            answers += [e["id"] for e in self.alice.received() if e.name == "iq"]
            if len(answers) == 50:
                break
        self.assertEqual(answers, [f"v{n}" for n in range(50)])
        self.assertFalse(self.alice.transport.disconnecting)
        self.assertEqual(self.alice.transport.producerState, "producing")

    def test_rate_limit_and_waiting_elements_pause_reading_together(self):
        """Reading stays paused while either the input rate or elements waiting for a full output ask for
        it; a full output alone does not pause it (a TLS handshake fills it and needs reading)."""
        harness = Harness(make_config(rate_limit_bytes_per_second=1000, rate_limit_burst_bytes=2000))
        harness.add_user("alice@localhost")
        client = harness.connect(transport=BufferingTransport())
        client.login("alice@localhost/phone")
        harness.clock.advance(5)
        client.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "producing")
        client.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>" + " " * 3000)
        self.assertEqual(client.transport.producerState, "paused")
        harness.clock.advance(5)
        self.assertEqual(client.transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.received()[-1]["id"], "p")


class OutputBatchTests(SynchronousTestCase):
    def test_stanzas_of_one_read_go_out_together(self):
        """Ten messages in one read to the same client reach its transport in one write (one TLS
        record); sent one read each, in ten."""
        harness = Harness()
        for user in ("alice", "bob"):
            harness.add_user(f"{user}@localhost")
        alice = harness.login("alice@localhost/a")
        bob = harness.connect(transport=BufferingTransport())
        bob.login("bob@localhost/b")
        bob.received()
        writes = bob.transport.writes
        alice.send("".join(f"<message to='bob@localhost/b' id='m{n}'><body>hi</body></message>" for n in range(10)))
        self.assertEqual(bob.transport.writes - writes, 1)
        self.assertEqual([m["id"] for m in bob.received()], [f"m{n}" for n in range(10)])
        for n in range(10):
            alice.send(f"<message to='bob@localhost/b' id='s{n}'><body>hi</body></message>")
        self.assertEqual(bob.transport.writes - writes, 11)
        self.assertEqual(len(bob.received()), 10)

    def test_batches_last_to_the_end_of_the_iteration_when_told(self):
        """With the reactor's callLater given (as the server's service does), the reads of one iteration (two
        senders) make one write to their common recipient, at the iteration's end; what is written meanwhile
        outside a read follows the held bytes, in order; without it, each read's output goes at once."""
        harness = Harness()
        for user in ("alice", "bob", "carol"):
            harness.add_user(f"{user}@localhost")
        alice = harness.login("alice@localhost/a")
        carol = harness.connect(address="127.0.0.2")
        carol.login("carol@localhost/c")
        bob = harness.connect(address="127.0.0.3", transport=BufferingTransport())
        bob.login("bob@localhost/b")
        bob.received()
        OUTPUT_BATCH.until_iteration_end(harness.clock.callLater)
        self.addCleanup(OUTPUT_BATCH.until_iteration_end, None)
        writes = bob.transport.writes
        alice.send("<message to='bob@localhost/b' id='a'><body>hi</body></message>")
        carol.send("<message to='bob@localhost/b' id='c'><body>hi</body></message>")
        harness.server.sessions.get("bob@localhost/b").send(parse_element("<message from='localhost' id='timer'/>"))
        self.assertEqual(bob.transport.writes, writes)
        harness.clock.advance(0)
        self.assertEqual(bob.transport.writes - writes, 1)
        self.assertEqual([m["id"] for m in bob.received()], ["a", "c", "timer"])
        OUTPUT_BATCH.until_iteration_end(None)
        alice.send("<message to='bob@localhost/b' id='now'><body>hi</body></message>")
        self.assertEqual(bob.transport.writes - writes, 2)


class RequestsInWorkTests(SynchronousTestCase):
    def test_reading_waits_while_requests_are_in_work(self):
        """Storage answers later than a request: of 20 vCard gets in one read, the server takes
        MAX_REQUESTS_IN_WORK and handles the rest only as answers go out, so a client cannot make it
        start unbounded work; every request is answered in the end."""
        storage = LateStorage()
        harness = Harness(storage=storage)
        harness.add_user("alice@localhost")
        alice = harness.login("alice@localhost/a")
        storage.late = True
        alice.send("".join(f"<iq type='get' id='v{n}'><vCard xmlns='vcard-temp'/></iq>" for n in range(20)))
        self.assertEqual(len(storage.waiting), MAX_REQUESTS_IN_WORK)
        self.assertEqual(alice.transport.producerState, "paused")
        storage.answer()
        self.assertEqual(len(storage.waiting), 20 - MAX_REQUESTS_IN_WORK)
        storage.answer()
        answers = [e for e in alice.received() if e.name == "iq" and e.getAttribute("type") == "result"]
        self.assertEqual(sorted(e["id"] for e in answers), sorted(f"v{n}" for n in range(20)))


    def test_requests_to_its_own_resource_are_not_in_work(self):
        """An IQ to the client's own full JID goes back to the client, not to the server: if the client
        leaves such requests unanswered its reading must not stop, as the server's answers never come."""
        harness = Harness()
        harness.add_user("alice@localhost")
        alice = harness.login("alice@localhost/a")
        alice.send("".join(f"<iq type='get' id='self{n}' to='alice@localhost/a'><query xmlns='jabber:iq:version'/></iq>"
                           for n in range(MAX_REQUESTS_IN_WORK)))
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(alice.transport.producerState, "producing")
        self.assertIn("p", [e.getAttribute("id") for e in alice.received() if e.getAttribute("type") == "result"])

class StartTLSTests(SynchronousTestCase):
    """STARTTLS on the client listener, with a transport that records the switch to TLS."""

    STARTTLS = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    PLAIN = ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
             + base64.b64encode(b"\0alice\0secret").decode() + "</auth>")

    def setUp(self):
        self.harness = Harness(make_config(require_encryption=True))
        self.harness.add_user("alice@localhost")
        factory = ClientFactory(self.harness.server, self.harness.config.c2s, tls_context="the TLS context")
        self.client = self.harness.connect(factory=factory, transport=BufferingTransport())
        features = self.client.open_stream()[-1]
        self.assertIsNotNone(features.starttls)
        self.assertIsNone(features.mechanisms)

    def test_starttls(self):
        """<starttls/> alone is answered <proceed/> and the connection switches to TLS; the new stream
        offers PLAIN."""
        self.client.send(self.STARTTLS)
        self.assertIn(b"<proceed", self.client.transport.written_before_tls)
        self.assertEqual([e.name for e in self.client.received()], ["proceed"])
        self.assertEqual(self.client.transport.tls, ["the TLS context"])
        features = self.client.open_stream()[-1]
        self.assertIn("PLAIN", [str(m) for m in features.mechanisms.elements()])

    def test_whitespace_after_starttls(self):
        """Whitespace after <starttls/> in the same read means nothing and is allowed."""
        self.client.send(self.STARTTLS + "\n  ")
        self.assertEqual([e.name for e in self.client.received()], ["proceed"])
        self.assertEqual(self.client.transport.tls, ["the TLS context"])

    def test_plaintext_injected_after_starttls(self):
        """Bytes after <starttls/> in the same read (here a new stream header and a PLAIN login, as a
        man in the middle would append them) end the stream with <policy-violation/> before any TLS:
        no <proceed/>, no switch, PLAIN neither offered nor accepted (the CVE-2011-0411 class)."""
        self.client.send(self.STARTTLS + STREAM_OPEN.format(host="localhost") + self.PLAIN)
        received = self.client.received()
        self.assertEqual(stream_error(received), "policy-violation")
        self.assertEqual([e.name for e in received], ["error"])
        self.assertEqual(self.client.transport.tls, [])
        self.assertTrue(self.client.transport.disconnecting)
        self.assertIsNone(self.client.protocol.stream.username)

    def test_partial_tag_after_starttls(self):
        """Even an unfinished tag after <starttls/> in its read ends the stream."""
        self.client.send(self.STARTTLS + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mech")
        self.assertEqual(stream_error(self.client.received()), "policy-violation")
        self.assertEqual(self.client.transport.tls, [])

    def test_pipelined_after_sasl_success(self):
        """A new stream header sent with the SASL step that succeeds, before the client could see
        <success/>, ends the stream: what follows a stream restart must come after our answer."""
        harness = Harness(make_config())
        harness.add_user("alice@localhost")
        factory = ClientFactory(harness.server, harness.config.c2s, tls_context=None, direct_tls=True)
        client = harness.connect(factory=factory)
        client.open_stream()
        client.send(self.PLAIN + STREAM_OPEN.format(host="localhost"))
        received = client.received()
        self.assertEqual([e.name for e in received], ["success", "error"])
        self.assertEqual(stream_error(received), "policy-violation")


class LoginLogTests(SynchronousTestCase):
    """What a login says in the log: who, from where, over what."""

    def setUp(self):
        from twisted.logger import Logger, formatEvent
        from bridge.core.streams import c2s
        self.lines = []
        self.patch(c2s, "log", Logger(observer=lambda event: self.lines.append(formatEvent(event))))
        self.harness = Harness()
        self.harness.add_user("alice@localhost")

    def fail_login(self, user):
        client = self.harness.connect()
        client.open_stream()
        return scram_login(client, user, "wrong").name

    def test_failed_login_names_the_jid_once(self):
        """A client that sends its whole JID as user name is logged as alice@localhost, not
        alice@localhost@localhost; a bare user name gets the stream's host once."""
        self.assertEqual(self.fail_login("alice@localhost"), "failure")
        self.assertEqual(self.fail_login("bob"), "failure")
        failed = [line for line in self.lines if line.startswith("authentication failed")]
        self.assertEqual(len(failed), 2)
        self.assertTrue(failed[0].startswith("authentication failed for alice@localhost from 127.0.0.1:40000"),
                        failed[0])
        self.assertTrue(failed[1].startswith("authentication failed for bob@localhost from "), failed[1])
        self.assertNotIn("@localhost@", " ".join(self.lines))

    def test_successful_login_logged_with_address_and_transport(self):
        """A successful login is logged with the JID, the client's address and the transport."""
        self.harness.login("alice@localhost/desk")
        self.assertIn("alice@localhost logged in from 127.0.0.1:40000 over tcp", self.lines)
