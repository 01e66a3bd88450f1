"""What a cluster node holds one at a time (bridge.core.holdings), and SIP registrations taken over from
a dead node (bridge.gateways.sip.clustered), on the fake clock and a fake Redis link."""

import json

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.cluster import Cluster
from bridge.gateways.sip.clustered import decode_bindings, encode_bindings
from bridge.gateways.sip.message import make_response, parse_datagram

from .helpers import Harness
from .test_cluster import FakeLink, record, stream_error
from .test_sip_messaging import SOURCE, MessagingTestCase
from .test_sip_registrar import Phone


class HoldingLink(FakeLink):
    """The fake Redis link with the hashes nodes hold (node1 is this one), inboxes that are gone and the
    cluster's secrets."""

    def __init__(self):
        super().__init__()
        self.held_hashes = {}  # (kind, node) -> {field: value}
        self.take_overs = []
        self.inboxes_gone = set()  # nodes whose inbox is gone: sending there fails
        self.secret_failures = 0  # how many asks for a shared secret fail next

    def held_put(self, kind, field, value):
        self.held_hashes.setdefault((kind, "node1"), {})[field] = value
        return self._answer(1)

    def held_remove(self, kind, field):
        self.held_hashes.get((kind, "node1"), {}).pop(field, None)
        return self._answer(1)

    def held(self, kind):
        return self._answer(dict(self.held_hashes.get((kind, "node1"), {})))

    def take_over(self, kind, node):
        """As the script: nothing while this node has no lease, {} while ``node`` has one."""
        self.take_overs.append((kind, node))
        if not self.reachable:
            return self._answer(None)
        if not self.lease_in_redis:
            return defer.succeed(None)
        if self.members_answer.get(node) is not None:
            return defer.succeed({})
        theirs = self.held_hashes.pop((kind, node), {})
        mine = self.held_hashes.setdefault((kind, "node1"), {})
        moved = {field: value for field, value in theirs.items() if field not in mine}
        mine.update(moved)
        return defer.succeed(moved)

    def send(self, node, fields):
        if node in self.inboxes_gone:
            self.sent.append((node, fields))
            return defer.fail(LookupError(f"node {node} has no inbox"))
        return super().send(node, fields)

    def shared_secret(self, name):
        if self.secret_failures:
            self.secret_failures -= 1
            return defer.fail(ConnectionError("Redis away"))
        return self._answer(b"shared " + name.encode())


def node_in_cluster(test, server, clock, link, held=None):
    """node1 of a cluster on ``link`` where node2 is alive; started, stopped at the end of ``test``."""
    section = configuration.ClusterConfig(enabled=True, node_name="node1", lease_seconds=9)
    cluster = Cluster(server, link, clock, section)
    server.cluster = cluster
    link.members_answer = {"node1": "i1", "node2": "i2"}
    link.held_hashes.update(held or {})
    cluster.start()
    test.addCleanup(cluster.stop)
    return cluster


class HoldingsTests(SynchronousTestCase):
    """One kind of held state on node1; node2 holds some of it."""

    def setUp(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        self.link = HoldingLink()
        self.cluster = node_in_cluster(self, self.harness.server, self.clock, self.link,
                                       {("thing", "node2"): {"a": "1", "b": "2"}, ("thing", "node1"): {"b": "mine"}})
        self.adopted, self.released = [], []
        self.holdings = self.cluster.hold("thing", self.adopted.append, lambda: self.released.append(True))

    def test_joined_node_adopts_its_own_hash(self):
        """A node that holds its lease when the feature starts gets what its own hash still holds."""
        self.assertEqual(self.adopted, [{"b": "mine"}])

    def test_dead_nodes_hash_taken_over_once(self):
        """When node2's lease is gone node1 claims its hash: what node1 did not hold already is moved
        and adopted; later rounds claim nothing more."""
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)
        self.assertEqual(self.adopted[1:], [{"a": "1"}])
        self.assertEqual(self.link.held_hashes[("thing", "node1")], {"a": "1", "b": "mine"})
        self.assertNotIn(("thing", "node2"), self.link.held_hashes)
        self.assertEqual(self.holdings.taken, 1)
        self.link.members_answer = {"node1": "i1"}
        self.clock.advance(3)
        self.assertEqual(len(self.adopted), 2)
        self.assertEqual(self.link.take_overs, [("thing", "node2")])

    def test_node_that_left_is_taken_over(self):
        """A node that left the set (stopped cleanly, or removed by another survivor) is claimed too."""
        self.link.members_answer = {"node1": "i1"}
        self.clock.advance(3)
        self.assertEqual(self.adopted[1:], [{"a": "1"}])

    def test_claim_without_own_lease_is_tried_again(self):
        """A claim made while this node has no lease in Redis takes nothing and is made again later."""
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.link.lease_in_redis = False
        self.clock.advance(3)
        self.assertEqual(len(self.adopted), 1)
        self.assertEqual(self.released, [True])
        self.link.lease_in_redis = True
        self.clock.advance(3)
        self.clock.advance(3)
        self.assertIn({"a": "1"}, self.adopted)

    def test_restarted_node_is_not_claimed(self):
        """A new incarnation of node2 keeps its hash (it adopts it itself)."""
        self.link.members_answer = {"node1": "i1", "node2": "i3"}
        self.clock.advance(3)
        self.assertEqual(self.link.take_overs, [])

    def test_lapsed_lease_releases_and_the_next_join_adopts_again(self):
        """Redis unreachable past the lease: the feature is told to give up what it holds; when the
        node joins again it adopts what its hash still holds."""
        self.link.reachable = False
        self.clock.advance(9)
        self.assertEqual(self.released, [True])
        self.link.reachable = True
        self.clock.advance(3)
        self.assertEqual(self.adopted, [{"b": "mine"}, {"b": "mine"}])


class BindingRecordTests(SynchronousTestCase):
    def test_round_trip_and_refused(self):
        """A binding's record keeps what a survivor needs (no flow); records of another shape are refused."""
        text = json.dumps([{"uri": "sip:bob@192.0.2.9:5062", "contact": "<sip:bob@192.0.2.9:5062>;+sip.instance=x",
                            "call_id": "c", "cseq": 3, "expires_at": 1000.5, "source": ["192.0.2.9", 5062],
                            "protocol": "UDP"}])
        (binding,) = decode_bindings(text)
        self.assertEqual((binding.uri, binding.source, binding.transport, binding.expires_at),
                         ("sip:bob@192.0.2.9:5062", ("192.0.2.9", 5062), None, 1000.5))
        self.assertEqual(decode_bindings(encode_bindings([binding])), [binding])
        good = json.loads(text)[0]
        for bad in ("{", "[1]", json.dumps([{**good, "source": ["x"]}]), json.dumps([{**good, "contact": "<"}]),
                    json.dumps([{**good, "cseq": "3"}]), json.dumps([{**good, "protocol": "SCTP"}]),
                    json.dumps([{k: v for k, v in good.items() if k != "contact"}])):
            with self.subTest(bad):
                self.assertRaises(ValueError, decode_bindings, bad)


def bob_record(expires_at, host="localhost"):
    return encode_bindings(decode_bindings(json.dumps([{
        "uri": "sip:bob@192.0.2.9:5062", "contact": "<sip:bob@192.0.2.9:5062>", "call_id": "reg-b",
        "cseq": 2, "expires_at": expires_at, "source": ["192.0.2.9", 5062], "protocol": "UDP"}])))


class ClusteredRegistrationTests(MessagingTestCase):
    """The SIP gateway on node1 of a cluster; node2 holds bob's registration."""

    def setUp(self):
        super().setUp()
        self.link = HoldingLink()
        self.link.snapshots["node2"] = (1, {"bob@localhost/sip": record(priority=-1)})
        self.clock.advance(1000)
        self.cluster = node_in_cluster(self, self.server, self.clock, self.link, {("sip", "node2"): {
            "bob@localhost": bob_record(2000.0), "carol@localhost": bob_record(1500.0),
            "dave@localhost": bob_record(900.0), "mallory@elsewhere": bob_record(2000.0),
            "erin@localhost": "[{]"}})
        self.gateway.start()
        self.outbound.sent = []

    def node2_dies(self):
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)

    def test_registration_is_written_and_removed(self):
        """dave's REGISTER here is written to node1's hash with its expiry; its removal (Expires: 0)
        removes the field."""
        phone = Phone(self, aor="sip:dave@localhost")
        self.assertEqual(phone.register(password="secret", user="dave").status, 200)
        (binding,) = decode_bindings(self.link.held_hashes[("sip", "node1")]["dave@localhost"])
        self.assertEqual((binding.uri, binding.source, binding.protocol, binding.expires_at),
                         ("sip:alice@192.0.2.7:5062", SOURCE, "UDP", self.clock.seconds() + 3600))
        self.assertEqual(phone.register(password="secret", user="dave", expires=0).status, 200)
        self.assertNotIn("dave@localhost", self.link.held_hashes[("sip", "node1")])

    def test_register_refused_while_redis_is_away(self):
        """Redis away: a REGISTER gets 503 with Retry-After (one lease), binds nothing and writes nothing,
        as XMPP binding is refused then; once Redis answers again the phone registers."""
        phone = Phone(self, aor="sip:dave@localhost")
        self.link.reachable = False
        self.clock.advance(3)
        refused = phone.send(phone.request())
        self.assertEqual((refused.status, refused.headers.get("Retry-After")), (503, "9"))
        self.assertEqual(self.gateway.registrar.bindings.current("localhost", "dave"), [])
        self.assertIsNone(self.server.sessions.get("dave@localhost/sip"))
        self.link.reachable = True
        self.clock.advance(3)
        self.assertEqual(phone.register(password="secret", user="dave").status, 200)
        self.assertIsNotNone(self.server.sessions.get("dave@localhost/sip"))

    def test_message_for_phones_of_another_node_goes_there(self):
        """bob has no session here but his phones are node2's session: a message to his bare JID is
        handed to node2, not stored offline here."""
        alice = self.online("alice@localhost/pc")
        alice.send("<message to='bob@localhost' type='chat'><body>to your phone</body></message>")
        (node, fields), = self.link.sent
        self.assertEqual((node, fields["jid"]), ("node2", "bob@localhost/sip"))
        self.assertEqual(self.offline_count("bob@localhost"), 0)

    def test_survivor_takes_over_and_delivers(self):
        """node2 dies: node1 takes its registrations over, binds bob's phones as its own session, and a
        message to bob goes as MESSAGE from node1's SIP socket to the address the phone registered from;
        what had expired, is of no host here or is malformed is skipped."""
        self.node2_dies()
        session = self.server.sessions.get("bob@localhost/sip")
        self.assertTrue(session is not None and session.local)
        self.assertEqual(self.gateway.registrar.bindings.current("localhost", "dave"), [])
        self.assertEqual(self.gateway.registrar.bindings.current("localhost", "erin"), [])
        alice = self.online("alice@localhost/pc")
        alice.send("<message to='bob@localhost' type='chat'><body>after the takeover</body></message>")
        [(request, address)] = self.outbound.sent
        self.assertEqual((request.method, str(request.uri), address),
                         ("MESSAGE", "sip:bob@192.0.2.9:5062", ("192.0.2.9", 5062)))
        self.gateway.message_received(parse_datagram(make_response(request, 200).to_bytes()), self.outbound,
                                      address)
        self.assertEqual(self.offline_count("bob@localhost"), 0)
        self.assertEqual(self.link.sent, [])

    def test_taken_over_registration_expires(self):
        """A taken-over binding lasts until its own expiry: then the session ends and its field goes."""
        self.node2_dies()
        self.clock.advance(560)  # past carol's expiry (1500), before bob's (2000)
        self.assertIsNone(self.server.sessions.get("carol@localhost/sip"))
        self.assertNotIn("carol@localhost", self.link.held_hashes[("sip", "node1")])
        self.assertIsNotNone(self.server.sessions.get("bob@localhost/sip"))

    def test_lapsed_lease_forgets_the_registrations(self):
        """Without its lease node1 serves no registration: they are forgotten and the phones' session
        ends (a survivor may take them over)."""
        self.node2_dies()
        alice = self.online("alice@localhost/pc")
        self.link.reachable = False
        self.clock.advance(9)
        self.assertEqual(stream_error(alice.received()), "system-shutdown")
        self.assertIsNone(self.server.sessions.get("bob@localhost/sip"))
        self.assertEqual(len(self.gateway.registrar.bindings), 0)
