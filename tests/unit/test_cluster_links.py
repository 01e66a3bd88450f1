"""s2s links in a cluster: the link to a remote domain is one node's (rendezvous hashing over the live
members), the others hand it the stanzas; when it dies the survivors send them themselves; the dialback
secret is the cluster's.  Fake clock, fake Redis link, in-memory s2s."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.cluster import Envelope, parse_stanza

from .test_holdings import HoldingLink, node_in_cluster
from .test_s2s import s2s_harness

MAX_BYTES = 65536


class LinkOwnerTests(SynchronousTestCase):
    """node1 (this one) and node2 are alive; alice is on node1."""

    def setUp(self):
        self.harness = s2s_harness()
        self.link = HoldingLink()
        self.cluster = node_in_cluster(self, self.harness.server, self.harness.clock, self.link)
        self.harness.remote.start()
        self.addCleanup(self.harness.remote.stop)
        self.harness.add_user("alice@localhost")
        self.alice = self.harness.login("alice@localhost/pc")
        domains = [f"d{number}.test" for number in range(40)]
        self.theirs = next(domain for domain in domains if self.cluster.link_owner(domain) == "node2")
        self.mine = next(domain for domain in domains if self.cluster.link_owner(domain) is None)

    def write(self, domain, body="hi"):
        self.alice.send(f"<message to='bob@{domain}' type='chat'><body>{body}</body></message>")

    def asked(self, domain):
        """Whether this node set out to open a link to ``domain`` (it looked up its SRV records)."""
        return any(name.endswith("." + domain) for name in self.harness.resolver.asked)

    def test_link_of_another_node_gets_the_stanza(self):
        """A message for a domain node2 owns goes to node2's inbox as a "remote" envelope; this node
        opens no link; a domain this node owns is linked from here."""
        self.write(self.theirs)
        (node, fields), = self.link.sent
        self.assertEqual((node, fields["kind"], fields["jid"]), ("node2", "remote", f"bob@{self.theirs}"))
        self.assertEqual(parse_stanza(fields["body"], MAX_BYTES)["from"], "alice@localhost/pc")
        self.assertFalse(self.asked(self.theirs))
        self.write(self.mine)
        self.assertEqual(len(self.link.sent), 1)
        self.assertTrue(self.asked(self.mine))

    def test_dead_owners_domains_are_linked_by_a_survivor(self):
        """When node2's lease is gone its domains are linked from here."""
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.harness.clock.advance(3)
        self.assertIsNone(self.cluster.link_owner(self.theirs))
        self.write(self.theirs)
        self.assertEqual(self.link.sent, [])
        self.assertTrue(self.asked(self.theirs))

    def test_owner_without_inbox_link_from_here(self):
        """A hand-over that fails (node2's inbox is gone, it died) is sent from here, not lost."""
        self.link.inboxes_gone.add("node2")
        self.write(self.theirs)
        self.assertTrue(self.asked(self.theirs))
        self.assertEqual(self.cluster.dropped["send-failed"], 1)

    def test_handed_over_stanza_is_sent_from_here(self):
        """A stanza node2 handed over is sent over this node's link, even where this node's view says
        node2 owns the domain: never passed back.  One for a local domain is dropped."""
        body = f"<message from='alice@localhost/pc' to='bob@{self.theirs}'><body>x</body></message>"
        self.cluster.received_entries([Envelope("remote", "node2", f"bob@{self.theirs}", body).fields()])
        self.assertEqual(self.link.sent, [])
        self.assertTrue(self.asked(self.theirs))
        local = "<message from='alice@localhost/pc' to='alice@localhost'><body>x</body></message>"
        self.cluster.received_entries([Envelope("remote", "node2", "alice@localhost", local).fields()])
        self.assertEqual(self.cluster.dropped["malformed"], 1)

    def test_dialback_secret_is_the_clusters(self):
        """The dialback secret is the one all nodes share, so any node verifies another's key."""
        self.assertEqual(self.harness.remote.secret, b"shared dialback")

    def test_shared_secret_asked_again_until_it_comes(self):
        """A secret whose first ask fails is asked again at the next round."""
        got = []
        self.link.secret_failures = 1
        self.cluster.shared_secret("other", got.append)
        self.assertEqual(got, [])
        self.harness.clock.advance(3)
        self.assertEqual(got, [b"shared other"])
        self.harness.clock.advance(3)
        self.assertEqual(len(got), 1)
