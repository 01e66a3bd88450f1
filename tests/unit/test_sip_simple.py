"""SIMPLE presence (bridge/gateways/sip/simple.py): SUBSCRIBE/NOTIFY to SIP watchers of XMPP users and
PUBLISH from SIP users, on a fake clock and fake SIP transport, with in-memory XMPP clients."""


from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import Request, make_response, parse_datagram
from bridge.gateways.sip.presence import parse_pidf, parse_subscription_state
from bridge.gateways.sip.transaction import new_branch

from .helpers import Harness, gateway_context, result_of
from .test_sip_registrar import FakeUDP, authorization

SOURCE = ("192.0.2.7", 5062)
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}

PIDF_DND = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@localhost">
 <tuple id="phone"><status><basic>open</basic></status><note>In a meeting</note></tuple>
 <dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities></dm:person>
</presence>
"""


def make_config(**host):
    document = {"c2s": {"require_encryption": False}, "sip": {"enabled": True, "digest_algorithms": ["MD5"]},
                "hosts": {"localhost": host}}
    return configuration.parse(document, "test.toml")


class UA:
    """A SIP user agent of ``user``: builds requests in one dialog, answers digest challenges."""

    def __init__(self, test, user, call_id):
        self.test = test
        self.user = user
        self.call_id = call_id
        self.cseq = 0
        self.remote_tag = None
        self.nc = 0

    def request(self, method, uri, expires=None, headers=(), body=b"", auth=None):
        self.cseq += 1
        request = Request(method, uri)
        add = request.headers.add
        add("Via", f"SIP/2.0/UDP {SOURCE[0]}:{SOURCE[1]};branch={new_branch()};rport")
        add("Max-Forwards", "70")
        add("From", f"<sip:{self.user}@localhost>;tag=ua-{self.user}")
        add("To", f"<{uri}>" + (f";tag={self.remote_tag}" if self.remote_tag else ""))
        add("Call-ID", self.call_id)
        add("CSeq", f"{self.cseq} {method}")
        add("Contact", f"<sip:{self.user}@{SOURCE[0]}:{SOURCE[1]}>")
        if expires is not None:
            add("Expires", str(expires))
        for name, value in headers:
            add(name, value)
        if auth is not None:
            add("Authorization", auth)
        request.body = body
        return request

    def send(self, method, uri, password=None, **options):
        """Send the request, answer the 401 with the user's password; the final response."""
        response = self.test.exchange(self.request(method, uri, **options))
        if response.status == 401:
            self.nc += 1
            auth = authorization(response.headers.get("WWW-Authenticate"), self.user,
                                 password or PASSWORDS[self.user], uri=uri, method=method)
            response = self.test.exchange(self.request(method, uri, auth=auth, **options))
        return response

    def subscribe(self, presentity="sip:alice@localhost", expires=600, **options):
        response = self.send("SUBSCRIBE", presentity, expires=expires,
                             headers=[("Event", "presence"), ("Accept", "application/pidf+xml")], **options)
        if response.status in (200, 202) and self.remote_tag is None:
            self.remote_tag = response.to_address.tag
        return response

    def publish(self, body=PIDF_DND, expires=600, etag=None, **options):
        headers = [("Event", "presence")]
        if body:
            headers.append(("Content-Type", "application/pidf+xml"))
        if etag:
            headers.append(("SIP-If-Match", etag))
        return self.send("PUBLISH", f"sip:{self.user}@localhost", expires=expires, headers=headers, body=body,
                         **options)


class SimpleTestCase(SynchronousTestCase):
    host_settings = {}

    def setUp(self):
        self.harness = Harness(make_config(**self.host_settings))
        self.server = self.harness.server
        self.clock = self.harness.clock
        for user, password in PASSWORDS.items():
            self.harness.add_user(f"{user}@localhost", password)
        self.gateway = SIPGateway(gateway_context(self.server, "sip", self.harness.config.sip), secret=b"s" * 32)
        self.simple = self.gateway.simple
        self.transport = FakeUDP()
        self.seen = 0  # messages of transport.sent already looked at

    def tearDown(self):
        self.simple.stop()

    def exchange(self, request, source=SOURCE):
        """Send ``request`` as if from ``source``; the response to it (NOTIFYs sent after it stay queued)."""
        before = len(self.transport.sent)
        self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, source)
        responses = [m for m, _ in self.transport.sent[before:] if not isinstance(m, Request)]
        self.assertEqual(len(responses), 1, "exactly one response expected")
        return responses[0]

    def notifies(self):
        """NOTIFYs sent since the last call (each answered 200, as a UA does; retransmissions skipped)."""
        found, seen_cseq = [], set()
        for message, address in self.transport.sent[self.seen:]:
            if isinstance(message, Request) and message.method == "NOTIFY":
                if message.cseq.number in seen_cseq:
                    continue
                seen_cseq.add(message.cseq.number)
                found.append(message)
                self.assertEqual(address, SOURCE)
                self.gateway.message_received(
                    parse_datagram(make_response(message, 200).to_bytes()), self.transport, ("192.0.2.1", 5060))
        self.seen = len(self.transport.sent)
        return found

    def state(self, notify):
        return parse_subscription_state(notify.headers.get("Subscription-State"))

    def set_subscription(self, owner, contact, subscription):
        roster = result_of(self.server.rosters.load(owner))
        roster.ensure(contact).subscription = subscription
        result_of(self.server.rosters.save(owner, roster))

    def xmpp(self, jid, presence="<presence/>"):
        """A logged-in XMPP client of ``jid``, available, its backlog read."""
        user = jid.split("@")[0]
        client = self.harness.login(jid, PASSWORDS[user])
        if presence:
            client.send(presence)
        client.received()
        return client


class SubscribeTests(SimpleTestCase):
    def test_authorised_watcher_gets_active_notify_with_pidf(self):
        """A watcher with from in the presentity's roster: 200 with Expires, then NOTIFY active with PIDF
        built from the current XMPP presence (dnd and the status text)."""
        self.set_subscription("alice@localhost", "bob@localhost", "from")
        self.xmpp("alice@localhost/desk", "<presence><show>dnd</show><status>Busy</status></presence>")
        response = UA(self, "bob", "sub-1").subscribe()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("Expires"), "600")
        self.assertIsNotNone(response.headers.get("Contact"))
        [notify] = self.notifies()
        self.assertEqual(str(notify.uri), f"sip:bob@{SOURCE[0]}:{SOURCE[1]}")
        self.assertEqual(notify.headers.get("Event"), "presence")
        self.assertEqual(notify.to_address.tag, "ua-bob")
        self.assertEqual(notify.from_address.tag, response.to_address.tag)
        state = self.state(notify)
        self.assertEqual((state.state, state.expires), ("active", 600))
        self.assertEqual(notify.headers.get("Content-Type"), "application/pidf+xml")
        document = parse_pidf(notify.body)
        self.assertEqual(document.entity, "sip:alice@localhost")
        self.assertEqual((document.availability.show, document.availability.status), ("dnd", "Busy"))

    def test_unauthenticated_subscribe_is_challenged_and_wrong_password_refused(self):
        """A SUBSCRIBE needs digest like REGISTER: 401 first, 403 for a wrong password; no NOTIFY."""
        ua = UA(self, "bob", "sub-2")
        challenge = self.exchange(ua.request("SUBSCRIBE", "sip:alice@localhost", expires=600,
                                             headers=[("Event", "presence")]))
        self.assertEqual(challenge.status, 401)
        self.assertEqual(ua.subscribe(password="wrong").status, 403)
        self.assertEqual(self.notifies(), [])

    def test_unknown_presentity_and_other_event(self):
        """A presentity with no account is 404; an event other than presence is 489 with Allow-Events."""
        self.assertEqual(UA(self, "bob", "sub-3").subscribe("sip:nobody@localhost").status, 404)
        response = UA(self, "bob", "sub-4").send("SUBSCRIBE", "sip:alice@localhost", expires=600,
                                                  headers=[("Event", "dialog")])
        self.assertEqual(response.status, 489)
        self.assertEqual(response.headers.get("Allow-Events"), "presence")

    def test_unauthorised_watcher_is_pending_until_the_user_approves(self):
        """Without from in the roster: 202, NOTIFY pending without a body, and the XMPP user is shown a
        subscribe request from the watcher's JID; their approval makes it active with the presence."""
        alice = self.xmpp("alice@localhost/desk", "<presence><show>away</show></presence>")
        response = UA(self, "bob", "sub-5").subscribe()
        self.assertEqual(response.status, 202)
        [notify] = self.notifies()
        self.assertEqual(self.state(notify).state, "pending")
        self.assertEqual(notify.body, b"")
        [request] = [s for s in alice.received() if s.name == "presence"]
        self.assertEqual((request["type"], request["from"]), ("subscribe", "bob@localhost"))
        alice.send("<presence to='bob@localhost' type='subscribed'/>")
        [notify] = self.notifies()
        self.assertEqual(self.state(notify).state, "active")
        self.assertEqual(parse_pidf(notify.body).availability.show, "away")
        roster = result_of(self.server.rosters.load("alice@localhost"))
        self.assertEqual(roster.get("bob@localhost").subscription, "from")

    def test_refusal_terminates(self):
        """The XMPP user refusing the request: NOTIFY terminated;reason=rejected, subscription gone."""
        alice = self.xmpp("alice@localhost/desk")
        UA(self, "bob", "sub-6").subscribe()
        self.notifies()
        alice.send("<presence to='bob@localhost' type='unsubscribed'/>")
        [notify] = self.notifies()
        state = self.state(notify)
        self.assertEqual((state.state, state.reason), ("terminated", "rejected"))
        self.assertEqual(self.simple.subscriptions, {})

    def test_presence_changes_are_notified_with_increasing_cseq(self):
        """Each XMPP presence change of the presentity sends a NOTIFY; going offline sends closed."""
        self.set_subscription("alice@localhost", "bob@localhost", "both")
        alice = self.xmpp("alice@localhost/desk")
        UA(self, "bob", "sub-7").subscribe()
        [first] = self.notifies()
        self.assertTrue(parse_pidf(first.body).availability.available)
        alice.send("<presence><show>xa</show><status>Gone fishing</status></presence>")
        [second] = self.notifies()
        availability = parse_pidf(second.body).availability
        self.assertEqual((availability.show, availability.status), ("xa", "Gone fishing"))
        self.assertGreater(second.cseq.number, first.cseq.number)
        alice.send("<presence><show>xa</show><status>Gone fishing</status></presence>")
        self.assertEqual(self.notifies(), [], "no NOTIFY when nothing changed")
        alice.drop()
        [third] = self.notifies()
        self.assertFalse(parse_pidf(third.body).availability.available)
        self.assertEqual(self.state(third).state, "active")
        self.assertGreater(third.cseq.number, second.cseq.number)

    def test_refresh_and_unsubscribe(self):
        """A refresh in the dialog gets 200 and a NOTIFY with the new expiry; Expires: 0 ends it with
        terminated;reason=timeout carrying the last state."""
        self.set_subscription("alice@localhost", "bob@localhost", "from")
        self.xmpp("alice@localhost/desk")
        ua = UA(self, "bob", "sub-8")
        ua.subscribe()
        self.notifies()
        self.clock.advance(300)
        response = ua.subscribe(expires=900)
        self.assertEqual((response.status, response.headers.get("Expires")), (200, "900"))
        [refreshed] = self.notifies()
        self.assertEqual(self.state(refreshed).expires, 900)
        response = ua.subscribe(expires=0)
        self.assertEqual(response.status, 200)
        [final] = self.notifies()
        state = self.state(final)
        self.assertEqual((state.state, state.reason), ("terminated", "timeout"))
        self.assertTrue(parse_pidf(final.body).availability.available)
        self.assertEqual(self.simple.subscriptions, {})
        self.assertEqual(ua.subscribe(expires=600).status, 481, "the dialog is over")

    def test_expiry_terminates(self):
        """An unrefreshed subscription ends at its expiry with terminated;reason=timeout."""
        self.set_subscription("alice@localhost", "bob@localhost", "from")
        UA(self, "bob", "sub-9").subscribe(expires=120)
        [notify] = self.notifies()
        self.assertFalse(parse_pidf(notify.body).availability.available, "alice is offline")
        self.clock.advance(119)
        self.notifies()
        self.assertEqual(len(self.simple.subscriptions), 1)
        self.clock.advance(1)
        [final] = self.notifies()
        self.assertEqual(self.state(final).reason, "timeout")
        self.assertEqual(self.simple.subscriptions, {})

    def test_brief_interval_is_refused(self):
        """An Expires under the minimum is 423 with Min-Expires."""
        response = UA(self, "bob", "sub-10").subscribe(expires=5)
        self.assertEqual(response.status, 423)
        self.assertEqual(response.headers.get("Min-Expires"), "60")

    def test_failed_notify_removes_the_subscription(self):
        """A NOTIFY answered 481 (the watcher forgot the dialog) removes the subscription."""
        self.set_subscription("alice@localhost", "bob@localhost", "from")
        UA(self, "bob", "sub-11").subscribe()
        self.transport.sent.clear()
        self.seen = 0
        self.xmpp("alice@localhost/desk")
        [notify] = [m for m, _ in self.transport.sent if isinstance(m, Request)]
        [transaction] = [t for t in self.simple._notifies if t.request.cseq.number == notify.cseq.number]
        self.simple.response_received(transaction, make_response(notify, 481))
        self.assertEqual(self.simple.subscriptions, {})

    def test_notify_received_is_481(self):
        """The gateway holds no subscriptions of its own: a NOTIFY gets 481."""
        response = self.exchange(UA(self, "bob", "n-1").request(
            "NOTIFY", "sip:alice@localhost", headers=[("Event", "presence"), ("Subscription-State", "active")]))
        self.assertEqual(response.status, 481)


class DomainSiteTests(SimpleTestCase):
    host_settings = {"presence_access": "domain"}

    def test_colleague_watches_without_subscription(self):
        """In a "domain" site a SIP colleague's SUBSCRIBE is active at once (200) with nothing in the roster."""
        self.xmpp("alice@localhost/desk", "<presence><status>Writing</status></presence>")
        response = UA(self, "bob", "sub-domain").subscribe()
        self.assertEqual(response.status, 200)
        [notify] = self.notifies()
        self.assertEqual(self.state(notify).state, "active")
        self.assertEqual(parse_pidf(notify.body).availability.status, "Writing")


    def test_sip_only_user_seen_by_xmpp_colleague(self):
        """In a "domain" site the presence a SIP-only user publishes is shown to an XMPP colleague who
        never subscribed, when the colleague logs in."""
        self.assertEqual(UA(self, "bob", "pub-domain").publish().status, 200)
        alice = self.harness.login("alice@localhost/desk", PASSWORDS["alice"])
        alice.send("<presence/>")
        shown = [p for p in alice.received() if p.name == "presence" and p["from"] == "bob@localhost/sip"]
        self.assertEqual(len(shown), 1)
        self.assertEqual(str(shown[0].show), "dnd")


class PublishTests(SimpleTestCase):
    def test_publish_is_presence_seen_by_roster_contacts(self):
        """PUBLISH from alice's phone: 200 with SIP-ETag; bob (from/both in alice's roster) receives
        presence from alice@localhost/sip with dnd and the note; carol (none) receives nothing."""
        self.set_subscription("alice@localhost", "bob@localhost", "both")
        self.set_subscription("alice@localhost", "carol@localhost", "to")
        bob = self.xmpp("bob@localhost/laptop")
        carol = self.xmpp("carol@localhost/laptop")
        response = UA(self, "alice", "pub-1").publish()
        self.assertEqual(response.status, 200)
        self.assertIsNotNone(response.headers.get("SIP-ETag"))
        self.assertEqual(response.headers.get("Expires"), "600")
        [presence] = [s for s in bob.received() if s.name == "presence"]
        self.assertEqual(presence["from"], "alice@localhost/sip")
        self.assertEqual((str(presence.show), str(presence.status)), ("dnd", "In a meeting"))
        self.assertEqual([s for s in carol.received() if s.name == "presence"], [])

    def test_publish_refresh_modify_and_remove(self):
        """SIP-If-Match refreshes (a new tag each time); an unknown tag is 412; Expires: 0 removes the
        publication, announced as unavailable."""
        self.set_subscription("alice@localhost", "bob@localhost", "from")
        bob = self.xmpp("bob@localhost/laptop")
        ua = UA(self, "alice", "pub-2")
        etag = ua.publish().headers.get("SIP-ETag")
        bob.received()
        refreshed = ua.publish(body=b"", etag=etag)
        self.assertEqual(refreshed.status, 200)
        self.assertNotEqual(refreshed.headers.get("SIP-ETag"), etag)
        self.assertEqual([s for s in bob.received() if s.name == "presence"], [], "a refresh changes nothing")
        self.assertEqual(ua.publish(body=b"", etag=etag).status, 412)
        removed = ua.publish(body=b"", etag=refreshed.headers.get("SIP-ETag"), expires=0)
        self.assertEqual(removed.status, 200)
        [presence] = [s for s in bob.received() if s.name == "presence"]
        self.assertEqual((presence["from"], presence["type"]), ("alice@localhost/sip", "unavailable"))

    def test_publication_expires(self):
        """An unrefreshed publication expires: contacts see alice@localhost/sip unavailable."""
        self.set_subscription("alice@localhost", "bob@localhost", "both")
        bob = self.xmpp("bob@localhost/laptop")
        UA(self, "alice", "pub-3").publish(expires=120)
        bob.received()
        self.clock.advance(121)
        [presence] = [s for s in bob.received() if s.name == "presence"]
        self.assertEqual((presence["from"], presence.getAttribute("type")), ("alice@localhost/sip", "unavailable"))
        self.assertEqual(self.simple.publications, {})

    def test_only_ones_own_presence(self):
        """Bob may not publish for alice (403); a body that is not PIDF is 415; bad PIDF is 400."""
        ua = UA(self, "bob", "pub-4")
        response = ua.send("PUBLISH", "sip:alice@localhost", expires=600, body=PIDF_DND,
                           headers=[("Event", "presence"), ("Content-Type", "application/pidf+xml")])
        self.assertEqual(response.status, 403)
        response = ua.send("PUBLISH", "sip:bob@localhost", expires=600, body=b"hi",
                           headers=[("Event", "presence"), ("Content-Type", "text/plain")])
        self.assertEqual(response.status, 415)
        response = ua.send("PUBLISH", "sip:bob@localhost", expires=600, body=b"<x/>",
                           headers=[("Event", "presence"), ("Content-Type", "application/pidf+xml")])
        self.assertEqual(response.status, 400)

    def test_publication_reaches_sip_watchers_and_probes(self):
        """A PUBLISH also NOTIFYs alice's SIP watchers, and a contact logging in later (a probe) gets it."""
        self.set_subscription("alice@localhost", "bob@localhost", "both")
        self.set_subscription("bob@localhost", "alice@localhost", "both")
        UA(self, "bob", "sub-20").subscribe()
        [first] = self.notifies()
        self.assertFalse(parse_pidf(first.body).availability.available)
        UA(self, "alice", "pub-5").publish()
        [notify] = self.notifies()
        self.assertEqual(parse_pidf(notify.body).availability.show, "dnd")
        bob = self.harness.login("bob@localhost/late", PASSWORDS["bob"])
        bob.send("<presence/>")
        presences = [s for s in bob.received() if s.name == "presence" and s["from"] == "alice@localhost/sip"]
        self.assertEqual(len(presences), 1)
        self.assertEqual(str(presences[0].show), "dnd")


PIDF_RICH = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@localhost">
 <tuple id="phone"><status><basic>open</basic></status><note>Budget review</note></tuple>
 <dm:person id="p1"><rpid:activities><rpid:meeting/></rpid:activities><rpid:mood><rpid:stressed/></rpid:mood>
 </dm:person>
</presence>
"""
NS_PUBSUB = "http://jabber.org/protocol/pubsub"


class PublishToPEPTests(SimpleTestCase):
    def pep_item(self, client, node):
        """The payload of the item 'current' of alice's PEP ``node``: its children as (name, [names of
        their children]) and its text ([] and None when it is empty)."""
        reply = client.iq(f"<iq type='get' id='pep' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'>"
                          f"<items node='{node}'/></pubsub></iq>")
        self.assertEqual(reply["type"], "result", reply.toXml())
        [item] = list(reply.pubsub.items.elements(NS_PUBSUB, "item"))
        payload = next(item.elements())
        texts = [str(child) for child in payload.elements() if child.name == "text"]
        return ([(child.name, [inner.name for inner in child.elements()]) for child in payload.elements()
                 if child.name != "text"], texts[0] if texts else None)

    def test_activity_and_mood_follow_the_publication(self):
        """A PUBLISH whose person is in a meeting and stressed, with a note, puts working/in_a_meeting and
        stressed (each with the note) in alice's PEP, where bob, her contact, reads them; a PUBLISH without
        them withdraws them (empty payloads); a refresh without a body publishes nothing again."""
        self.set_subscription("alice@localhost", "bob@localhost", "both")
        self.set_subscription("bob@localhost", "alice@localhost", "both")
        bob = self.xmpp("bob@localhost/laptop")
        ua = UA(self, "alice", "pub-pep")
        etag = ua.publish(body=PIDF_RICH).headers.get("SIP-ETag")
        activity = self.pep_item(bob, "http://jabber.org/protocol/activity")
        self.assertEqual(activity, ([("working", ["in_a_meeting"])], "Budget review"))
        self.assertEqual(self.pep_item(bob, "http://jabber.org/protocol/mood"), ([("stressed", [])], "Budget review"))
        published = dict(self.simple.rich_published)
        etag = ua.publish(body=b"", etag=etag).headers.get("SIP-ETag")
        self.assertEqual(self.simple.rich_published, published)
        ua.publish(body=PIDF_DND, etag=etag)
        self.assertEqual(self.pep_item(bob, "http://jabber.org/protocol/activity"), ([], None))
        self.assertEqual(self.pep_item(bob, "http://jabber.org/protocol/mood"), ([], None))
        self.assertEqual(self.simple.rich_published, {})

    def test_expiry_withdraws_them(self):
        """When the publication expires, the activity and mood it put in PEP are withdrawn."""
        alice = self.xmpp("alice@localhost/desk")
        UA(self, "alice", "pub-pep-2").publish(body=PIDF_RICH, expires=120)
        activity = self.pep_item(alice, "http://jabber.org/protocol/activity")
        self.assertEqual(activity[0], [("working", ["in_a_meeting"])])
        self.clock.advance(121)
        self.assertEqual(self.pep_item(alice, "http://jabber.org/protocol/activity"), ([], None))
        self.assertEqual(self.pep_item(alice, "http://jabber.org/protocol/mood"), ([], None))
