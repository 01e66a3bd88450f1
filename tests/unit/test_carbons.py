"""Message Carbons (XEP-0280) with XEP-0334 hints, and what offline storage keeps (XEP-0160, XEP-0334)."""

import gc

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID

from bridge.core.sessions import Session
from bridge.core.stanza import make
from bridge.features.carbons import Answerable
from tests.unit.helpers import GatewayLine, Harness, gateway_context, result_of

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
ENABLE = f"<iq type='set' id='on'><enable xmlns='{NS_CARBONS}'/></iq>"
CHATSTATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"
RECEIPT = "<received xmlns='urn:xmpp:receipts' id='m1'/>"
MARKER = "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>"


def messages(elements):
    return [e for e in elements if e.name == "message"]


def wrapped(message):
    """(direction, inner message) of a carbon copy, or None for any other message."""
    for child in message.elements():
        if child.uri == NS_CARBONS and child.name in ("sent", "received"):
            forwarded = next(child.elements(NS_FORWARD, "forwarded"))
            return child.name, next(forwarded.elements())
    return None


class CarbonsTestCase(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")

    def online(self, jid, priority=0, carbons=False):
        client = self.harness.login(jid)
        if carbons:
            reply = client.iq(ENABLE)
            self.assertEqual(reply["type"], "result", reply.toXml())
        client.send(f"<presence><priority>{priority}</priority></presence>")
        client.received()
        return client

    def copies(self, client):
        return [wrapped(m) for m in messages(client.received()) if wrapped(m) is not None]


class EnableTests(CarbonsTestCase):
    def test_enable_with_or_without_to_and_disable(self):
        """<enable/> with no 'to' or to one's own bare JID, and <disable/>, are answered with results,
        and a second <enable/> is no error."""
        client = self.online("alice@localhost/a")
        for text in (ENABLE, f"<iq type='set' id='on2' to='alice@localhost'><enable xmlns='{NS_CARBONS}'/></iq>",
                     f"<iq type='set' id='off' to='alice@localhost'><disable xmlns='{NS_CARBONS}'/></iq>"):
            reply = client.iq(text)
            self.assertEqual(reply["type"], "result", reply.toXml())
            self.assertEqual(reply["to"], "alice@localhost/a")

    def test_not_for_someone_else(self):
        """<enable/> sent to another account's bare JID is refused with not-allowed and enables nothing."""
        bob = self.online("bob@localhost/b")
        alice_a = self.online("alice@localhost/a")
        alice_b = self.online("alice@localhost/b")
        reply = bob.iq(f"<iq type='set' id='x' to='alice@localhost'><enable xmlns='{NS_CARBONS}'/></iq>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(next(reply.error.elements()).name, "not-allowed")
        alice_a.send("<message to='carol@localhost' type='chat'><body>hi</body></message>")
        self.assertEqual(self.copies(bob), [])
        self.assertEqual(self.copies(alice_b), [])

    def test_disco_feature_on_the_server(self):
        """The server's disco#info lists urn:xmpp:carbons:2."""
        client = self.online("alice@localhost/a")
        reply = client.iq("<iq type='get' id='d' to='localhost'>"
                          "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f["var"] for f in reply.query.elements() if f.name == "feature"}
        self.assertIn(NS_CARBONS, features)

    def test_disabled_resource_gets_no_copies(self):
        """After <disable/> a resource gets no more copies."""
        sender = self.online("alice@localhost/a")
        other = self.online("alice@localhost/b", carbons=True)
        other.iq(f"<iq type='set' id='off'><disable xmlns='{NS_CARBONS}'/></iq>")
        sender.send("<message to='bob@localhost' type='chat'><body>hi</body></message>")
        self.assertEqual(self.copies(other), [])


class SentTests(CarbonsTestCase):
    def test_sent_copy_to_enabled_resources_but_the_sender(self):
        """A chat message a resource sends reaches the peer, and every other carbons-enabled resource
        as <sent/> from the bare JID, with the original (jabber:client, 'from' stamped) inside; the
        sender (even if enabled) and resources without carbons get no copy."""
        bob = self.online("bob@localhost/b")
        sender = self.online("alice@localhost/a", carbons=True)
        laptop = self.online("alice@localhost/laptop", carbons=True)
        plain = self.online("alice@localhost/plain")
        sender.send("<message to='bob@localhost' type='chat' id='m1'><body>hello</body></message>")
        self.assertEqual([m["id"] for m in messages(bob.received())], ["m1"])
        written = laptop.transport.value().decode()
        self.assertIn(f"<forwarded xmlns='{NS_FORWARD}'><message xmlns='jabber:client'", written)
        copies = messages(laptop.received())
        self.assertEqual(len(copies), 1)
        copy = copies[0]
        self.assertEqual((copy["from"], copy["to"], copy["type"]),
                         ("alice@localhost", "alice@localhost/laptop", "chat"))
        direction, inner = wrapped(copy)
        self.assertEqual(direction, "sent")
        self.assertEqual((inner["from"], inner["to"], inner["id"]), ("alice@localhost/a", "bob@localhost", "m1"))
        self.assertEqual(str(inner.body), "hello")
        self.assertEqual(messages(sender.received()), [])
        self.assertEqual(messages(plain.received()), [])

    def test_chat_states_receipts_and_markers_are_copied(self):
        """Chat messages with only a chat state, a receipt or a displayed marker are copied, so that
        a message read on the phone is seen as read on the laptop."""
        self.online("bob@localhost/b")
        phone = self.online("alice@localhost/phone")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        for payload in (CHATSTATE, RECEIPT, MARKER):
            phone.send(f"<message to='bob@localhost/b' type='chat'>{payload}</message>")
        copies = self.copies(laptop)
        self.assertEqual([direction for direction, _ in copies], ["sent"] * 3)
        self.assertEqual([next(inner.elements()).uri for _, inner in copies],
                         ["http://jabber.org/protocol/chatstates", "urn:xmpp:receipts", "urn:xmpp:chat-markers:0"])

    def test_eligibility_by_type(self):
        """Copied: chat, and normal with a body; not copied: normal without a body, headline,
        and a message to or from a MUC room or occupant (muc#user <x/>)."""
        self.online("bob@localhost/b")
        sender = self.online("alice@localhost/a")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        cases = {
            "chat": ("chat", "<body>x</body>", True),
            "normal-body": (None, "<body>x</body>", True),
            "normal-empty": ("normal", MARKER, False),
            "headline": ("headline", "<body>x</body>", False),
            "muc-pm": ("chat", "<body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/>", False),
        }
        for name, (kind, payload, _) in cases.items():
            type_attribute = f" type='{kind}'" if kind else ""
            sender.send(f"<message to='bob@localhost/b' id='{name}'{type_attribute}>{payload}</message>")
        copied = [inner["id"] for _, inner in self.copies(laptop)]
        self.assertEqual(copied, [name for name, (_, _, expected) in cases.items() if expected])

    def test_private_and_no_copy_are_not_copied(self):
        """A message with <private/> or the XEP-0334 <no-copy/> hint is not copied; the recipient gets it."""
        bob = self.online("bob@localhost/b")
        sender = self.online("alice@localhost/a")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        sender.send(f"<message to='bob@localhost/b' type='chat' id='p'><body>x</body><private xmlns='{NS_CARBONS}'/>"
                    "</message>")
        sender.send("<message to='bob@localhost/b' type='chat' id='n'><body>x</body>"
                    "<no-copy xmlns='urn:xmpp:hints'/></message>")
        self.assertEqual(self.copies(laptop), [])
        self.assertEqual([m["id"] for m in messages(bob.received())], ["p", "n"])

    def test_refused_message_is_not_copied(self):
        """A message the block list refuses (to a blocked contact) is not copied as <sent/>."""
        bob = self.online("bob@localhost/b")
        sender = self.online("alice@localhost/a")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        reply = sender.iq("<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/>"
                          "</block></iq>")
        self.assertEqual(reply["type"], "result", reply.toXml())
        laptop.received()
        sender.send("<message to='bob@localhost/b' type='chat' id='blocked'><body>x</body></message>")
        self.assertEqual(messages(bob.received()), [])
        self.assertEqual(self.copies(laptop), [])

    def test_gateway_session_sending_is_copied(self):
        """What a gateway's session (a SIP phone, resource sip) says through the one way in is copied
        to the user's carbons-enabled XMPP resources, and a message delivered to that session is
        copied as <received/>."""
        ctx = gateway_context(self.harness.server, "sip", None)
        line = GatewayLine()
        phone = Session(JID("alice@localhost/sip"), line)
        ctx.bind(phone)
        bob = self.online("bob@localhost/b")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        ctx.submit(phone, ctx_message("bob@localhost", "from the phone"))
        self.assertEqual([str(m.body) for m in messages(bob.received())], ["from the phone"])
        [(direction, inner)] = self.copies(laptop)
        self.assertEqual((direction, inner["from"], str(inner.body)), ("sent", "alice@localhost/sip", "from the phone"))

        bob.send("<message to='alice@localhost/sip' type='chat' id='to-phone'><body>to the phone</body></message>")
        self.assertEqual([m["id"] for m in line.sent], ["to-phone"])
        [(direction, inner)] = self.copies(laptop)
        self.assertEqual((direction, inner["id"]), ("received", "to-phone"))


def ctx_message(to, body):
    message = make("message", to=to, type="chat")
    message.addElement("body", content=body)
    return message


class ReceivedTests(CarbonsTestCase):
    def test_received_to_full_jid(self):
        """A message to one resource is copied as <received/> to the other enabled resources only."""
        bob = self.online("bob@localhost/b")
        phone = self.online("alice@localhost/phone", carbons=True)
        laptop = self.online("alice@localhost/laptop", carbons=True)
        bob.send("<message to='alice@localhost/phone' type='chat' id='r1'><body>hi</body></message>")
        self.assertEqual([wrapped(m) for m in messages(phone.received())], [None])
        [copy] = messages(laptop.received())
        direction, inner = wrapped(copy)
        self.assertEqual((copy["from"], copy["to"]), ("alice@localhost", "alice@localhost/laptop"))
        self.assertEqual((direction, inner["from"], inner["to"], inner["id"]),
                         ("received", "bob@localhost/b", "alice@localhost/phone", "r1"))

    def test_bare_jid_no_resource_gets_it_twice(self):
        """A message to the bare JID goes to the top-priority resources as itself, and as <received/>
        only to the enabled resources that did not get it: none gets it twice."""
        bob = self.online("bob@localhost/b")
        top = self.online("alice@localhost/top", priority=5, carbons=True)
        also_top = self.online("alice@localhost/also", priority=5)
        low = self.online("alice@localhost/low", priority=1, carbons=True)
        bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hi</body></message>")
        self.assertEqual([(wrapped(m), m["id"]) for m in messages(top.received())], [(None, "b1")])
        self.assertEqual([(wrapped(m), m["id"]) for m in messages(also_top.received())], [(None, "b1")])
        [(direction, inner)] = self.copies(low)
        self.assertEqual((direction, inner["id"]), ("received", "b1"))

    def test_private_is_removed_and_not_copied(self):
        """An inbound message with <private/> is not copied, and reaches the recipient without it."""
        bob = self.online("bob@localhost/b")
        phone = self.online("alice@localhost/phone")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        bob.send(f"<message to='alice@localhost/phone' type='chat'><body>x</body><private xmlns='{NS_CARBONS}'/>"
                 "</message>")
        [message] = messages(phone.received())
        # (the archive's XEP-0359 stanza id aside)
        self.assertEqual([child.name for child in message.elements() if child.uri != "urn:xmpp:sid:0"], ["body"])
        self.assertEqual(messages(laptop.received()), [])

    def test_message_to_own_account_copied_once(self):
        """A message from one resource to another of the same account: the addressee gets it, the
        other enabled resources one <received/> copy each, the sender none."""
        sender = self.online("alice@localhost/a", carbons=True)
        target = self.online("alice@localhost/b", carbons=True)
        other = self.online("alice@localhost/c", carbons=True)
        sender.send("<message to='alice@localhost/b' type='chat' id='self'><body>note</body></message>")
        self.assertEqual([wrapped(m) for m in messages(target.received())], [None])
        self.assertEqual([(d, inner["id"]) for d, inner in self.copies(other)], [("received", "self")])
        self.assertEqual(messages(sender.received()), [])

    def test_error_answering_a_copied_message_is_copied(self):
        """The error that answers a copied message is copied to the other resources; an error that
        answers nothing copied is not."""
        sender = self.online("alice@localhost/a")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        sender.send("<message to='nobody@localhost' type='chat' id='lost'><body>x</body></message>")
        [error] = [m for m in messages(sender.received()) if m.getAttribute("type") == "error"]
        self.assertEqual(error["id"], "lost")
        copies = self.copies(laptop)
        self.assertEqual([(d, inner["id"], inner["type"]) for d, inner in copies],
                         [("sent", "lost", "chat"), ("received", "lost", "error")])

        bob = self.online("bob@localhost/b")
        bob.send("<message to='alice@localhost/a' type='error' id='unasked'><error type='cancel'>"
                 "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        self.assertEqual(self.copies(laptop), [])

    def test_forged_carbon_from_a_peer_is_not_a_carbon(self):
        """A message from another entity carrying a <received/> wrapper (a forged copy of a third
        party's message) reaches the user without it, and is copied like any other message."""
        bob = self.online("bob@localhost/b")
        phone = self.online("alice@localhost/phone")
        laptop = self.online("alice@localhost/laptop", carbons=True)
        bob.send(f"<message to='alice@localhost/phone' type='chat' id='forged'><body>look</body>"
                 f"<received xmlns='{NS_CARBONS}'><forwarded xmlns='{NS_FORWARD}'>"
                 "<message xmlns='jabber:client' from='carol@localhost/c' to='alice@localhost/phone' type='chat'>"
                 "<body>I owe you</body></message></forwarded></received></message>")
        [message] = messages(phone.received())
        self.assertEqual(message["from"], "bob@localhost/b")
        self.assertIsNone(wrapped(message))
        [(direction, inner)] = self.copies(laptop)
        self.assertEqual((direction, inner["from"], inner["id"]), ("received", "bob@localhost/b", "forged"))
        self.assertIsNone(wrapped(inner))


class AnswerableTests(SynchronousTestCase):
    def test_bounded(self):
        """Only the last ``kept`` copied messages are remembered for their errors."""
        answerable = Answerable(kept=2)
        for n in range(3):
            answerable.remember(make("message", to="bob@remote/x", sender="alice@localhost/a", id=f"m{n}"))
        answers = [answerable.answers(make("message", to="alice@localhost/b", sender="bob@remote", id=f"m{n}",
                                           type="error")) for n in range(3)]
        self.assertEqual(answers, [False, True, True])


class OfflineNoiseTests(CarbonsTestCase):
    def setUp(self):
        super().setUp()
        self.stored = []
        self.harness.server.hosts["localhost"].hooks.add("offline/stored", self.stored.append)

    def offline_count(self):
        return result_of(self.harness.storage.count("localhost", "carol", "offline"))

    def test_chat_states_receipts_markers_not_stored(self):
        """Bodiless messages carrying only a chat state, a receipt or a marker (with a thread or hints)
        for an offline account are dropped without an error: not stored, no alert."""
        bob = self.online("bob@localhost/b")
        for payload in (CHATSTATE, RECEIPT, MARKER, f"<thread>t</thread>{CHATSTATE}<no-copy xmlns='urn:xmpp:hints'/>"):
            bob.send(f"<message to='carol@localhost' type='chat'>{payload}</message>")
        self.assertEqual(messages(bob.received()), [])
        self.assertEqual(self.offline_count(), 0)
        self.assertEqual(self.stored, [])

    def test_store_hint_keeps_news(self):
        """A marker with the XEP-0334 <store/> hint is stored, and a bodiless message with other
        payload too."""
        bob = self.online("bob@localhost/b")
        bob.send(f"<message to='carol@localhost' type='chat'>{MARKER}<store xmlns='urn:xmpp:hints'/></message>")
        bob.send("<message to='carol@localhost' type='chat'><x xmlns='jabber:x:oob'><url>u</url></x></message>")
        self.assertEqual(self.offline_count(), 2)
        self.assertEqual(len(self.stored), 2)

    def test_no_store_hint_is_not_stored(self):
        """A message with a body and the <no-store/> hint is not stored; its sender gets service-unavailable."""
        bob = self.online("bob@localhost/b")
        bob.send("<message to='carol@localhost' type='chat' id='ns'><body>x</body>"
                 "<no-store xmlns='urn:xmpp:hints'/></message>")
        [error] = messages(bob.received())
        self.assertEqual((error["type"], error["id"]), ("error", "ns"))
        self.assertEqual(next(error.error.elements()).name, "service-unavailable")
        self.assertEqual(self.offline_count(), 0)
        self.assertEqual(self.stored, [])

    def test_chat_with_body_still_stored(self):
        """A chat message with a body and a chat state is stored as before."""
        bob = self.online("bob@localhost/b")
        bob.send(f"<message to='carol@localhost' type='chat'><body>x</body>{CHATSTATE}</message>")
        self.assertEqual(self.offline_count(), 1)


class GarbageTests(CarbonsTestCase):
    def test_copies_leave_no_garbage_cycles(self):
        """Carbon copies sent leave nothing for the cycle collector, as plain delivery does not."""
        bob = self.online("bob@localhost/b")
        sender = self.online("alice@localhost/a", carbons=True)
        laptop = self.online("alice@localhost/laptop", carbons=True)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for n in range(10):
            sender.send(f"<message to='bob@localhost/b' type='chat' id='s{n}'><body>hi</body></message>")
            bob.send(f"<message to='alice@localhost/a' type='chat' id='r{n}'><body>hi</body></message>")
        self.assertEqual(len(self.copies(laptop)), 20)
        sender.received(), bob.received()
        self.assertEqual(gc.collect(), 0)
