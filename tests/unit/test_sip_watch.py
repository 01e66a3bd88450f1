"""Presence of foreign SIP users for XMPP users (watch.py): SUBSCRIBE out, NOTIFY in, refresh,
unsubscribe and probes, on a fake clock, fake SIP sockets and in-memory XMPP clients."""

from bridge.gateways.sip.message import Request, make_response, parse_datagram
from bridge.gateways.sip.transaction import new_branch
from bridge.gateways.sip.watch import LINGER_SECONDS, RETRY_SECONDS

from .helpers import result_of
from .test_sip_messaging import CAROL, PBX, MessagingTestCase

PIDF = """<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:carol@pbx.example">
 <tuple id="t1"><status><basic>{basic}</basic></status><note>{note}</note></tuple>
</presence>
"""


class WatchTestCase(MessagingTestCase):
    def setUp(self, **sip):
        super().setUp(**sip)
        self.alice = self.online("alice@localhost")
        self.ours = None

    def subscribe(self, to=CAROL):
        """alice sends presence subscribe to ``to``; the SUBSCRIBE the gateway sent (or None)."""
        self.alice.send(f"<presence to='{to}' type='subscribe'/>")
        sent = [request for request, _ in self.outbound.sent if request.method == "SUBSCRIBE"]
        self.outbound.sent.clear()
        return sent[-1] if sent else None

    def respond(self, request, status=200, expires="600", headers=()):
        response = make_response(request, status, to_tag="pbx-tag")
        if 200 <= status < 300:
            response.headers.add("Contact", "<sip:carol@127.0.0.1:5070>")
            if expires is not None:
                response.headers.add("Expires", expires)
        for name, value in headers:
            response.headers.add(name, value)
        self.gateway.message_received(parse_datagram(response.to_bytes()), self.outbound, PBX)

    def established(self):
        request = self.subscribe()
        self.respond(request)
        self.ours = request
        self.alice.received()
        return request

    def notify(self, state="active;expires=600", basic="open", note="Working", body=True, cseq=1,
               call_id=None, to_tag=None):
        """A NOTIFY from the PBX in the dialog of ``self.ours``; the gateway's response."""
        ours = self.ours
        request = Request("NOTIFY", "sip:alice@192.0.2.1:5060")
        add = request.headers.add
        add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={new_branch()}")
        add("Max-Forwards", "70")
        add("From", "<sip:carol@pbx.example>;tag=pbx-tag")
        add("To", f"<sip:alice@localhost>;tag={to_tag or ours.from_address.tag}")
        add("Call-ID", call_id or ours.call_id)
        add("CSeq", f"{cseq} NOTIFY")
        add("Contact", "<sip:carol@127.0.0.1:5070>")
        add("Event", "presence")
        add("Subscription-State", state)
        if body:
            add("Content-Type", "application/pidf+xml")
            request.body = PIDF.format(basic=basic, note=note).encode()
        before = len(self.transport.sent)
        self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, PBX)
        self.assertEqual(len(self.transport.sent), before + 1)
        return self.transport.sent[-1][0]

    def presences(self):
        return [e for e in self.alice.received() if e.name == "presence"]

    def roster_item(self):
        roster = result_of(self.server.rosters.load("alice@localhost"))
        return roster.get(CAROL)


class SubscribeTests(WatchTestCase):
    def test_subscribe_sent(self):
        """A presence subscribe to a gateway JID of an allowed domain sends SUBSCRIBE from alice to carol."""
        self.alice.send(f"<presence to='{CAROL}' type='subscribe'/>")
        [(request, address)] = self.outbound.sent
        self.assertEqual(address, PBX)
        self.assertEqual(request.method, "SUBSCRIBE")
        self.assertEqual(str(request.uri), "sip:carol@pbx.example")
        self.assertEqual(str(request.from_address.uri), "sip:alice@localhost")
        self.assertTrue(request.from_address.tag)
        self.assertEqual(str(request.to_address.uri), "sip:carol@pbx.example")
        self.assertIsNone(request.to_address.tag)
        self.assertEqual(request.headers.get("Event"), "presence")
        self.assertEqual(request.headers.get("Accept"), "application/pidf+xml")
        self.assertEqual(request.headers.get("Expires"), "3600")
        self.assertTrue(request.headers.get("Contact").startswith("<sip:alice@"))

    def test_200_gives_subscribed(self):
        """A 200 becomes `subscribed` from carol: the core's roster makes the item `to`."""
        request = self.subscribe()
        self.assertTrue(self.roster_item().ask)
        self.respond(request)
        item = self.roster_item()
        self.assertTrue(item.has_to)
        self.assertFalse(item.ask)
        received = [e for e in self.alice.received() if e.name == "presence"]
        self.assertEqual([(p.getAttribute("type"), p.getAttribute("from")) for p in received],
                         [("subscribed", CAROL)])

    def test_domain_not_allowed(self):
        """A domain outside allowed_domains: no SUBSCRIBE, `unsubscribed` back at once."""
        other = "dan\\40elsewhere.example@sip.localhost"
        self.assertIsNone(self.subscribe(other))
        kinds = [(p.getAttribute("type"), p.getAttribute("from")) for p in self.presences()]
        self.assertIn(("unsubscribed", other), kinds)
        self.assertFalse(self.roster_item() and self.roster_item().has_to)

    def test_error_response(self):
        """A final error to the SUBSCRIBE gives `unsubscribed` and unavailable."""
        request = self.subscribe()
        self.respond(request, 404)
        kinds = [p.getAttribute("type") for p in self.presences()]
        self.assertEqual(kinds, ["unsubscribed", "unavailable"])
        self.assertFalse(self.roster_item().ask)
        self.assertEqual(self.gateway.watch.watching, {})

    def test_timeout(self):
        """No answer within 64*T1 is a final error too."""
        self.subscribe()
        self.clock.advance(40)
        self.assertIn("unsubscribed", [p.getAttribute("type") for p in self.presences()])

    def test_423_retried_with_min_expires(self):
        """423 Interval Too Brief: sent again with Min-Expires."""
        request = self.subscribe()
        self.respond(request, 423, headers=[("Min-Expires", "7200")])
        [(again, _)] = self.outbound.sent
        self.assertEqual(again.headers.get("Expires"), "7200")
        self.assertEqual(again.call_id, request.call_id)


class NotifyTests(WatchTestCase):
    def test_notify_becomes_presence(self):
        """Each NOTIFY is answered 200; its PIDF is presence from carol's /sip resource to alice."""
        self.established()
        self.assertEqual(self.notify(note="In the lab").status, 200)
        [presence] = self.presences()
        self.assertEqual(presence.getAttribute("from"), CAROL + "/sip")
        self.assertIsNone(presence.getAttribute("type"))
        self.assertEqual(str(presence.status), "In the lab")
        self.assertEqual(self.notify(basic="closed", cseq=2).status, 200)
        [presence] = self.presences()
        self.assertEqual(presence.getAttribute("type"), "unavailable")

    def test_notify_before_200(self):
        """A NOTIFY that overtakes the 200 is taken (its tag learnt) and confirms the subscription."""
        self.ours = self.subscribe()
        self.assertEqual(self.notify().status, 200)
        kinds = [p.getAttribute("type") for p in self.presences()]
        self.assertEqual(kinds, ["subscribed", None])
        self.respond(self.ours)
        self.assertEqual(self.presences(), [])

    def test_unknown_dialog_481(self):
        """A NOTIFY of no dialog of ours is 481."""
        self.established()
        self.assertEqual(self.notify(call_id="other@pbx").status, 481)
        self.assertEqual(self.notify(to_tag="nottag").status, 481)

    def test_terminated_rejected(self):
        """terminated;reason=rejected gives `unsubscribed` and unavailable."""
        self.established()
        self.notify()
        self.presences()
        self.assertEqual(self.notify(state="terminated;reason=rejected", body=False, cseq=2).status, 200)
        kinds = [p.getAttribute("type") for p in self.presences()]
        self.assertEqual(kinds, ["unsubscribed", "unavailable"])
        self.assertFalse(self.roster_item().has_to)

    def test_terminated_deactivated_subscribes_again(self):
        """terminated;reason=deactivated: unavailable now, a new SUBSCRIBE a little later."""
        self.established()
        self.notify()
        self.presences()
        self.notify(state="terminated;reason=deactivated", body=False, cseq=2)
        self.assertEqual([p.getAttribute("type") for p in self.presences()], ["unavailable"])
        self.outbound.sent.clear()
        self.clock.advance(RETRY_SECONDS)
        [(again, _)] = self.outbound.sent
        self.assertEqual(again.method, "SUBSCRIBE")
        self.assertNotEqual(again.call_id, self.ours.call_id)


class LifetimeTests(WatchTestCase):
    def test_refreshed_before_expiry(self):
        """The subscription is refreshed in its dialog before the granted expiry."""
        request = self.established()
        self.outbound.sent.clear()
        self.clock.advance(539)
        self.assertEqual(self.outbound.sent, [])
        self.clock.advance(1)
        [(refresh, _)] = self.outbound.sent
        self.assertEqual(refresh.call_id, request.call_id)
        self.assertEqual(refresh.to_address.tag, "pbx-tag")
        self.assertEqual(str(refresh.uri), "sip:carol@127.0.0.1:5070")
        self.assertGreater(refresh.cseq.number, request.cseq.number)
        self.outbound.sent.clear()
        self.respond(refresh, expires="600")
        self.clock.advance(540)
        self.assertEqual(len([r for r, _ in self.outbound.sent if r.method == "SUBSCRIBE"]), 1)

    def test_unsubscribe_sends_expires_0(self):
        """An XMPP unsubscribe is SUBSCRIBE Expires: 0 in the dialog; its final NOTIFY gets 200 silently."""
        request = self.established()
        self.alice.send(f"<presence to='{CAROL}' type='unsubscribe'/>")
        [(bye, _)] = self.outbound.sent
        self.assertEqual(bye.headers.get("Expires"), "0")
        self.assertEqual(bye.call_id, request.call_id)
        self.assertEqual(self.notify(state="terminated;reason=timeout", basic="closed").status, 200)
        self.assertEqual([p for p in self.presences() if p.getAttribute("from").startswith(CAROL)], [])
        self.clock.advance(LINGER_SECONDS)
        self.assertEqual(self.gateway.watch.dialogs, {})

    def test_probe_answered_from_last_notify(self):
        """A second login of alice (a probe) gets carol's state of the last NOTIFY."""
        self.established()
        self.notify(note="Here")
        self.presences()
        other = self.harness.login("alice@localhost/laptop")
        other.send("<presence/>")
        from_carol = [p for p in other.received() if p.name == "presence" and p.getAttribute("from") == CAROL + "/sip"]
        self.assertEqual([str(p.status) for p in from_carol], ["Here"])

    def test_probe_after_restart_subscribes_again(self):
        """Soft state: with no dialog (a restart), the probe at login subscribes again."""
        self.established()
        self.gateway.watch.stop()
        self.outbound.sent.clear()
        other = self.harness.login("alice@localhost/laptop")
        other.send("<presence/>")
        [(request, _)] = self.outbound.sent
        self.assertEqual(request.method, "SUBSCRIBE")
        self.assertIsNone(request.to_address.tag)

    def test_available_presence_not_sent(self):
        """alice's own presence broadcast to carol sends nothing to SIP."""
        self.established()
        self.notify()
        self.outbound.sent.clear()
        self.alice.send(f"<presence to='{CAROL}'><show>away</show></presence>")
        self.assertEqual(self.outbound.sent, [])

    def test_other_notify_still_481(self):
        """A NOTIFY outside our dialogs still gets 481 from SIMPLE."""
        self.ours = self.established()
        self.gateway.watch.stop()
        self.assertEqual(self.notify().status, 481)
