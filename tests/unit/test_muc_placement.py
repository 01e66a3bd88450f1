"""Chat rooms in a cluster (bridge/gateways/muc/placement.py) on the in-memory server, a fake clock and a
fake cluster: a room lives on the node that claimed it, stanzas for it go there, and its host's end is
told to the occupants of this node."""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID

from bridge import config as configuration
from bridge.core.cluster import RemoteSession
from bridge.core.xmlstream import parse_element
from bridge.gateways.muc import placement, service
from tests.unit.helpers import Harness, gateway_context

ROOM = "room@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"


def codes(stanza):
    x = next(stanza.elements(NS_USER, "x"), None)
    return {int(s["code"]) for s in x.elements(NS_USER, "status")} if x is not None else set()


class FakeCluster:
    """What the placement asks of bridge.core.cluster.Cluster: claims answered when the test says."""

    node = "node1"

    def __init__(self):
        self.claims = []  # (room, Deferred)
        self.to_rooms = []  # (node, room JID, stanza)
        self.to_sessions = []  # (full JID, stanza)
        self.released = []
        self.released_nodes = []
        self.node_observers = []
        self.room_receiver = None
        self.inboxes = {"node1", "node2", "node3"}

    def incarnation(self):
        return "i1"

    def accepting(self):
        return True

    def claim_room(self, room):
        d = defer.Deferred()
        self.claims.append((room, d))
        return d

    def answer(self, owner):
        """Answer the oldest claim under way with ``owner`` ((node, incarnation) or None)."""
        _, d = self.claims.pop(0)
        d.callback(owner)

    def forward_to_room(self, node, room_jid, stanza):
        if node not in self.inboxes:
            return defer.fail(LookupError(f"node {node} has no inbox"))
        self.to_rooms.append((node, room_jid, stanza))
        return defer.succeed(None)

    def forward(self, remote, stanza):
        self.to_sessions.append((remote.full, stanza))

    def release_room(self, room):
        self.released.append(room)

    def release_rooms_of(self, node, incarnation):
        self.released_nodes.append((node, incarnation))

    def gone(self, node, incarnation, sessions=()):
        for observer in self.node_observers:
            observer.node_gone(node, incarnation, list(sessions))


class PlacementTests(SynchronousTestCase):
    def setUp(self):
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}},
                    "cluster": {"enabled": True, "node_name": "node1", "lease_seconds": 6}}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.cluster = self.harness.server.cluster = FakeCluster()
        self.context = gateway_context(self.harness.server, "muc", self.harness.config.muc)
        self.service = service.attach(self.context, self.harness.clock, None)
        self.service.start()
        self.placement = self.cluster.node_observers[0]
        self.alice = self.harness.login("alice@localhost/r")
        self.alice.send("<presence/>")
        self.alice.received()

    def remote_user(self, full, node="node2"):
        remote = RemoteSession(self.cluster, node, JID(full), 0, None)
        self.harness.server.sessions.add(remote)
        return remote

    def host_here(self):
        """alice joins ROOM, which nobody hosts yet: this node claims it and she creates it."""
        self.alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
        self.assertEqual(self.alice.received(), [])
        self.cluster.answer(("node1", "i1"))
        got = self.alice.received()
        self.assertIn(201, codes(got[-2]))
        reply = self.alice.iq(f"<iq type='set' id='i' to='{ROOM}'><query xmlns='{NS_OWNER}'>"
                              "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        self.assertEqual(reply["type"], "result")

    def test_first_node_that_needs_a_room_hosts_it(self):
        """A join for a room nobody hosts waits for the claim; claimed by this node, the service here
        creates the room, and the next stanzas for it go straight to the service (no second claim)."""
        self.host_here()
        self.assertEqual(self.cluster.claims, [])
        self.alice.send(f"<message type='groupchat' to='{ROOM}'><body>hi</body></message>")
        (message,) = self.alice.received()
        self.assertEqual((message["from"], str(message.body)), (f"{ROOM}/Alice", "hi"))
        self.assertEqual(self.cluster.to_rooms, [])

    def test_room_hosted_elsewhere_gets_its_stanzas_there(self):
        """A room that node2 hosts: alice's join and her later message go to node2's inbox, in order, with
        one claim; the service here never sees them."""
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.cluster.answer(("node2", "i2"))
        self.alice.send(f"<message type='groupchat' to='{ROOM}'><body>hi</body></message>")
        self.assertEqual([(node, jid, stanza.name) for node, jid, stanza in self.cluster.to_rooms],
                         [("node2", f"{ROOM}/Alice", "presence"), ("node2", ROOM, "message")])
        self.assertEqual(self.cluster.to_rooms[1][2]["from"], "alice@localhost/r")
        self.assertEqual((self.cluster.claims, self.service.rooms["conference.localhost"]), ([], {}))
        self.assertEqual(self.alice.received(), [])

    def test_service_domain_is_answered_by_every_node(self):
        """disco#info of the service itself is answered here, with no claim."""
        reply = self.alice.iq("<iq type='get' id='d' to='conference.localhost'>"
                              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertEqual(reply["type"], "result")
        self.assertEqual(self.cluster.claims, [])

    def test_stanza_from_another_node_enters_the_hosted_room(self):
        """bob on node2 joins the room hosted here through node2's inbox: alice sees him, and what the room
        sends him goes to his node as a RemoteSession's stanzas."""
        self.host_here()
        self.remote_user("bob@localhost/far")
        self.cluster.room_receiver(self.stanza(f"<presence from='bob@localhost/far' to='{ROOM}/Bob'>"
                                               f"<x xmlns='{NS_MUC}'/></presence>"))
        (seen,) = self.alice.received()
        self.assertEqual(seen["from"], f"{ROOM}/Bob")
        to_bob = [stanza for full, stanza in self.cluster.to_sessions if full == "bob@localhost/far"]
        self.assertIn(110, codes([s for s in to_bob if s.name == "presence"][-1]))

    def stanza(self, text):
        return parse_element(text)

    def test_stanza_from_another_node_for_a_room_not_hosted_here_asks_redis(self):
        """A stanza another node believed to be for a room of this node, which this node does not host,
        is placed as Redis says, whatever this node remembered."""
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.cluster.answer(("node2", "i2"))
        self.cluster.room_receiver(self.stanza(f"<message type='groupchat' from='bob@localhost/far' to='{ROOM}'>"
                                               "<body>x</body></message>"))
        self.assertEqual(len(self.cluster.claims), 1)
        self.cluster.answer(("node3", "i3"))
        self.assertEqual([node for node, _, _ in self.cluster.to_rooms], ["node2", "node3"])

    def test_host_gone_tells_local_occupants_332(self):
        """When node2, hosting the room alice joined, is gone, she gets the room's unavailable presence with
        status 332; her next join asks Redis again (and this node may take the room)."""
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.cluster.answer(("node2", "i2"))
        self.cluster.gone("node3", "i3")
        self.assertEqual(self.alice.received(), [])
        self.cluster.gone("node2", "i2")
        (presence,) = self.alice.received()
        self.assertEqual((presence["from"], presence["type"], codes(presence)),
                         (f"{ROOM}/Alice", "unavailable", {332}))
        self.assertIn(("node2", "i2"), self.cluster.released_nodes)
        self.alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
        self.assertEqual(len(self.cluster.claims), 1)
        self.cluster.gone("node2", "i2")
        self.assertEqual(self.alice.received(), [], "told once")

    def test_left_room_is_not_told(self):
        """A resource that left the room, or whose session ended, is not told of its host's end."""
        bob = self.harness.login("bob@localhost/r")
        for client, nick in ((self.alice, "Alice"), (bob, "Bob")):
            client.send(f"<presence to='{ROOM}/{nick}'/>")
        self.cluster.answer(("node2", "i2"))
        self.alice.send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")
        bob.drop()
        self.cluster.gone("node2", "i2")
        self.assertEqual(self.alice.received(), [])
        self.assertEqual((self.placement.joined, self.placement.joined_count), ({}, 0))

    def test_users_of_a_gone_node_leave_the_rooms_hosted_here(self):
        """When node2 is gone, its users leave the room hosted here: alice sees bob's unavailable presence."""
        self.host_here()
        bob = self.remote_user("bob@localhost/far")
        self.cluster.room_receiver(self.stanza(f"<presence from='bob@localhost/far' to='{ROOM}/Bob'/>"))
        self.alice.received()
        self.harness.server.sessions.remove(bob)
        self.cluster.gone("node2", "i2", [bob])
        (presence,) = self.alice.received()
        self.assertEqual((presence["from"], presence["type"]), (f"{ROOM}/Bob", "unavailable"))
        self.assertEqual(list(self.service.rooms["conference.localhost"]["room"].occupants), ["Alice"])

    def test_room_taken_over_is_read_from_storage(self):
        """A persistent room comes back as storage holds it when this node claims it again after losing its
        lease (a room another node changed meanwhile is read anew); the temporary state it held is gone."""
        self.host_here()
        reply = self.alice.iq(f"<iq type='set' id='c' to='{ROOM}'><query xmlns='{NS_OWNER}'>"
                              "<x xmlns='jabber:x:data' type='submit'>"
                              "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
                              "<field var='muc#roomconfig_roomname'><value>Stored</value></field>"
                              "</x></query></iq>")
        self.assertEqual(reply["type"], "result")
        self.alice.received()
        self.cluster.gone("node1", None)
        self.assertEqual(self.service.rooms["conference.localhost"], {})
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.cluster.answer(("node1", "i1"))
        room = self.service.rooms["conference.localhost"]["room"]
        self.assertEqual((room.config.name, room.config.persistent, list(room.occupants)), ("Stored", True, ["Alice"]))
        self.assertNotIn(201, codes([s for s in self.alice.received() if s.name == "presence"][-1]))

    def test_ended_room_is_released(self):
        """A temporary room whose last occupant left is released in Redis at the next sweep."""
        self.host_here()
        self.alice.send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")
        self.harness.clock.advance(6)
        self.assertEqual(self.cluster.released, [ROOM])
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.assertEqual(len(self.cluster.claims), 1, "claimed again when needed")

    def test_without_a_lease_no_room_is_hosted(self):
        """A claim refused (this node holds no lease) answers the waiting stanzas service-unavailable."""
        self.alice.send(f"<iq type='get' id='q' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/>"
                      "</iq>")
        self.cluster.answer(None)
        (reply,) = self.alice.received()
        self.assertEqual((reply["type"], reply.error.firstChildElement().name), ("error", "service-unavailable"))

    def test_unreachable_host_is_asked_again(self):
        """A room's node without an inbox: the stanza is bounced, and the next one asks Redis again."""
        self.alice.send(f"<presence to='{ROOM}/Alice'/>")
        self.cluster.answer(("node9", "i9"))
        self.alice.send(f"<message type='groupchat' to='{ROOM}' id='m'><body>x</body></message>")
        self.assertEqual(len(self.cluster.claims), 1)

    def test_waiting_stanzas_are_bounded(self):
        """Stanzas for a room whose claim is under way wait up to MAX_WAITING_PER_ROOM; the next get
        resource-constraint."""
        for number in range(placement.MAX_WAITING_PER_ROOM + 1):
            self.alice.send(f"<message type='chat' to='{ROOM}/x' id='m{number}'><body>x</body></message>")
        (reply,) = self.alice.received()
        self.assertEqual((reply["id"], reply.error.firstChildElement().name),
                         (f"m{placement.MAX_WAITING_PER_ROOM}", "resource-constraint"))

    def test_known_hosts_are_bounded(self):
        """Past MAX_KNOWN_HOSTS rooms, the oldest room's host is forgotten (and asked again when needed)."""
        self.patch(placement, "MAX_KNOWN_HOSTS", 2)
        for name in ("one", "two", "three"):
            self.alice.send(f"<presence to='{name}@conference.localhost/Alice'/>")
            self.cluster.answer(("node2", "i2"))
        self.assertEqual(sorted(self.placement.owners), ["three@conference.localhost", "two@conference.localhost"])
