"""What one account may keep ([quotas]): subscription requests, roster, offline messages, private
XML, vCard and block list, each bounded in items and bytes, and refused past its bound."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import stanza
from bridge.core.privacy import PrivacyLists
from bridge.core.storage import stored_bytes
from bridge.core.xmlstream import parse_element
from tests.unit.helpers import Harness, LateStorage, result_of
from tests.unit.test_im import of_kind

NS_ROSTER = "jabber:iq:roster"
NS_NICK = "http://jabber.org/protocol/nick"


def condition(stanza):
    return next(e.name for e in stanza.error.elements() if e.name != "text")


def error_text(stanza):
    return str(stanza.error.text)


class RemoteServers:
    """The default route (federation), keeping what is sent to other servers."""

    def __init__(self):
        self.sent = []

    def deliver(self, stanza):
        self.sent.append(stanza)

    def taken(self):
        sent, self.sent = self.sent, []
        return sent


class QuotaTestCase(SynchronousTestCase):
    quotas = {}
    users = ("alice", "bob")

    def setUp(self):
        config = configuration.parse({"c2s": {"require_encryption": False}, "quotas": self.quotas}, "test.toml")
        self.harness = Harness(config, storage=self.make_storage())
        self.remote = RemoteServers()
        self.harness.server.router.default_route = self.remote
        for user in self.users:
            self.harness.add_user(f"{user}@localhost")

    def make_storage(self):
        return None

    def online(self, jid):
        client = self.harness.login(jid)
        client.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        client.send("<presence/>")
        client.received()
        return client

    def from_remote(self, text):
        """A stanza arriving from another server."""
        self.harness.server.router.route(parse_element(text))

    def answer_all(self):
        """Let a LateStorage answer, round after round, until no call waits."""
        while self.harness.storage.waiting:
            self.harness.storage.answer()

    def stored(self, user, store):
        return result_of(self.harness.storage.get("localhost", user, store))

    def blocked(self, user):
        """The block list as stored: the deny-all JID rules of the default privacy list."""
        return sorted(PrivacyLists.from_json(self.stored(user, "blocklist")).blocked)


class SubscriptionRequestTests(QuotaTestCase):
    quotas = {"max_pending_subscriptions_per_user": 3, "max_subscription_request_text_bytes": 16}

    def request(self, sender, extra=""):
        self.from_remote(f"<presence from='{sender}' to='bob@localhost' type='subscribe'>{extra}</presence>")

    def test_requests_past_the_quota_are_refused_and_those_waiting_stay(self):
        """With three requests waiting for bob (offline), a fourth and a fifth sender get
        <resource-constraint/> with a text; bob is then shown the first three, none pushed out.
        Once he denies one, its place is free for a new sender."""
        for number in range(1, 6):
            self.request(f"s{number}@remote.example")
        refusals = [s for s in self.remote.taken() if s.getAttribute("type") == "error"]
        self.assertEqual([s["to"] for s in refusals], ["s4@remote.example", "s5@remote.example"])
        self.assertEqual({condition(s) for s in refusals}, {"resource-constraint"})
        self.assertIn("too many subscription requests", error_text(refusals[0]))
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        shown = of_kind(bob.received(), "presence", "subscribe")
        self.assertEqual(sorted(p["from"] for p in shown), [f"s{n}@remote.example" for n in (1, 2, 3)])
        bob.send("<presence to='s1@remote.example' type='unsubscribed'/>")
        self.request("s6@remote.example")
        self.assertEqual([s.getAttribute("type") for s in self.remote.taken()], ["unsubscribed"])
        self.assertEqual([p["from"] for p in of_kind(bob.received(), "presence", "subscribe")],
                         ["s6@remote.example"])

    def test_only_sender_nick_and_status_are_kept_and_cut(self):
        """Of a request carrying a 20 kB status, a nick and a 20 kB payload of its own, bob is shown
        at login the sender, the nick and the status cut to the quota's 16 bytes on a character
        boundary, and nothing else; the stored roster stays small."""
        self.request("sam@remote.example",
                     f"<status>{'é' * 10000}</status><nick xmlns='{NS_NICK}'>Sam</nick>"
                     f"<big xmlns='urn:example:big'>{'x' * 20000}</big>")
        self.assertLess(stored_bytes(self.stored("bob", "roster")), 1000)
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        [shown] = of_kind(bob.received(), "presence", "subscribe")
        self.assertEqual((shown["from"], shown["to"]), ("sam@remote.example", "bob@localhost"))
        self.assertEqual(str(shown.nick), "Sam")
        self.assertEqual(str(shown.status), "é" * 6)
        self.assertEqual([child.name for child in shown.elements()], ["status", "nick"])

    def test_the_same_request_again_is_not_written_again(self):
        """A sender repeating the same request does not make the whole roster be written again."""
        writes = []
        storage = self.harness.storage
        original = storage.set
        storage.set = lambda host, user, store, value: writes.append(store) or original(host, user, store, value)
        for _ in range(5):
            self.request("sam@remote.example", "<status>hello</status>")
        self.assertEqual(writes.count("roster"), 1)
        self.request("sam@remote.example", "<status>hello again</status>")
        self.assertEqual(writes.count("roster"), 2)

    def test_request_stored_whole_before_is_shown_without_its_text(self):
        """A roster stored before only the text of a request was kept (the whole stanza) still
        shows its request at login, without the text."""
        stanza = ("<presence from='old@remote.example' to='bob@localhost' type='subscribe'>"
                  "<status>hi</status></presence>")
        result_of(self.harness.storage.set("localhost", "bob", "roster", {"version": 1, "items": {
            "old@remote.example": {"subscription": "none", "pending_in": stanza, "hidden": True}}}))
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        [shown] = of_kind(bob.received(), "presence", "subscribe")
        self.assertEqual((shown["from"], list(shown.elements())), ("old@remote.example", []))

    def test_answered_requests_leave_nothing_behind(self):
        """Requests bob denies, and one its sender withdraws, leave no hidden item in his roster."""
        bob = self.online("bob@localhost/b")
        for sender in ("s1@remote.example", "s2@remote.example", "s3@remote.example"):
            self.request(sender)
        bob.send("<presence to='s1@remote.example' type='unsubscribed'/>")
        bob.send("<presence to='s2@remote.example' type='unsubscribed'/>")
        self.from_remote("<presence from='s3@remote.example' to='bob@localhost' type='unsubscribe'/>")
        self.assertEqual(self.stored("bob", "roster")["items"], {})


class RosterQuotaTests(QuotaTestCase):
    quotas = {"max_roster_items_per_user": 2, "max_roster_item_text_bytes": 64}
    users = ("alice", "bob", "carol", "dave")

    def roster_set(self, client, jid, attributes="", content=""):
        return client.iq(f"<iq type='set' id='s-{jid}'><query xmlns='{NS_ROSTER}'>"
                         f"<item jid='{jid}' {attributes}>{content}</item></query></iq>")

    def test_roster_set_past_the_quota_is_refused(self):
        """With two items, a roster set adding a third gets <resource-constraint/>; changing an
        item still works, and once one is removed the third can be added."""
        alice = self.online("alice@localhost/a")
        self.assertEqual(self.roster_set(alice, "bob@localhost")["type"], "result")
        self.assertEqual(self.roster_set(alice, "carol@localhost")["type"], "result")
        refused = self.roster_set(alice, "dave@localhost")
        self.assertEqual(condition(refused), "resource-constraint")
        self.assertIn("roster is full", error_text(refused))
        self.assertEqual(self.roster_set(alice, "bob@localhost", "name='Bob'")["type"], "result")
        self.roster_set(alice, "carol@localhost", "subscription='remove'")
        self.assertEqual(self.roster_set(alice, "dave@localhost")["type"], "result")
        self.assertEqual(sorted(self.stored("alice", "roster")["items"]), ["bob@localhost", "dave@localhost"])

    def test_full_roster_refuses_requests_both_ways(self):
        """On a full roster, a subscription request from a new contact, and one the user sends to a
        new contact, are refused with <resource-constraint/> and change nothing."""
        alice = self.online("alice@localhost/a")
        self.roster_set(alice, "bob@localhost")
        self.roster_set(alice, "carol@localhost")
        self.from_remote("<presence from='sam@remote.example' to='alice@localhost' type='subscribe'/>")
        [refusal] = self.remote.taken()
        self.assertEqual((refusal["type"], condition(refusal)), ("error", "resource-constraint"))
        alice.send("<presence to='zoe@remote.example' type='subscribe'/>")
        [error] = of_kind(alice.received(), "presence", "error")
        self.assertEqual(condition(error), "resource-constraint")
        self.assertEqual(self.remote.taken(), [])
        self.assertEqual(sorted(self.stored("alice", "roster")["items"]), ["bob@localhost", "carol@localhost"])

    def test_name_and_groups_past_the_quota_are_refused(self):
        """An item whose name and groups take more than 64 bytes together gets <not-acceptable/>."""
        alice = self.online("alice@localhost/a")
        refused = self.roster_set(alice, "bob@localhost", f"name='{'n' * 40}'",
                                  f"<group>{'g' * 20}</group><group>{'h' * 20}</group>")
        self.assertEqual(condition(refused), "not-acceptable")
        self.assertIsNone(self.stored("alice", "roster"))
        accepted = self.roster_set(alice, "bob@localhost", f"name='{'n' * 24}'",
                                   f"<group>{'g' * 20}</group><group>{'h' * 20}</group>")
        self.assertEqual(accepted["type"], "result")


class OfflineQuotaTests(QuotaTestCase):
    quotas = {"max_offline_bytes_per_user": 3000}

    def message(self, number, size=700):
        return f"<message to='bob@localhost' type='chat' id='m{number}'><body>{'x' * size}</body></message>"

    def test_bytes_past_the_quota_are_refused(self):
        """bob may keep 3,000 bytes offline: of four messages of about 1 kB, the fourth is refused
        with <resource-constraint/> (well under the count quota), and bob gets the first three."""
        alice = self.online("alice@localhost/a")
        for number in range(4):
            alice.send(self.message(number))
        [error] = of_kind(alice.received(), "message", "error")
        self.assertEqual((error["id"], condition(error)), ("m3", "resource-constraint"))
        self.assertIn("offline storage is full", error_text(error))
        self.assertIsNone(error.delay)
        self.assertLessEqual(result_of(self.harness.storage.size("localhost", "bob", "offline")), 3000)
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        self.assertEqual([m["id"] for m in of_kind(bob.received(), "message")], ["m0", "m1", "m2"])

    def test_delivery_frees_the_quota(self):
        """Once bob has had his messages, his quota is free again."""
        alice = self.online("alice@localhost/a")
        for number in range(3):
            alice.send(self.message(number))
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        self.assertEqual(len(of_kind(bob.received(), "message")), 3)
        bob.drop()
        alice.send(self.message(9))
        self.assertEqual(of_kind(alice.received(), "message", "error"), [])
        self.assertEqual(result_of(self.harness.storage.count("localhost", "bob", "offline")), 1)


class LateOfflineQuotaTests(QuotaTestCase):
    """Offline quotas when storage answers later than the messages arrive, as a database thread does."""

    quotas = {"max_offline_messages_per_user": 2, "max_offline_bytes_per_user": 100000}

    def make_storage(self):
        return LateStorage()

    def test_a_burst_cannot_pass_the_quota(self):
        """Five messages that all arrive before storage has answered the first check: two are
        stored and three refused, not five stored."""
        alice = self.online("alice@localhost/a")
        self.harness.storage.late = True
        for number in range(5):
            alice.send(f"<message to='bob@localhost' type='chat' id='m{number}'><body>{number}</body></message>")
        self.answer_all()
        errors = of_kind(alice.received(), "message", "error")
        self.assertEqual([e["id"] for e in errors], ["m2", "m3", "m4"])
        self.harness.storage.late = False
        self.assertEqual(result_of(self.harness.storage.count("localhost", "bob", "offline")), 2)


class PrivateQuotaTests(QuotaTestCase):
    quotas = {"max_private_bytes_per_user": 2048}

    def store(self, client, name, size):
        return client.iq(f"<iq type='set' id='p-{name}'><query xmlns='jabber:iq:private'>"
                         f"<{name} xmlns='urn:example:{name}'>{'x' * size}</{name}></query></iq>")

    def test_fragments_past_the_quota_are_refused(self):
        """Fragments may take 2,048 bytes together: a second that would pass it gets
        <resource-constraint/> and is not kept; shrinking the first makes room for it."""
        alice = self.online("alice@localhost/a")
        self.assertEqual(self.store(alice, "first", 1500)["type"], "result")
        refused = self.store(alice, "second", 1000)
        self.assertEqual(condition(refused), "resource-constraint")
        self.assertEqual(list(self.stored("alice", "private")), ["urn:example:first first"])
        self.assertEqual(self.store(alice, "first", 500)["type"], "result")
        self.assertEqual(self.store(alice, "second", 1000)["type"], "result")


class VCardQuotaTests(QuotaTestCase):
    quotas = {"max_vcard_bytes": 4096}

    def set_vcard(self, client, photo_size):
        return client.iq(f"<iq type='set' id='v{photo_size}'><vCard xmlns='vcard-temp'><FN>Alice</FN>"
                         f"<PHOTO><BINVAL>{'A' * photo_size}</BINVAL></PHOTO></vCard></iq>")

    def test_vcard_past_the_quota_is_refused(self):
        """A vCard of more than 4,096 bytes gets <not-acceptable/> with a text, and the one stored
        before stays."""
        alice = self.online("alice@localhost/a")
        self.assertEqual(self.set_vcard(alice, 2000)["type"], "result")
        refused = self.set_vcard(alice, 5000)
        self.assertEqual(condition(refused), "not-acceptable")
        self.assertIn("4096 bytes", error_text(refused))
        self.assertIn("A" * 2000 + "<", self.stored("alice", "vcard")["xml"])


class BlockListQuotaTests(QuotaTestCase):
    quotas = {"max_blocked_items_per_user": 3}

    def block(self, client, *jids):
        items = "".join(f"<item jid='{jid}'/>" for jid in jids)
        return client.iq(f"<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>")

    def test_block_past_the_quota_is_refused_whole(self):
        """With two items blocked, blocking two more gets <resource-constraint/> and blocks neither;
        blocking one more, or one already there, works."""
        alice = self.online("alice@localhost/a")
        self.block(alice, "s1@remote.example", "s2@remote.example")
        refused = self.block(alice, "s3@remote.example", "s4@remote.example")
        self.assertEqual(condition(refused), "resource-constraint")
        self.assertEqual(self.blocked("alice"), ["s1@remote.example", "s2@remote.example"])
        self.assertEqual(self.block(alice, "s3@remote.example")["type"], "result")
        self.assertEqual(self.block(alice, "s1@remote.example")["type"], "result")
        self.assertEqual(condition(self.block(alice, "s4@remote.example")), "resource-constraint")


class LateBlockListTests(QuotaTestCase):
    """Block commands when storage answers later than they arrive, as a database thread does."""

    quotas = {"max_blocked_items_per_user": 3}

    def make_storage(self):
        return LateStorage()

    def test_commands_that_arrive_together_both_count(self):
        """Two block commands that arrive while the list is being read both take effect, and the
        quota counts both: a third that would pass it is refused."""
        alice = self.online("alice@localhost/a")
        self.harness.server.hosts["localhost"].features["blocking"].feature.lists.forget("localhost", "alice")
        self.harness.storage.late = True
        for number, jids in enumerate((("s1", "s2"), ("s3",), ("s4",))):
            items = "".join(f"<item jid='{jid}@remote.example'/>" for jid in jids)
            alice.send(f"<iq type='set' id='b{number}'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>")
        self.answer_all()
        replies = {iq["id"]: iq for iq in of_kind(alice.received(), "iq")}
        self.harness.storage.late = False
        self.assertEqual(self.blocked("alice"),
                         ["s1@remote.example", "s2@remote.example", "s3@remote.example"])
        self.assertEqual((replies["b0"]["type"], replies["b1"]["type"]), ("result", "result"))
        self.assertEqual(condition(replies["b2"]), "resource-constraint")


class QuotaConfigurationTests(SynchronousTestCase):
    def test_quotas_are_checked_and_offline_moved(self):
        """[quotas] values out of range are errors naming the key; the old [offline] table is unknown."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"quotas": {"max_vcard_bytes": 10, "max_offline_bytes_per_user": -1},
                                 "offline": {"max_messages_per_user": 5}}, "q.toml")
        problems = "\n".join(caught.exception.problems)
        self.assertIn("q.toml: quotas.max_vcard_bytes: must be at least 1024", problems)
        self.assertIn("q.toml: quotas.max_offline_bytes_per_user: must be at least 0", problems)
        self.assertIn("q.toml: offline: this table is gone: max_messages_per_user is now [quotas] max_offline_messages_per_user", problems)

    def test_default_vcard_quota_fits_a_client_stanza(self):
        """A vCard of the default quota fits in a client stanza of the default size limit."""
        defaults = configuration.Config()
        self.assertLess(defaults.quotas.max_vcard_bytes + 200, defaults.c2s.stanza_size_limit_bytes)


class JIDLengthTests(QuotaTestCase):
    """Items are JIDs; the bytes of a roster or a block list are bounded because a JID is."""

    def test_parts_longer_than_rfc_7622_allows_are_malformed(self):
        """A roster item whose localpart takes 1,024 bytes, or a block item whose resource does, is
        jid-malformed and not kept; 1,023 bytes (in two-byte characters: 511 of them, then one
        more) are accepted."""
        alice = self.online("alice@localhost/a")
        too_long = alice.iq(f"<iq type='set' id='r1'><query xmlns='{NS_ROSTER}'>"
                            f"<item jid='{'a' * 1024}@remote.example'/></query></iq>")
        self.assertEqual(condition(too_long), "jid-malformed")
        self.assertIsNone(self.stored("alice", "roster"))
        longest = "é" * 511 + "a"
        accepted = alice.iq(f"<iq type='set' id='r2'><query xmlns='{NS_ROSTER}'>"
                            f"<item jid='{longest}@remote.example'/></query></iq>")
        self.assertEqual(accepted["type"], "result")
        refused = alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>"
                           f"<item jid='s1@remote.example/{'é' * 512}'/></block></iq>")
        self.assertEqual(condition(refused), "jid-malformed")
        self.assertIsNone(self.stored("alice", "blocklist"))

    def test_parsed_jids_kept_are_bounded(self):
        """The JIDs kept from parsing stay under their bound, the oldest going first; a JID that
        went is parsed again, the same; a text longer than PARSED_JID_KEPT_CHARS is parsed, not kept."""
        self.patch(stanza, "PARSED_JIDS_KEPT", 8)
        self.patch(stanza, "_parsed_jids", {})
        texts = [f"user{n}@remote.example/r" for n in range(20)]
        parsed = [stanza.parse_jid(text) for text in texts]
        self.assertEqual(list(stanza._parsed_jids), texts[-8:])
        self.assertEqual(stanza.parse_jid(texts[0]), parsed[0])
        self.assertEqual(len(stanza._parsed_jids), 8)
        self.assertIsNone(stanza.parse_jid("a@b@c"))
        self.assertNotIn("a@b@c", stanza._parsed_jids)
        long_text = "l" * stanza.PARSED_JID_KEPT_CHARS + "@remote.example"
        self.assertEqual(stanza.parse_jid(long_text).user, "l" * stanza.PARSED_JID_KEPT_CHARS)
        self.assertNotIn(long_text, stanza._parsed_jids)
