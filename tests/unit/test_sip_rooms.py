"""SIP phones in chat rooms (gateways/sip/rooms.py): a registered phone's MESSAGE to a room's SIP address
joins its user to the room, the room's messages reach the phone as MESSAGEs, and it leaves when its
registration ends."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways.muc import service as muc_service
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import make_response, parse_datagram

from .helpers import Harness, gateway_context
from .test_sip_messaging import SOURCE, FakeResolver, Outbound, sip_message
from .test_sip_registrar import FakeUDP, Phone, authorization

ROOM = "room@conference.localhost"
ROOM_URI = "sip:room@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"


def codes(stanza):
    x = next(stanza.elements(NS_USER, "x"), None)
    return {int(s["code"]) for s in x.elements(NS_USER, "status")} if x is not None else set()


class PhoneRoomTests(SynchronousTestCase):
    def setUp(self):
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}},
                    "sip": {"enabled": True}, "muc": {}}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        self.server = self.harness.server
        self.clock = self.harness.clock
        for user in ("alice", "bob", "dave"):
            self.harness.add_user(f"{user}@localhost", "secret")
        self.muc_context = gateway_context(self.server, "muc", self.harness.config.muc)
        self.muc = muc_service.attach(self.muc_context, self.clock, None)
        self.muc.start()
        self.context = gateway_context(self.server, "sip", self.harness.config.sip)
        self.gateway = SIPGateway(self.context, resolver=FakeResolver())
        self.gateway.add_transport(Outbound())
        self.transport = FakeUDP()
        self.addCleanup(self.context.unload)
        self.addCleanup(self.gateway.stop)
        self.addCleanup(self.muc_context.unload)
        self.alice = self.harness.login("alice@localhost/pc")
        self.alice.send("<presence/>")
        self.alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
        self.alice.iq(f"<iq type='set' id='inst' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
                      "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        self.alice.received()

    def exchange(self, request, source=SOURCE):
        before = len(self.transport.sent)
        self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, source)
        self.assertEqual(len(self.transport.sent), before + 1, "exactly one response expected")
        return self.transport.sent[-1][0]

    def register(self, user="dave", expires=None):
        response = Phone(self, aor=f"sip:{user}@localhost").register(
            password="secret", user=user, contacts=(f"<sip:{user}@192.0.2.7:5062>",), expires=expires)
        self.assertEqual(response.status, 200)
        self.transport.sent.clear()

    def post(self, body, user="dave", uri=ROOM_URI):
        """A MESSAGE from ``user``'s phone to ``uri``, through the digest challenge; the final response."""
        challenge = self.exchange(sip_message(sender=f"sip:{user}@localhost", uri=uri, body=body))
        self.assertEqual(challenge.status, 401)
        value = challenge.headers.get_all("WWW-Authenticate")[0]
        return self.exchange(sip_message(sender=f"sip:{user}@localhost", uri=uri, body=body, cseq=2,
                                         auth=authorization(value, user, "secret", uri=uri, method="MESSAGE")))

    def requests(self):
        """The MESSAGEs the gateway sent to the phone since the last call, answered 200."""
        sent = [request for request, _ in self.transport.sent if getattr(request, "method", None) == "MESSAGE"]
        self.transport.sent.clear()
        for request in sent:
            self.gateway.message_received(parse_datagram(make_response(request, 200).to_bytes()), self.transport,
                                          SOURCE)
        self.transport.sent.clear()
        return sent

    def test_phone_joins_and_posts(self):
        """A registered phone's MESSAGE to the room's address joins dave as the occupant 'dave' and reaches
        the room as groupchat from room/dave; the phone gets 202 and no echo of its own message."""
        self.register()
        self.assertEqual(self.post("hello room").status, 202)
        got = self.alice.received()
        [joined] = [s for s in got if s.name == "presence"]
        self.assertEqual(joined["from"], f"{ROOM}/dave")
        [message] = [s for s in got if s.name == "message"]
        self.assertEqual((message["type"], message["from"], str(message.body)), ("groupchat", f"{ROOM}/dave",
                                                                                "hello room"))
        self.assertEqual(self.requests(), [])

    def test_room_messages_reach_the_phone(self):
        """After joining, a room message reaches the phone as MESSAGE from the room's address, the speaker's
        nick as display name."""
        self.register()
        self.post("hi")
        self.requests()
        self.alice.send(f"<message type='groupchat' to='{ROOM}'><body>welcome dave</body></message>")
        [request] = self.requests()
        self.assertEqual(request.body, b"welcome dave")
        self.assertEqual(str(request.from_address.uri), ROOM_URI)
        self.assertEqual(request.from_address.display_name, "Alice")
        self.assertEqual(str(request.uri), "sip:dave@192.0.2.7:5062")

    def test_phone_leaves_when_its_registration_expires(self):
        """When the phone's registration expires, its session leaves the room, which the occupants see."""
        self.register(expires=120)
        self.post("briefly")
        self.alice.received()
        self.gateway.start()
        self.clock.advance(200)
        [left] = [s for s in self.alice.received() if s.name == "presence"]
        self.assertEqual((left["from"], left["type"]), (f"{ROOM}/dave", "unavailable"))
        self.assertEqual(self.gateway.rooms.joined, {})

    def test_unregistered_phone_is_refused(self):
        """A phone that is not registered gets 403: only a registered phone can receive the room."""
        self.assertEqual(self.post("hello").status, 403)
        self.assertEqual(self.alice.received(), [])

    def test_phones_create_no_rooms(self):
        """A MESSAGE to a room that does not exist gets 404, and no room is left behind."""
        self.register()
        self.assertEqual(self.post("anyone?", uri="sip:nosuch@conference.localhost").status, 404)
        self.assertNotIn("nosuch", self.muc.rooms["conference.localhost"])

    def test_members_only_room_refuses_a_non_member(self):
        """The room's own refusal (registration-required) is the SIP answer (403)."""
        self.alice.iq(f"<iq type='set' id='c' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
                      "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'>"
                      "<value>1</value></field></x></query></iq>")
        self.register()
        self.assertEqual(self.post("let me in").status, 403)

    def test_registered_nick_is_used(self):
        """A user who registered a nickname in the room takes part from the phone under it."""
        bob = self.harness.login("dave@localhost/pc")
        reply = bob.iq(f"<iq type='set' id='r' to='{ROOM}'><query xmlns='jabber:iq:register'>"
                       "<x xmlns='jabber:x:data' type='submit'><field var='muc#register_roomnick'>"
                       "<value>Davey</value></field></x></query></iq>")
        self.assertEqual(reply["type"], "result")
        self.register()
        self.post("it is me")
        [message] = [s for s in self.alice.received() if s.name == "message"]
        self.assertEqual(message["from"], f"{ROOM}/Davey")
        self.assertEqual(self.gateway.rooms.joined, {("localhost", "dave"): {ROOM: "Davey"}})

    def test_kicked_phone_rejoins_on_its_next_message(self):
        """A phone kicked from the room is out of it; its next MESSAGE joins it again."""
        self.register()
        self.post("one")
        self.alice.iq(f"<iq type='set' id='k' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>"
                      "<item nick='dave' role='none'/></query></iq>")
        self.assertEqual(self.gateway.rooms.joined[("localhost", "dave")], {})
        self.alice.received()
        self.assertEqual(self.post("two").status, 202)
        self.assertEqual(self.gateway.rooms.joined[("localhost", "dave")], {ROOM: "dave"})
