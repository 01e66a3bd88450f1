"""Client State Indication (XEP-0352): what an inactive client is spared, and what is never lost."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.streams.csi import HeldStanzas, collapse_key
from bridge.core.xmlstream import parse_element
from tests.unit.helpers import Harness, make_config, resuming, scram_login
from tests.unit.test_websocket import WebSocketTestCase

CSI = "urn:xmpp:csi:0"
SM = "urn:xmpp:sm:3"
INACTIVE = f"<inactive xmlns='{CSI}'/>"
ACTIVE = f"<active xmlns='{CSI}'/>"
CHATSTATES = "http://jabber.org/protocol/chatstates"
ALICE = "alice@localhost/phone"


def stanzas(elements):
    return [e for e in elements if e.name in ("message", "presence", "iq")]


def summary(elements):
    """(kind, from, what it says) of each stanza: enough to compare order and collapsing."""
    found = []
    for element in stanzas(elements):
        text = element.show or element.body or element.status
        first = element.firstChildElement()
        said = str(text) if text is not None else (first.name if first is not None else None)
        found.append((element.name, element.getAttribute("from"), said))
    return found


class ClientStateTests(SynchronousTestCase):
    def setUp(self, **c2s):
        self.harness = Harness(make_config(**c2s))
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")
        self.alice = self.harness.login(ALICE)
        self.alice.send("<presence/>")
        self.bob = self.harness.login("bob@localhost/desk")
        self.carol = self.harness.login("carol@localhost/desk")
        self.alice.received()

    def presence(self, client, show):
        client.send(f"<presence to='{ALICE}'><show>{show}</show></presence>")

    def chat_state(self, client, state, extra=""):
        client.send(f"<message to='{ALICE}' type='chat'><{state} xmlns='{CHATSTATES}'/>{extra}</message>")

    def test_feature_offered_after_authentication_only(self):
        """<csi/> is among the features after SASL, and not before."""
        client = self.harness.connect()
        before = client.open_stream()[-1]
        self.assertIsNone(before.firstChildElement() if before.uri == CSI else
                          next((c for c in before.elements() if c.uri == CSI), None))
        self.assertEqual(scram_login(client, "bob", "secret").name, "success")
        after = client.restart("localhost")[-1]
        self.assertEqual([c.name for c in after.elements() if c.uri == CSI], ["csi"])

    def test_active_client_gets_presence_at_once(self):
        """A client that never said <inactive/> receives presence as it comes."""
        self.presence(self.bob, "away")
        self.assertEqual(summary(self.alice.received()), [("presence", "bob@localhost/desk", "away")])

    def test_inactive_holds_presence_until_active(self):
        """While inactive, presence waits; <active/> delivers it."""
        self.alice.send(INACTIVE)
        self.presence(self.bob, "away")
        self.assertEqual(stanzas(self.alice.received()), [])
        self.alice.send(ACTIVE)
        self.assertEqual(summary(self.alice.received()), [("presence", "bob@localhost/desk", "away")])
        self.presence(self.bob, "dnd")
        self.assertEqual(summary(self.alice.received()), [("presence", "bob@localhost/desk", "dnd")])

    def test_presence_collapsed_per_sender_in_order_of_first_arrival(self):
        """Only the latest presence of each full JID is kept, in the order each sender first came."""
        self.alice.send(INACTIVE)
        self.presence(self.bob, "away")
        self.presence(self.carol, "chat")
        self.presence(self.bob, "xa")
        self.bob.send(f"<presence to='{ALICE}' type='unavailable'/>")
        self.presence(self.carol, "dnd")
        self.alice.send(ACTIVE)
        received = stanzas(self.alice.received())
        self.assertEqual([(p["from"], p.getAttribute("type"), str(p.show) if p.show else None) for p in received],
                         [("bob@localhost/desk", "unavailable", None), ("carol@localhost/desk", None, "dnd")])

    def test_chat_states_held_and_collapsed(self):
        """Chat states without a body wait, and only the latest of each sender is kept."""
        self.alice.send(INACTIVE)
        self.chat_state(self.bob, "composing")
        self.chat_state(self.bob, "paused", "<thread>t1</thread>")
        self.assertEqual(stanzas(self.alice.received()), [])
        self.alice.send(ACTIVE)
        self.assertEqual(summary(self.alice.received()), [("message", "bob@localhost/desk", "paused")])

    def test_message_with_body_flushes_in_order(self):
        """A message with a body goes at once, after what was held, in the original order."""
        self.alice.send(INACTIVE)
        self.presence(self.carol, "away")
        self.chat_state(self.bob, "composing")
        self.bob.send(f"<message to='{ALICE}' type='chat'><body>hello</body>"
                      f"<active xmlns='{CHATSTATES}'/></message>")
        self.assertEqual(summary(self.alice.received()), [
            ("presence", "carol@localhost/desk", "away"),
            ("message", "bob@localhost/desk", "composing"),
            ("message", "bob@localhost/desk", "hello"),
        ])
        self.presence(self.carol, "xa")
        self.assertEqual(stanzas(self.alice.received()), [], "still inactive after the flush")

    def test_encrypted_payload_flushes(self):
        """A bodiless message with an encrypted payload (OMEMO) is important, chat state or not."""
        self.alice.send(INACTIVE)
        self.presence(self.carol, "away")
        self.chat_state(self.bob, "active", "<encrypted xmlns='eu.siacs.conversations.axolotl'><header/></encrypted>")
        self.assertEqual(summary(self.alice.received()), [
            ("presence", "carol@localhost/desk", "away"), ("message", "bob@localhost/desk", "active")])

    def test_iq_flushes(self):
        """An IQ for the client goes at once, after what was held."""
        self.alice.send(INACTIVE)
        self.presence(self.carol, "away")
        self.bob.send(f"<iq to='{ALICE}' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
        received = stanzas(self.alice.received())
        self.assertEqual([(e.name, e["from"]) for e in received],
                         [("presence", "carol@localhost/desk"), ("iq", "bob@localhost/desk")])

    def test_active_then_ping_answered_after_held(self):
        """XEP-0352 in-order rule: <active/> and a ping in one read: the held stanzas come before the pong."""
        self.alice.send(INACTIVE)
        self.presence(self.bob, "away")
        self.alice.send(ACTIVE + "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual([(e.name, e.getAttribute("id")) for e in stanzas(self.alice.received())],
                         [("presence", None), ("iq", "p1")])

    def test_stream_error_flushes_first(self):
        """A stream error (here a resource conflict) is written after what was held."""
        self.alice.send(INACTIVE)
        self.presence(self.bob, "away")
        self.harness.login(ALICE)
        received = self.alice.received()
        self.assertEqual([e.name for e in received if e.name in ("presence", "error")], ["presence", "error"])
        self.assertEqual(received[-1].firstChildElement().name, "conflict")

    def test_clean_close_flushes(self):
        """A client that closes its stream while inactive still gets what was held before the end."""
        self.alice.send(INACTIVE)
        self.presence(self.bob, "away")
        self.alice.send("</stream:stream>")
        self.assertEqual(summary(self.alice.received()), [("presence", "bob@localhost/desk", "away")])

    def test_client_state_before_authentication_refused(self):
        """<inactive/> before SASL ends the stream with not-authorized."""
        client = self.harness.connect()
        client.open_stream()
        client.send(INACTIVE)
        error = client.received()[-1]
        self.assertEqual((error.name, error.firstChildElement().name), ("error", "not-authorized"))


class WebSocketTests(WebSocketTestCase):
    def test_inactive_websocket_client(self):
        """Over WebSocket (the same ClientStream as TCP and BOSH), an inactive client's presence waits
        for a message with a body."""
        self.make()
        bob = self.harness.login("bob@localhost/tcp")
        client = self.connect()
        client.login("alice", resource="web")
        client.send_text(f"<inactive xmlns='{CSI}'/>")
        bob.send("<presence to='alice@localhost/web'><show>away</show></presence>")
        self.assertEqual(client.received(), [])
        bob.send("<message to='alice@localhost/web' type='chat'><body>hi</body></message>")
        self.assertEqual([e.name for e in client.received()], ["presence", "message"])


class BoundTests(SynchronousTestCase):
    def login_inactive(self, **c2s):
        self.harness = Harness(make_config(**c2s))
        self.harness.add_user("alice@localhost")
        alice = self.harness.login(ALICE)
        alice.send("<presence/>")
        alice.received()
        alice.send(INACTIVE)
        return alice

    def contact(self, name):
        self.harness.add_user(f"{name}@localhost")
        return self.harness.login(f"{name}@localhost/r")

    def test_count_bound_flushes(self):
        """Past csi_max_held_stanzas senders, everything held is sent, then the new stanza."""
        alice = self.login_inactive(csi_max_held_stanzas=2)
        senders = [self.contact(name) for name in ("bob", "carol", "dave")]
        for sender in senders[:2]:
            sender.send(f"<presence to='{ALICE}'/>")
        # Collapsing does not grow the queue: bob again is not past the bound.
        senders[0].send(f"<presence to='{ALICE}'><show>away</show></presence>")
        self.assertEqual(stanzas(alice.received()), [])
        senders[2].send(f"<presence to='{ALICE}'/>")
        self.assertEqual([p["from"] for p in stanzas(alice.received())],
                         ["bob@localhost/r", "carol@localhost/r", "dave@localhost/r"])
        senders[0].send(f"<presence to='{ALICE}'/>")
        self.assertEqual(stanzas(alice.received()), [], "holding starts again after an overflow")

    def test_byte_bound_flushes(self):
        """Past csi_max_held_bytes (serialised), everything held is sent, then the new stanza."""
        alice = self.login_inactive(csi_max_held_bytes=1024)
        bob, carol = self.contact("bob"), self.contact("carol")
        bob.send(f"<presence to='{ALICE}'><status>{'b' * 400}</status></presence>")
        self.assertEqual(stanzas(alice.received()), [])
        carol.send(f"<presence to='{ALICE}'><status>{'c' * 700}</status></presence>")
        self.assertEqual([p["from"] for p in stanzas(alice.received())], ["bob@localhost/r", "carol@localhost/r"])

    def test_bounds_checked_at_load(self):
        """The bounds are range checked, naming the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"c2s": {"csi_max_held_stanzas": 0, "csi_max_held_bytes": 10}}, "t.toml")
        problems = "\n".join(caught.exception.problems)
        self.assertIn("c2s.csi_max_held_stanzas", problems)
        self.assertIn("c2s.csi_max_held_bytes", problems)


class StreamManagementTests(SynchronousTestCase):
    """XEP-0198 and XEP-0352 together: nonzas are not counted, held stanzas are never lost."""

    def setUp(self):
        self.harness = Harness(make_config(resumption_timeout_seconds=300, resumption_max_queue=50))
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.bob = self.harness.login("bob@localhost/desk")
        self.alice = self.harness.login(ALICE)
        self.alice.send(f"<enable xmlns='{SM}' resume='true'/>")
        self.resume_id = [e for e in self.alice.received() if e.name == "enabled"][0]["id"]
        self.session = self.harness.server.sessions.get(ALICE)

    def resume(self, h):
        return resuming(self.harness, "alice", self.resume_id, h)

    def test_nonzas_not_counted(self):
        """<inactive/> and <active/> do not count as handled stanzas."""
        self.alice.send(INACTIVE + ACTIVE + INACTIVE + f"<r xmlns='{SM}'/>")
        self.assertEqual([e["h"] for e in self.alice.received() if e.name == "a"], ["0"])

    def test_held_stanzas_not_counted_nor_acked_for(self):
        """What is held is not sent: not counted as unacknowledged, and no <r/> is asked for it."""
        self.alice.send(INACTIVE)
        self.bob.send(f"<presence to='{ALICE}'/>")
        self.harness.clock.advance(0)
        self.assertEqual(self.alice.received(), [])
        self.assertEqual(len(self.session.sm.acks.unacked), 0)
        self.alice.send(ACTIVE)
        self.harness.clock.advance(0)
        self.assertEqual([e.name for e in self.alice.received()], ["presence", "r"])
        self.assertEqual(len(self.session.sm.acks.unacked), 1)

    def test_drop_then_resume_delivers_held(self):
        """Held stanzas join the resumption queue when the connection drops; the resumed stream,
        active again, gets them after the unacknowledged ones, and then everything at once."""
        self.bob.send(f"<message to='{ALICE}' id='unacked'><body>1</body></message>")
        self.alice.send(INACTIVE)
        self.bob.send(f"<presence to='{ALICE}'><show>away</show></presence>")
        self.alice.received()
        self.alice.drop()
        self.assertEqual(len(self.session.sm.acks.unacked), 2)
        again = self.resume(0)
        self.assertEqual([(e.name, e.getAttribute("id")) for e in stanzas(again.received())],
                         [("message", "unacked"), ("presence", None)])
        self.bob.send(f"<presence to='{ALICE}'><show>dnd</show></presence>")
        self.assertEqual([str(e.show) for e in stanzas(again.received())], ["dnd"])

    def test_resume_while_old_stream_open_takes_held(self):
        """A resumption over a new connection while the old one still looks open moves what the old
        stream held to the new one, after the unacknowledged stanzas."""
        self.bob.send(f"<message to='{ALICE}' id='unacked'><body>1</body></message>")
        self.alice.send(INACTIVE)
        self.bob.send(f"<presence to='{ALICE}'><show>away</show></presence>")
        self.alice.received()
        again = self.resume(0)
        self.assertEqual([(e.name, e.getAttribute("id")) for e in stanzas(again.received())],
                         [("message", "unacked"), ("presence", None)])
        old = self.alice.received()
        self.assertEqual(stanzas(old), [], "the old connection is not given what the new one takes")
        self.assertEqual(old[-1].firstChildElement().name, "conflict")

    def test_session_end_reroutes_held_messages(self):
        """When the resumption window closes, held chat states are treated like unacknowledged
        messages (routed again), and nothing raises."""
        self.alice.send(INACTIVE)
        self.bob.send(f"<message to='{ALICE}' type='chat'><composing xmlns='{CHATSTATES}'/></message>")
        self.alice.drop()
        self.assertEqual([e.name for e in self.session.sm.acks.unacked], ["message"])
        self.harness.clock.advance(301)
        self.assertIsNone(self.harness.server.sessions.get(ALICE))


class RulesTests(SynchronousTestCase):
    """The classification of one stanza, as a table."""

    def test_collapse_keys(self):
        """Availability presence and lone chat states wait under (kind, sender); the rest is important."""
        cases = [
            ("<presence from='b@x/r'/>", ("presence", "b@x/r")),
            ("<presence from='b@x/r' type='unavailable'/>", ("presence", "b@x/r")),
            ("<presence from='b@x' type='subscribe'/>", None),
            ("<presence from='b@x' type='subscribed'/>", None),
            ("<presence from='b@x/r' type='error'/>", None),
            (f"<message from='b@x/r'><composing xmlns='{CHATSTATES}'/></message>", ("chat-state", "b@x/r")),
            (f"<message from='b@x/r'><paused xmlns='{CHATSTATES}'/><thread>t</thread>"
             "<origin-id xmlns='urn:xmpp:sid:0' id='1'/><no-store xmlns='urn:xmpp:hints'/></message>",
             ("chat-state", "b@x/r")),
            (f"<message from='b@x/r'><body>hi</body><active xmlns='{CHATSTATES}'/></message>", None),
            (f"<message from='b@x/r'><subject>s</subject><active xmlns='{CHATSTATES}'/></message>", None),
            (f"<message from='b@x/r' type='error'><active xmlns='{CHATSTATES}'/></message>", None),
            (f"<message from='b@x/r'><active xmlns='{CHATSTATES}'/>"
             "<encrypted xmlns='urn:xmpp:omemo:2'/></message>", None),
            ("<message from='b@x/r'><received xmlns='urn:xmpp:receipts' id='1'/></message>", None),
            ("<message from='b@x/r'/>", None),
            ("<iq from='b@x/r' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", None),
        ]
        for text, expected in cases:
            self.assertEqual(collapse_key(parse_element(text)), expected, text)

    def test_take_empties_and_keeps_first_place(self):
        """A replaced stanza keeps its sender's first place; take() empties the queue and its byte count."""
        held = HeldStanzas(10, 10000)
        first, other, latest = (parse_element(t) for t in (
            "<presence from='b@x/r'/>", "<presence from='c@x/r'/>", "<presence from='b@x/r' type='unavailable'/>"))
        for stanza in (first, other, latest):
            self.assertTrue(held.hold(stanza))
        self.assertEqual(held.take(), [latest, other])
        self.assertEqual((len(held), held.bytes), (0, 0))
