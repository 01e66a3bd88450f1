"""Disco, ping, version, vCard, private storage, blocking and registration."""

import base64
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.helpers import Harness, LateStorage, make_config, result_of
from tests.unit.test_im import IMTestCase, of_kind


def condition(stanza):
    return next(stanza.error.elements()).name


class DiscoTests(IMTestCase):
    def test_host_info_lists_registered_features(self):
        """disco#info of the host lists what the loaded modules registered, and nothing else."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='d' to='localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f["var"] for f in reply.query.elements() if f.name == "feature"}
        for expected in ("urn:xmpp:ping", "jabber:iq:version", "vcard-temp", "jabber:iq:private",
                         "urn:xmpp:blocking", "http://jabber.org/protocol/disco#items"):
            self.assertIn(expected, features)
        identity = [i for i in reply.query.elements() if i.name == "identity"][0]
        self.assertEqual((identity["category"], identity["type"]), ("server", "im"))
        self.harness.server.hosts["localhost"].features["ping"].unload()
        again = alice.iq("<iq type='get' id='e' to='localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertNotIn("urn:xmpp:ping", {f.getAttribute("var") for f in again.query.elements()})
        unanswered = alice.iq("<iq type='get' id='f' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(condition(unanswered), "service-unavailable")

    def test_unknown_node(self):
        """A node nobody serves is item-not-found."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='d' to='localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>")
        self.assertEqual(condition(reply), "item-not-found")


class SmallFeatureTests(IMTestCase):
    def test_ping_server_and_account(self):
        """Pings to the server and to one's own bare JID are answered with a result."""
        alice = self.online("alice@localhost/a")
        for to in ("localhost", "alice@localhost"):
            reply = alice.iq(f"<iq type='get' id='p' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>")
            self.assertEqual((reply["type"], reply["from"]), ("result", to))

    def test_version(self):
        """jabber:iq:version names the server."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='v' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
        fields = {child.name: str(child) for child in reply.query.elements()}
        self.assertEqual(fields["name"], "bridge")
        self.assertNotIn("os", fields)

    def test_vcard_and_photo_hash(self):
        """A stored vCard is readable by others, writable only by its owner; its photo hash rides presence."""
        photo = b"\x89PNG fake image"
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        vcard = (f"<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                 f"<BINVAL>{base64.b64encode(photo).decode()}</BINVAL></PHOTO></vCard>")
        self.assertEqual(alice.iq(f"<iq type='set' id='v'>{vcard}</iq>")["type"], "result")
        got = bob.iq("<iq type='get' id='g' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual(str(got.vCard.FN), "Alice")
        forbidden = bob.iq(f"<iq type='set' id='w' to='alice@localhost'>{vcard}</iq>")
        self.assertEqual(condition(forbidden), "forbidden")
        bob.received()
        alice.send("<presence/>")
        presence = [p for p in of_kind(bob.received(), "presence") if p.getAttribute("type") is None][0]
        self.assertEqual(str(presence.x.photo), hashlib.sha1(photo).hexdigest())

    def test_private_storage(self):
        """Bookmarks stored with XEP-0049 come back; reserved namespaces are refused."""
        alice = self.online("alice@localhost/a")
        stored = alice.iq("<iq type='set' id='s'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
                          "<conference jid='room@muc.example' autojoin='true'/></storage></query></iq>")
        self.assertEqual(stored["type"], "result")
        got = alice.iq("<iq type='get' id='g'><query xmlns='jabber:iq:private'>"
                       "<storage xmlns='storage:bookmarks'/></query></iq>")
        self.assertEqual(got.query.storage.conference["jid"], "room@muc.example")
        empty = alice.iq("<iq type='get' id='h'><query xmlns='jabber:iq:private'><other xmlns='urn:x'/></query></iq>")
        self.assertEqual(list(empty.query.other.elements()), [])
        refused = alice.iq("<iq type='get' id='i'><query xmlns='jabber:iq:private'>"
                           "<query xmlns='jabber:iq:roster'/></query></iq>")
        self.assertEqual(condition(refused), "not-acceptable")


class BlockingTests(IMTestCase):
    def test_block_and_unblock(self):
        """A blocked sender's message is refused and not delivered; the list is pushed; unblock restores."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        alice.iq("<iq type='get' id='l'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        reply = alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>"
                         "<item jid='carol@localhost'/></block></iq>")
        self.assertEqual(reply["type"], "result")
        pushes = [i for i in of_kind(alice.received(), "iq", "set") if i.block is not None]
        self.assertEqual(pushes[0].block.item["jid"], "carol@localhost")
        carol.received()
        carol.send("<message to='alice@localhost' type='chat' id='x'><body>hi</body></message>")
        self.assertEqual(of_kind(alice.received(), "message"), [])
        self.assertEqual(condition(of_kind(carol.received(), "message", "error")[0]), "service-unavailable")
        alice.send("<message to='carol@localhost' type='chat' id='y'><body>hi</body></message>")
        refused = of_kind(alice.received(), "message", "error")[0]
        self.assertEqual(condition(refused), "not-acceptable")
        listed = alice.iq("<iq type='get' id='l2'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        self.assertEqual([i["jid"] for i in listed.blocklist.elements()], ["carol@localhost"])
        alice.iq("<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        carol.send("<message to='alice@localhost' type='chat' id='z'><body>hi</body></message>")
        self.assertEqual(len(of_kind(alice.received(), "message")), 1)

    def test_blocked_while_offline(self):
        """A blocked sender cannot fill an offline user's storage."""
        alice = self.online("alice@localhost/a")
        alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>")
        alice.drop()
        carol = self.online("carol@localhost/c")
        carol.send("<message to='alice@localhost' type='chat' id='x'><body>hi</body></message>")
        self.assertEqual(condition(of_kind(carol.received(), "message", "error")[0]), "service-unavailable")
        alice = self.online("alice@localhost/a2")
        self.assertEqual(of_kind(alice.received(), "message"), [])


class LateStorageBlockingTests(SynchronousTestCase):
    """Block lists when storage answers later than the stanza arrives, as a database thread does."""

    def setUp(self):
        self.storage = LateStorage()
        self.harness = Harness(storage=self.storage)
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")
        # carol's list, written before this server knew her: nothing of it is in memory.
        result_of(self.storage.set("localhost", "carol", "blocklist", ["alice@localhost"]))

    def online(self, jid):
        client = self.harness.login(jid)
        client.send("<presence/>")
        client.received()
        return client

    def forget(self, user):
        """Drop a block list from memory, so that it must be read again."""
        self.harness.server.hosts["localhost"].features["blocking"].feature.lists.forget("localhost", user)

    def test_inbound_waits_for_the_list_and_refuses(self):
        """A message to carol, whose list is not in memory, waits for it: nothing reaches her before
        storage answers, and then the list refuses it (the check never fails open)."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        self.forget("carol")
        self.storage.late = True
        alice.send("<message to='carol@localhost' type='chat' id='m1'><body>hi</body></message>")
        self.assertEqual(of_kind(carol.received(), "message"), [])
        self.assertEqual(of_kind(alice.received(), "message"), [])
        self.storage.answer()
        self.assertEqual(of_kind(carol.received(), "message"), [])
        self.assertEqual(condition(of_kind(alice.received(), "message", "error")[0]), "service-unavailable")

    def test_outbound_waits_for_the_list_and_lets_through(self):
        """bob's messages, sent while his own list is being read, wait for it and are then delivered
        in order."""
        carol = self.online("carol@localhost/c")
        bob = self.online("bob@localhost/b")
        self.forget("bob")
        self.storage.late = True
        bob.send("<message to='carol@localhost' type='chat' id='one'><body>1</body></message>")
        bob.send("<message to='carol@localhost' type='chat' id='two'><body>2</body></message>")
        self.assertEqual(of_kind(carol.received(), "message"), [])
        self.storage.answer()
        self.assertEqual([m["id"] for m in of_kind(carol.received(), "message")], ["one", "two"])


class RegistrationTests(SynchronousTestCase):
    def register(self, harness, host="localhost"):
        client = harness.connect()
        client.open_stream(host)
        form = client.iq("<iq type='get' id='f'><query xmlns='jabber:iq:register'/></iq>")
        done = client.iq("<iq type='set' id='r'><query xmlns='jabber:iq:register'>"
                         "<username>newbie</username><password>pw</password></query></iq>")
        return form, done

    def test_registration_when_enabled(self):
        """With registration on, a client creates an account before login and can then log in."""
        harness = Harness(make_config(hosts={"localhost": {"registration": True}}))
        form, done = self.register(harness)
        self.assertIsNotNone(form.query.username)
        self.assertEqual(done["type"], "result")
        harness.login("newbie@localhost/x", password="pw")
        _, again = self.register(harness)
        self.assertEqual(condition(again), "conflict")

    def test_registration_off_by_default(self):
        """With registration off (the default), the request is service-unavailable."""
        harness = Harness()
        form, done = self.register(harness)
        self.assertEqual(condition(form), "service-unavailable")
        self.assertEqual(condition(done), "service-unavailable")

    def test_password_change_and_removal(self):
        """A logged-in user changes their password and removes their account."""
        harness = Harness()
        harness.add_user("alice@localhost")
        alice = harness.login("alice@localhost/a")
        changed = alice.iq("<iq type='set' id='c' to='localhost'><query xmlns='jabber:iq:register'>"
                           "<username>alice</username><password>new</password></query></iq>")
        self.assertEqual(changed["type"], "result")
        harness.login("alice@localhost/b", password="new")
        alice.iq("<iq type='set' id='d' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        self.assertTrue(alice.transport.disconnecting)
        self.assertEqual(harness.storage.users("localhost", "accounts").result, [])
