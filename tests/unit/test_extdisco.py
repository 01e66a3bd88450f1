"""External service discovery (XEP-0215) with TURN REST API credentials, on the in-memory server."""

import base64
import hashlib
import hmac
import os
import tempfile
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID

from bridge import config as configuration
from bridge.core.xmlstream import parse_element
from bridge.features.extdisco import turn_credentials
from tests.unit.helpers import Harness

NS = "urn:xmpp:extdisco:2"
SECRET = "north-wind-shared"


def secret_file(test, text=SECRET, mode=0o600):
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "turn.secret")
    with open(path, "w") as handle:
        handle.write(text + "\n")
    os.chmod(path, mode)
    test.addCleanup(lambda: (os.remove(path), os.rmdir(directory)))
    return path


class ExternalServicesTests(SynchronousTestCase):
    def setUp(self):
        section = {"services": ["stun:stun.example.org", "turn:turn.example.org:3478?transport=udp",
                                "turns:turn.example.org"],
                   "turn_secret_file": secret_file(self), "credential_lifetime_seconds": 600}
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}},
                    "external_services": section}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        self.harness.clock.advance(1_800_000_000)
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/phone")

    def services(self, payload):
        return self.alice.iq(f"<iq type='get' id='x' to='localhost'>{payload}</iq>")

    def test_services_with_turn_credentials_coturn_accepts(self):
        """<services/> lists every configured service; the TURN ones carry "<expiry>:<bare JID>" and the
        base64 HMAC-SHA1 of it under the shared secret (coturn's use-auth-secret), expiring after the
        configured lifetime; STUN carries no credentials."""
        reply = self.services(f"<services xmlns='{NS}'/>")
        services = [dict(s.attributes) for s in reply.services.elements(NS, "service")]
        self.assertEqual([(s["type"], s["host"], s["port"], s.get("transport")) for s in services],
                         [("stun", "stun.example.org", "3478", None), ("turn", "turn.example.org", "3478", "udp"),
                          ("turns", "turn.example.org", "5349", None)])
        self.assertNotIn("username", services[0])
        turn = services[1]
        self.assertEqual(turn["username"], "1800000600:alice@localhost")
        expected = base64.b64encode(hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest())
        self.assertEqual(turn["password"], expected.decode())
        self.assertEqual(turn["expires"], "2027-01-15T08:10:00Z")

    def test_type_filter_and_credentials_request(self):
        """type='stun' lists STUN only; <credentials/> for a TURN host answers that host's services with fresh
        credentials; an unknown host is item-not-found."""
        reply = self.services(f"<services xmlns='{NS}' type='stun'/>")
        self.assertEqual([s["type"] for s in reply.services.elements(NS, "service")], ["stun"])
        self.harness.clock.advance(100)
        reply = self.services(f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn'/></credentials>")
        [turn] = list(reply.credentials.elements(NS, "service"))
        self.assertEqual(turn["username"], "1800000700:alice@localhost")
        reply = self.services(f"<credentials xmlns='{NS}'><service host='other.example.org'/></credentials>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply.error.firstChildElement().name, "item-not-found")

    def test_other_servers_users_are_refused(self):
        """A request from an address of another domain gets forbidden, and no credentials."""
        services = self.harness.server.hosts["localhost"].features["extdisco"].feature
        replies = []
        stanza = parse_element(f"<iq type='get' id='r' from='eve@elsewhere.example/x' to='localhost'>"
                               f"<services xmlns='{NS}'/></iq>")
        event = SimpleNamespace(stanza=stanza, sender=JID("eve@elsewhere.example/x"),
                                host=SimpleNamespace(name="localhost"), reply=replies.append)
        self.assertTrue(services.on_services(event))
        self.assertEqual([r.error.firstChildElement().name for r in replies], ["forbidden"])
        self.assertNotIn("password", replies[0].toXml())

    def test_credentials_expire_as_computed(self):
        """turn_credentials: the expiry is now plus the lifetime, the user name starts with it."""
        username, password, expires = turn_credentials("s", "bob@localhost", 1000.7, 60)
        self.assertEqual((username, expires), ("1060:bob@localhost", 1060))
        self.assertEqual(base64.b64decode(password), hmac.new(b"s", b"1060:bob@localhost", hashlib.sha1).digest())


class ExternalServicesConfigTests(SynchronousTestCase):
    def load(self, section):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "bridge.toml")
        lines = "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in section.items())
        with open(path, "w") as handle:
            handle.write(f"[external_services]\n{lines}\n")
        self.addCleanup(lambda: (os.remove(path), os.rmdir(directory)))
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        return caught.exception.problems

    def test_bad_uri_and_missing_secret(self):
        """A malformed service URI is named; a TURN service without turn_secret_file is refused."""
        problems = self.load({"services": ["turn:turn.example.org", "ftp:x", "turns:h?transport=udp"]})
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("'ftp:x' is not stun:, stuns:, turn: or turns:HOST[:PORT]", problems[0])
        self.assertIn("turns runs over TLS", problems[1])
        self.assertIn("external_services.turn_secret_file: TURN services need the secret", problems[2])

    def test_secret_file_readable_by_others_is_refused(self):
        """A TURN secret in a file readable by group or others stops the start, naming the file."""
        path = secret_file(self, mode=0o644)
        problems = self.load({"services": ["turn:turn.example.org"], "turn_secret_file": path})
        self.assertEqual(len(problems), 1, problems)
        self.assertTrue(problems[0].endswith(f"bridge.toml: external_services.turn_secret_file: {path}: readable "
                                             "by others (mode 644); a secret's file is 0600 (chmod 600)"), problems)
