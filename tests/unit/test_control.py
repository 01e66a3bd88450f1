"""The control channel of bridgectl (bridge.core.control): requests, their bounds, and the commands."""

import json

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.control import MAX_REQUEST_BYTES, ControlCommands, ControlError, ControlFactory, parse_request
from bridge.core.server import MAX_ANNOUNCE_BYTES
from tests.unit.helpers import Harness, make_config, result_of

SM = "urn:xmpp:sm:3"


class ParseRequestTests(SynchronousTestCase):
    def test_well_formed_requests(self):
        """A JSON object with a known command and its string arguments is read as (command, arguments)."""
        cases = [
            (b'{"command": "status"}', ("status", {})),
            (b'{"command": "sessions", "filter": "localhost"}', ("sessions", {"filter": "localhost"})),
            (b'{"command": "kick", "jid": "a@localhost"}', ("kick", {"jid": "a@localhost"})),
            (b'{"command": "announce", "host": "localhost", "message": "hi"}',
             ("announce", {"host": "localhost", "message": "hi"})),
        ]
        for line, expected in cases:
            self.assertEqual(parse_request(line), expected, line)

    def test_malformed_requests(self):
        """Anything else is a ControlError that says what is wrong."""
        cases = [
            (b"status", "one JSON object"),
            (b'["status"]', "one JSON object"),
            (b"\xff\xfe", "one JSON object"),
            (b'{"command": "shutdown"}', "unknown command 'shutdown'"),
            (b'{"command": "kick"}', "jid is missing"),
            (b'{"command": "kick", "jid": ""}', "jid is missing"),
            (b'{"command": "kick", "jid": 5}', "jid must be a string"),
            (b'{"command": "status", "verbose": "1"}', "unknown argument 'verbose'"),
            (b'{"command": "announce", "host": "localhost"}', "message is missing"),
        ]
        for line, reason in cases:
            with self.assertRaises(ControlError, msg=line) as caught:
                parse_request(line)
            self.assertIn(reason, str(caught.exception))


class ControlCommandTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config(hosts={"localhost": {}, "example.test": {"aliases": ["alias.test"]}},
                                           resumption_timeout_seconds=300))
        for jid in ("alice@localhost", "bob@localhost", "carol@example.test"):
            self.harness.add_user(jid)
        self.reloads = []
        self.harness.clock.advance(1000)
        self.commands = ControlCommands(self.harness.server, lambda: self.reloads.append(1) or {"ok": True},
                                        lambda: {"waiting": 3}, started=400)

    def ask(self, **request):
        answer = self.commands.run(json.dumps(request).encode())
        return answer if isinstance(answer, dict) else result_of(answer)

    def test_status_counts_sessions_per_host_and_kind(self):
        """status: uptime from the start, sessions by host and transport, and the queues it was given."""
        self.harness.login("alice@localhost/a")
        self.harness.login("alice@localhost/b")
        self.harness.login("carol@example.test/c")
        answer = self.ask(command="status")
        self.assertEqual(answer["uptime_seconds"], 600)
        self.assertEqual(answer["sessions"], {"localhost": {"tcp": 2}, "example.test": {"tcp": 1}})
        self.assertEqual(answer["queues"], {"waiting": 3})
        self.assertEqual(answer["owners"], {})

    def test_status_names_what_this_node_owns(self):
        """status: each resource served one node at a time, with who owns it (this node, alone)."""
        self.harness.server.ownership.claim("email:outbox", lambda: None, lambda: None)
        self.assertEqual(self.ask(command="status")["owners"], {"email:outbox": "this node"})

    def test_sessions_lists_full_jids_and_filters(self):
        """sessions: every full JID with its kind, address and bind time; a host (or its alias), an account
        or a resource narrows the list."""
        self.harness.login("alice@localhost/a")
        self.harness.clock.advance(60)
        self.harness.login("carol@example.test/c")
        every = self.ask(command="sessions")["sessions"]
        self.assertEqual(every, [
            {"jid": "alice@localhost/a", "kind": "tcp", "address": "127.0.0.1:40000", "since": "1970-01-01T00:16:40Z"},
            {"jid": "carol@example.test/c", "kind": "tcp", "address": "127.0.0.1:40000",
             "since": "1970-01-01T00:17:40Z"}])
        for selector, expected in (("alias.test", ["carol@example.test/c"]), ("alice@localhost", ["alice@localhost/a"]),
                                   ("alice@localhost/b", []), ("localhost", ["alice@localhost/a"])):
            found = [item["jid"] for item in self.ask(command="sessions", filter=selector)["sessions"]]
            self.assertEqual(found, expected, selector)

    def test_kick_ends_every_session_of_an_account(self):
        """kick with a bare JID ends each of the account's sessions with a stream error; others stay."""
        first, second = self.harness.login("alice@localhost/a"), self.harness.login("alice@localhost/b")
        bob = self.harness.login("bob@localhost/x")
        for client in (first, second, bob):
            client.received()
        self.assertEqual(self.ask(command="kick", jid="alice@localhost"), {"ok": True, "ended": 2})
        for client in (first, second):
            error = [element for element in client.received() if element.name == "error"]
            self.assertEqual(error[0].firstChildElement().name, "policy-violation")
            client.drop()
        self.assertEqual(self.harness.server.sessions.resources("alice@localhost"), [])
        self.assertEqual(bob.received(), [])
        self.assertIsNotNone(self.harness.server.sessions.get("bob@localhost/x"))

    def test_kick_ends_a_session_waiting_for_resumption(self):
        """A session whose connection dropped and that waits for XEP-0198 resumption ends at once when kicked,
        so the kicked client cannot resume it."""
        alice = self.harness.login("alice@localhost/a")
        alice.send(f"<enable xmlns='{SM}' resume='true'/>")
        resume_id = [element for element in alice.received() if element.name == "enabled"][0]["id"]
        alice.drop()
        self.assertEqual(self.ask(command="kick", jid="alice@localhost/a"), {"ok": True, "ended": 1})
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/a"))
        self.assertNotIn(resume_id, self.harness.server.resumable_sessions)

    def test_kick_needs_a_users_jid(self):
        """kick of a host name or of something that is no JID is refused."""
        for jid in ("localhost", "a@b@c"):
            answer = self.ask(command="kick", jid=jid)
            self.assertFalse(answer["ok"], jid)
            self.assertIn("is not a user's JID", answer["error"])

    def test_announce_reaches_every_session_of_the_host(self):
        """announce: a headline from the host to every session of its users, none to another host's."""
        alice, bob = self.harness.login("alice@localhost/a"), self.harness.login("bob@localhost/x")
        carol = self.harness.login("carol@example.test/c")
        for client in (alice, bob, carol):
            client.received()
        self.assertEqual(self.ask(command="announce", host="localhost", message="maintenance at 6"),
                         {"ok": True, "sent": 2})
        for client, jid in ((alice, "alice@localhost/a"), (bob, "bob@localhost/x")):
            message = [element for element in client.received() if element.name == "message"][0]
            self.assertEqual((message["from"], message["to"], message["type"]), ("localhost", jid, "headline"))
            self.assertEqual(str(message.body), "maintenance at 6")
        self.assertEqual(carol.received(), [])

    def test_announce_refuses_unknown_hosts_and_huge_messages(self):
        """announce to a host not served here, or longer than MAX_ANNOUNCE_BYTES, is refused and sends nothing."""
        alice = self.harness.login("alice@localhost/a")
        alice.received()
        unknown = self.ask(command="announce", host="elsewhere.example", message="hi")
        self.assertEqual(unknown, {"ok": False, "error": "'elsewhere.example' is not a host of this server"})
        huge = self.ask(command="announce", host="localhost", message="é" * (MAX_ANNOUNCE_BYTES // 2 + 1))
        self.assertFalse(huge["ok"])
        self.assertIn(f"longer than {MAX_ANNOUNCE_BYTES} bytes", huge["error"])
        self.assertEqual(alice.received(), [])

    def test_deluser_deletes_the_account_and_ends_its_sessions(self):
        """deluser: the account is gone (its password no longer works) and its live session has ended."""
        alice = self.harness.login("alice@localhost/a")
        alice.received()
        self.assertEqual(self.ask(command="deluser", jid="alice@localhost"), {"ok": True, "ended": 1})
        error = [element for element in alice.received() if element.name == "error"][0]
        self.assertEqual(error.firstChildElement().name, "not-authorized")
        self.assertFalse(result_of(self.harness.server.accounts.exists("localhost", "alice")))

    def test_deluser_of_an_unknown_account(self):
        """deluser of an account that does not exist says so."""
        self.assertEqual(self.ask(command="deluser", jid="nobody@localhost"),
                         {"ok": False, "error": "nobody@localhost does not exist"})

    def test_reload_runs_the_reloader(self):
        """reload hands over to the reloader and answers what it returns."""
        self.assertEqual(self.ask(command="reload"), {"ok": True})
        self.assertEqual(self.reloads, [1])


class ControlProtocolTests(SynchronousTestCase):
    def connect(self):
        harness = Harness()
        protocol = ControlFactory(ControlCommands(harness.server, lambda: {"ok": True}, dict, 0)).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_answers_one_line_per_request(self):
        """Each request line, whole or in pieces, gets one JSON line; a bad one an error, and the connection
        stays for the next."""
        protocol, transport = self.connect()
        for byte in b'{"command": "reload"}\nnonsense\n':
            protocol.dataReceived(bytes([byte]))
        answers = [json.loads(line) for line in transport.value().splitlines()]
        self.assertEqual(answers, [{"ok": True},
                                   {"ok": False, "error": "a request is one JSON object on one line"}])
        self.assertFalse(transport.disconnecting)

    def test_an_overlong_request_ends_the_connection(self):
        """A request of more than MAX_REQUEST_BYTES without a line end is answered with an error and the
        connection closed: nothing grows without bound."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"x" * (MAX_REQUEST_BYTES + 1))
        self.assertEqual(json.loads(transport.value()),
                         {"ok": False, "error": f"a request is at most {MAX_REQUEST_BYTES} bytes"})
        self.assertTrue(transport.disconnecting)
