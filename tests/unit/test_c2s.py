"""Client streams over an in-memory transport: features, SASL, binding, limits."""

import base64

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.helpers import Harness, make_config, scram_login

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
