"""The multi-user chat service (XEP-0045, XEP-0421, XEP-0410) on the in-memory server."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways.muc import service
from bridge.gateways.muc.room import HistoryEntry
from tests.unit.helpers import Harness, LateStorage, gateway_context, result_of

ROOM = "room@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_ADMIN = NS_MUC + "#admin"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"


def condition(stanza):
    return next(c.name for c in stanza.error.elements() if c.name != "text")


def codes(stanza):
    x = next(stanza.elements(NS_USER, "x"), None)
    return {int(s["code"]) for s in x.elements(NS_USER, "status")} if x is not None else set()


def item_of(stanza):
    return next(next(stanza.elements(NS_USER, "x")).elements(NS_USER, "item"))


def occupant_id(stanza):
    return next(stanza.elements(NS_OCCUPANT_ID, "occupant-id"))["id"]


def form(**fields):
    text = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>http://jabber.org/protocol/muc#roomconfig</value></field>")
    for var, value in fields.items():
        text += f"<field var='muc#roomconfig_{var}'><value>{value}</value></field>"
    return text + "</x>"


class MUCTestCase(SynchronousTestCase):
    muc = {}
    mam = {}
    users = ("alice", "bob", "carol", "dave")

    def setUp(self):
        self.storage = LateStorage()
        self.start_server()

    localhost = {}

    def start_server(self):
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": self.localhost, "example.net": {}},
                    "muc": self.muc, "mam": self.mam}
        self.harness = Harness(configuration.parse(document, "test.toml"), self.storage)
        for user in self.users:
            self.harness.add_user(f"{user}@localhost")
        self.context = gateway_context(self.harness.server, "muc", self.harness.config.muc)
        self.service = service.attach(self.context, self.harness.clock, None)
        self.service.start()
        self.clients = {}

    def restart(self):
        self.context.unload()
        secret = self.harness.server.secret
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}, "example.net": {}},
                    "muc": self.muc, "mam": self.mam}
        from bridge.core.server import Server
        from bridge.tap import load_features
        self.harness.server = Server(configuration.parse(document, "test.toml"), self.storage, self.harness.clock,
                                     secret=secret)
        load_features(self.harness.server)
        from bridge.core.streams.c2s import ClientFactory
        self.harness.factory = ClientFactory(self.harness.server, self.harness.server.config.c2s, None)
        self.context = gateway_context(self.harness.server, "muc", self.harness.server.config.muc)
        self.service = service.attach(self.context, self.harness.clock, None)
        self.service.start()
        self.clients = {}

    def online(self, user):
        client = self.harness.login(f"{user}@localhost/r")
        client.send("<presence/>")
        client.received()
        self.clients[user] = client
        return client

    def join(self, user, nick=None, room=ROOM, payload="", create_instant=True):
        """``user`` joins; the stanzas it got."""
        client = self.clients.get(user) or self.online(user)
        client.send(f"<presence to='{room}/{nick or user.title()}'><x xmlns='{NS_MUC}'>{payload}</x></presence>")
        got = client.received()
        if create_instant and any(201 in codes(s) for s in got):
            reply = client.iq(f"<iq type='set' id='inst' to='{room}'><query xmlns='{NS_OWNER}'>"
                              "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
            self.assertEqual(reply["type"], "result", reply.toXml())
        return got

    def configure(self, user, room=ROOM, **fields):
        return self.clients[user].iq(f"<iq type='set' id='cfg' to='{room}'><query xmlns='{NS_OWNER}'>"
                                     f"{form(**fields)}</query></iq>")

    def admin(self, user, items, room=ROOM):
        return self.clients[user].iq(f"<iq type='set' id='adm' to='{room}'><query xmlns='{NS_ADMIN}'>"
                                     f"{items}</query></iq>")

    def say(self, user, body, room=ROOM):
        self.clients[user].send(f"<message type='groupchat' to='{room}'><body>{body}</body></message>")

    def got(self, user):
        return self.clients[user].received()

    def bodies(self, stanzas):
        return [str(s.body) for s in stanzas if s.name == "message" and s.body is not None]


class JoinTests(MUCTestCase):
    def test_first_join_creates_a_locked_room(self):
        """The first join creates the room (110 and 201, owner and moderator); until its owner accepts the
        instant room, others get item-not-found; afterwards they enter."""
        got = self.join("alice", create_instant=False)
        [presence] = [s for s in got if s.name == "presence"]
        self.assertEqual(codes(presence), {110, 201})
        self.assertEqual((item_of(presence)["affiliation"], item_of(presence)["role"]), ("owner", "moderator"))
        [refused] = self.join("bob")
        self.assertEqual((refused["type"], condition(refused)), ("error", "item-not-found"))
        reply = self.clients["alice"].iq(f"<iq type='set' id='i' to='{ROOM}'><query xmlns='{NS_OWNER}'>"
                                         "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        self.assertEqual(reply["type"], "result")
        got = self.join("bob")
        self.assertEqual([s["from"] for s in got if s.name == "presence"], [f"{ROOM}/Alice", f"{ROOM}/Bob"])
        self.assertEqual(codes(got[-2]), {110})

    def test_occupants_see_each_other_join_and_leave(self):
        """An occupant sees a newcomer's presence, and its unavailable presence when it leaves; the leaver
        gets its own with 110."""
        self.join("alice")
        self.got("alice")
        self.join("bob")
        [seen] = self.got("alice")
        self.assertEqual((seen["from"], item_of(seen)["role"]), (f"{ROOM}/Bob", "participant"))
        self.clients["bob"].send(f"<presence type='unavailable' to='{ROOM}/Bob'/>")
        [left] = self.got("alice")
        self.assertEqual((left["type"], item_of(left)["role"]), ("unavailable", "none"))
        [own] = self.got("bob")
        self.assertEqual(codes(own), {110})

    def test_newcomers_see_each_occupants_presence_as_it_is_now(self):
        """What a newcomer is shown of an occupant follows that occupant's changes of status, role and
        nickname (each occupant's presence is built once and kept while unchanged)."""
        self.join("alice")
        self.join("bob")
        self.clients["bob"].send(f"<presence to='{ROOM}/Bob'><show>away</show></presence>")
        [seen] = [s for s in self.join("carol") if s["from"] == f"{ROOM}/Bob"]
        self.assertEqual(str(seen.show), "away")
        self.clients["bob"].send(f"<presence to='{ROOM}/Bobby'><show>dnd</show></presence>")
        self.admin("alice", "<item nick='Bobby' role='moderator'/>")
        [seen] = [s for s in self.join("dave") if s["from"].startswith(f"{ROOM}/Bob")]
        self.assertEqual((seen["from"], str(seen.show), item_of(seen)["role"]), (f"{ROOM}/Bobby", "dnd", "moderator"))

    def test_moderators_see_real_jids_in_semi_anonymous_rooms(self):
        """whois=moderators: the owner (a moderator) sees bob's real JID, bob does not see alice's; whois=anyone:
        everybody sees it and self-presence carries 100."""
        self.join("alice")
        got = self.join("bob")
        self.assertNotIn("jid", item_of(got[0]).attributes)
        self.assertEqual(item_of(self.got("alice")[0])["jid"], "bob@localhost/r")
        self.configure("alice", whois="anyone")
        presences = [s for s in self.join("carol") if s.name == "presence"]
        self.assertEqual(item_of(presences[0])["jid"], "alice@localhost/r")
        self.assertIn(100, codes(presences[-1]))

    def test_nick_in_use_is_a_conflict(self):
        """A join with a nickname in use gets conflict."""
        self.join("alice")
        [refused] = self.join("bob", nick="Alice")
        self.assertEqual(condition(refused), "conflict")

    def test_nick_change(self):
        """A nick change: unavailable with 303 and the new nick, then the new presence; a nick in use is
        refused with conflict."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        self.clients["bob"].send(f"<presence to='{ROOM}/Robert'/>")
        old, new = self.got("alice")
        self.assertEqual((old["type"], codes(old), item_of(old)["nick"]), ("unavailable", {303}, "Robert"))
        self.assertEqual(new["from"], f"{ROOM}/Robert")
        own_old, own_new = self.got("bob")
        self.assertEqual(codes(own_old), {110, 303})
        self.clients["bob"].send(f"<presence to='{ROOM}/Alice'/>")
        [refused] = self.got("bob")
        self.assertEqual(condition(refused), "conflict")

    def test_password_room(self):
        """A password-protected room: no or a wrong password gets not-authorized; the right one enters."""
        self.join("alice")
        reply = self.configure("alice", passwordprotectedroom="1", roomsecret="s3cret")
        self.assertEqual(reply["type"], "result")
        self.assertEqual(condition(self.join("bob")[0]), "not-authorized")
        self.assertEqual(condition(self.join("bob", payload="<password>wrong</password>")[0]), "not-authorized")
        got = self.join("bob", payload="<password>s3cret</password>")
        self.assertIn(110, codes([s for s in got if s.name == "presence"][-1]))

    def test_members_only_room(self):
        """A members-only room refuses a non-member with registration-required and admits a member."""
        self.join("alice")
        self.configure("alice", membersonly="1")
        self.assertEqual(condition(self.join("bob")[0]), "registration-required")
        self.admin("alice", "<item jid='bob@localhost' affiliation='member'/>")
        got = self.join("bob")
        self.assertEqual(item_of([s for s in got if s.name == "presence"][-1])["affiliation"], "member")

    def test_full_room(self):
        """A room at its max users refuses a newcomer with service-unavailable; its owner still enters."""
        self.join("alice")
        self.configure("alice", maxusers="2")
        self.join("bob")
        self.assertEqual(condition(self.join("carol")[0]), "service-unavailable")

    def test_temporary_room_ends_with_its_last_occupant(self):
        """A temporary room is destroyed when its last occupant leaves: the next join creates it anew."""
        self.join("alice")
        self.say("alice", "before")
        self.clients["alice"].send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")
        self.got("alice")
        self.assertNotIn("room", self.service.rooms["conference.localhost"])
        got = self.join("bob", create_instant=False)
        self.assertIn(201, codes(got[0]))
        self.assertEqual(self.bodies(got), [])

    def test_presence_without_nick_is_jid_malformed(self):
        """Presence to the bare room JID gets jid-malformed."""
        client = self.online("alice")
        client.send(f"<presence to='{ROOM}'/>")
        self.assertEqual(condition(client.received()[0]), "jid-malformed")

    def test_every_local_host_has_its_service(self):
        """conference.<host> is served for each local host and listed in that host's disco#items only."""
        client = self.online("alice")
        reply = client.iq("<iq type='get' id='d' to='localhost'>"
                          "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        jids = [item["jid"] for item in reply.query.elements()]
        self.assertIn("conference.localhost", jids)
        self.assertNotIn("conference.example.net", jids)
        self.join("alice", room="other@conference.example.net")
        self.assertIn("other", self.service.rooms["conference.example.net"])


class CreationPolicyTests(MUCTestCase):
    muc = {"max_rooms_created_per_user": 2, "max_rooms_per_service": 3}

    def test_per_user_limit(self):
        """A user who created max_rooms_created_per_user rooms gets policy-violation for one more."""
        self.join("alice", room="r1@conference.localhost")
        self.join("alice", room="r2@conference.localhost")
        [refused] = self.join("alice", room="r3@conference.localhost")
        self.assertEqual(condition(refused), "policy-violation")

    def test_per_service_limit(self):
        """A service holding max_rooms_per_service rooms refuses another with resource-constraint."""
        self.join("alice", room="r1@conference.localhost")
        self.join("alice", room="r2@conference.localhost")
        self.join("bob", room="r3@conference.localhost")
        [refused] = self.join("bob", room="r4@conference.localhost")
        self.assertEqual(condition(refused), "resource-constraint")

    def test_remote_users_do_not_create_rooms_by_default(self):
        """creation = local: presence from a remote user for a new room gets not-allowed."""
        sent = []
        self.harness.server.router.default_route = type("Remote", (), {"deliver": sent.append})()
        from bridge.core.xmlstream import parse_element
        self.harness.server.router.route(parse_element(
            "<presence from='eve@remote.example/x' to='new@conference.localhost/Eve'/>"))
        self.assertEqual(condition(sent[0]), "not-allowed")


class AdminsOnlyTests(MUCTestCase):
    muc = {"creation": "admins", "admins": ["carol@localhost"]}

    def test_only_admins_create_rooms(self):
        """creation = admins: alice gets not-allowed, carol (an admin) creates the room and owns every room."""
        self.assertEqual(condition(self.join("alice")[0]), "not-allowed")
        got = self.join("carol", create_instant=False)
        self.assertIn(201, codes(got[0]))


class HostAdminsTests(MUCTestCase):
    muc = {"creation": "admins"}
    localhost = {"admins": ["dave@localhost"]}

    def test_host_admins_create_rooms(self):
        """The site policy's admins of a host are the MUC service's admins for creation = admins."""
        self.assertEqual(condition(self.join("alice")[0]), "not-allowed")
        self.assertIn(201, codes(self.join("dave", create_instant=False)[0]))


class ConfigurationTests(MUCTestCase):
    def test_form_shows_the_fields(self):
        """An owner gets the muc#roomconfig form with every XEP-0045 field; another user gets forbidden."""
        self.join("alice")
        reply = self.clients["alice"].iq(f"<iq type='get' id='f' to='{ROOM}'><query xmlns='{NS_OWNER}'/></iq>")
        fields = {f["var"] for f in reply.query.x.elements() if f.name == "field"}
        for var in ("roomname", "roomdesc", "persistentroom", "publicroom", "membersonly", "moderatedroom",
                    "passwordprotectedroom", "roomsecret", "maxusers", "whois", "changesubject",
                    "historylength", "allowinvites", "allowpm"):
            self.assertIn(f"muc#roomconfig_{var}", fields)
        self.join("bob")
        reply = self.clients["bob"].iq(f"<iq type='get' id='f' to='{ROOM}'><query xmlns='{NS_OWNER}'/></iq>")
        self.assertEqual(condition(reply), "forbidden")

    def test_out_of_range_values_are_refused(self):
        """maxusers above the service's cap, a history length above its maximum, an unknown whois value or a
        non-boolean are refused with not-acceptable, and nothing changes."""
        self.join("alice")
        for fields in ({"maxusers": "100000"}, {"maxusers": "0"}, {"historylength": "101"},
                       {"whois": "everybody"}, {"persistentroom": "maybe"}, {"passwordprotectedroom": "1"},
                       {"roomname": "x" * 2000}):
            reply = self.configure("alice", **fields)
            self.assertEqual(condition(reply), "not-acceptable", fields)
        room = self.service.rooms["conference.localhost"]["room"]
        self.assertEqual((room.config.max_users, room.config.whois, room.config.persistent), (200, "moderators", False))

    def test_config_change_is_announced_with_104(self):
        """Occupants are told of a configuration change by a message with status 104 (and 172 for whois=anyone)."""
        self.join("alice")
        self.join("bob")
        self.configure("alice", whois="anyone")
        [notice] = self.got("bob")
        self.assertEqual(codes(notice), {104, 172})

    def test_cancelling_the_initial_configuration_destroys_the_room(self):
        """An owner who cancels the form of a room being created destroys it."""
        self.join("alice", create_instant=False)
        reply = self.clients["alice"].iq(f"<iq type='set' id='c' to='{ROOM}'><query xmlns='{NS_OWNER}'>"
                                         "<x xmlns='jabber:x:data' type='cancel'/></query></iq>")
        self.assertEqual(reply["type"], "result")
        self.assertNotIn("room", self.service.rooms["conference.localhost"])

    def test_destroy(self):
        """An owner destroys a room: occupants get unavailable presence with <destroy/> and the reason."""
        self.join("alice")
        self.join("bob")
        reply = self.clients["alice"].iq(
            f"<iq type='set' id='x' to='{ROOM}'><query xmlns='{NS_OWNER}'><destroy jid='new@conference.localhost'>"
            "<reason>moving</reason></destroy></query></iq>")
        self.assertEqual(reply["type"], "result")
        [gone] = self.got("bob")
        destroy = next(next(gone.elements(NS_USER, "x")).elements(NS_USER, "destroy"))
        self.assertEqual((gone["type"], destroy["jid"], str(destroy.reason)),
                         ("unavailable", "new@conference.localhost", "moving"))
        self.assertNotIn("room", self.service.rooms["conference.localhost"])


class MessageTests(MUCTestCase):
    def test_groupchat_reaches_every_occupant_with_an_occupant_id(self):
        """A groupchat message goes to every occupant, the sender too, from room/nick with its occupant id."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        self.say("bob", "hello")
        for user in ("alice", "bob"):
            [message] = self.got(user)
            self.assertEqual((message["from"], str(message.body)), (f"{ROOM}/Bob", "hello"))
        self.assertEqual(occupant_id(message), self.service.occupant_id(
            self.service.rooms["conference.localhost"]["room"], "bob@localhost"))

    def test_occupant_ids_are_stable_per_bare_jid_and_room(self):
        """XEP-0421: the same real bare JID has the same occupant id across nick changes and rejoins, another
        room gives another id, and a forged occupant id is replaced."""
        self.join("alice")
        first = occupant_id(self.join("bob")[-2])
        self.clients["bob"].send(f"<presence type='unavailable' to='{ROOM}/Bob'/>")
        self.got("bob")
        again = occupant_id([s for s in self.join("bob", nick="Bobby") if s.name == "presence"][-1])
        self.assertEqual(first, again)
        other = occupant_id(self.join("bob", room="two@conference.localhost")[0])
        self.assertNotEqual(first, other)
        self.got("bob")
        self.clients["bob"].send(f"<message type='groupchat' to='{ROOM}'><body>x</body>"
                                 f"<occupant-id xmlns='{NS_OCCUPANT_ID}' id='forged'/></message>")
        [message] = self.got("bob")
        self.assertEqual([c["id"] for c in message.elements(NS_OCCUPANT_ID, "occupant-id")], [first])

    def test_non_occupant_message_is_not_acceptable(self):
        """A groupchat message from someone not in the room gets not-acceptable and reaches nobody."""
        self.join("alice")
        self.online("bob")
        self.say("bob", "intrusion")
        [refused] = self.got("bob")
        self.assertEqual(condition(refused), "not-acceptable")
        self.assertEqual(self.got("alice"), [])

    def test_subject(self):
        """A moderator sets the subject, which every occupant gets and a newcomer gets after the history;
        a participant may not unless changesubject is on."""
        self.join("alice")
        self.join("bob")
        self.clients["alice"].send(f"<message type='groupchat' to='{ROOM}'><subject>Plans</subject></message>")
        [subject] = self.got("bob")
        self.assertEqual(str(subject.subject), "Plans")
        self.clients["bob"].send(f"<message type='groupchat' to='{ROOM}'><subject>Mine</subject></message>")
        self.assertEqual(condition(self.got("bob")[0]), "forbidden")
        self.configure("alice", changesubject="1")
        self.got("bob")
        self.clients["bob"].send(f"<message type='groupchat' to='{ROOM}'><subject>Mine</subject></message>")
        self.assertEqual(str(self.got("bob")[0].subject), "Mine")
        got = self.join("carol")
        self.assertEqual((got[-1]["from"], str(got[-1].subject)), (f"{ROOM}/Bob", "Mine"))

    def test_private_messages(self):
        """allowpm=anyone: a private message reaches the occupant under that nick, from the sender's occupant
        JID; an unknown nick gets item-not-found; allowpm=none refuses with forbidden."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        self.clients["bob"].send(f"<message type='chat' to='{ROOM}/Alice'><body>psst</body></message>")
        [message] = self.got("alice")
        self.assertEqual((message["from"], message["to"], str(message.body)),
                         (f"{ROOM}/Bob", "alice@localhost/r", "psst"))
        self.clients["bob"].send(f"<message type='chat' to='{ROOM}/Nobody'><body>x</body></message>")
        self.assertEqual(condition(self.got("bob")[0]), "item-not-found")
        self.configure("alice", allowpm="none")
        self.got("bob")
        self.clients["bob"].send(f"<message type='chat' to='{ROOM}/Alice'><body>x</body></message>")
        self.assertEqual(condition(self.got("bob")[0]), "forbidden")

    def test_private_message_from_non_occupant_is_not_acceptable(self):
        """A private message from outside the room gets not-acceptable."""
        self.join("alice")
        self.online("carol").send(f"<message type='chat' to='{ROOM}/Alice'><body>x</body></message>")
        self.assertEqual(condition(self.got("carol")[0]), "not-acceptable")

    def test_visitors_have_no_voice_in_moderated_rooms(self):
        """In a moderated room a newcomer without affiliation is a visitor; its groupchat gets forbidden
        until a moderator gives it voice."""
        self.join("alice")
        self.configure("alice", moderatedroom="1")
        got = self.join("bob")
        self.assertEqual(item_of([s for s in got if s.name == "presence"][-1])["role"], "visitor")
        self.say("bob", "hi")
        self.assertEqual(condition(self.got("bob")[0]), "forbidden")
        self.admin("alice", "<item nick='Bob' role='participant'/>")
        self.got("bob")
        self.say("bob", "hi")
        self.assertEqual(self.bodies(self.got("alice")), ["hi"])

    def test_mediated_invitation(self):
        """An occupant's invitation reaches the invitee from the room with the inviter's bare JID and the
        password; without allowinvites only admins invite (a participant gets forbidden)."""
        self.join("alice")
        self.configure("alice", passwordprotectedroom="1", roomsecret="pw")
        bob = self.online("bob")
        self.clients["alice"].send(f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='bob@localhost'>"
                                   "<reason>join us</reason></invite></x></message>")
        [invitation] = bob.received()
        x = next(invitation.elements(NS_USER, "x"))
        self.assertEqual((invitation["from"], x.invite["from"], str(x.invite.reason), str(x.password)),
                         (ROOM, "alice@localhost", "join us", "pw"))
        self.join("bob", payload="<password>pw</password>")
        self.got("bob")
        self.clients["bob"].send(f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='carol@localhost'/>"
                                 "</x></message>")
        self.assertEqual(condition(self.got("bob")[0]), "forbidden")

    def test_direct_invitation_is_delivered(self):
        """XEP-0249: a direct invitation from alice to bob reaches bob as she sent it."""
        alice, bob = self.online("alice"), self.online("bob")
        alice.send(f"<message to='bob@localhost'><x xmlns='jabber:x:conference' jid='{ROOM}' reason='hi'/>"
                   "</message>")
        [message] = bob.received()
        self.assertEqual(next(message.elements("jabber:x:conference", "x"))["jid"], ROOM)

    def test_self_ping(self):
        """XEP-0410: an occupant pinging its own occupant JID gets a result; after leaving, not-acceptable."""
        self.join("alice")
        ping = f"<iq type='get' id='p' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"
        self.assertEqual(self.clients["alice"].iq(ping)["type"], "result")
        self.clients["alice"].send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")
        self.got("alice")
        self.assertEqual(condition(self.clients["alice"].iq(ping)), "not-acceptable")

    def test_occupant_leaves_when_its_session_ends(self):
        """A client that disconnects leaves the rooms it was in (its directed presence ends)."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        self.clients["bob"].drop()
        [left] = self.got("alice")
        self.assertEqual((left["from"], left["type"]), (f"{ROOM}/Bob", "unavailable"))


class HistoryTests(MUCTestCase):
    muc = {"default_history_length": 5, "max_history_length": 10, "max_history_bytes_per_room": 4096}

    def talk(self, count):
        self.join("alice")
        for number in range(count):
            self.harness.clock.advance(60)
            self.say("alice", f"m{number}")

    def test_history_length_bounds_the_history(self):
        """A newcomer gets the last historylength messages, with a delay stamp from the room."""
        self.talk(8)
        got = self.join("bob")
        self.assertEqual(self.bodies(got), ["m3", "m4", "m5", "m6", "m7"])
        delayed = [s for s in got if s.body is not None][0]
        self.assertEqual(delayed.delay["from"], ROOM)

    def test_history_request_limits(self):
        """maxstanzas, seconds, since and maxchars of <history/> each narrow what is sent."""
        self.talk(5)
        self.assertEqual(self.bodies(self.join("bob", payload="<history maxstanzas='2'/>")), ["m3", "m4"])
        self.assertEqual(self.bodies(self.join("carol", payload="<history seconds='90'/>")), ["m3", "m4"])
        self.assertEqual(self.bodies(self.join("dave", payload="<history maxchars='0'/>")), [])
        self.clients["dave"].send(f"<presence type='unavailable' to='{ROOM}/Dave'/>")
        self.got("dave")
        self.assertEqual(self.bodies(self.join(
            "dave", payload="<history since='1970-01-01T00:04:00Z'/>")), ["m3", "m4"])

    def test_history_is_bounded_in_bytes(self):
        """The history keeps no more bytes than max_history_bytes_per_room, dropping the oldest."""
        self.join("alice")
        self.configure("alice", historylength="10")
        for number in range(10):
            self.say("alice", f"{number}" + "x" * 900)
        room = self.service.rooms["conference.localhost"]["room"]
        self.assertLessEqual(room.history.bytes, 4096)
        kept = len(room.history.entries)
        self.assertLess(kept, 10)
        self.assertEqual([body[0] for body in self.bodies(self.join("bob"))], [str(n) for n in range(10 - kept, 10)])

    def test_history_selection_is_oldest_first(self):
        """History.select keeps the newest entries that fit and returns them oldest first."""
        from bridge.gateways.muc.room import History
        history = History(10000)
        for number in range(4):
            history.add(HistoryEntry(number, f"<m>{number}</m>"), 10)
        self.assertEqual([e.xml for e in history.select(10, max_stanzas=2)], ["<m>2</m>", "<m>3</m>"])


class AffiliationTests(MUCTestCase):
    def test_kick(self):
        """A moderator kicks a participant: it gets unavailable with 307 and 110, the others with 307 and the
        actor; a participant may not kick (forbidden)."""
        self.join("alice")
        self.join("bob")
        self.join("carol")
        self.got("alice")
        self.got("bob")
        reply = self.admin("bob", "<item nick='Carol' role='none'/>")
        self.assertEqual(condition(reply), "forbidden")
        reply = self.admin("alice", "<item nick='Carol' role='none'><reason>noise</reason></item>")
        self.assertEqual(reply["type"], "result")
        [kicked] = self.got("carol")
        self.assertEqual((kicked["type"], codes(kicked)), ("unavailable", {110, 307}))
        [seen] = self.got("bob")
        self.assertEqual((codes(seen), str(item_of(seen).reason), item_of(seen).actor["nick"]),
                         ({307}, "noise", "Alice"))

    def test_ban(self):
        """An admin bans a user by bare JID: the occupant is removed with 301, and a later join gets forbidden;
        the outcast list shows it."""
        self.join("alice")
        self.join("bob")
        self.admin("alice", "<item jid='bob@localhost' affiliation='outcast'/>")
        [banned] = self.got("bob")
        self.assertEqual(codes(banned), {110, 301})
        self.assertEqual(condition(self.join("bob")[0]), "forbidden")
        reply = self.clients["alice"].iq(f"<iq type='get' id='l' to='{ROOM}'><query xmlns='{NS_ADMIN}'>"
                                         "<item affiliation='outcast'/></query></iq>")
        self.assertEqual([item["jid"] for item in reply.query.elements()], ["bob@localhost"])

    def test_moderators_cannot_kick_owners_and_admins_cannot_touch_owners(self):
        """Kicking an owner is not-allowed; an admin may not change an owner's affiliation; the last owner
        cannot leave ownership (conflict)."""
        self.join("alice")
        self.join("bob")
        self.admin("alice", "<item jid='bob@localhost' affiliation='admin'/>")
        self.assertEqual(condition(self.admin("bob", "<item nick='Alice' role='none'/>")), "not-allowed")
        self.assertEqual(condition(self.admin("bob", "<item jid='alice@localhost' affiliation='none'/>")),
                         "not-allowed")
        self.assertEqual(condition(self.admin("alice", "<item jid='alice@localhost' affiliation='member'/>")),
                         "conflict")

    def test_granting_admin_makes_a_moderator(self):
        """An occupant made admin becomes moderator and everybody is told."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        self.admin("alice", "<item jid='bob@localhost' affiliation='admin'/>")
        [seen] = self.got("alice")
        self.assertEqual((item_of(seen)["affiliation"], item_of(seen)["role"]), ("admin", "moderator"))

    def test_affiliations_are_bounded(self):
        """A room holds at most max_affiliations_per_room affiliations; more is not-acceptable."""
        self.join("alice")
        items = "".join(f"<item jid='u{n}@localhost' affiliation='member'/>" for n in range(100))
        self.assertEqual(self.admin("alice", items)["type"], "result")
        self.assertEqual(len(self.service.rooms["conference.localhost"]["room"].affiliations), 101)
        many = "".join(f"<item jid='v{n}@localhost' affiliation='member'/>" for n in range(101))
        self.assertEqual(condition(self.admin("alice", many)), "bad-request")


class SmallAffiliationTests(MUCTestCase):
    muc = {"max_affiliations_per_room": 3}

    def test_affiliation_limit(self):
        """Past max_affiliations_per_room the admin IQ is refused and nothing changes."""
        self.join("alice")
        self.assertEqual(condition(self.admin("alice", "<item jid='a@x' affiliation='member'/>"
                                                       "<item jid='b@x' affiliation='member'/>"
                                                       "<item jid='c@x' affiliation='member'/>")), "not-acceptable")
        self.assertEqual(list(self.service.rooms["conference.localhost"]["room"].affiliations), ["alice@localhost"])


class DiscoTests(MUCTestCase):
    def test_service_and_rooms_in_disco(self):
        """The service shows the conference identity and the muc feature; its items list public rooms only
        (not hidden ones, nor those still locked); a room's info shows its features and occupant count."""
        client = self.online("alice")
        info = client.iq("<iq type='get' id='i' to='conference.localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertEqual(info.query.identity["category"], "conference")
        self.assertIn(NS_MUC, [f["var"] for f in info.query.elements() if f.name == "feature"])
        self.join("alice")
        self.join("alice", room="hidden@conference.localhost")
        self.configure("alice", room="hidden@conference.localhost", publicroom="0")
        self.join("alice", room="locked@conference.localhost", create_instant=False)
        items = client.iq("<iq type='get' id='t' to='conference.localhost'>"
                          "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.assertEqual([item["jid"] for item in items.query.elements()], [ROOM])
        self.configure("alice", roomname="Our room", membersonly="1")
        room_info = client.iq(f"<iq type='get' id='r' to='{ROOM}'>"
                              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f["var"] for f in room_info.query.elements() if f.name == "feature"}
        self.assertTrue({NS_MUC, "muc_public", "muc_membersonly", "muc_temporary", "muc_semianonymous",
                         NS_OCCUPANT_ID}.issubset(features))
        self.assertEqual(room_info.query.identity["name"], "Our room")
        values = {f["var"]: str(f.value) for f in room_info.query.x.elements() if f.name == "field"}
        self.assertEqual(values["muc#roominfo_occupants"], "1")
        self.assertEqual(condition(self.online("bob").iq(
            "<iq type='get' id='n' to='nosuch@conference.localhost'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")), "item-not-found")


class PersistenceTests(MUCTestCase):
    def test_persistent_room_survives_a_restart(self):
        """A persistent room's configuration, affiliations, subject and history are stored and read at start;
        it outlives its last occupant."""
        self.join("alice")
        self.configure("alice", persistentroom="1", roomname="Kept", membersonly="1")
        self.admin("alice", "<item jid='bob@localhost' affiliation='member'/>")
        self.clients["alice"].send(f"<message type='groupchat' to='{ROOM}'><subject>Topic</subject></message>")
        self.say("alice", "remember me")
        self.clients["alice"].send(f"<presence type='unavailable' to='{ROOM}/Alice'/>")
        self.assertIn("room", self.service.rooms["conference.localhost"])
        self.restart()
        room = self.service.rooms["conference.localhost"]["room"]
        self.assertEqual((room.config.name, room.config.members_only, room.affiliations["bob@localhost"]),
                         ("Kept", True, "member"))
        got = self.join("bob")
        self.assertEqual(self.bodies(got), ["remember me"])
        self.assertEqual(str(got[-1].subject), "Topic")
        self.assertEqual(condition(self.join("carol")[0]), "registration-required")

    def test_stanzas_wait_while_rooms_are_read(self):
        """A join that arrives before the stored rooms are read is answered once they are."""
        self.join("alice")
        self.configure("alice", persistentroom="1", membersonly="1")
        bob = self.online("bob")
        self.context.unload()
        self.storage.late = True
        self.context = gateway_context(self.harness.server, "muc", self.harness.server.config.muc)
        self.service = service.attach(self.context, self.harness.clock, None)
        self.service.start()
        bob.send(f"<presence to='{ROOM}/Bob'/>")
        self.assertEqual(bob.received(), [])
        while self.storage.waiting:
            self.storage.answer()
        self.assertEqual(condition(self.got("bob")[0]), "registration-required")

    def test_stored_history_is_trimmed(self):
        """The stored history of a persistent room holds no more than its history length."""
        self.join("alice")
        self.configure("alice", persistentroom="1", historylength="3")
        for number in range(6):
            self.say("alice", f"m{number}")
        stored = result_of(self.storage.items("conference.localhost", "room", service.HISTORY_STORE))
        self.assertEqual(len(stored), 3)

    def test_destroyed_persistent_room_is_forgotten(self):
        """Destroying a persistent room removes its document and history from storage."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.say("alice", "x")
        self.clients["alice"].iq(f"<iq type='set' id='x' to='{ROOM}'><query xmlns='{NS_OWNER}'><destroy/>"
                                 "</query></iq>")
        self.assertIsNone(result_of(self.storage.get("conference.localhost", "room", service.ROOMS_STORE)))
        self.assertEqual(result_of(self.storage.items("conference.localhost", "room", service.HISTORY_STORE)), [])
        self.restart()
        self.assertEqual(self.service.rooms["conference.localhost"], {})


class ConfigTests(SynchronousTestCase):
    def test_bad_muc_settings_are_errors_naming_the_key(self):
        """A subdomain that is not one label, an admin that is not a bare JID, a default history above the
        maximum and a service domain that is also a host are configuration errors naming the key."""
        for muc, hosts, key in (({"subdomain": "a.b"}, None, "muc.subdomain"),
                                ({"admins": ["x@y/z"]}, None, "muc.admins"),
                                ({"default_history_length": 50, "max_history_length": 10}, None,
                                 "muc.default_history_length"),
                                ({}, {"localhost": {}, "conference.localhost": {}}, "muc.subdomain"),
                                ({"max_occupants_per_room": 0}, None, "muc.max_occupants_per_room")):
            document = {"muc": muc}
            if hosts:
                document["hosts"] = hosts
            with self.assertRaises(configuration.ConfigError) as raised:
                configuration.parse(document, "test.toml")
            self.assertIn(f"test.toml: {key}", str(raised.exception))

    def test_disabled_service_attaches_nothing(self):
        """enabled = false: attach returns None and no conference domain is routed."""
        harness = Harness(configuration.parse({"muc": {"enabled": False}}, "test.toml"))
        context = gateway_context(harness.server, "muc", harness.config.muc)
        self.assertIsNone(service.attach(context, harness.clock, None))
        self.assertNotIn("conference.localhost", harness.server.component_hosts)


class ArchiveTests(MUCTestCase):
    NS_MAM = "urn:xmpp:mam:2"

    def query(self, user, payload=""):
        client = self.clients.get(user) or self.online(user)
        reply = client.iq(f"<iq type='set' id='q' to='{ROOM}'><query xmlns='{self.NS_MAM}' queryid='x'>"
                          f"{payload}</query></iq>")
        results = [m for m in client.backlog if m.name == "message"]
        client.backlog = []
        return reply, results

    def test_persistent_room_is_an_archive(self):
        """A persistent room archives its messages: joiners get 170, disco shows urn:xmpp:mam:2, and a query
        to the room returns the messages (from room/nick) under the ids of their stanza-ids."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.say("alice", "one")
        [sent] = [s for s in self.got("alice") if s.body is not None]
        self.say("alice", "two")
        got = self.join("bob")
        self.assertIn(170, codes([s for s in got if s.name == "presence"][-1]))
        reply, results = self.query("bob")
        self.assertEqual(reply["type"], "result", reply.toXml())
        forwarded = [next(r.elements(self.NS_MAM, "result")) for r in results]
        self.assertEqual([str(f.forwarded.message.body) for f in forwarded], ["one", "two"])
        self.assertEqual(forwarded[0].forwarded.message["from"], f"{ROOM}/Alice")
        self.assertEqual(forwarded[0]["id"], next(sent.elements("urn:xmpp:sid:0", "stanza-id"))["id"])
        self.assertEqual(results[0]["from"], ROOM)
        reply, results = self.query("bob", f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                                           f"<value>{self.NS_MAM}</value></field><field var='with'>"
                                           f"<value>{ROOM}/Bob</value></field></x>")
        self.assertEqual(results, [])

    def test_members_only_archive_is_for_members(self):
        """The archive of a members-only room answers its members and refuses others (forbidden); a
        temporary room has no archive (service-unavailable)."""
        self.join("alice")
        self.configure("alice", persistentroom="1", membersonly="1")
        self.assertEqual(condition(self.query("carol")[0]), "forbidden")
        self.admin("alice", "<item jid='carol@localhost' affiliation='member'/>")
        self.assertEqual(self.query("carol")[0]["type"], "result")
        self.configure("alice", persistentroom="0")
        self.assertEqual(condition(self.query("carol")[0]), "service-unavailable")

    def test_destroyed_room_takes_its_archive(self):
        """Destroying a persistent room removes its archive."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.say("alice", "gone soon")
        self.clients["alice"].iq(f"<iq type='set' id='x' to='{ROOM}'><query xmlns='{NS_OWNER}'><destroy/>"
                                 "</query></iq>")
        from bridge.core.storage import ArchiveQuery
        page = result_of(self.storage.archive_query("conference.localhost", "room", ArchiveQuery()))
        self.assertEqual(page.records, [])


class ModerationTests(MUCTestCase):
    NS_MAM = ArchiveTests.NS_MAM
    query = ArchiveTests.query
    NS_MODERATE = "urn:xmpp:message-moderate:1"
    NS_RETRACT = "urn:xmpp:message-retract:1"

    def moderate(self, user, record_id, reason="spam"):
        return self.clients[user].iq(f"<iq type='set' id='mod' to='{ROOM}'><moderate xmlns='{self.NS_MODERATE}' "
                                     f"id='{record_id}'><retract xmlns='{self.NS_RETRACT}'/><reason>{reason}</reason>"
                                     "</moderate></iq>")

    def sent_id(self, user):
        [sent] = [s for s in self.got(user) if s.body is not None]
        return next(sent.elements("urn:xmpp:sid:0", "stanza-id"))["id"]

    def test_moderator_retracts_an_archived_message(self):
        """A moderator's retraction by stanza id reaches every occupant from the room (retract with the
        moderator's occupant JID and occupant id, and the reason); the archive keeps a tombstone in the
        message's place, without its body; the history no longer sends it to newcomers."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.join("bob")
        self.got("alice")
        self.say("bob", "buy now")
        record_id = self.sent_id("bob")
        self.say("bob", "sorry")
        self.got("alice"), self.got("bob")
        reply = self.moderate("alice", record_id)
        self.assertEqual(reply["type"], "result", reply.toXml())
        for user in ("alice", "bob"):
            [retraction] = [s for s in self.got(user) if s.name == "message"]
            self.assertEqual(retraction["from"], ROOM)
            retract = next(retraction.elements(self.NS_RETRACT, "retract"))
            moderated = next(retract.elements(self.NS_MODERATE, "moderated"))
            self.assertEqual((retract["id"], moderated["by"], str(retract.reason)),
                             (record_id, f"{ROOM}/Alice", "spam"))
            self.assertEqual(occupant_id(moderated), self.service.occupant_id(self.service.rooms[
                "conference.localhost"]["room"], "alice@localhost"))
        reply, results = self.query("bob")
        messages = [next(r.elements(self.NS_MAM, "result")).forwarded.message for r in results]
        self.assertEqual([m.body is None for m in messages], [True, False])
        retracted = next(messages[0].elements(self.NS_RETRACT, "retracted"))
        self.assertEqual((messages[0]["from"], str(retracted.reason)), (f"{ROOM}/Bob", "spam"))
        self.assertEqual(self.bodies(self.join("carol")), ["sorry"])

    def test_retraction_in_a_temporary_room_uses_the_history(self):
        """Without an archive, a message of the room's history is retracted and leaves the history."""
        self.join("alice")
        self.say("alice", "oops")
        record_id = self.sent_id("alice")
        self.assertEqual(self.moderate("alice", record_id)["type"], "result")
        self.assertEqual(self.bodies(self.join("bob")), [])

    def test_only_moderators_retract_known_messages(self):
        """A participant gets forbidden, a non-occupant forbidden, an unknown id item-not-found; nothing is
        broadcast then, and the disco of the room shows the feature."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.join("bob")
        self.say("alice", "mine")
        record_id = self.sent_id("alice")
        self.got("bob")
        self.assertEqual(condition(self.moderate("bob", record_id)), "forbidden")
        self.online("carol")
        self.assertEqual(condition(self.moderate("carol", record_id)), "forbidden")
        self.assertEqual(condition(self.moderate("alice", "no-such-id")), "item-not-found")
        self.assertEqual(self.got("bob"), [])
        info = self.clients["bob"].iq(f"<iq type='get' id='d' to='{ROOM}'><query "
                                      "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = [f["var"] for f in info.query.elements("http://jabber.org/protocol/disco#info", "feature")]
        self.assertIn(self.NS_MODERATE, features)


class VoiceRequestTests(MUCTestCase):
    NS_REQUEST = "http://jabber.org/protocol/muc#request"

    def request(self, user, extra=""):
        self.clients[user].send(f"<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
                                f"<field var='FORM_TYPE'><value>{self.NS_REQUEST}</value></field>"
                                f"<field var='muc#role'><value>participant</value></field>{extra}</x></message>")

    def answer(self, user, nick, allow):
        self.request(user, f"<field var='muc#roomnick'><value>{nick}</value></field>"
                           f"<field var='muc#request_allow'><value>{allow}</value></field>")

    def fields(self, message):
        form = next(message.elements("jabber:x:data", "x"))
        return {f["var"]: str(f.value) for f in form.elements("jabber:x:data", "field")}

    def setUp(self):
        super().setUp()
        self.join("alice")
        self.configure("alice", moderatedroom="1")
        self.join("bob")
        self.got("alice")

    def test_moderator_grants_a_visitors_request(self):
        """A visitor's request reaches each moderator from the room as a muc#request form (nick, real JID,
        allow false); the moderator's answer with allow true makes the visitor a participant, who speaks."""
        self.request("bob")
        [request] = self.got("alice")
        self.assertEqual(request["from"], ROOM)
        self.assertEqual(self.fields(request), {"FORM_TYPE": self.NS_REQUEST, "muc#role": "participant",
                                                "muc#jid": "bob@localhost/r", "muc#roomnick": "Bob",
                                                "muc#request_allow": "false"})
        self.answer("alice", "Bob", "true")
        [granted] = [s for s in self.got("bob") if s.name == "presence"]
        self.assertEqual((item_of(granted)["role"], codes(granted)), ("participant", {110}))
        self.say("bob", "thanks")
        self.assertEqual(self.bodies(self.got("alice")), ["thanks"])

    def test_denied_requests_and_wrong_senders(self):
        """A denial leaves the visitor without voice; a visitor may not answer requests (forbidden); a
        second request within the interval is refused (resource-constraint); a participant's request gets
        bad-request; an answer about an absent nick item-not-found."""
        self.request("bob")
        self.got("alice")
        self.answer("alice", "Bob", "false")
        self.assertEqual(self.got("bob"), [])
        self.answer("bob", "Bob", "true")
        self.assertEqual(condition(self.got("bob")[0]), "forbidden")
        self.request("bob")
        self.assertEqual(condition(self.got("bob")[0]), "resource-constraint")
        self.assertEqual(self.got("alice"), [])
        self.harness.clock.advance(service.VOICE_REQUEST_INTERVAL_SECONDS)
        self.request("bob")
        self.assertEqual(len(self.got("alice")), 1)
        self.answer("alice", "Nobody", "true")
        self.assertEqual(condition(self.got("alice")[0]), "item-not-found")
        self.request("alice")
        self.assertEqual(condition(self.got("alice")[0]), "bad-request")


class RetentionTests(MUCTestCase):
    mam = {"retention_days": 2, "purge_interval_seconds": 3600}

    def test_room_archives_keep_messages_for_the_retention(self):
        """The service's own purge, every purge interval, deletes room messages older than [mam]
        retention_days and keeps newer ones."""
        from bridge.core.storage import ArchiveQuery
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.say("alice", "old")
        self.harness.clock.advance(1.5 * 86400)
        self.say("alice", "new")
        self.harness.clock.advance(0.5 * 86400 - 7200)
        stored = result_of(self.storage.archive_query("conference.localhost", "room", ArchiveQuery()))
        self.assertEqual(len(stored.records), 2)
        self.harness.clock.advance(3 * 3600)
        stored = result_of(self.storage.archive_query("conference.localhost", "room", ArchiveQuery()))
        self.assertEqual(["new" in record.stanza for record in stored.records], [True])


def register_form(nick):
    return ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>http://jabber.org/protocol/muc#register</value></field>"
            f"<field var='muc#register_roomnick'><value>{nick}</value></field></x>")


class RegistrationTests(MUCTestCase):
    def register(self, user, nick, room=ROOM):
        client = self.clients.get(user) or self.online(user)
        return client.iq(f"<iq type='set' id='reg' to='{room}'><query xmlns='jabber:iq:register'>"
                         f"{register_form(nick)}</query></iq>")

    def reserved(self, user):
        return self.clients[user].iq(f"<iq type='get' id='rn' to='{ROOM}'><query "
                                     "xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>")

    def test_registration_form_then_registered(self):
        """Before registering, a user is sent the muc#register form with a nickname field; after, the room
        answers <registered/> with the nickname, and the user has become a member."""
        self.join("alice")
        form = self.online("bob").iq(f"<iq type='get' id='g' to='{ROOM}'><query xmlns='jabber:iq:register'/></iq>")
        fields = {f["var"] for f in form.query.x.elements() if f.name == "field"}
        self.assertIn("muc#register_roomnick", fields)
        self.assertEqual(self.register("bob", "Bobby")["type"], "result")
        again = self.clients["bob"].iq(f"<iq type='get' id='g2' to='{ROOM}'><query xmlns='jabber:iq:register'/></iq>")
        self.assertIsNotNone(again.query.registered)
        self.assertEqual(str(again.query.username), "Bobby")
        self.assertEqual(self.service.rooms["conference.localhost"]["room"].affiliation("bob@localhost"), "member")

    def test_registered_nick_is_reserved_for_its_user(self):
        """A registered nickname is refused to others with conflict, on joining and on a nick change; its
        owner enters with it."""
        self.join("alice")
        self.register("bob", "Bobby")
        [refused] = self.join("carol", nick="Bobby")
        self.assertEqual(condition(refused), "conflict")
        self.join("carol")
        self.clients["carol"].send(f"<presence to='{ROOM}/Bobby'/>")
        [refused] = self.got("carol")
        self.assertEqual(condition(refused), "conflict")
        got = self.join("bob", nick="Bobby")
        self.assertIn(110, codes([s for s in got if s.name == "presence"][-1]))

    def test_nick_registered_by_another_is_a_conflict(self):
        """Registering a nickname another user registered, or one in use by an occupant, is a conflict;
        a banned user is forbidden."""
        self.join("alice")
        self.register("bob", "Bobby")
        self.assertEqual(condition(self.register("carol", "Bobby")), "conflict")
        self.assertEqual(condition(self.register("carol", "Alice")), "conflict")
        self.admin("alice", "<item affiliation='outcast' jid='dave@localhost'/>")
        self.assertEqual(condition(self.register("dave", "Dave")), "forbidden")

    def test_members_only_room_registers_members_only(self):
        """In a members-only room a non-member gets registration-required; a member registers."""
        self.join("alice")
        self.configure("alice", membersonly="1")
        self.assertEqual(condition(self.register("bob", "Bobby")), "registration-required")
        self.admin("alice", "<item affiliation='member' jid='bob@localhost'/>")
        self.assertEqual(self.register("bob", "Bobby")["type"], "result")

    def test_reserved_nick_discovery(self):
        """disco#info on node x-roomuser-item names the asker's registered nickname, and nothing before."""
        self.join("alice")
        self.online("bob")
        self.assertIsNone(self.reserved("bob").query.identity)
        self.register("bob", "Bobby")
        self.assertEqual(self.reserved("bob").query.identity["name"], "Bobby")

    def test_removal_and_lost_membership_free_the_nick(self):
        """<remove/> gives a registered nickname up; so does losing the affiliation."""
        self.join("alice")
        self.register("bob", "Bobby")
        self.clients["bob"].iq(f"<iq type='set' id='rm' to='{ROOM}'><query xmlns='jabber:iq:register'>"
                               "<remove/></query></iq>")
        self.assertEqual(self.register("carol", "Bobby")["type"], "result")
        self.admin("alice", "<item affiliation='none' jid='carol@localhost'/>")
        self.assertEqual(self.register("dave", "Bobby")["type"], "result")

    def test_malformed_registrations(self):
        """A form without a nickname is bad-request; a nickname that cannot be a JID resource is
        jid-malformed."""
        self.join("alice")
        self.online("bob")
        empty = self.clients["bob"].iq(f"<iq type='set' id='e' to='{ROOM}'><query xmlns='jabber:iq:register'>"
                                       "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        self.assertEqual(condition(empty), "bad-request")
        self.assertEqual(condition(self.register("bob", "x" * 1100)), "jid-malformed")

    def test_registered_nick_survives_a_restart(self):
        """A persistent room keeps its registered nicknames over a restart."""
        self.join("alice")
        self.configure("alice", persistentroom="1")
        self.register("bob", "Bobby")
        self.restart()
        [refused] = self.join("carol", nick="Bobby")
        self.assertEqual(condition(refused), "conflict")


class SessionTests(MUCTestCase):
    def second(self, user, nick=None):
        """Another resource of ``user`` joins under its nick; the client and what it got."""
        client = self.harness.login(f"{user}@localhost/other")
        client.send("<presence/>")
        client.received()
        client.send(f"<presence to='{ROOM}/{nick or user.title()}'><x xmlns='{NS_MUC}'/></presence>")
        return client, client.received()

    def test_second_resource_joins_as_the_same_occupant(self):
        """A second resource of the same bare JID under the same nick enters (110), others are not told of a
        new occupant, and a room message reaches both resources."""
        self.join("alice")
        self.join("bob")
        self.got("alice")
        other, got = self.second("bob")
        self.assertIn(110, codes([s for s in got if s.name == "presence"][-1]))
        self.assertEqual(self.got("alice"), [])
        self.assertEqual(len(self.service.rooms["conference.localhost"]["room"].occupants), 2)
        self.say("alice", "hello")
        self.assertEqual(self.bodies(self.got("bob")), ["hello"])
        self.assertEqual(self.bodies(other.received()), ["hello"])

    def test_another_user_still_gets_conflict(self):
        """A different bare JID asking for an occupied nick still gets conflict."""
        self.join("alice")
        [refused] = self.join("bob", nick="Alice")
        self.assertEqual(condition(refused), "conflict")

    def test_private_messages_reach_every_resource(self):
        """A private message to the occupant reaches all of its resources."""
        self.join("alice")
        self.join("bob")
        other, _ = self.second("bob")
        self.got("bob")
        self.clients["alice"].send(f"<message type='chat' to='{ROOM}/Bob'><body>psst</body></message>")
        self.assertEqual(self.bodies(self.got("bob")), ["psst"])
        self.assertEqual(self.bodies(other.received()), ["psst"])

    def test_one_resource_leaving_keeps_the_occupant(self):
        """One resource leaving gets its own unavailable presence, the others stay; the last one leaving
        removes the occupant, which the room sees."""
        self.join("alice")
        self.join("bob")
        other, _ = self.second("bob")
        self.got("alice")
        other.send(f"<presence type='unavailable' to='{ROOM}/Bob'/>")
        [gone] = other.received()
        self.assertEqual((gone["type"], codes(gone)), ("unavailable", {110}))
        self.assertEqual(self.got("alice"), [])
        self.say("alice", "still there?")
        self.assertEqual(self.bodies(self.got("bob")), ["still there?"])
        self.assertEqual(self.bodies(other.received()), [])
        self.clients["bob"].send(f"<presence type='unavailable' to='{ROOM}/Bob'/>")
        [left] = [s for s in self.got("alice") if s.name == "presence"]
        self.assertEqual((left["from"], left["type"]), (f"{ROOM}/Bob", "unavailable"))

    def test_kick_removes_every_resource(self):
        """Kicking an occupant tells each of its resources (307) and takes them all out."""
        self.join("alice")
        self.join("bob")
        other, _ = self.second("bob")
        self.admin("alice", "<item nick='Bob' role='none'/>")
        self.assertIn(307, codes([s for s in other.received() if s.name == "presence"][-1]))
        self.assertIn(307, codes([s for s in self.got("bob") if s.name == "presence"][-1]))
        self.assertEqual(self.service.rooms["conference.localhost"]["room"].by_jid.keys(), {"alice@localhost/r"})


class DiscoPagingTests(MUCTestCase):
    muc = {"max_rooms_created_per_user": 20}

    def items(self, rsm=""):
        return self.clients["alice"].iq("<iq type='get' id='t' to='conference.localhost'>"
                                        f"<query xmlns='http://jabber.org/protocol/disco#items'>{rsm}</query></iq>")

    def test_service_items_are_paged_by_rsm(self):
        """XEP-0059 on the service's disco#items: <max/> pages in JID order, <after/> continues after the
        last JID of a page, <before/> with no JID gives the last page, and each page tells the count."""
        rooms = [f"r{number}@conference.localhost" for number in range(7)]
        for room in rooms:
            self.join("alice", room=room)
        NS_RSM = "http://jabber.org/protocol/rsm"
        seen = []
        after = ""
        while True:
            page = self.items(f"<set xmlns='{NS_RSM}'><max>3</max>{after}</set>")
            jids = [item["jid"] for item in page.query.elements(page.query.uri, "item")]
            rsm = next(page.query.elements(NS_RSM, "set"))
            self.assertEqual(str(rsm.count), "7")
            if not jids:
                break
            self.assertLessEqual(len(jids), 3)
            self.assertEqual(str(rsm.last), jids[-1])
            seen += jids
            after = f"<after>{jids[-1]}</after>"
        self.assertEqual(seen, sorted(rooms))
        last = self.items(f"<set xmlns='{NS_RSM}'><max>2</max><before/></set>")
        self.assertEqual([item["jid"] for item in last.query.elements(last.query.uri, "item")], sorted(rooms)[-2:])
        self.assertEqual(next(last.query.elements(NS_RSM, "set")).first["index"], "5")
        unpaged = self.items()
        self.assertEqual(len(list(unpaged.query.elements(unpaged.query.uri, "item"))), 7)
        self.assertIsNone(next(unpaged.query.elements(NS_RSM, "set"), None))
        bad = self.items(f"<set xmlns='{NS_RSM}'><max>many</max></set>")
        self.assertEqual(condition(bad), "bad-request")


class ItemPageTests(SynchronousTestCase):
    def test_pages_of_a_long_list(self):
        """Without <set/>, a list longer than a page is cut to the first page and told its count; <max/>
        over the largest page is cut to it."""
        from bridge.features import disco
        from bridge.core.xmlstream import parse_element
        items = [(f"room{number:04d}@conference.localhost", "") for number in range(disco.MAX_ITEMS_PER_PAGE + 5)]
        page, index = disco.item_page(items, None)
        self.assertEqual((len(page), index), (disco.MAX_ITEMS_PER_PAGE, 0))
        self.assertEqual(disco.item_page(items[:3], None), (items[:3], None))
        rsm = parse_element("<set xmlns='http://jabber.org/protocol/rsm'><max>100000</max></set>")
        self.assertEqual(len(disco.item_page(items, rsm)[0]), disco.MAX_ITEMS_PER_PAGE)
        before = parse_element(f"<set xmlns='http://jabber.org/protocol/rsm'><max>10</max>"
                               f"<before>{items[4][0]}</before></set>")
        self.assertEqual(disco.item_page(items, before), (items[:4], 0))


class ForwardedIQTests(MUCTestCase):
    muc = {"max_forwarded_iqs": 3, "forwarded_iq_timeout_seconds": 30}

    def setUp(self):
        super().setUp()
        self.join("alice")
        self.join("bob")
        self.got("alice")

    def ask(self, iq_id="v1", payload="<query xmlns='jabber:iq:version'/>", to="Bob"):
        self.clients["alice"].send(f"<iq type='get' id='{iq_id}' to='{ROOM}/{to}'>{payload}</iq>")

    def test_iq_goes_to_the_real_jid_and_the_answer_back(self):
        """An occupant's IQ to another occupant reaches its real JID from the asker's occupant JID under
        an id of the room's; the answer comes back from the target's occupant JID under the asker's id."""
        self.ask()
        [forwarded] = self.got("bob")
        self.assertEqual((forwarded["from"], forwarded["to"]), (f"{ROOM}/Alice", "bob@localhost/r"))
        self.assertNotEqual(forwarded["id"], "v1")
        self.clients["bob"].send(f"<iq type='result' id='{forwarded['id']}' to='{ROOM}/Alice'>"
                                 "<query xmlns='jabber:iq:version'><name>x</name></query></iq>")
        [answer] = self.got("alice")
        self.assertEqual((answer["type"], answer["id"], answer["from"]), ("result", "v1", f"{ROOM}/Bob"))
        self.assertEqual(str(next(answer.query.elements("jabber:iq:version", "name"))), "x")
        self.assertEqual(self.service.forwarded.pending, {})

    def test_answers_from_others_or_unknown_ids_are_dropped(self):
        """Only the JID an IQ went to answers it: carol, who guessed or saw the id, reaches nobody, and an
        answer under an unknown id goes nowhere."""
        self.ask()
        [forwarded] = self.got("bob")
        self.join("carol")
        self.got("alice")
        self.clients["carol"].send(f"<iq type='result' id='{forwarded['id']}' to='{ROOM}/Alice'/>")
        self.clients["bob"].send(f"<iq type='result' id='nosuch' to='{ROOM}/Alice'/>")
        self.assertEqual(self.got("alice"), [])
        self.assertEqual(len(self.service.forwarded.pending), 1)

    def test_vcard_requests_go_to_the_bare_jid(self):
        """A vCard request to an occupant is answered by its account (the bare JID), back to the asker."""
        self.ask(iq_id="vc", payload="<vCard xmlns='vcard-temp'/>")
        [answer] = self.got("alice")
        self.assertEqual((answer["id"], answer["from"]), ("vc", f"{ROOM}/Bob"))
        self.assertEqual(self.got("bob"), [])

    def test_table_is_bounded_and_entries_expire(self):
        """Past max_forwarded_iqs pending, an IQ gets resource-constraint; an IQ not answered in
        forwarded_iq_timeout_seconds gets remote-server-timeout and leaves the table."""
        for number in range(3):
            self.ask(iq_id=f"q{number}")
        self.ask(iq_id="q3")
        [refused] = self.got("alice")
        self.assertEqual((refused["id"], condition(refused)), ("q3", "resource-constraint"))
        self.harness.clock.advance(30)
        timeouts = self.got("alice")
        self.assertEqual(sorted(s["id"] for s in timeouts), ["q0", "q1", "q2"])
        self.assertEqual({condition(s) for s in timeouts}, {"remote-server-timeout"})
        self.assertEqual((self.service.forwarded.pending, self.service.forwarded.per_asker), ({}, {}))

    def test_non_occupants_and_absent_nicks(self):
        """A non-occupant's IQ to an occupant is not-acceptable; an IQ to an absent nick item-not-found."""
        self.ask(to="Nobody")
        self.assertEqual(condition(self.got("alice")[0]), "item-not-found")
        reply = self.online("carol").iq(f"<iq type='get' id='x' to='{ROOM}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(condition(reply), "not-acceptable")
        self.assertEqual(self.got("bob"), [])

    def test_ping_to_another_occupant_is_forwarded(self):
        """A ping to another occupant goes to it (only a ping to oneself is answered by the room)."""
        self.ask(iq_id="p", payload="<ping xmlns='urn:xmpp:ping'/>")
        [forwarded] = self.got("bob")
        self.assertEqual(forwarded.firstChildElement().name, "ping")


class ForwardedIQTableTests(SynchronousTestCase):
    def test_per_asker_bound(self):
        """One asker may have at most its share of the table pending; another asker still gets a place."""
        from twisted.internet.task import Clock
        from bridge.gateways.muc.iqs import Forwarded, ForwardedIQs
        table = ForwardedIQs(Clock(), 100, 2, 10, lambda forwarded: None)
        ids = [table.add(Forwarded("a@x/r", str(n), "r@c/B", "b@x/r")) for n in range(3)]
        self.assertIsNone(ids[2])
        self.assertIsNotNone(table.add(Forwarded("c@x/r", "1", "r@c/B", "b@x/r")))
        self.assertIsNone(table.take(ids[0], "c@x/r"))
        self.assertEqual(table.take(ids[0], "b@x/r").asker_id, "0")


class RegisteredNickJoinTests(MUCTestCase):
    register = RegistrationTests.register

    def test_registered_user_enters_under_its_nick(self):
        """A user who registered a nickname and joins under another enters under the registered one, told
        so by status 210; its other resources join the same occupant."""
        self.join("alice")
        self.register("bob", "Bobby")
        got = self.join("bob", nick="Robert")
        [own] = [s for s in got if s.name == "presence" and 110 in codes(s)]
        self.assertEqual((own["from"], codes(own)), (f"{ROOM}/Bobby", {110, 210}))
        self.assertEqual(self.got("alice")[0]["from"], f"{ROOM}/Bobby")
