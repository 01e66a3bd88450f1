"""The cluster's protocol-free parts on a fake clock and a fake Redis link: leases, the messages
between nodes, the mirrored session table and what a node does without Redis or lease."""

import importlib.util
import json
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID

from bridge import config as configuration
from bridge.core.cluster import (Cluster, Envelope, Lease, MalformedEnvelope, RemoteSession, decode_envelope,
                                 decode_record, encode_record, parse_stanza)
from bridge.core.redislink import RedisLink
from bridge.core.xmlstream import parse_element
from bridge.tap import Options

from tests.unit.helpers import Harness, resuming

MAX_BYTES = 4096


class FakeLink:
    """What bridge.core.redislink.RedisLink offers, answered at once, with every call recorded."""

    def __init__(self):
        self.reachable = True
        self.lease_in_redis = True
        self.members_answer = {}
        self.snapshots = {}
        self.late_snapshots = {}  # node -> a Deferred the test fires
        self.joins = []
        self.published = []
        self.sent = []
        self.removed = []
        self.broadcasts = []  # what was sent to every other member (documents changed here)
        self.incarnation = "i1"
        self.owner_keys = {}  # resource -> owner "NODE INCARNATION" (no expiry here)
        self.left = {}  # node -> the inbox entries its removal hands over
        self.resumptions = {}  # resumption id -> state, as this node remembers them
        self.takes = {}  # resumption id -> the answers take_resumption gives, in turn

    def _answer(self, value):
        return defer.succeed(value) if self.reachable else defer.fail(ConnectionError("Redis away"))

    def start(self, on_entries):
        self.on_entries = on_entries

    def stop(self):
        return defer.succeed(None)

    def join(self, records, seq):
        self.joins.append((records, seq))
        return self._answer(True)

    def renew(self):
        return self._answer(self.lease_in_redis)

    def members(self):
        return self._answer(dict(self.members_answer))

    def remove_node(self, node, resumption_milliseconds):
        self.removed.append(node)
        return self._answer(self.left.get(node))

    def remember_resumption(self, resume_id, state):
        self.resumptions[resume_id] = state
        return self._answer(1)

    def forget_resumption(self, resume_id):
        self.resumptions.pop(resume_id, None)
        return self._answer(1)

    def take_resumption(self, resume_id, bare):
        answers = self.takes.get(resume_id)
        return self._answer(answers.pop(0) if answers else None)

    def load_sessions(self, node):
        if node in self.late_snapshots:
            return self.late_snapshots[node]
        return self._answer(self.snapshots.get(node, (0, {})))

    def publish(self, fields):
        self.published.append(fields)
        return self._answer(1)

    def send(self, node, fields):
        self.sent.append((node, fields))
        return self._answer("1-0")

    def broadcast(self, fields):
        if self.reachable:
            self.broadcasts.append(fields)
        return self._answer(1)

    def claim(self, resources):
        me = f"node1 {self.incarnation}"
        if self.lease_in_redis:
            for resource in resources:
                self.owner_keys.setdefault(resource, me)
        return self._answer([self.owner_keys.get(resource) for resource in resources])

    def release(self, resources):
        for resource in resources:
            self.owner_keys.pop(resource, None)
        return self._answer(1)


def stream_error(elements):
    for element in elements:
        if element.name == "error" and element.uri == "http://etherx.jabber.org/streams":
            return next(element.elements()).name
    return None


def record(priority=0, show=None, marks=()):
    """A session record as another node publishes it."""
    presence = f"<presence><show>{show}</show></presence>" if show else "<presence/>"
    return json.dumps({"priority": priority, "presence": presence, **({"marks": list(marks)} if marks else {})})


SM = "urn:xmpp:sm:3"


class LeaseTests(SynchronousTestCase):
    def test_held_for_its_lifetime_from_when_the_renewal_was_sent(self):
        """A lease renewed by a request sent at t holds until t + lifetime, not from when Redis answered."""
        clock = Clock()
        lease = Lease(clock, 10)
        self.assertFalse(lease.held())
        clock.advance(3)
        lease.renewed(sent_at=1)
        clock.advance(7.9)
        self.assertTrue(lease.held())
        clock.advance(0.2)
        self.assertFalse(lease.held())

    def test_unreachable_redis_stops_new_sessions_before_the_lease_lapses(self):
        """After a failed renewal the lease still runs, but no new session is accepted."""
        clock = Clock()
        lease = Lease(clock, 10)
        lease.renewed(0)
        self.assertTrue(lease.accepting())
        lease.unreachable()
        self.assertTrue(lease.held())
        self.assertFalse(lease.accepting())
        lease.renewed(clock.seconds())
        self.assertTrue(lease.accepting())

    def test_lost_lease_is_not_held(self):
        """When Redis says the lease is gone, it is gone at once."""
        lease = Lease(Clock(), 10)
        lease.renewed(0)
        lease.lost()
        self.assertFalse(lease.held())


class EnvelopeTests(SynchronousTestCase):
    def valid(self, **changes):
        fields = Envelope("stanza", "node2", "alice@localhost/one", "<message/>", 7).fields()
        fields.update(changes)
        return fields

    def test_round_trip_as_redis_returns_it(self):
        """An envelope's fields, as bytes (as redis-py returns them), decode to the same envelope."""
        fields = {key.encode(): value.encode() for key, value in self.valid().items()}
        envelope = decode_envelope(fields, MAX_BYTES)
        self.assertEqual((envelope.kind, envelope.node, envelope.jid, envelope.body, envelope.seq),
                         ("stanza", "node2", "alice@localhost/one", "<message/>", 7))

    def test_refused(self):
        """Foreign and corrupt entries are refused with a reason: another protocol version, an unknown
        kind, a bad node name, a bare JID, a missing or negative sequence number, an oversized or
        missing stanza body, bytes that are not UTF-8."""
        cases = {
            "version": self.valid(v="2"),
            "no version": {key: value for key, value in self.valid().items() if key != "v"},
            "kind": self.valid(kind="shutdown"),
            "node": self.valid(node="node 2"),
            "empty node": self.valid(node=""),
            "bare jid": self.valid(jid="alice@localhost"),
            "bad jid": self.valid(jid="@@/"),
            "seq": self.valid(seq="-1"),
            "size": self.valid(body="<message>" + "x" * MAX_BYTES + "</message>"),
            "no body": self.valid(body=""),
            "utf-8": {b"v": b"1", b"kind": b"\xff"},
        }
        for name, fields in cases.items():
            with self.subTest(name):
                self.assertRaises(MalformedEnvelope, decode_envelope, fields, MAX_BYTES)

    def test_room_envelope_takes_a_room_jid(self):
        """A "room" envelope names a chat room (a bare JID) or an occupant, and needs a stanza body."""
        fields = Envelope("room", "node2", "lobby@conference.localhost", "<message/>").fields()
        self.assertEqual(decode_envelope(fields, MAX_BYTES).jid, "lobby@conference.localhost")
        self.assertRaises(MalformedEnvelope, decode_envelope, dict(fields, body=""), MAX_BYTES)
        self.assertRaises(MalformedEnvelope, decode_envelope, dict(fields, jid="conference.localhost"), MAX_BYTES)

    def test_stanza_bodies(self):
        """A body holds exactly one message, presence or iq; a DTD, entities, two stanzas, another
        element or broken XML are refused."""
        self.assertEqual(parse_stanza("<message to='a@b/c'><body>hi</body></message>", MAX_BYTES).name, "message")
        for text in ("<!DOCTYPE m [<!ENTITY e 'x'>]><message>&e;</message>", "<message/><message/>",
                     "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>", "<message>",
                     "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", "text"):
            with self.subTest(text):
                self.assertRaises(MalformedEnvelope, parse_stanza, text, MAX_BYTES)

    def test_record_round_trip(self):
        """A local session's record decodes to its priority, presence and marks."""
        session = RemoteSession(None, "node1", JID("a@localhost/r"), 5,
                                parse_element("<presence><show>away</show></presence>"), {"carbons", "roster"})
        priority, presence, marks = decode_record(encode_record(session), MAX_BYTES)
        self.assertEqual(priority, 5)
        self.assertEqual(str(presence.show), "away")
        self.assertEqual(marks, {"carbons", "roster"})
        self.assertEqual(decode_record(json.dumps({"priority": -1, "presence": None}), MAX_BYTES),
                         (-1, None, set()))

    def test_record_refused(self):
        """Records with other keys, a priority out of range or not an integer, or a presence that is
        another stanza are refused."""
        for text in ("[]", "{", json.dumps({"priority": 0}), json.dumps({"priority": 0, "presence": None, "x": 1}),
                     json.dumps({"priority": 128, "presence": None}), json.dumps({"priority": True, "presence": None}),
                     json.dumps({"priority": 1.5, "presence": None}),
                     json.dumps({"priority": 0, "presence": "<message/>"}),
                     json.dumps({"priority": 0, "presence": 3}),
                     json.dumps({"priority": 0, "presence": None, "marks": "carbons"}),
                     json.dumps({"priority": 0, "presence": None, "marks": ["Carbons"]}),
                     json.dumps({"priority": 0, "presence": None, "marks": [1]}),
                     json.dumps({"priority": 0, "presence": None, "marks": [f"m{n}" for n in range(17)]})):
            with self.subTest(text):
                self.assertRaises(MalformedEnvelope, decode_record, text, MAX_BYTES)


class ClusterTests(SynchronousTestCase):
    """One node (node1) of a cluster on a fake link; node2 is another member."""

    def setUp(self):
        self.harness = Harness()
        self.server = self.harness.server
        self.clock = self.harness.clock
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.link = FakeLink()
        section = configuration.ClusterConfig(enabled=True, node_name="node1", lease_seconds=9)
        self.cluster = Cluster(self.server, self.link, self.clock, section)
        self.server.cluster = self.cluster
        self.server.ownership = self.cluster.ownership
        self.link.members_answer = {"node1": "i1", "node2": "i2"}
        self.link.snapshots["node2"] = (4, {"bob@localhost/far": record(priority=3)})
        self.cluster.start()
        self.addCleanup(self.cluster.stop)

    def entry(self, kind, jid, body="", seq=0, node="node2"):
        return Envelope(kind, node, jid, body, seq).fields()

    def test_joins_and_mirrors_the_other_node(self):
        """At start the node joins, then loads node2's sessions into its table as remote sessions."""
        self.assertEqual(len(self.link.joins), 1)
        self.assertTrue(self.cluster.accepting())
        remote = self.server.sessions.get("bob@localhost/far")
        self.assertIsInstance(remote, RemoteSession)
        self.assertEqual((remote.node, remote.priority, remote.available), ("node2", 3, True))

    def test_local_sessions_are_published_in_order(self):
        """Binding and presence of a local session publish its record with rising sequence numbers."""
        client = self.harness.login("alice@localhost/one")
        client.send("<presence><priority>2</priority></presence>")
        mine = [fields for fields in self.link.published if fields["jid"] == "alice@localhost/one"]
        self.assertEqual([json.loads(fields["body"])["priority"] for fields in mine], [0, 2])
        self.assertEqual([int(fields["seq"]) for fields in mine], [1, 2])
        client.drop()
        self.assertEqual(self.link.published[-1]["body"], "")

    def test_message_to_a_remote_resource_goes_to_its_node(self):
        """A message for the account whose only resource is on node2 is handed to node2's inbox."""
        client = self.harness.login("alice@localhost/one")
        client.send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
        (node, fields), = self.link.sent
        self.assertEqual((node, fields["kind"], fields["jid"]), ("node2", "stanza", "bob@localhost/far"))
        stanza = parse_stanza(fields["body"], MAX_BYTES)
        self.assertEqual((stanza["from"], str(stanza.body)), ("alice@localhost/one", "hi"))

    def test_stanza_from_another_node_reaches_the_local_session(self):
        """A stanza envelope for a local session is written to that session's stream."""
        client = self.harness.login("alice@localhost/one")
        client.received()
        self.link.on_entries([self.entry("stanza", "alice@localhost/one",
                                         "<message from='bob@localhost/far' to='alice@localhost/one'>"
                                         "<body>there</body></message>")])
        (message,) = client.received()
        self.assertEqual(str(message.body), "there")
        self.assertEqual(self.cluster.received, 1)

    def test_corrupt_and_foreign_entries_are_dropped_and_counted(self):
        """Entries that do not decode, or that claim to come from this node, are dropped and counted;
        the session sees none of them and the node goes on."""
        client = self.harness.login("alice@localhost/one")
        client.received()
        self.link.on_entries([
            {b"v": b"0", b"kind": b"stanza"},
            self.entry("stanza", "alice@localhost/one", "<message><body>x</body>"),
            self.entry("stanza", "alice@localhost/one", "<message/>", node="node1"),
            self.entry("session", "bob@localhost/far", "not json", seq=9),
        ])
        self.assertEqual(client.received(), [])
        self.assertEqual(dict(self.cluster.dropped), {"malformed": 2, "foreign": 1, "record": 1})

    def test_failure_on_one_entry_spares_the_next(self):
        """An entry whose delivery raises is logged; the entries after it are still delivered."""
        broken = self.harness.login("alice@localhost/one")
        working = self.harness.login("alice@localhost/two")
        broken.received(), working.received()

        def fail(stanza):
            raise RuntimeError("stream gone wrong")

        self.server.sessions.get("alice@localhost/one").send = fail
        self.link.on_entries([self.entry("stanza", jid, f"<message to='{jid}'><body>x</body></message>")
                              for jid in ("alice@localhost/one", "alice@localhost/two")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([stanza.name for stanza in working.received()], ["message"])

    def test_session_changes_apply_in_order_after_the_snapshot(self):
        """A change older than the snapshot is skipped; a newer one updates or removes the session."""
        self.link.on_entries([self.entry("session", "bob@localhost/far", record(priority=-5), seq=4)])
        self.assertEqual(self.server.sessions.get("bob@localhost/far").priority, 3)
        self.link.on_entries([self.entry("session", "bob@localhost/far", record(priority=-5), seq=5)])
        self.assertEqual(self.server.sessions.get("bob@localhost/far").priority, -5)
        self.link.on_entries([self.entry("session", "bob@localhost/far", "", seq=6)])
        self.assertIsNone(self.server.sessions.get("bob@localhost/far"))

    def test_changes_during_a_snapshot_load_apply_after_it(self):
        """A node's hash read before its latest change, but answered after that change arrived, does
        not bring back what the change removed: changes that arrive while the hash loads wait for it,
        and only those newer than it apply."""
        self.link.late_snapshots["node3"] = snapshot = defer.Deferred()
        self.link.members_answer = {"node1": "i1", "node2": "i2", "node3": "i3"}
        self.clock.advance(3)
        self.link.on_entries([self.entry("session", "alice@localhost/a", record(), seq=7, node="node3"),
                              self.entry("session", "alice@localhost/b", "", seq=8, node="node3")])
        self.assertIsNone(self.server.sessions.get("alice@localhost/a"))
        snapshot.callback((7, {"alice@localhost/a": record(), "alice@localhost/b": record()}))
        self.assertIsNotNone(self.server.sessions.get("alice@localhost/a"))
        self.assertIsNone(self.server.sessions.get("alice@localhost/b"))

    def test_dead_node_sessions_are_dropped(self):
        """When node2's lease is gone, its sessions leave the table and the node is removed from Redis."""
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)
        self.assertIsNone(self.server.sessions.get("bob@localhost/far"))
        self.assertEqual(self.link.removed, ["node2"])

    def dead_node2_seen_by(self, members):
        """bob's local resource, available, and what it receives once node2 (holding bob/far) is dead."""
        client = self.harness.login("bob@localhost/here")
        client.send("<presence/>")
        client.received()
        self.link.members_answer = members
        self.clock.advance(3)
        return [stanza for stanza in client.received() if stanza.name == "presence"]

    def test_first_survivor_announces_a_dead_nodes_users(self):
        """The first live node by name sends the unavailable presence that the dead node cannot:
        bob's resource here hears that bob/far is gone."""
        (presence,) = self.dead_node2_seen_by({"node1": "i1", "node2": None, "node3": "i3"})
        self.assertEqual((presence["from"], presence["type"]), ("bob@localhost/far", "unavailable"))

    def test_first_survivor_announces_a_node_another_removed(self):
        """When another survivor removed node2 first (it is no longer a member at all), the first
        live node by name still announces its users gone."""
        (presence,) = self.dead_node2_seen_by({"node1": "i1", "node3": "i3"})
        self.assertEqual((presence["from"], presence["type"]), ("bob@localhost/far", "unavailable"))

    def test_a_resource_bound_again_is_not_announced_gone(self):
        """bob/far comes back here before node2's lease runs out (its client reconnected): the first survivor
        does not announce that resource unavailable, which would follow, and hide, the new session's presence."""
        watcher = self.harness.login("bob@localhost/here")
        watcher.send("<presence/>")
        again = self.harness.login("bob@localhost/far")
        again.send("<presence/>")
        watcher.received()
        self.link.members_answer = {"node1": "i1", "node2": None, "node3": "i3"}
        self.clock.advance(3)
        self.assertEqual([stanza for stanza in watcher.received() if stanza.name == "presence"], [])
        self.assertTrue(self.server.sessions.get("bob@localhost/far").local)

    def test_other_survivors_stay_quiet(self):
        """A survivor that is not the first live node by name leaves the announcement to that node
        (so that contacts hear it once)."""
        self.assertEqual(self.dead_node2_seen_by({"node0": "i0", "node1": "i1", "node2": None}), [])

    def test_room_stanza_goes_to_the_room_receiver(self):
        """A "room" envelope's stanza goes to the MUC placement's receiver; without one it is dropped."""
        body = "<message to='lobby@conference.localhost' from='bob@localhost/far' type='groupchat'/>"
        self.link.on_entries([self.entry("room", "lobby@conference.localhost", body)])
        self.assertEqual(self.cluster.dropped["no-room-service"], 1)
        received = []
        self.cluster.room_receiver = received.append
        self.link.on_entries([self.entry("room", "lobby@conference.localhost", body)])
        self.assertEqual([stanza["from"] for stanza in received], ["bob@localhost/far"])

    def test_observers_hear_of_gone_nodes_and_of_this_nodes_lost_lease(self):
        """A dead node is told to the observers with its incarnation and the sessions it held; a restarted
        one with its old incarnation; this node's own lost lease with its name."""
        told = []

        class Observer:
            def node_gone(self, node, incarnation, sessions):
                told.append((node, incarnation, sorted(session.full for session in sessions)))

        self.cluster.node_observers.append(Observer())
        self.link.members_answer = {"node1": "i1", "node2": "i3"}
        self.clock.advance(3)
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)
        self.link.lease_in_redis = False
        self.clock.advance(3)
        self.assertEqual(told, [("node2", "i2", ["bob@localhost/far"]), ("node2", "i3", ["bob@localhost/far"]),
                                ("node1", None, [])])

    def test_restarted_node_is_reloaded(self):
        """A new incarnation of node2 replaces what the table held of the old one."""
        self.link.members_answer = {"node1": "i1", "node2": "i3"}
        self.link.snapshots["node2"] = (0, {"bob@localhost/new": record()})
        self.clock.advance(3)
        self.assertIsNone(self.server.sessions.get("bob@localhost/far"))
        self.assertIsNotNone(self.server.sessions.get("bob@localhost/new"))

    def test_without_redis_no_new_session_then_none_at_all(self):
        """Redis away: binding is refused at once (resource-constraint); once the lease lapsed the
        node's sessions end with system-shutdown and the other node's sessions leave its table."""
        client = self.harness.login("alice@localhost/one")
        client.received()
        self.link.reachable = False
        self.clock.advance(3)
        self.assertFalse(self.cluster.accepting())
        late = self.harness.connect()
        self.assertRaises(AssertionError, late.login, "alice@localhost/two")
        self.assertIsNone(stream_error(client.received()))
        self.clock.advance(6)
        self.assertEqual(stream_error(client.received()), "system-shutdown")
        self.assertIsNone(self.server.sessions.get("bob@localhost/far"))

    def test_lease_gone_in_redis_gives_up_sessions_and_joins_again(self):
        """When Redis no longer holds the lease (split brain), the node ends its sessions at once,
        then joins again with a new incarnation."""
        client = self.harness.login("alice@localhost/one")
        client.received()
        self.link.lease_in_redis = False
        self.clock.advance(3)
        self.assertEqual(stream_error(client.received()), "system-shutdown")
        self.assertFalse(self.cluster.accepting())
        self.clock.advance(3)
        self.assertEqual(len(self.link.joins), 2)
        self.assertTrue(self.cluster.accepting())

    def test_claims_follow_the_lease(self):
        """A claim is tried with the lease's rounds and owned; when Redis no longer holds the node's lease
        it is lost at once with the sessions; a clean stop releases what the node owns."""
        events = []
        claim = self.server.ownership.claim("sms:sms.localhost", lambda: events.append("gained"),
                                            lambda: events.append("lost"))
        self.clock.advance(3)
        self.assertEqual(events, ["gained"])
        self.assertTrue(claim.owned)
        self.link.lease_in_redis = False
        self.clock.advance(3)
        self.assertEqual(events, ["gained", "lost"])
        self.assertFalse(claim.owned)
        self.link.lease_in_redis = True
        self.link.owner_keys.clear()
        self.clock.advance(6)
        self.assertEqual(events, ["gained", "lost", "gained"])
        stopped = self.cluster.stop()
        self.assertNoResult(stopped)  # the node waits for the holder to finish and release the claim
        self.clock.advance(3)
        self.assertTrue(claim.owned, "renewed while the node stops")
        claim.release()
        self.successResultOf(stopped)
        self.assertEqual((events[-1], self.link.owner_keys), ("lost", {}))

    def test_a_claim_not_released_at_a_stop_is_released_after_the_lease(self):
        """A holder that does not release its claim at a clean stop does not keep the node from leaving:
        after lease_seconds the claim is released and the node leaves."""
        events = []
        self.server.ownership.claim("email:outbox", lambda: events.append("gained"), lambda: events.append("lost"))
        self.clock.advance(3)
        stopped = self.cluster.stop()
        self.clock.advance(8.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual((events, self.link.owner_keys), (["gained", "lost"], {}))

    def test_conflict_with_a_remote_resource_kicks_it(self):
        """Binding a resource node2 holds asks node2 to end its session; the new one is local."""
        self.harness.login("bob@localhost/far")
        self.assertIn(("node2", "kick"), [(node, fields["kind"]) for node, fields in self.link.sent])
        self.assertTrue(self.server.sessions.get("bob@localhost/far").local)

    def test_kick_from_another_node_ends_the_local_session(self):
        """A kick envelope ends the named local session with conflict."""
        client = self.harness.login("alice@localhost/one")
        client.received()
        self.link.on_entries([self.entry("kick", "alice@localhost/one")])
        self.assertEqual(stream_error(client.received()), "conflict")

    def test_stanza_for_a_gone_session_follows_the_local_rules(self):
        """An IQ for a resource that ended before the stanza arrived is answered service-unavailable."""
        self.link.on_entries([self.entry("stanza", "alice@localhost/gone",
                                         "<iq type='get' id='q' from='bob@localhost/far' to='alice@localhost/gone'>"
                                         "<ping xmlns='urn:xmpp:ping'/></iq>")])
        (node, fields), = self.link.sent
        reply = parse_stanza(fields["body"], MAX_BYTES)
        self.assertEqual((node, reply["type"], reply.error.firstChildElement().name),
                         ("node2", "error", "service-unavailable"))


    # -- features' state on sessions of other nodes (marks) ------------------------------------

    def test_marks_are_published(self):
        """Enabling carbons and asking for the roster mark the session; its record carries the marks."""
        client = self.harness.login("alice@localhost/one")
        client.iq("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        client.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        self.assertEqual(json.loads(self.link.published[-1]["body"])["marks"], ["carbons", "roster"])
        client.iq("<iq type='set' id='d'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        self.assertEqual(json.loads(self.link.published[-1]["body"])["marks"], ["roster"])
        self.assertFalse(self.server.sessions.marked("carbons", "alice@localhost"))

    def test_carbons_and_roster_pushes_reach_a_resource_on_another_node(self):
        """alice/far on node2 enabled carbons and asked for the roster: alice/one's message here is
        copied to it as <sent/>, and her roster change is pushed to it, both through node2's inbox."""
        self.link.on_entries([self.entry("session", "alice@localhost/far", record(marks=["carbons", "roster"]),
                                         seq=5)])
        self.assertTrue(self.server.sessions.marked("carbons", "alice@localhost"))
        client = self.harness.login("alice@localhost/one")
        client.send("<message to='bob@localhost/far' type='chat' id='m1'><body>hi</body></message>")
        client.iq("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>")
        to_far = [parse_stanza(fields["body"], MAX_BYTES) for node, fields in self.link.sent
                  if fields["jid"] == "alice@localhost/far"]
        self.assertEqual([(stanza.name, stanza.firstChildElement().name) for stanza in to_far],
                         [("message", "sent"), ("iq", "query")])
        self.link.on_entries([self.entry("session", "alice@localhost/far", "", seq=6)])
        self.assertFalse(self.server.sessions.marked("carbons", "alice@localhost"))

    # -- XEP-0198 resumption on another node ----------------------------------------------------

    def test_resumption_state_follows_the_acknowledgements(self):
        """A resumable session's full JID and handled count go to Redis at <enable/> and with each
        <a/>; they go when the session ends."""
        client = self.harness.login("alice@localhost/one")
        client.send(f"<enable xmlns='{SM}' resume='true'/>")
        resume_id = [e for e in client.received() if e.name == "enabled"][0]["id"]
        self.assertEqual(json.loads(self.link.resumptions[resume_id]), {"jid": "alice@localhost/one", "h": 0})
        client.send("<presence/>")
        client.send(f"<r xmlns='{SM}'/>")
        self.assertEqual(json.loads(self.link.resumptions[resume_id])["h"], 1)
        client.send("</stream:stream>")
        client.drop()
        self.assertNotIn(resume_id, self.link.resumptions)

    def resume(self, previd, h=0):
        return resuming(self.harness, "alice", previd, h)

    def test_session_of_a_dead_node_is_resumed_here(self):
        """A client of node2 resumes here: node2's lease still runs at first, so the node waits for
        it to lapse, then answers <resumed/> with the handled count node2 last sent; the session is
        local with its marks, and its presence is broadcast again."""
        watcher = self.harness.login("alice@localhost/desk")
        watcher.send("<presence/>")
        watcher.received()
        state = json.dumps({"jid": "alice@localhost/far", "h": 7})
        self.link.takes["id1"] = [("alive", "500"), ("taken", state, record(marks=["carbons"]))]
        client = self.resume("id1", h=3)
        self.assertEqual([e for e in client.received() if e.name in ("resumed", "failed")], [])
        self.clock.advance(1)
        resumed = [e for e in client.received() if e.name == "resumed"][0]
        self.assertEqual((resumed["previd"], resumed["h"]), ("id1", "7"))
        session = self.server.sessions.get("alice@localhost/far")
        self.assertTrue(session.local)
        self.assertEqual((session.available, session.marks, session.sm.acks.acknowledged), (True, {"carbons"}, 3))
        self.assertIn("alice@localhost/far", [e["from"] for e in watcher.received() if e.name == "presence"])
        client.send(f"<r xmlns='{SM}'/>")
        self.assertEqual([e["h"] for e in client.received() if e.name == "a"], ["7"])
        self.assertEqual(json.loads(self.link.resumptions["id1"])["jid"], "alice@localhost/far")

    def test_unknown_resumption_fails_cleanly(self):
        """An id Redis does not hold (or of a node alive beyond the waits) gets item-not-found at once,
        and the client may bind."""
        self.link.takes["id2"] = [("alive", "500")] * 3
        for previd in ("nothing", "id2"):
            client = self.resume(previd)
            for _ in range(3):
                self.clock.advance(1)
            (failed,) = [e for e in client.received() if e.name == "failed"]
            self.assertEqual(failed.firstChildElement().name, "item-not-found")
            client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            self.assertEqual(client.received()[-1]["type"], "result")

    def test_resumption_while_redis_is_away_fails_cleanly(self):
        """A Redis call that fails answers item-not-found, not a stream error."""
        self.link.reachable = False
        client = self.resume("id4")
        (failed,) = [e for e in client.received() if e.name == "failed"]
        self.assertEqual(failed.firstChildElement().name, "item-not-found")

    def test_dead_node_resumed_session_is_not_announced_gone(self):
        """A session of node2 resumed here before node2's removal is not announced unavailable, and
        gets what node2's inbox held for it as it is (its sending node archived it already)."""
        self.link.takes["id3"] = [("taken", json.dumps({"jid": "bob@localhost/far", "h": 0}), record())]
        resumed = resuming(self.harness, "bob", "id3", 0)
        resumed.received()
        watcher = self.harness.login("bob@localhost/here")
        watcher.send("<presence/>")
        watcher.received()
        self.link.left["node2"] = [self.entry(
            "stanza", "bob@localhost/far", "<message from='alice@localhost/x' to='bob@localhost/far' type='chat'>"
                                           "<body>kept</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' "
                                           "id='s1'/></message>", node="node3")]
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)
        self.assertEqual([e for e in watcher.received() if e.getAttribute("type") == "unavailable"], [])
        (message,) = [e for e in resumed.received() if e.name == "message"]
        self.assertEqual([child["id"] for child in message.elements("urn:xmpp:sid:0", "stanza-id")], ["s1"])

    def test_what_a_dead_nodes_inbox_held_is_routed_again(self):
        """The stanzas left in node2's inbox go through the router once node2 is removed: a message
        for bob/far (gone) reaches bob's resource here."""
        watcher = self.harness.login("bob@localhost/here")
        watcher.send("<presence/>")
        watcher.received()
        self.link.left["node2"] = [
            self.entry("stanza", "bob@localhost/far", "<message from='alice@localhost/x' to='bob@localhost/far' "
                                                      "type='chat'><body>kept</body></message>", node="node3"),
            self.entry("session", "carol@localhost/x", record(), seq=1, node="node3"),
            {"v": "1", "kind": "stanza"}]
        self.link.members_answer = {"node1": "i1", "node2": None}
        self.clock.advance(3)
        self.assertEqual([str(e.body) for e in watcher.received() if e.name == "message"], ["kept"])
        self.assertEqual(self.cluster.dropped["malformed"], 1)


class SingleProcessTests(SynchronousTestCase):
    def test_no_cluster_section_no_observer(self):
        """Without [cluster] the session table has no observer and binding is not gated."""
        harness = Harness()
        harness.add_user("alice@localhost")
        harness.login("alice@localhost/one")
        self.assertIsNone(harness.server.sessions.observer)
        self.assertIsNone(harness.server.cluster)
        self.assertFalse(configuration.Config().cluster.enabled)


class ConfigTests(SynchronousTestCase):
    def test_enabled_needs_a_node_name_and_an_address(self):
        """[cluster] turned on without a usable node name or Redis address is an error naming each key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"cluster": {"enabled": True, "node_name": "a b", "redis_address": "x:0"}},
                                "test.toml")
        text = str(caught.exception)
        self.assertIn("test.toml: cluster.node_name", text)
        self.assertIn("test.toml: cluster.redis_address", text)

    def test_password_file_must_be_private(self):
        """A Redis password file that group or others can read is refused; a 0600 one is accepted."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        secret = os.path.join(folder, "redis.password")
        with open(secret, "w", encoding="utf-8") as handle:
            handle.write("secret\n")
        path = os.path.join(folder, "bridge.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write('[cluster]\nenabled = true\nnode_name = "n1"\npassword_file = "redis.password"\n')
        os.chmod(secret, 0o644)
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        self.assertIn("cluster.password_file", str(caught.exception))
        os.chmod(secret, 0o600)
        self.assertEqual(configuration.load(path).cluster.read_password(), "secret")

    def test_missing_redis_client_is_a_usage_error(self):
        """[cluster] on without redis-py installed stops twistd with an error naming the key and the fix."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "bridge.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write('[cluster]\nenabled = true\nnode_name = "n1"\n')
        real_find_spec = importlib.util.find_spec
        self.patch(importlib.util, "find_spec", lambda name: None if name == "redis" else real_find_spec(name))
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--config", path])
        self.assertIn("cluster.enabled: needs redis-py", str(caught.exception))


class WriteBatchTests(SynchronousTestCase):
    """RedisLink's queue of writes, with the writer thread replaced by Deferreds the test fires."""

    def setUp(self):
        self.link = RedisLink(configuration.ClusterConfig(enabled=True, node_name="node1"), reactor=None)
        self.batches = []

        def call(function, writes):
            self.batches.append(([write.__name__ for write, _ in writes], defer.Deferred()))
            return self.batches[-1][1]

        self.link._call = call

    def test_writes_wait_for_the_writer_and_go_together_in_order(self):
        """The first write goes at once; those queued meanwhile go in the next batch, in order, and
        each caller gets its own reply: a missing inbox (no reply) and an error fail only their write."""
        first = self.link.send("node2", {"v": "1"})
        second = self.link.publish({"v": "1", "jid": "a@b/c", "body": "", "seq": "1"})
        third = self.link.send("node3", {"v": "1"})
        fourth = self.link.send("node2", {"v": "1"})
        self.assertEqual([names for names, _ in self.batches], [["_send_in"]])
        self.batches[0][1].callback(["1-0"])
        self.assertEqual(self.successResultOf(first), "1-0")
        self.assertEqual([names for names, _ in self.batches][1], ["_publish_in", "_send_in", "_send_in"])
        self.batches[1][1].callback([1, None, ConnectionError("broken")])
        self.assertEqual(self.successResultOf(second), 1)
        self.failureResultOf(third, LookupError)
        self.failureResultOf(fourth, ConnectionError)
        self.assertEqual(len(self.batches), 2)

    def test_failed_batch_fails_each_write(self):
        """When the pipeline itself fails (Redis away), every write of the batch fails with it."""
        first = self.link.send("node2", {"v": "1"})
        self.batches[0][1].errback(ConnectionError("Redis away"))
        self.failureResultOf(first, ConnectionError)
        second = self.link.send("node2", {"v": "1"})
        self.assertEqual(len(self.batches), 2)
        self.batches[1][1].callback(["2-0"])
        self.assertEqual(self.successResultOf(second), "2-0")
