"""Privacy lists (XEP-0016), invisibility (XEP-0126), and their one store with the block list (XEP-0191)."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.privacy import PrivacyLists
from bridge.core.stanza import parse_jid
from tests.unit.helpers import result_of
from tests.unit.test_im import IMTestCase, of_kind
from tests.unit.test_quotas import QuotaTestCase

NS = "jabber:iq:privacy"


def condition(stanza):
    return next(stanza.error.elements()).name


def set_list(client, name, items, id="l"):
    return client.iq(f"<iq type='set' id='{id}'><query xmlns='{NS}'><list name='{name}'>{items}</list></query></iq>")


def use(client, what, name, id="u"):
    """Make list ``name`` the session's active list or the account's default (None: decline)."""
    named = f" name='{name}'" if name is not None else ""
    return client.iq(f"<iq type='set' id='{id}'><query xmlns='{NS}'><{what}{named}/></query></iq>")


def chat(sender, to, id="m"):
    sender.send(f"<message to='{to}' type='chat' id='{id}'><body>hi</body></message>")


def message_ids(client):
    return [m["id"] for m in of_kind(client.received(), "message") if m.getAttribute("type") != "error"]


def refused(client):
    return [condition(m) for m in of_kind(client.received(), "message", "error")]


def blocklist(client):
    reply = client.iq("<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
    return sorted(item["jid"] for item in reply.blocklist.elements())


DENY_CAROL = "<item type='jid' value='carol@localhost' action='deny' order='1'/>"


class ListEnforcementTests(IMTestCase):
    def test_active_list_denies_a_contacts_messages(self):
        """A list denying carol has no effect until it is active; then carol's message is refused with
        service-unavailable and not delivered, while bob's still is."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        carol = self.online("carol@localhost/c")
        self.assertEqual(set_list(alice, "work", DENY_CAROL)["type"], "result")
        chat(carol, "alice@localhost", "before")
        self.assertEqual(message_ids(alice), ["before"])
        self.assertEqual(use(alice, "active", "work")["type"], "result")
        chat(carol, "alice@localhost", "after")
        chat(bob, "alice@localhost", "bob")
        self.assertEqual(message_ids(alice), ["bob"])
        self.assertEqual(refused(carol), ["service-unavailable"])

    def test_default_list_applies_while_offline_and_to_sessions_without_active_list(self):
        """The default list refuses carol's messages while alice is offline (nothing is stored) and
        to a session of alice's that set no active list."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        set_list(alice, "d", DENY_CAROL)
        self.assertEqual(use(alice, "default", "d")["type"], "result")
        alice.drop()
        chat(carol, "alice@localhost", "offline")
        self.assertEqual(refused(carol), ["service-unavailable"])
        alice = self.online("alice@localhost/a2")
        self.assertEqual(message_ids(alice), [])
        chat(carol, "alice@localhost/a2", "full")
        self.assertEqual(message_ids(alice), [])
        self.assertEqual(refused(carol), ["service-unavailable"])

    def test_active_list_is_per_session(self):
        """One session's active list does not apply to another session of the same account."""
        strict = self.online("alice@localhost/strict")
        open_ = self.online("alice@localhost/open")
        carol = self.online("carol@localhost/c")
        set_list(strict, "work", DENY_CAROL)
        use(strict, "active", "work")
        chat(carol, "alice@localhost/strict", "to-strict")
        chat(carol, "alice@localhost/open", "to-open")
        self.assertEqual(message_ids(strict), [])
        self.assertEqual(message_ids(open_), ["to-open"])
        use(strict, "active", None)
        chat(carol, "alice@localhost/strict", "declined")
        self.assertEqual(message_ids(strict), ["declined"])

    def test_order_decides_and_fall_through_matches_everyone(self):
        """Allow carol (order 1) then deny everyone (order 2): carol gets through, bob does not."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        carol = self.online("carol@localhost/c")
        set_list(alice, "only-carol", "<item action='deny' order='2'/>"
                 "<item type='jid' value='carol@localhost' action='allow' order='1'/>")
        use(alice, "active", "only-carol")
        chat(carol, "alice@localhost", "carol")
        chat(bob, "alice@localhost", "bob")
        self.assertEqual(message_ids(alice), ["carol"])
        self.assertEqual(refused(bob), ["service-unavailable"])

    def test_group_and_subscription_items_use_the_roster(self):
        """A deny of roster group Work refuses bob (in it) and not carol; a deny of subscription none
        refuses carol (not in the roster) and not bob (subscription both)."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        carol = self.online("carol@localhost/c")
        self.befriend(alice, bob)
        alice.iq("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'>"
                 "<group>Work</group></item></query></iq>")
        set_list(alice, "no-work", "<item type='group' value='Work' action='deny' order='1'/>", id="l1")
        set_list(alice, "friends", "<item type='subscription' value='none' action='deny' order='1'/>", id="l2")
        use(alice, "active", "no-work")
        chat(bob, "alice@localhost", "bob1")
        chat(carol, "alice@localhost", "carol1")
        self.assertEqual(message_ids(alice), ["carol1"])
        use(alice, "active", "friends", id="u2")
        chat(bob, "alice@localhost", "bob2")
        chat(carol, "alice@localhost", "carol2")
        self.assertEqual(message_ids(alice), ["bob2"])

    def test_kinds_limit_what_an_item_covers(self):
        """An item naming only <iq/> refuses carol's IQs and lets her messages through."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        set_list(alice, "no-iq", "<item type='jid' value='carol@localhost' action='deny' order='1'><iq/></item>")
        use(alice, "active", "no-iq")
        chat(carol, "alice@localhost", "msg")
        self.assertEqual(message_ids(alice), ["msg"])
        reply = carol.iq("<iq type='get' id='v' to='alice@localhost/a'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual(condition(reply), "service-unavailable")
        self.assertEqual(of_kind(alice.received(), "iq"), [])

    def test_a_deny_all_item_refuses_what_the_user_sends(self):
        """A deny-all item also refuses the user's own messages to that contact (not-acceptable), as a
        block does; an item naming only <message/> does not."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        set_list(alice, "in-only", "<item type='jid' value='carol@localhost' action='deny' order='1'><message/></item>")
        use(alice, "active", "in-only")
        chat(alice, "carol@localhost", "one")
        self.assertEqual(message_ids(carol), ["one"])
        set_list(alice, "all", DENY_CAROL, id="l2")
        use(alice, "active", "all", id="u2")
        chat(alice, "carol@localhost", "two")
        self.assertEqual(message_ids(carol), [])
        self.assertEqual(refused(alice), ["not-acceptable"])


class InvisibilityTests(IMTestCase):
    def invisible(self, client):
        set_list(client, "invisible", "<item action='deny' order='1'><presence-out/></item>", id="inv")
        return use(client, "active", "invisible", id="act")

    def test_invisible_session_broadcasts_nothing_answers_no_probe_and_still_chats(self):
        """With a list denying presence-out active (XEP-0126), alice's presence reaches no contact,
        bob's probe gets no answer, and messages still flow both ways."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        self.assertEqual(self.invisible(alice)["type"], "result")
        alice.send("<presence><status>here</status></presence>")
        self.assertEqual(of_kind(bob.received(), "presence"), [])
        later = self.harness.login("bob@localhost/later")
        later.send("<presence/>")
        seen = [p["from"] for p in of_kind(later.received(), "presence")]
        self.assertNotIn("alice@localhost/a", seen)
        chat(alice, "bob@localhost/b", "from-invisible")
        self.assertEqual(message_ids(bob), ["from-invisible"])
        chat(bob, "alice@localhost/a", "to-invisible")
        self.assertEqual(message_ids(alice), ["to-invisible"])

    def test_visible_again_when_the_list_is_declined(self):
        """Declining the active list makes the next presence broadcast reach contacts again."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        self.invisible(alice)
        use(alice, "active", None, id="decline")
        alice.send("<presence><status>back</status></presence>")
        self.assertEqual([p["from"] for p in of_kind(bob.received(), "presence")], ["alice@localhost/a"])

    def test_blocked_contact_gets_no_presence_broadcast(self):
        """A contact blocked through XEP-0191 gets unavailable presence once, then none of alice's
        broadcasts."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        self.assertEqual([p.getAttribute("type") for p in of_kind(bob.received(), "presence")], ["unavailable"])
        alice.send("<presence><status>still here</status></presence>")
        self.assertEqual(of_kind(bob.received(), "presence"), [])


class SharedStoreTests(IMTestCase):
    def test_a_block_is_a_deny_item_of_the_default_list(self):
        """Blocking carol through XEP-0191 makes a default list whose first item denies her everything."""
        alice = self.online("alice@localhost/a")
        alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>")
        names = alice.iq(f"<iq type='get' id='n'><query xmlns='{NS}'/></iq>")
        default = [e["name"] for e in names.query.elements() if e.name == "default"]
        self.assertEqual(default, ["Blocked contacts"])
        listed = alice.iq(f"<iq type='get' id='g'><query xmlns='{NS}'><list name='Blocked contacts'/></query></iq>")
        item = next(listed.query.list.elements())
        self.assertEqual((item["type"], item["value"], item["action"], list(item.elements())),
                         ("jid", "carol@localhost", "deny", []))

    def test_a_block_goes_first_in_an_existing_default_list_and_unblock_removes_only_it(self):
        """With a default list allowing everyone, a block puts its deny item before the allow (carol is
        refused); unblocking leaves the list's own item in place."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        set_list(alice, "mine", "<item action='allow' order='5'/>")
        use(alice, "default", "mine")
        alice.iq("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>")
        chat(carol, "alice@localhost", "blocked")
        self.assertEqual(message_ids(alice), [])
        alice.iq("<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></unblock></iq>")
        listed = alice.iq(f"<iq type='get' id='g'><query xmlns='{NS}'><list name='mine'/></query></iq>")
        self.assertEqual([(i.getAttribute("type"), i["action"]) for i in listed.query.list.elements()],
                         [(None, "allow")])
        chat(carol, "alice@localhost", "free")
        self.assertEqual(message_ids(alice), ["free"])

    def test_a_deny_all_jid_item_of_the_default_list_is_on_the_blocklist(self):
        """A deny-all jid item set through XEP-0016 in the default list shows in the XEP-0191 block
        list (and is pushed to a resource that asked for it); a deny of messages only does not."""
        alice = self.online("alice@localhost/a")
        watcher = self.online("alice@localhost/w")
        self.assertEqual(blocklist(watcher), [])
        set_list(alice, "d", DENY_CAROL + "<item type='jid' value='bob@localhost' action='deny' order='2'>"
                 "<message/></item>")
        use(alice, "default", "d")
        pushes = [iq for iq in of_kind(watcher.received(), "iq", "set") if iq.block is not None]
        self.assertEqual([item["jid"] for push in pushes for item in push.block.elements()], ["carol@localhost"])
        self.assertEqual(blocklist(alice), ["carol@localhost"])
        set_list(alice, "d", "<item type='jid' value='carol@localhost' action='deny' order='1'><message/></item>",
                 id="l2")
        self.assertEqual(blocklist(alice), [])

    def test_a_block_list_stored_before_privacy_lists_is_read(self):
        """A block list stored as a plain list of JIDs is read as the default list."""
        result_of(self.harness.storage.set("localhost", "alice", "blocklist", ["carol@localhost"]))
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        self.assertEqual(blocklist(alice), ["carol@localhost"])
        chat(carol, "alice@localhost", "x")
        self.assertEqual(refused(carol), ["service-unavailable"])


class ProtocolTests(IMTestCase):
    def test_names_lists_and_unknown_ones(self):
        """The list names, active and default are listed; a list is read whole; an unknown one is
        item-not-found, two at once bad-request."""
        alice = self.online("alice@localhost/a")
        set_list(alice, "one", DENY_CAROL)
        set_list(alice, "two", "<item action='allow' order='3'><presence-in/><message/></item>", id="l2")
        use(alice, "active", "one")
        use(alice, "default", "two", id="u2")
        names = alice.iq(f"<iq type='get' id='n'><query xmlns='{NS}'/></iq>")
        self.assertEqual([(e.name, e["name"]) for e in names.query.elements()],
                         [("active", "one"), ("default", "two"), ("list", "one"), ("list", "two")])
        two = alice.iq(f"<iq type='get' id='g'><query xmlns='{NS}'><list name='two'/></query></iq>")
        item = next(two.query.list.elements())
        self.assertEqual((item["order"], [kind.name for kind in item.elements()]), ("3", ["message", "presence-in"]))
        missing = alice.iq(f"<iq type='get' id='m'><query xmlns='{NS}'><list name='three'/></query></iq>")
        self.assertEqual(condition(missing), "item-not-found")
        both = alice.iq(f"<iq type='get' id='b'><query xmlns='{NS}'><list name='one'/><list name='two'/></query></iq>")
        self.assertEqual(condition(both), "bad-request")
        self.assertEqual(condition(use(alice, "active", "three", id="u3")), "item-not-found")
        self.assertEqual(condition(use(alice, "default", "three", id="u4")), "item-not-found")

    def test_malformed_items_are_bad_request(self):
        """Items without an action, with a type and no value, an unknown subscription, a repeated
        order, a malformed JID or an unknown kind are refused with bad-request; nothing is kept."""
        alice = self.online("alice@localhost/a")
        for number, items in enumerate((
                "<item type='jid' value='carol@localhost' order='1'/>",
                "<item type='jid' action='deny' order='1'/>",
                "<item type='subscription' value='sometimes' action='deny' order='1'/>",
                "<item action='deny' order='1'/><item action='allow' order='1'/>",
                "<item type='jid' value='a@@b' action='deny' order='1'/>",
                "<item action='deny' order='1'><voice/></item>",
                "<item action='deny' order='-1'/>")):
            reply = set_list(alice, "bad", items, id=f"b{number}")
            self.assertEqual(condition(reply), "bad-request", items)
        missing_group = set_list(alice, "bad", "<item type='group' value='Nobody' action='deny' order='1'/>", id="g")
        self.assertEqual(condition(missing_group), "item-not-found")
        names = alice.iq(f"<iq type='get' id='n'><query xmlns='{NS}'/></iq>")
        self.assertEqual(list(names.query.elements()), [])

    def test_edits_are_pushed_to_every_resource(self):
        """An edit is pushed (the list's name) to each resource of the account."""
        alice = self.online("alice@localhost/a")
        other = self.online("alice@localhost/o")
        set_list(alice, "work", DENY_CAROL)
        pushes = [iq for iq in of_kind(other.received(), "iq", "set") if iq.query is not None]
        self.assertEqual([(p.query.uri, p.query.list["name"]) for p in pushes], [(NS, "work")])

    def test_conflicts_with_another_resources_lists(self):
        """A list active on another resource cannot be removed (conflict), the sender's own active list
        can; the default cannot change while another resource applies it; an unknown list's removal
        is item-not-found."""
        alice = self.online("alice@localhost/a")
        other = self.online("alice@localhost/o")
        set_list(alice, "theirs", DENY_CAROL, id="l1")
        set_list(alice, "mine", DENY_CAROL, id="l2")
        use(other, "active", "theirs")
        use(alice, "active", "mine")
        self.assertEqual(condition(set_list(alice, "theirs", "", id="r1")), "conflict")
        self.assertEqual(set_list(alice, "mine", "", id="r2")["type"], "result")
        self.assertEqual(condition(set_list(alice, "mine", "", id="r3")), "item-not-found")
        use(other, "active", None, id="d0")
        self.assertEqual(use(alice, "default", "theirs", id="d1")["type"], "result")
        self.assertEqual(condition(use(alice, "default", None, id="d2")), "conflict")
        use(other, "active", "theirs", id="d3")
        self.assertEqual(use(alice, "default", None, id="d4")["type"], "result")

    def test_someone_elses_lists_are_forbidden(self):
        """Another account may neither read nor change alice's lists."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        set_list(alice, "work", DENY_CAROL)
        reply = carol.iq(f"<iq type='get' id='x' to='alice@localhost'><query xmlns='{NS}'/></iq>")
        self.assertEqual(condition(reply), "forbidden")
        reply = carol.iq(f"<iq type='set' id='y' to='alice@localhost'><query xmlns='{NS}'><list name='work'/>"
                         "</query></iq>")
        self.assertEqual(condition(reply), "forbidden")

    def test_disco_lists_privacy(self):
        """disco#info of the server lists jabber:iq:privacy beside urn:xmpp:blocking."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='d' to='localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f["var"] for f in reply.query.elements() if f.name == "feature"}
        self.assertTrue({NS, "urn:xmpp:blocking"} <= features)


class PrivacyQuotaTests(QuotaTestCase):
    quotas = {"max_privacy_lists_per_user": 2, "max_privacy_items_per_list": 3,
              "max_privacy_bytes_per_user": 4096}

    def test_lists_per_user(self):
        """A third list is refused with resource-constraint; replacing one of the two is not."""
        alice = self.online("alice@localhost/a")
        set_list(alice, "one", DENY_CAROL, id="1")
        set_list(alice, "two", DENY_CAROL, id="2")
        self.assertEqual(condition(set_list(alice, "three", DENY_CAROL, id="3")), "resource-constraint")
        self.assertEqual(set_list(alice, "two", "<item action='deny' order='1'/>", id="4")["type"], "result")

    def test_items_per_list_and_block_commands(self):
        """A list of four items is refused; so is a block that would make the default list pass three."""
        alice = self.online("alice@localhost/a")
        items = "".join(f"<item type='jid' value='u{n}@remote.example' action='deny' order='{n}'/>" for n in range(4))
        self.assertEqual(condition(set_list(alice, "big", items)), "resource-constraint")
        set_list(alice, "d", "<item action='allow' order='9'/>", id="d")
        use(alice, "default", "d")
        block = "".join(f"<item jid='u{n}@remote.example'/>" for n in range(3))
        reply = alice.iq(f"<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>{block}</block></iq>")
        self.assertEqual(condition(reply), "resource-constraint")

    def test_bytes_per_user(self):
        """Lists whose stored form would pass the byte bound are refused, whatever their counts."""
        alice = self.online("alice@localhost/a")
        long_group_free = "".join(f"<item type='jid' value='{'x' * 1000}{n}@remote.example' action='deny' "
                                  f"order='{n}'/>" for n in range(3))
        self.assertEqual(set_list(alice, "one", long_group_free, id="1")["type"], "result")
        self.assertEqual(condition(set_list(alice, "two", long_group_free, id="2")), "resource-constraint")


class ModelTests(SynchronousTestCase):
    def test_stored_form_round_trips(self):
        """A document written and read back decides as before, default and block list included."""
        lists = PrivacyLists().block({"carol@localhost"})
        again = PrivacyLists.from_json(lists.to_json())
        self.assertEqual((again.default, again.blocked), ("Blocked contacts", frozenset({"carol@localhost"})))
        self.assertIsNone(PrivacyLists().to_json())
        self.assertIsNone(again.unblock().to_json())

    def test_jid_items_match_as_xep_0191_says(self):
        """A bare JID item matches every resource; a domain item every JID of the domain."""
        from bridge.core.privacy import Rule, allowed
        rules = (Rule("jid", "example.org", False, 1),)
        self.assertFalse(allowed(rules, "message", parse_jid("anyone@example.org/r"), None))
        self.assertTrue(allowed(rules, "message", parse_jid("anyone@example.net/r"), None))
