"""Routing, delivery rules, roster, subscriptions, presence and offline storage (RFC 6121)."""

import gc

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.helpers import Harness

NS_ROSTER = "jabber:iq:roster"


def of_kind(elements, name, kind=None):
    return [e for e in elements if e.name == name and (kind is None or e.getAttribute("type") == kind)]


class IMTestCase(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")

    def online(self, jid, priority=0):
        client = self.harness.login(jid)
        client.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        client.send(f"<presence><priority>{priority}</priority></presence>")
        client.received()
        return client

    def befriend(self, a, b):
        """Mutual subscription between the accounts of clients a and b."""
        bare_a, bare_b = a.jid.split("/")[0], b.jid.split("/")[0]
        a.send(f"<presence to='{bare_b}' type='subscribe'/>")
        b.send(f"<presence to='{bare_a}' type='subscribed'/>")
        b.send(f"<presence to='{bare_a}' type='subscribe'/>")
        a.send(f"<presence to='{bare_b}' type='subscribed'/>")
        a.received(), b.received()


class MessageTests(IMTestCase):
    def test_chat_to_full_and_bare(self):
        """A chat to a full JID reaches that resource; to the bare JID, the highest priority."""
        low = self.online("bob@localhost/low", priority=1)
        high = self.online("bob@localhost/high", priority=5)
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost/low' type='chat' id='1'><body>one</body></message>")
        alice.send("<message to='bob@localhost' type='chat' id='2'><body>two</body></message>")
        self.assertEqual([m["id"] for m in of_kind(low.received(), "message")], ["1"])
        received = of_kind(high.received(), "message")
        self.assertEqual([m["id"] for m in received], ["2"])
        self.assertEqual(received[0]["from"], "alice@localhost/a")

    def test_a_child_named_like_core_state_is_only_payload(self):
        """A <settling/> child (the name of the core's durable-copy tracker) is delivered as any other."""
        bob = self.online("bob@localhost/desk")
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost/desk' type='chat' id='s'><body>hi</body><settling/></message>")
        received = of_kind(bob.received(), "message")
        self.assertEqual([m["id"] for m in received], ["s"])
        self.assertEqual(of_kind(alice.received(), "stream:error"), [])
        self.assertFalse(alice.protocol.closed)

    def test_delivery_leaves_no_garbage_cycles(self):
        """A chat delivered leaves nothing for the cycle collector: each message it would find costs the
        collector's walk over the whole heap once enough of them pile up."""
        bob = self.online("bob@localhost/desk")
        alice = self.online("alice@localhost/a")
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for n in range(20):
            alice.send(f"<message to='bob@localhost/desk' type='chat' id='c{n}'><body>hi {n}</body></message>")
        self.assertEqual(len(of_kind(bob.received(), "message")), 20)
        self.assertEqual(gc.collect(), 0)

    def test_headline_to_all_non_negative(self):
        """A headline to a bare JID reaches every resource with non-negative priority."""
        one = self.online("bob@localhost/one", priority=0)
        two = self.online("bob@localhost/two", priority=3)
        hidden = self.online("bob@localhost/hidden", priority=-1)
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        self.assertEqual(len(of_kind(one.received(), "message")), 1)
        self.assertEqual(len(of_kind(two.received(), "message")), 1)
        self.assertEqual(of_kind(hidden.received(), "message"), [])

    def test_full_jid_gone_falls_back_to_bare(self):
        """A chat to a resource that is gone goes to the account's other resource."""
        bob = self.online("bob@localhost/desk")
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost/phone' type='chat'><body>hi</body></message>")
        self.assertEqual(len(of_kind(bob.received(), "message")), 1)

    def test_groupchat_to_user_is_an_error(self):
        """A groupchat message to a user's bare JID gets service-unavailable."""
        self.online("bob@localhost/desk")
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost' type='groupchat' id='g'><body>x</body></message>")
        error = of_kind(alice.received(), "message", "error")[0]
        self.assertEqual(next(error.error.elements()).name, "service-unavailable")

    def test_unknown_domain(self):
        """With no federation route, a remote domain gets remote-server-not-found."""
        alice = self.online("alice@localhost/a")
        alice.send("<message to='x@remote.example' id='r'><body>x</body></message>")
        error = of_kind(alice.received(), "message", "error")[0]
        self.assertEqual(next(error.error.elements()).name, "remote-server-not-found")

    def test_unhandled_iq(self):
        """An IQ payload nobody handles is answered service-unavailable; results are never answered."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='u' to='localhost'><nothing xmlns='urn:example:none'/></iq>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(next(reply.error.elements()).name, "service-unavailable")
        alice.send("<iq type='result' id='z' to='localhost'/>")
        self.assertEqual(alice.received(), [])

    def test_iq_to_full_jid_is_routed(self):
        """An IQ to a client's full JID reaches that client, and its result comes back."""
        bob = self.online("bob@localhost/desk")
        alice = self.online("alice@localhost/a")
        alice.send("<iq type='get' id='v' to='bob@localhost/desk'><query xmlns='jabber:iq:version'/></iq>")
        request = of_kind(bob.received(), "iq", "get")[0]
        self.assertEqual(request["from"], "alice@localhost/a")
        bob.send("<iq type='result' id='v' to='alice@localhost/a'/>")
        self.assertEqual(of_kind(alice.received(), "iq", "result")[0]["from"], "bob@localhost/desk")

    def test_malformed_to(self):
        """A malformed 'to' gets jid-malformed."""
        alice = self.online("alice@localhost/a")
        alice.send("<message to='a@b@c' id='m'><body>x</body></message>")
        error = of_kind(alice.received(), "message", "error")[0]
        self.assertEqual(next(error.error.elements()).name, "jid-malformed")


class OfflineTests(IMTestCase):
    def test_stored_and_delivered_in_order_with_delay(self):
        """Messages to an offline user are kept and delivered in order with a delay stamp."""
        stored = []
        self.harness.server.hosts["localhost"].hooks.add("offline/stored", stored.append)
        alice = self.online("alice@localhost/a")
        for n in range(3):
            alice.send(f"<message to='bob@localhost' type='chat' id='m{n}'><body>{n}</body></message>")
        self.assertEqual(of_kind(alice.received(), "message", "error"), [])
        self.assertEqual([(host, user) for host, user, _ in stored], [("localhost", "bob")] * 3)
        self.harness.clock.advance(100)
        bob = self.harness.login("bob@localhost/b")
        self.assertEqual(of_kind(bob.received(), "message"), [])
        bob.send("<presence/>")
        messages = of_kind(bob.received(), "message")
        self.assertEqual([m["id"] for m in messages], ["m0", "m1", "m2"])
        self.assertEqual(messages[0].delay["stamp"], "1970-01-01T00:00:00Z")
        bob.send("<presence type='unavailable'/>")
        bob.send("<presence/>")
        self.assertEqual(of_kind(bob.received(), "message"), [])

    def test_no_such_user(self):
        """A message to an account that does not exist is refused, not stored."""
        alice = self.online("alice@localhost/a")
        alice.send("<message to='nobody@localhost' type='chat' id='n'><body>x</body></message>")
        error = of_kind(alice.received(), "message", "error")[0]
        self.assertEqual(next(error.error.elements()).name, "service-unavailable")


class RosterTests(IMTestCase):
    def test_set_pushes_to_interested_resources_and_versions(self):
        """A roster set is pushed to every resource that asked for the roster; ver skips a resend."""
        one = self.online("alice@localhost/one")
        two = self.online("alice@localhost/two")
        reply = one.iq("<iq type='set' id='s'><query xmlns='jabber:iq:roster'>"
                       "<item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>")
        self.assertEqual(reply["type"], "result")
        pushes = of_kind(two.received(), "iq", "set")
        self.assertEqual(pushes[0].query.item["jid"], "bob@localhost")
        version = pushes[0].query["ver"]
        same = two.iq(f"<iq type='get' id='g'><query xmlns='jabber:iq:roster' ver='{version}'/></iq>")
        self.assertIsNone(same.query)
        full = two.iq("<iq type='get' id='h'><query xmlns='jabber:iq:roster' ver='0'/></iq>")
        self.assertEqual([i["name"] for i in full.query.elements()], ["Bob"])

    def test_remove(self):
        """Removing an item pushes subscription='remove' and cancels subscriptions both ways."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        alice.iq("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@localhost' subscription='remove'/></query></iq>")
        received = bob.received()
        kinds = {p.getAttribute("type") for p in of_kind(received, "presence")}
        self.assertTrue({"unsubscribe", "unsubscribed"} <= kinds)
        push = of_kind(received, "iq", "set")[-1]
        self.assertEqual(push.query.item["subscription"], "none")

    def test_someone_elses_roster(self):
        """Reading another user's roster is forbidden."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='x' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>")
        self.assertEqual(next(reply.error.elements()).name, "forbidden")


class SubscriptionTests(IMTestCase):
    def roster_item(self, client, contact):
        reply = client.iq("<iq type='get' id='q'><query xmlns='jabber:iq:roster'/></iq>")
        for item in reply.query.elements():
            if item["jid"] == contact:
                return item["subscription"], item.getAttribute("ask")
        return None

    def test_handshake_both_ways(self):
        """subscribe/subscribed both ways gives 'both' on each side, and presence flows."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        alice.send("<presence to='bob@localhost' type='subscribe'/>")
        self.assertEqual(self.roster_item(alice, "bob@localhost"), ("none", "subscribe"))
        request = of_kind(bob.received(), "presence", "subscribe")[0]
        self.assertEqual(request["from"], "alice@localhost")
        self.assertIsNone(self.roster_item(bob, "alice@localhost"))
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
        self.assertEqual(self.roster_item(alice, "bob@localhost"), ("to", None))
        self.assertEqual(self.roster_item(bob, "alice@localhost"), ("from", None))
        received = alice.received()
        self.assertEqual(len(of_kind(received, "presence", "subscribed")), 1)
        self.assertTrue([p for p in of_kind(received, "presence") if p.getAttribute("type") is None])
        bob.send("<presence to='alice@localhost' type='subscribe'/>")
        alice.send("<presence to='bob@localhost' type='subscribed'/>")
        self.assertEqual(self.roster_item(alice, "bob@localhost"), ("both", None))
        self.assertEqual(self.roster_item(bob, "alice@localhost"), ("both", None))
        bob.received()
        alice.send("<presence><show>away</show></presence>")
        broadcast = [p for p in of_kind(bob.received(), "presence") if p.getAttribute("type") is None]
        self.assertEqual(str(broadcast[0].show), "away")

    def test_pending_request_shown_at_login(self):
        """A request to an offline user is shown when they next become available."""
        alice = self.online("alice@localhost/a")
        alice.send("<presence to='bob@localhost' type='subscribe'/>")
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        self.assertEqual(len(of_kind(bob.received(), "presence", "subscribe")), 1)

    def test_pre_approval(self):
        """A subscription pre-approved by bob is accepted without asking him."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
        self.assertEqual(of_kind(alice.received(), "presence"), [])
        alice.send("<presence to='bob@localhost' type='subscribe'/>")
        self.assertEqual(of_kind(bob.received(), "presence", "subscribe"), [])
        self.assertEqual(self.roster_item(alice, "bob@localhost"), ("to", None))

    def test_unavailable_on_drop_and_probe_at_login(self):
        """A dropped socket announces unavailable; a new login probes and learns contacts' presence."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob)
        bob.drop()
        self.assertEqual(len(of_kind(alice.received(), "presence", "unavailable")), 1)
        alice.drop()
        bob = self.online("bob@localhost/b2")
        late = self.harness.login("alice@localhost/c")
        late.send("<presence/>")
        seen = [p["from"] for p in of_kind(late.received(), "presence") if p.getAttribute("type") is None]
        self.assertIn("bob@localhost/b2", seen)

    def test_no_presence_without_subscription(self):
        """Presence goes only to subscribers; directed presence reaches its target and its unavailable too."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        alice.send("<presence><status>here</status></presence>")
        self.assertEqual(of_kind(carol.received(), "presence"), [])
        alice.send("<presence to='carol@localhost/c'/>")
        self.assertEqual(len(of_kind(carol.received(), "presence")), 1)
        alice.send("<presence type='unavailable'/>")
        self.assertEqual(len(of_kind(carol.received(), "presence", "unavailable")), 1)

