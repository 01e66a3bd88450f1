"""Stream management on client streams (XEP-0198): acknowledgements, resumption, nothing lost."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.helpers import Harness, make_config, resuming

SM = "urn:xmpp:sm:3"


def named(elements, name):
    return [e for e in elements if e.name == name]


class StreamManagementTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config(resumption_timeout_seconds=300, resumption_max_queue=5))
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")
        self.bob = self.harness.login("bob@localhost/desk")
        self.bob.send("<presence/>")
        self.bob.received()

    def alice_with_sm(self):
        alice = self.harness.login("alice@localhost/phone")
        alice.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = named(alice.received(), "enabled")[0]
        alice.send("<presence/>")
        # Acknowledge what the server sent since <enabled/> (our own presence), so
        # that the counts in the tests start from here.
        self.base = len([e for e in alice.received() if e.name in ("message", "presence", "iq")])
        alice.send(f"<a xmlns='{SM}' h='{self.base}'/>")
        return alice, enabled["id"]

    def resume(self, previd, h, user="alice"):
        return resuming(self.harness, user, previd, h)

    def test_enable_and_count(self):
        """<enabled/> offers resumption; <r/> is answered with the number of stanzas handled."""
        alice, resume_id = self.alice_with_sm()
        self.assertTrue(resume_id)
        alice.send("<message to='bob@localhost' type='chat'><body>1</body></message>")
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        alice.send(f"<r xmlns='{SM}'/>")
        self.assertEqual(named(alice.received(), "a")[-1]["h"], "3")

    def test_ack_waits_for_offline_storage(self):
        """A message to an offline user is counted in <a h/> only once its storage has answered (its group
        committed); the <r/> is answered then, and the message is stored by the time the <a/> is sent."""
        alice, _ = self.alice_with_sm()
        commits = Clock()
        self.harness.storage.clock = commits  # answers at the end of each turn of ``commits``
        alice.send("<message to='carol@localhost' type='chat' id='later'><body>1</body></message>")
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        alice.send(f"<r xmlns='{SM}'/>")
        self.assertEqual(named(alice.received(), "a"), [])
        stored = []
        for _ in range(10):
            stored = self.harness.storage._queues.get(("localhost", "carol", "offline"), {})
            if named(alice.received(), "a"):
                break
            commits.advance(0)
        self.assertEqual(len(stored), 1)
        alice.send(f"<r xmlns='{SM}'/>")
        self.assertEqual(named(alice.received(), "a")[-1]["h"], "3")

    def test_later_stanza_waits_for_earlier(self):
        """h acknowledges a prefix: a stanza handled at once is not counted before an earlier one in work."""
        alice, _ = self.alice_with_sm()
        session = self.harness.server.sessions.get("alice@localhost/phone")
        before = session.sm.handled.h
        commits = Clock()
        self.harness.storage.clock = commits
        alice.send("<message to='carol@localhost' type='chat'><body>1</body></message>")
        self.harness.storage.clock = None
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(session.sm.handled.h, before)
        for _ in range(10):
            commits.advance(0)
        self.assertEqual(session.sm.handled.h, before + 2)

    def test_server_requests_acks(self):
        """Stanzas to the client are followed by <r/>, and an <a/> releases them."""
        alice, _ = self.alice_with_sm()
        self.bob.send("<message to='alice@localhost/phone' type='chat'><body>hi</body></message>")
        self.harness.clock.advance(0)
        received = alice.received()
        self.assertEqual([e.name for e in received][-2:], ["message", "r"])
        session = self.harness.server.sessions.get("alice@localhost/phone")
        self.assertEqual(len(session.sm.acks.unacked), 1)
        alice.send(f"<a xmlns='{SM}' h='{self.base + 1}'/>")
        self.assertEqual(len(session.sm.acks.unacked), 0)

    def test_resume_after_drop(self):
        """After a drop the session waits; a new connection resumes it and gets what was not acknowledged."""
        alice, resume_id = self.alice_with_sm()
        self.bob.send("<message to='alice@localhost/phone' type='chat' id='seen'><body>1</body></message>")
        self.bob.send("<message to='alice@localhost/phone' type='chat' id='lost'><body>2</body></message>")
        alice.send(f"<a xmlns='{SM}' h='{self.base + 1}'/>")
        alice.drop()
        self.assertEqual(named(self.bob.received(), "presence"), [])
        self.bob.send("<message to='alice@localhost' type='chat' id='while-away'><body>3</body></message>")
        again = self.resume(resume_id, self.base + 1)
        received = again.received()
        resumed = named(received, "resumed")[0]
        self.assertEqual((resumed["previd"], resumed["h"]), (resume_id, "1"))
        self.assertEqual([m["id"] for m in named(received, "message")], ["lost", "while-away"])
        self.assertIs(self.harness.server.sessions.get("alice@localhost/phone").stream, again.protocol.stream)

    def test_timeout_sends_unacknowledged_to_offline_storage(self):
        """When the window closes, contacts see unavailable and unacknowledged messages wait offline."""
        alice, resume_id = self.alice_with_sm()
        self.bob.send("<presence to='alice@localhost' type='subscribe'/>")
        alice.send("<presence to='bob@localhost' type='subscribed'/>")
        self.bob.received()
        self.bob.send("<message to='alice@localhost/phone' type='chat' id='pending'><body>x</body></message>")
        alice.drop()
        self.harness.clock.advance(301)
        unavailable = [p for p in named(self.bob.received(), "presence") if p.getAttribute("type") == "unavailable"]
        self.assertEqual(len(unavailable), 1)
        failed = self.resume(resume_id, 0)
        self.assertEqual(named(failed.received(), "failed")[0].firstChildElement().name, "item-not-found")
        later = self.harness.login("alice@localhost/laptop")
        later.send("<presence/>")
        self.assertEqual([m["id"] for m in named(later.received(), "message")], ["pending"])

    def test_clean_close_is_not_resumable(self):
        """A client that closes its stream ends the session at once."""
        alice, resume_id = self.alice_with_sm()
        alice.send("</stream:stream>")
        alice.drop()
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/phone"))
        self.assertEqual(named(self.resume(resume_id, 0).received(), "failed")[0].name, "failed")

    def test_other_account_cannot_resume(self):
        """A resumption id is worthless to another account."""
        alice, resume_id = self.alice_with_sm()
        alice.drop()
        stranger = self.resume(resume_id, 0, user="bob")
        self.assertEqual(named(stranger.received(), "failed")[0].firstChildElement().name, "item-not-found")

    def test_queue_limit_while_waiting(self):
        """Past the queue limit a waiting session ends; what it held goes to offline storage."""
        alice, _ = self.alice_with_sm()
        alice.drop()
        for n in range(7):
            self.bob.send(f"<message to='alice@localhost/phone' type='chat' id='m{n}'><body>{n}</body></message>")
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/phone"))
        later = self.harness.login("alice@localhost/laptop")
        later.send("<presence/>")
        self.assertEqual([m["id"] for m in named(later.received(), "message")], [f"m{n}" for n in range(7)])


class ResumptionOffTests(SynchronousTestCase):
    def test_queue_limit_on_a_closing_stream(self):
        """With resumption off, a stream that is closing (its connection not yet gone) holds at most
        resumption_max_queue stanzas: past it the session ends and its messages go to offline storage,
        and the sender's stream is not affected."""
        harness = Harness(make_config(resumption_timeout_seconds=0, resumption_max_queue=2))
        for user in ("alice", "bob", "carol"):
            harness.add_user(f"{user}@localhost")
        bob = harness.login("bob@localhost/desk")
        alice = harness.login("alice@localhost/phone")
        alice.send(f"<enable xmlns='{SM}'/>")
        self.assertNotIn("id", named(alice.received(), "enabled")[0].attributes)
        alice.send("</stream:stream>")
        for n in range(4):
            bob.send(f"<message to='alice@localhost/phone' type='chat' id='m{n}'><body>{n}</body></message>")
        self.assertFalse(bob.transport.disconnecting)
        self.assertIsNone(harness.server.sessions.get("alice@localhost/phone"))
        later = harness.login("alice@localhost/laptop")
        later.send("<presence/>")
        self.assertEqual([m["id"] for m in named(later.received(), "message")], [f"m{n}" for n in range(4)])
