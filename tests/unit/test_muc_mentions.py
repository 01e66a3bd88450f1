"""Mention notifications: a member of a room who is away hears of a room message naming them through the
SMS gateway's offline path, with its quiet window (gateways/muc/service.py notify_mentions)."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.muc import service as muc_service

from tests.unit.helpers import gateway_context
from tests.unit.test_sms_gateway import GatewayRig

ROOM = "lobby@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"


class MentionTests(SynchronousTestCase):
    def setUp(self):
        self.rig = GatewayRig(quiet_window_minutes=10)
        self.rig.verify()  # bob's mobile is verified, and bob is offline
        self.context = gateway_context(self.rig.server, "muc", self.rig.server.config.muc)
        self.addCleanup(self.context.unload)
        self.muc = muc_service.attach(self.context, self.rig.clock, None)
        self.muc.start()
        alice = self.rig.alice
        alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
        alice.iq(f"<iq type='set' id='i' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
                 "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        alice.iq(f"<iq type='set' id='m' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>"
                 "<item affiliation='member' jid='bob@localhost'/></query></iq>")
        alice.received()

    def say(self, body):
        self.rig.alice.send(f"<message type='groupchat' to='{ROOM}'><body>{body}</body></message>")

    def test_away_member_named_gets_an_sms(self):
        """A room message naming bob (any case, as a word) reaches his mobile as "Room: Alice: text"; a
        message that does not name him, or names him inside another word, sends nothing."""
        self.say("is bobby here?")
        self.say("nothing for anyone")
        self.assertEqual(self.rig.submits(), [])
        self.say("Bob, are you coming?")
        (submit,) = self.rig.submits()
        self.assertEqual(submit.short_message, b"Lobby: Alice: Bob, are you coming?")

    def test_quiet_window_per_room(self):
        """A second mention within the quiet window sends no second SMS."""
        self.say("bob?")
        (first,) = self.rig.submits()
        self.rig.smsc.answer(first, message_id="1")
        self.say("bob!!")
        self.assertEqual(self.rig.submits(), [])

    def test_present_or_online_members_are_not_notified(self):
        """bob online (available XMPP session), or in the room, gets no SMS about a mention."""
        bob = self.rig.harness.login("bob@localhost/desk")
        bob.send("<presence/>")
        self.say("bob, online?")
        self.assertEqual(self.rig.submits(), [])

    def test_registered_nick_is_what_counts(self):
        """A member who registered a nickname is mentioned by that nickname."""
        room = self.muc.rooms["conference.localhost"]["lobby"]
        room.register("bob@localhost", "Robert Jr")
        self.say("hello robert jr.")
        (submit,) = self.rig.submits()
        self.assertIn(b"hello robert jr.", submit.short_message)

    def test_non_members_are_not_notified(self):
        """A user of the server who is not affiliated with the room is not told of mentions; once a member,
        she is."""
        from tests.unit.helpers import result_of
        result_of(self.rig.preferences.update("localhost", "carol", mobile="+1 555 000 1111"))
        self.rig.verify("carol@localhost/phone")
        self.say("carol, look")
        self.assertEqual(self.rig.submits(), [])
        self.rig.alice.iq(f"<iq type='set' id='m2' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>"
                          "<item affiliation='member' jid='carol@localhost'/></query></iq>")
        self.say("carol, look again")
        (submit,) = self.rig.submits()
        self.assertEqual(submit.destination_addr, b"15550001111")


class EmailMentionTests(SynchronousTestCase):
    def test_away_member_named_gets_it_in_the_email_digest(self):
        """With email chosen, the mention joins bob's digest: one mail after digest_seconds, from the room."""
        from tests.unit.test_smtp import GatewayTestBase

        class Base(GatewayTestBase):
            def runTest(self):
                pass

        base = Base()
        base.setUp()
        self.addCleanup(base.doCleanups)
        context = gateway_context(base.server, "muc", base.config.muc)
        self.addCleanup(context.unload)
        muc_service.attach(context, base.server_clock, None).start()
        alice = base.login("alice@localhost/a")
        alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
        alice.send(f"<iq type='set' id='i' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
                   "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        alice.send(f"<iq type='set' id='m' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>"
                   "<item affiliation='member' jid='bob@localhost'/></query></iq>")
        base.say(alice, ROOM, "bob: the minutes are out", kind="groupchat")
        base.reactor.advance(base.config.smtp.digest_seconds)
        self.assertEqual(base.relay.answer(), 1)
        [mail] = base.relay.mails()
        self.assertEqual(mail["To"], "bob@example.org")
        self.assertIn("Alice: bob: the minutes are out", mail.get_content())
        self.assertIn(ROOM, mail["Subject"])
