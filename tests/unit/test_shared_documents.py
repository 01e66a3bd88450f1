"""Documents kept in memory on the nodes of a cluster (core/storage/cache.py; docs/scaling.md, "Documents
kept in memory"): a save is a compare-and-set, a change is told to the other nodes, which forget their copy,
and a step that met a stale copy runs again on a fresh read.  Fake clock, storage in memory, fake Redis."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.cluster import Cluster, Envelope, MalformedEnvelope, decode_envelope
from bridge.core.storage.cache import STALE_RETRIES, DocumentCache, DocumentCaches, KeyedLock, StaleDocument
from bridge.core.storage.memory import MemoryStorage
from tests.unit.helpers import Harness
from tests.unit.test_cluster import MAX_BYTES, FakeLink


class ToldCluster:
    """What a cache sees of a cluster: ``document_changed``, handed to the other nodes' caches at once
    unless ``quiet`` (the message is still on its way)."""

    def __init__(self):
        self.changed = []
        self.others = []
        self.quiet = False

    def document_changed(self, store, host, user):
        self.changed.append((store, host, user))
        if not self.quiet:
            for caches in self.others:
                caches.forget(store, host, user)


def node(storage):
    """(caches, cluster, the cache of the store "doc") of one node on ``storage``."""
    caches, cluster = DocumentCaches(), ToldCluster()
    caches.share(cluster)
    return caches, cluster, DocumentCache(storage, "doc", decode=lambda stored: dict(stored or {}), caches=caches)


class SharedDocumentTests(SynchronousTestCase):
    """Two nodes sharing one storage, answered at the end of the clock's turn as a database answers later."""

    def setUp(self):
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        self.caches1, self.cluster1, self.one = node(self.storage)
        self.caches2, self.cluster2, self.two = node(self.storage)
        self.cluster1.others, self.cluster2.others = [self.caches2], [self.caches1]

    def done(self, d):
        self.clock.advance(0)
        return self.successResultOf(d)

    def stored(self):
        return self.done(self.storage.get("h", "u", "doc"))

    def test_a_change_is_told_and_the_other_copy_forgotten(self):
        """A save on node1 is written and told; node2 forgets its copy and reads the change."""
        first, second = self.done(self.one.load("h", "u")), self.done(self.two.load("h", "u"))
        first["a"] = 1
        self.done(self.one.save("h", "u", first))
        self.assertEqual(self.cluster1.changed, [("doc", "h", "u")])
        self.assertIsNone(self.two.cached("h", "u"))
        self.assertEqual(self.done(self.two.load("h", "u")), {"a": 1})
        self.assertIsNot(self.two.cached("h", "u"), second)

    def test_a_save_on_a_stale_copy_writes_nothing_and_the_step_runs_again(self):
        """node2 has not yet been told of node1's change: its save is refused (nothing written, its copy
        forgotten), and the step in turn runs again on a fresh read, so both changes are kept."""
        self.cluster1.quiet = True
        first = self.done(self.one.load("h", "u"))
        self.done(self.two.load("h", "u"))
        first["a"] = 1
        self.done(self.one.save("h", "u", first))
        runs = []

        @defer.inlineCallbacks
        def add_b():
            document = yield self.two.load("h", "u")
            runs.append(dict(document))
            document["b"] = 2
            yield self.two.save("h", "u", document)

        self.done(KeyedLock().run("u", add_b))
        self.assertEqual(runs, [{}, {"a": 1}])
        self.assertEqual(self.stored(), {"a": 1, "b": 2})
        self.assertEqual(self.cluster2.changed, [("doc", "h", "u")])

    def test_a_stale_save_fails_outside_a_step_in_turn(self):
        """A save on a stale copy fails with StaleDocument, and the copy is gone: never a silent loss."""
        self.cluster1.quiet = True
        first, second = self.done(self.one.load("h", "u")), self.done(self.two.load("h", "u"))
        first["a"] = 1
        self.done(self.one.save("h", "u", first))
        second["b"] = 2
        d = self.two.save("h", "u", second)
        self.clock.advance(0)
        self.failureResultOf(d, StaleDocument)
        self.assertIsNone(self.two.cached("h", "u"))
        self.assertEqual(self.stored(), {"a": 1})
        self.assertEqual(self.cluster2.changed, [])

    def test_a_step_runs_again_a_bounded_number_of_times(self):
        """A step whose every save meets a change of another node fails after STALE_RETRIES more runs."""
        runs = []

        @defer.inlineCallbacks
        def always_overtaken():
            document = yield self.two.load("h", "u")
            runs.append(1)
            yield self.storage.set("h", "u", "doc", {"other": len(runs)})  # another node writes meanwhile
            document["b"] = 2
            yield self.two.save("h", "u", document)

        d = KeyedLock().run("u", always_overtaken)
        self.clock.advance(0)
        for _ in range(3 * (STALE_RETRIES + 1)):
            self.clock.advance(0)
        self.failureResultOf(d, StaleDocument)
        self.assertEqual(len(runs), STALE_RETRIES + 1)

    def test_a_copy_told_stale_while_read_is_not_kept(self):
        """node1 is told of a change while its read is under way: the answer is given but not kept, and a
        save of it is refused without a write."""
        d = self.one.load("h", "u")
        self.caches1.forget("doc", "h", "u")
        document = self.done(d)
        self.assertIsNone(self.one.cached("h", "u"))
        document["a"] = 1
        save = self.one.save("h", "u", document)
        self.failureResultOf(save, StaleDocument)
        self.assertIsNone(self.stored())

    def test_saves_one_after_the_other_expect_each_other(self):
        """Two saves of one copy made before either is answered both succeed: the second expects the first."""
        document = self.done(self.one.load("h", "u"))
        document["a"] = 1
        first = self.one.save("h", "u", document)
        document["a"] = 2
        second = self.one.save("h", "u", document)
        self.clock.advance(0)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.stored(), {"a": 2})

    def test_a_new_object_made_from_the_copy_read(self):
        """A document made anew from the copy read (``read``) is saved against that copy."""
        read = self.done(self.one.load("h", "u"))
        self.done(self.one.save("h", "u", {"new": True}, read=read))
        self.assertEqual(self.stored(), {"new": True})
        self.failureResultOf(self.one.save("h", "u", {"again": True}, read=read), StaleDocument)

    def test_an_account_deleted_is_told(self):
        """Forgetting the documents of a deleted account (after storage deleted them) is told like a change."""
        self.done(self.two.load("h", "u"))
        self.one.forget("h", "u")
        self.assertEqual(self.cluster1.changed, [("doc", "h", "u")])
        self.assertIsNone(self.two.cached("h", "u"))

    def test_joining_again_forgets_every_copy(self):
        self.done(self.one.load("h", "u"))
        self.done(self.one.load("h", "v"))
        self.caches1.forget_all()
        self.assertEqual((self.one.cached("h", "u"), self.one.cached("h", "v")), (None, None))


class SingleNodeTests(SynchronousTestCase):
    def test_outside_a_cluster_a_save_is_a_plain_write(self):
        """Without a cluster nothing is compared: the save writes what it is given (one node holds the
        only copy), and nothing is told."""
        storage = MemoryStorage()
        cache = DocumentCache(storage, "doc", decode=lambda stored: dict(stored or {}), caches=DocumentCaches())
        document = self.successResultOf(cache.load("h", "u"))
        self.successResultOf(storage.set("h", "u", "doc", {"x": 1}))
        document["a"] = 1
        self.successResultOf(cache.save("h", "u", document))
        self.assertEqual(self.successResultOf(storage.get("h", "u", "doc")), {"a": 1})


class EnvelopeTests(SynchronousTestCase):
    def test_document_envelopes(self):
        """A "document" names a store and a bare JID (or a domain, for the user ""); anything else is refused."""
        envelope = decode_envelope(Envelope("document", "node2", "alice@localhost", "roster").fields(), MAX_BYTES)
        self.assertEqual((envelope.kind, envelope.jid, envelope.body), ("document", "alice@localhost", "roster"))
        self.assertEqual(decode_envelope(Envelope("document", "node2", "localhost", "sms-sent").fields(),
                                         MAX_BYTES).jid, "localhost")
        for jid, body in (("alice@localhost/res", "roster"), ("alice@localhost", ""), ("alice@localhost", "Roster"),
                          ("alice@localhost", "x" * 65), ("alice@localhost", "a b"), ("@", "roster")):
            with self.subTest(jid=jid, body=body):
                self.assertRaises(MalformedEnvelope, decode_envelope,
                                  Envelope("document", "node2", jid, body).fields(), MAX_BYTES)


class ClusterDocumentTests(SynchronousTestCase):
    """node1 of a cluster on a fake link, with every feature loaded: its rosters are shared."""

    def setUp(self):
        self.harness = Harness()
        self.server = self.harness.server
        self.harness.add_user("alice@localhost")
        self.link = FakeLink()
        section = configuration.ClusterConfig(enabled=True, node_name="node1", lease_seconds=9)
        self.cluster = Cluster(self.server, self.link, self.harness.clock, section)
        self.server.cluster = self.cluster
        self.link.members_answer = {"node1": "i1", "node2": "i2"}
        self.cluster.start()
        self.addCleanup(self.cluster.stop)

    def roster_items(self):
        return self.successResultOf(self.server.rosters.load("alice@localhost")).items

    def test_a_roster_change_is_told_to_the_other_nodes(self):
        """A roster set on this node is one "document" envelope for every other node."""
        client = self.harness.login("alice@localhost/one")
        client.send("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>")
        (fields,) = self.link.broadcasts
        self.assertEqual((fields["kind"], fields["node"], fields["jid"], fields["body"]),
                         ("document", "node1", "alice@localhost", "roster"))
        self.assertIn("bob@localhost", self.roster_items())

    def test_a_change_not_told_is_told_at_the_next_round(self):
        self.link.reachable = False
        self.cluster.document_changed("roster", "localhost", "alice")
        self.assertEqual(self.link.broadcasts, [])
        self.link.reachable = True
        self.harness.clock.advance(3)
        self.assertEqual([fields["jid"] for fields in self.link.broadcasts], ["alice@localhost"])

    def test_a_change_elsewhere_is_read_at_the_next_use(self):
        """Another node changed alice's roster and says so: this node forgets its copy and its next load reads
        the change; an envelope for a store no feature keeps changes nothing."""
        self.successResultOf(self.server.rosters.load("alice@localhost"))
        stored = {"version": 1, "items": {"bob@localhost": {"subscription": "to", "ask": False, "hidden": False}}}
        self.successResultOf(self.harness.storage.set("localhost", "alice", "roster", stored))
        self.link.on_entries([Envelope("document", "node2", "localhost", "nothing-kept").fields()])
        self.assertEqual(self.roster_items(), {})
        self.link.on_entries([Envelope("document", "node2", "alice@localhost", "roster").fields()])
        self.assertEqual(self.roster_items()["bob@localhost"].subscription, "to")
        self.assertEqual(self.cluster.dropped, {})

    def test_joining_again_forgets_the_copies(self):
        """A node whose lease lapsed joins again with a new inbox: what it missed meanwhile is read again."""
        self.successResultOf(self.server.rosters.load("alice@localhost"))
        self.link.lease_in_redis = False
        self.harness.clock.advance(3)
        self.harness.clock.advance(9)
        self.link.lease_in_redis = True
        stored = {"version": 4, "items": {}}
        self.successResultOf(self.harness.storage.set("localhost", "alice", "roster", stored))
        self.harness.clock.advance(3)
        self.assertTrue(self.cluster.accepting())
        self.assertEqual(self.successResultOf(self.server.rosters.load("alice@localhost")).version, 4)


class SharedSendingLimitsTests(SynchronousTestCase):
    """The SMS counts (gateways/sms/limits.py) of one host, charged on two nodes: the host's document is every
    node's, so a charge often meets a copy another node changed; it is made again, counted once."""

    def setUp(self):
        from bridge.gateways.sms.limits import SendingLimits

        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        nodes = []
        for _ in (1, 2):
            caches, cluster = DocumentCaches(), ToldCluster()
            caches.share(cluster)
            nodes.append((cluster, caches, SendingLimits(self.storage, self.clock, configuration.SMSConfig(), caches)))
        (self.cluster1, caches1, self.one), (self.cluster2, caches2, self.two) = nodes
        self.cluster1.others, self.cluster2.others = [caches2], [caches1]

    def charged(self, limits, user):
        from bridge.gateways.sms.limits import STALE_PAUSE_SECONDS

        d = limits.charge("h", user, 1)
        for _ in range(10):
            self.clock.advance(STALE_PAUSE_SECONDS)
        return self.successResultOf(d)

    def this_minute(self, user):
        d = self.storage.get("h", user, "sms-sent")
        self.clock.advance(0)
        return self.successResultOf(d)["this_minute"]

    def test_a_charge_on_a_stale_copy_of_the_hosts_counts_is_made_again(self):
        """node2 read the host's counts; node1 charges (its change not yet told); node2's next charge meets
        its stale copy: it is made again on a fresh read after a pause, the host counted three times, carol
        once."""
        self.assertIsNone(self.charged(self.two, "bob"))
        self.cluster1.quiet = True
        self.assertIsNone(self.charged(self.one, "alice"))
        self.assertIsNone(self.charged(self.two, "carol"))
        self.assertEqual(self.this_minute(""), 3)
        self.assertEqual([self.this_minute(user) for user in ("alice", "bob", "carol")], [1, 1, 1])
