"""Site policies per host (bridge/core/sitepolicy.py): presence access, alerts, storage bounds, admins."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import sitepolicy
from bridge.core.stanza import make
from tests.unit.helpers import Harness, make_config


def host(**settings):
    return configuration.parse({"hosts": {"example.com": settings}}, "test.toml").hosts["example.com"]


def presence_from_others(client, kind=None):
    """The presence stanzas ``client`` received from accounts other than its own."""
    own = client.jid.split("/")[0]
    return [e for e in client.received() if e.name == "presence" and e.getAttribute("type") == kind
            and e["from"].split("/")[0] != own]


class DecisionTests(SynchronousTestCase):
    def test_roster_access_sees_nobody_without_subscription(self):
        """Under the default "roster" policy nobody sees presence without a subscription."""
        self.assertFalse(sitepolicy.sees_presence(host(), "example.com", "bob@example.com"))

    def test_domain_access_is_the_host_only(self):
        """"domain" lets the host's own users see, not another domain's nor the server itself."""
        policy = host(presence_access="domain")
        self.assertTrue(sitepolicy.sees_presence(policy, "example.com", "Bob@Example.com/phone"))
        self.assertFalse(sitepolicy.sees_presence(policy, "example.com", "bob@example.org"))
        self.assertFalse(sitepolicy.sees_presence(policy, "example.com", "example.com"))

    def test_everyone_access(self):
        """"everyone" lets any account see, still not a bare domain."""
        policy = host(presence_access="everyone")
        self.assertTrue(sitepolicy.sees_presence(policy, "example.com", "bob@example.org"))
        self.assertFalse(sitepolicy.sees_presence(policy, "example.com", "example.org"))

    def test_alerts(self):
        """Alerts: everyone by default; "listed" lets the listed and the admins; "admins" only the admins."""
        self.assertTrue(sitepolicy.may_send_alerts(host(), "eve@example.com"))
        listed = host(alerts="listed", alert_senders=["cal@example.com"], admins=["boss@example.com"])
        self.assertTrue(sitepolicy.may_send_alerts(listed, "Cal@example.com/x"))
        self.assertTrue(sitepolicy.may_send_alerts(listed, "boss@example.com"))
        self.assertFalse(sitepolicy.may_send_alerts(listed, "eve@example.com"))
        admins = host(alerts="admins", alert_senders=["cal@example.com"], admins=["boss@example.com"])
        self.assertFalse(sitepolicy.may_send_alerts(admins, "cal@example.com"))
        self.assertTrue(sitepolicy.may_send_alerts(admins, "boss@example.com"))

    def test_storage_bound(self):
        """-1 follows [quotas]; 0 and other values are the host's own."""
        self.assertEqual(sitepolicy.storage_bound(-1, 4096), 4096)
        self.assertEqual(sitepolicy.storage_bound(0, 4096), 0)
        self.assertEqual(sitepolicy.storage_bound(100000, 4096), 100000)

    def test_lists_must_hold_bare_jids(self):
        """An admin or alert sender that is not a bare JID is a configuration error naming the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            host(admins=["boss@example.com/desk"], alert_senders=["example.com"])
        text = str(caught.exception)
        self.assertIn("hosts.example.com.admins: 'boss@example.com/desk'", text)
        self.assertIn("hosts.example.com.alert_senders: 'example.com'", text)

    def test_unknown_presence_access(self):
        """A presence_access outside roster/domain/everyone is refused."""
        self.assertRaises(configuration.ConfigError, host, presence_access="friends")


class PolicyServerTestCase(SynchronousTestCase):
    settings = {}

    def setUp(self):
        self.harness = Harness(make_config(hosts={"localhost": self.settings, "other.test": {}}))
        for jid in ("alice@localhost", "bob@localhost", "carol@localhost", "boss@localhost", "zed@other.test"):
            self.harness.add_user(jid)

    def online(self, jid):
        client = self.harness.login(jid)
        client.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        client.send("<presence><status>here</status></presence>")
        return client


class DomainPresenceTests(PolicyServerTestCase):
    settings = {"presence_access": "domain"}

    def test_colleagues_see_each_other(self):
        """In a "domain" site a new session is shown its colleagues' presence, and they see its own,
        without any subscription; a user of another host sees nothing."""
        alice = self.online("alice@localhost/a")
        zed = self.online("zed@other.test/z")
        alice.received(), zed.received()
        bob = self.online("bob@localhost/b")
        shown = presence_from_others(bob)
        self.assertEqual([p["from"] for p in shown], ["alice@localhost/a"])
        self.assertEqual([p["from"] for p in presence_from_others(alice)], ["bob@localhost/b"])
        self.assertEqual(presence_from_others(zed), [])
        bob.send("<presence type='unavailable'/>")
        self.assertEqual(len(presence_from_others(alice, "unavailable")), 1)

    def probe(self, sender, to):
        """A probe as the server sends it for a user (clients do not send probes, RFC 6121 4.3)."""
        self.harness.server.router.route(make("presence", to=to, sender=sender, type="probe"))

    def test_probe_answered(self):
        """A colleague's probe is answered with the user's presence; another host's is not."""
        alice = self.online("alice@localhost/a")
        alice.received()
        bob = self.online("bob@localhost/b")
        bob.received()
        self.probe("bob@localhost", "alice@localhost")
        self.assertEqual([p["from"] for p in presence_from_others(bob)], ["alice@localhost/a"])
        zed = self.online("zed@other.test/z")
        zed.received()
        self.probe("zed@other.test", "alice@localhost")
        self.assertEqual(presence_from_others(zed), [])


class RosterPresenceTests(PolicyServerTestCase):
    def test_no_presence_without_subscription(self):
        """Under the default policy colleagues without a subscription see nothing of each other."""
        alice = self.online("alice@localhost/a")
        alice.received()
        bob = self.online("bob@localhost/b")
        self.assertEqual(presence_from_others(bob), [])
        self.assertEqual(presence_from_others(alice), [])


class EveryonePresenceTests(PolicyServerTestCase):
    settings = {"presence_access": "everyone"}

    def test_other_hosts_users_see(self):
        """In an "everyone" site the users of other hosts see the host's users as well."""
        alice = self.online("alice@localhost/a")
        alice.received()
        zed = self.online("zed@other.test/z")
        self.assertEqual([p["from"] for p in presence_from_others(zed)], ["alice@localhost/a"])
        # other.test keeps the "roster" policy: alice does not see zed.
        self.assertEqual(presence_from_others(alice), [])


class StorageTests(PolicyServerTestCase):
    settings = {"max_private_bytes_per_user": 0, "max_vcard_bytes": 2048}

    def test_private_storage_off(self):
        """With max_private_bytes_per_user = 0 a host's users keep no private XML: not-allowed."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='set' id='p'><query xmlns='jabber:iq:private'>"
                         "<note xmlns='urn:example:notes'>x</note></query></iq>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply.error.firstChildElement().name, "not-allowed")

    def test_private_storage_other_host_follows_quotas(self):
        """Another host without its own bound follows [quotas]: the same set succeeds."""
        zed = self.online("zed@other.test/z")
        reply = zed.iq("<iq type='set' id='p'><query xmlns='jabber:iq:private'>"
                       "<note xmlns='urn:example:notes'>x</note></query></iq>")
        self.assertEqual(reply["type"], "result")

    def test_vcard_bound_of_the_host(self):
        """The host's max_vcard_bytes replaces [quotas]': a vCard past it is not-acceptable, a small one kept."""
        alice = self.online("alice@localhost/a")
        big = alice.iq(f"<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>{'x' * 3000}</FN></vCard></iq>")
        self.assertEqual(big.error.firstChildElement().name, "not-acceptable")
        small = alice.iq("<iq type='set' id='w'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")
        self.assertEqual(small["type"], "result")


class AlertTests(PolicyServerTestCase):
    settings = {"alerts": "listed", "alert_senders": ["bob@localhost"], "admins": ["boss@localhost"]}

    def headline(self, sender, to="alice@localhost"):
        sender.send(f"<message type='headline' to='{to}' id='h'><body>meeting in 5</body></message>")

    def test_unlisted_sender_refused(self):
        """A headline from a user who is neither listed nor admin is refused with forbidden and not delivered."""
        alice = self.online("alice@localhost/a")
        zed = self.online("zed@other.test/z")  # a user of other.test, whose policy is "everyone"
        carol = self.online("carol@localhost/c")
        alice.received(), zed.received(), carol.received()
        self.headline(carol)
        [error] = [e for e in carol.received() if e.name == "message"]
        self.assertEqual(error["type"], "error")
        self.assertEqual(error.error.firstChildElement().name, "forbidden")
        self.assertEqual([e for e in alice.received() if e.name == "message"], [])
        self.headline(zed)
        self.assertEqual(len([e for e in alice.received() if e.name == "message"]), 1)

    def test_listed_and_admins_send(self):
        """The listed sender and the host's admin send headlines; chat messages of anyone still pass."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        boss = self.online("boss@localhost/x")
        carol = self.online("carol@localhost/c")
        alice.received()
        self.headline(bob)
        self.headline(boss)
        carol.send("<message type='chat' to='alice@localhost/a'><body>hi</body></message>")
        self.assertEqual(len([e for e in alice.received() if e.name == "message"]), 3)
