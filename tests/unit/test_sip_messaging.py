"""SIP MESSAGE <-> XMPP through the gateway (messaging.py): digest for our users, allowed foreign
domains, stored before 202, the gateway's domain as a route, phones reached through their bindings,
disco and XEP-0100, and the SIMPLE plug point."""


from twisted.internet import defer
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.xmlstream import parse_element
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import Request, make_response, parse_datagram
from bridge.gateways.sip.messaging import STORE
from bridge.gateways.sip.transaction import new_branch

from .helpers import Harness, gateway_context, result_of
from .test_sip_registrar import FakeUDP, Phone, authorization

SOURCE = ("192.0.2.7", 5062)
PBX = ("127.0.0.1", 5070)
CAROL = "carol\\40pbx.example@sip.localhost"


def make_config(**sip):
    sip = {"enabled": True, "static_routes": {"pbx.example": "127.0.0.1:5070"},
           "allowed_domains": ["pbx.example"], **sip}
    document = {"c2s": {"require_encryption": False}, "sip": sip, "hosts": {"localhost": {}}}
    return configuration.parse(document, "test.toml")


class FakeResolver:
    """DNS for the tests: ``srv`` maps a service name to [(priority, weight, port, target)], ``hosts`` a name
    to its address; anything else does not exist.  ``asked`` lists the questions, in order."""

    def __init__(self, srv=None, hosts=None):
        self.srv = dict(srv or {})
        self.hosts = dict(hosts or {})
        self.asked = []

    def lookupService(self, name):
        self.asked.append(("SRV", name))
        if name not in self.srv:
            return defer.fail(DNSNameError(name))
        answers = [dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(priority, weight, port, target))
                   for priority, weight, port, target in self.srv[name]]
        return defer.succeed((answers, [], []))

    def getHostByName(self, name):
        self.asked.append(("A", name))
        if name not in self.hosts:
            return defer.fail(DNSNameError(name))
        return defer.succeed(self.hosts[name])


class Outbound(FakeUDP):
    """A listening UDP socket as the gateway sees it (``transport`` set)."""

    transport = object()


def sip_message(sender="sip:alice@localhost", uri="sip:bob@localhost", body="hello from SIP",
                content_type="text/plain;charset=UTF-8", auth=None, cseq=1, call_id="msg-1@192.0.2.7",
                extra=()):
    request = Request("MESSAGE", uri)
    request.headers.add("Via", f"SIP/2.0/UDP 192.0.2.7:5062;branch={new_branch()};rport")
    request.headers.add("Max-Forwards", "70")
    request.headers.add("From", f"<{sender}>;tag=f1")
    request.headers.add("To", f"<{uri}>")
    request.headers.add("Call-ID", call_id)
    request.headers.add("CSeq", f"{cseq} MESSAGE")
    request.headers.add("Content-Type", content_type)
    for name, value in extra:
        request.headers.add(name, value)
    if auth is not None:
        request.headers.add("Authorization", auth)
    request.body = body.encode()
    return request


class MessagingTestCase(SynchronousTestCase):
    def setUp(self, **sip):
        self.harness = Harness(make_config(**sip))
        self.server = self.harness.server
        self.clock = self.harness.clock
        for jid in ("alice@localhost", "bob@localhost", "dave@localhost"):
            self.harness.add_user(jid, "secret")
        self.resolver = FakeResolver()
        self.context = gateway_context(self.server, "sip", self.harness.config.sip)
        self.gateway = SIPGateway(self.context, resolver=self.resolver)
        self.messaging = self.gateway.messaging
        self.transport = FakeUDP()
        self.outbound = self.gateway.add_transport(Outbound())
        self.addCleanup(self.context.unload)
        self.addCleanup(self.gateway.stop)

    def exchange(self, request, transport=None):
        """Send ``request`` from SOURCE; the one response the gateway sent for it."""
        transport = transport or self.transport
        before = len(transport.sent)
        self.gateway.message_received(parse_datagram(request.to_bytes()), transport, SOURCE)
        self.assertEqual(len(transport.sent), before + 1, "exactly one response expected")
        return transport.sent[-1][0]

    def authenticated(self, user="alice", password="secret", **options):
        """A MESSAGE from ``user``: challenged, then sent again with the answer; the final response."""
        uri = options.get("uri", "sip:bob@localhost")
        challenge = self.exchange(sip_message(sender=f"sip:{user}@localhost", **options))
        self.assertEqual(challenge.status, 401)
        value = next(v for v in challenge.headers.get_all("WWW-Authenticate") if "algorithm=MD5" in v)
        return self.exchange(sip_message(sender=f"sip:{user}@localhost", cseq=2,
                                         auth=authorization(value, user, password, uri=uri, method="MESSAGE"), **options))

    def online(self, jid):
        """A logged-in client that sent its initial presence (so bare-JID messages reach it)."""
        client = self.harness.login(jid)
        client.send("<presence/>")
        client.received()
        return client

    def offline_count(self, jid):
        user, host = jid.split("@")
        return result_of(self.harness.storage.count(host, user, "offline"))

    def pending_documents(self):
        return result_of(self.harness.storage.users(self.messaging.domain, STORE))

    def messages(self, client):
        return [stanza for stanza in client.received() if stanza.name == "message"]


class FromSIPTests(MessagingTestCase):
    def test_our_user_is_challenged_then_delivered(self):
        """A MESSAGE from sip:alice@localhost gets 401; with her password's digest 202, and bob's XMPP
        session receives a chat message from alice@localhost with the body and the Call-ID as thread."""
        bob = self.online("bob@localhost/pc")
        response = self.authenticated()
        self.assertEqual(response.status, 202, response.reason)
        [message] = self.messages(bob)
        self.assertEqual((message["from"], message["type"]), ("alice@localhost/sip", "chat"))
        self.assertEqual(str(message.body), "hello from SIP")
        self.assertEqual(str(message.thread), "msg-1@192.0.2.7")
        self.assertEqual(self.pending_documents(), [])

    def test_wrong_password_forbidden(self):
        """A digest answer made with a wrong password gets 403 and nothing is delivered."""
        bob = self.online("bob@localhost/pc")
        self.assertEqual(self.authenticated(password="wrong").status, 403)
        self.assertEqual(self.messages(bob), [])

    def test_stored_before_202(self):
        """Until the storage write of the accepted message completes, no 202 goes out and nothing is
        routed; once it does, 202 is sent, the message routed and its document deleted."""
        bob = self.online("bob@localhost/pc")
        storage = self.harness.storage
        real_set, held = storage.set, []

        def slow_set(host, user, store, value):
            if store == STORE and value is not None:
                real_set(host, user, store, value)
                held.append(defer.Deferred())
                return held[-1]
            return real_set(host, user, store, value)

        storage.set = slow_set
        challenge = self.exchange(sip_message())
        value = next(v for v in challenge.headers.get_all("WWW-Authenticate") if "algorithm=MD5" in v)
        request = sip_message(cseq=2, auth=authorization(value, "alice", "secret", uri="sip:bob@localhost", method="MESSAGE"))
        self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, SOURCE)
        self.assertEqual(len(self.transport.sent), 1)  # only the 401
        self.assertEqual(self.messages(bob), [])
        self.assertEqual(len(self.pending_documents()), 1)
        held[0].callback(None)
        self.assertEqual(self.transport.sent[-1][0].status, 202)
        self.assertEqual(len(self.messages(bob)), 1)
        self.assertEqual(self.pending_documents(), [])

    def test_offline_recipient_takes_offline_path(self):
        """A recipient with no session and no SIP binding gets the message in offline storage."""
        self.assertEqual(self.authenticated(uri="sip:dave@localhost").status, 202)
        self.assertEqual(self.offline_count("dave@localhost"), 1)

    def test_allowed_foreign_domain(self):
        """A MESSAGE from an allowed foreign domain needs no digest: 202, from carol\\40pbx.example@sip.localhost."""
        bob = self.online("bob@localhost/pc")
        response = self.exchange(sip_message(sender="sip:carol@pbx.example"))
        self.assertEqual(response.status, 202)
        [message] = self.messages(bob)
        self.assertEqual(message["from"], CAROL)

    def test_foreign_domain_not_allowed(self):
        """A MESSAGE from a domain not in allowed_domains gets 403."""
        self.assertEqual(self.exchange(sip_message(sender="sip:eve@elsewhere.example")).status, 403)

    def test_no_relay_between_foreign_domains(self):
        """A MESSAGE from a foreign user to another foreign address is refused 404: no relaying."""
        response = self.exchange(sip_message(sender="sip:carol@pbx.example", uri="sip:zed@other.example"))
        self.assertEqual(response.status, 404)
        self.assertEqual(self.outbound.sent, [])

    def test_unsupported_content_refused_415(self):
        """Content the translation cannot carry gets 415 with Accept."""
        response = self.exchange(sip_message(sender="sip:carol@pbx.example", content_type="image/png"))
        self.assertEqual(response.status, 415)
        self.assertIn("text/plain", response.headers.get("Accept"))

    def test_auto_submitted_marker_carried(self):
        """An Auto-Submitted MESSAGE arrives marked, so nothing on the XMPP side answers it automatically."""
        bob = self.online("bob@localhost/pc")
        self.exchange(sip_message(sender="sip:carol@pbx.example", extra=[("Auto-Submitted", "auto-replied")]))
        [message] = self.messages(bob)
        self.assertIn("auto-submitted", [child.name for child in message.elements()])

    def test_retransmission_delivered_once(self):
        """A retransmitted MESSAGE is absorbed by its transaction: one delivery, the same 202 twice."""
        bob = self.online("bob@localhost/pc")
        request = sip_message(sender="sip:carol@pbx.example")
        self.assertEqual(self.exchange(request).status, 202)
        self.assertEqual(self.exchange(request).status, 202)
        self.assertEqual(len(self.messages(bob)), 1)

    def test_redelivered_after_restart(self):
        """A message stored (202 sent) but not routed before a crash is routed when the gateway starts."""
        bob = self.online("bob@localhost/pc")
        stanza = "<message to='bob@localhost' from='alice@localhost' type='chat'><body>kept</body></message>"
        result_of(self.harness.storage.set(self.messaging.domain, "000000000001-x", STORE, {"stanza": stanza}))
        result_of(self.gateway.start())
        [message] = self.messages(bob)
        self.assertEqual(str(message.body), "kept")
        self.assertEqual(self.pending_documents(), [])

    def test_allow_lists_message(self):
        """OPTIONS lists MESSAGE once messaging is set up."""
        request = sip_message()
        request.method = "OPTIONS"
        request.headers.set("CSeq", "1 OPTIONS")
        self.assertIn("MESSAGE", self.exchange(request).headers.get_all("Allow"))


class ToForeignSIPTests(MessagingTestCase):
    def send_to_carol(self, bob, body="hi carol"):
        bob.send(f"<message to='{CAROL}' type='chat' id='m1'><body>{body}</body></message>")
        [(request, address)] = self.outbound.sent
        self.outbound.sent.clear()
        return request, address

    def respond(self, request, status):
        self.gateway.message_received(parse_datagram(make_response(request, status).to_bytes()), self.outbound, PBX)

    def test_sent_through_static_route(self):
        """A chat message to carol\\40pbx.example@sip.localhost goes to the static route as a MESSAGE
        from sip:bob@localhost (gr = resource) to sip:carol@pbx.example; a 200 brings no error."""
        bob = self.online("bob@localhost/pc")
        request, address = self.send_to_carol(bob)
        self.assertEqual(address, PBX)
        self.assertEqual((request.method, str(request.uri)), ("MESSAGE", "sip:carol@pbx.example"))
        self.assertEqual(str(request.from_address.uri), "sip:bob@localhost;gr=pc")
        self.assertEqual(request.body, b"hi carol")
        self.assertIn("branch=z9hG4bK", request.headers.get("Via"))
        self.respond(request, 200)
        self.assertEqual(self.messages(bob), [])

    def test_error_response_mapped(self):
        """A 486 answer comes back to the sender as recipient-unavailable naming the SIP status."""
        bob = self.online("bob@localhost/pc")
        request, _ = self.send_to_carol(bob)
        self.respond(request, 486)
        [error] = self.messages(bob)
        self.assertEqual((error["type"], error["from"], error.getAttribute("id")), ("error", CAROL, "m1"))
        self.assertIsNotNone(error.error.firstChildElement())
        self.assertEqual(error.error.firstChildElement().name, "recipient-unavailable")

    def test_timeout_mapped(self):
        """No answer within 64*T1 (retransmitting meanwhile) gives remote-server-timeout."""
        bob = self.online("bob@localhost/pc")
        self.send_to_carol(bob)
        self.clock.advance(10)
        self.assertTrue(self.outbound.sent)  # retransmissions over UDP
        self.clock.advance(30)
        [error] = self.messages(bob)
        self.assertEqual(error.error.firstChildElement().name, "remote-server-timeout")

    def test_no_route(self):
        """A foreign domain with no static route (and no IP address) gives remote-server-not-found."""
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='zed\\40nowhere.example@sip.localhost' type='chat'><body>x</body></message>")
        [error] = self.messages(bob)
        self.assertEqual(error.error.firstChildElement().name, "remote-server-not-found")
        self.assertEqual(self.outbound.sent, [])

    def test_no_static_route_uses_dns_srv(self):
        """Without a static route the domain's SRV records decide (RFC 3263): _sip._udp, _sip._tcp and
        _sips._tcp are asked; the UDP targets are used by priority, then weight, the target resolved (A)."""
        self.resolver.srv = {
            "_sip._udp.far.example": [(20, 0, 5080, "backup.far.example"), (10, 5, 5090, "sip.far.example"),
                                      (10, 50, 5070, "main.far.example")],
            "_sip._tcp.far.example": [(0, 0, 5060, "tcp.far.example")]}
        self.resolver.hosts = {"main.far.example": "192.0.2.40", "sip.far.example": "192.0.2.41"}
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='zed\\40far.example@sip.localhost' type='chat'><body>x</body></message>")
        [(request, address)] = self.outbound.sent
        self.assertEqual(address, ("192.0.2.40", 5070))
        self.assertEqual(str(request.uri), "sip:zed@far.example")
        self.assertEqual(self.resolver.asked, [("SRV", "_sip._udp.far.example"), ("SRV", "_sip._tcp.far.example"),
                                               ("SRV", "_sips._tcp.far.example"), ("A", "main.far.example")])
        self.assertEqual(self.messages(bob), [])

    def test_srv_target_not_resolved_tries_the_next(self):
        """A target with no address is skipped for the next one."""
        self.resolver.srv = {"_sip._udp.far.example": [(10, 0, 5070, "gone.far.example"),
                                                       (20, 0, 5071, "sip.far.example")]}
        self.resolver.hosts = {"sip.far.example": "192.0.2.41"}
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='zed\\40far.example@sip.localhost' type='chat'><body>x</body></message>")
        [(_, address)] = self.outbound.sent
        self.assertEqual(address, ("192.0.2.41", 5071))

    def test_no_srv_falls_back_to_the_domain_on_5060(self):
        """No SRV record at all: the domain's own address on 5060 (RFC 3263 4.2)."""
        self.resolver.hosts = {"far.example": "192.0.2.42"}
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='zed\\40far.example@sip.localhost' type='chat'><body>x</body></message>")
        [(_, address)] = self.outbound.sent
        self.assertEqual(address, ("192.0.2.42", 5060))

    def test_static_route_wins_over_dns(self):
        """A static route is used without asking DNS (its IP host needs no lookup either)."""
        bob = self.online("bob@localhost/pc")
        self.send_to_carol(bob)
        self.assertEqual(self.resolver.asked, [])

    def test_static_route_host_name_resolved(self):
        """A static route naming a host is resolved (A), with no SRV lookup."""
        self.setUp(static_routes={"pbx.example": "proxy.pbx.example:5072"})
        self.resolver.hosts = {"proxy.pbx.example": "192.0.2.43"}
        bob = self.online("bob@localhost/pc")
        _, address = self.send_to_carol(bob)
        self.assertEqual(address, ("192.0.2.43", 5072))
        self.assertEqual(self.resolver.asked, [("A", "proxy.pbx.example")])

    def test_srv_refusals(self):
        """SRV target '.' (no SIP service), or only TCP/TLS targets (the gateway sends over UDP only):
        remote-server-not-found, nothing sent."""
        self.resolver.srv = {"_sip._udp.none.example": [(0, 0, 0, b"")],
                             "_sips._tcp.tls.example": [(0, 0, 5061, "sip.tls.example")]}
        self.resolver.hosts = {"sip.tls.example": "192.0.2.44", "none.example": "192.0.2.45"}
        bob = self.online("bob@localhost/pc")
        for domain in ("none.example", "tls.example"):
            bob.send(f"<message to='zed\\40{domain}@sip.localhost' type='chat'><body>x</body></message>")
            [error] = self.messages(bob)
            self.assertEqual(error.error.firstChildElement().name, "remote-server-not-found")
        self.assertEqual(self.outbound.sent, [])

    def test_dns_server_option(self):
        """[sip] dns_server is HOST:PORT; the gateway then asks that server."""
        config = make_config(dns_server="127.0.0.1:5353")
        self.assertEqual(config.sip.dns_server, "127.0.0.1:5353")
        gateway = SIPGateway(gateway_context(self.server, "sip", config.sip))
        resolver = gateway.resolver
        servers = [r for r in getattr(resolver, "resolvers", []) if hasattr(r, "servers")]
        self.assertEqual(servers[0].servers, [("127.0.0.1", 5353)])
        with self.assertRaises(configuration.ConfigError):
            make_config(dns_server="127.0.0.1")

    def test_error_becomes_a_failure_notice(self):
        """An XMPP error about a message carol sent becomes one failure notice to carol, marked
        automatic; an error about a message that was itself automatic gives nothing (loop guard)."""
        self.server.router.route(parse_element(
            f"<message to='{CAROL}' from='bob@localhost' type='error'><body>hi bob</body>"
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            "</message>"))
        [(notice, address)] = self.outbound.sent
        self.assertEqual((notice.method, str(notice.uri), address), ("MESSAGE", "sip:carol@pbx.example", PBX))
        self.assertEqual(notice.headers.get("Auto-Submitted"), "auto-generated")
        self.assertIn(b"not delivered (item not found)", notice.body)
        self.outbound.sent.clear()
        self.server.router.route(parse_element(
            f"<message to='{CAROL}' from='bob@localhost' type='error'><body>x</body>"
            "<auto-submitted xmlns='urn:x-bridge:auto-submitted'>auto-generated</auto-submitted>"
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            "</message>"))
        self.assertEqual(self.outbound.sent, [])

    def test_only_local_senders(self):
        """A message to a gateway JID from a remote server's user is refused forbidden, not sent."""
        self.server.router.route(parse_element(
            f"<message to='{CAROL}' from='mallory@remote.example' type='chat'><body>x</body></message>"))
        self.assertEqual(self.outbound.sent, [])


class ToPhonesTests(MessagingTestCase):
    def setUp(self):
        super().setUp()
        phone = Phone(self, aor="sip:dave@localhost")
        response = phone.register(password="secret", user="dave", contacts=("<sip:dave@192.0.2.7:5062>",))
        self.assertEqual(response.status, 200)
        self.transport.sent.clear()

    def test_registered_phones_are_a_session(self):
        """While dave has a live registration his phones are the bound session dave@localhost/sip: a
        message to that full JID goes to the phone, an IQ to it is refused, and when the registration
        expires the session ends."""
        self.assertIsNotNone(self.server.sessions.get("dave@localhost/sip"))
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='dave@localhost/sip' type='chat'><body>to the phone</body></message>")
        [(request, address)] = self.transport.sent
        self.assertEqual((request.method, str(request.uri), address), ("MESSAGE", "sip:dave@192.0.2.7:5062", SOURCE))
        reply = bob.iq("<iq type='get' id='v' to='dave@localhost/sip'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual(reply.error.firstChildElement().name, "service-unavailable")
        self.gateway.start()
        self.clock.advance(3601)
        self.assertIsNone(self.server.sessions.get("dave@localhost/sip"))

    def test_message_to_phone(self):
        """bob writes to dave, who has no XMPP session but a SIP binding: a MESSAGE goes to the bound
        contact through its flow; a 200 means no offline storage."""
        bob = self.online("bob@localhost/pc")
        bob.send("<message to='dave@localhost' type='chat'><body>to your phone</body></message>")
        [(request, address)] = self.transport.sent
        self.assertEqual(address, SOURCE)
        self.assertEqual(str(request.uri), "sip:dave@192.0.2.7:5062")
        self.assertEqual(str(request.to_address.uri), "sip:dave@localhost")
        self.gateway.message_received(parse_datagram(make_response(request, 200).to_bytes()), self.transport,
                                      SOURCE)
        self.assertEqual(self.offline_count("dave@localhost"), 0)
        self.assertEqual(self.messages(bob), [])

    def test_refused_by_phone_falls_back_to_offline(self):
        """A non-2xx answer from the phone gives the message to offline storage: it is never lost."""
        self.online("bob@localhost/pc").send(
            "<message to='dave@localhost' type='chat'><body>keep me</body></message>")
        [(request, _)] = self.transport.sent
        self.assertEqual(self.offline_count("dave@localhost"), 0)
        self.gateway.message_received(parse_datagram(make_response(request, 480).to_bytes()), self.transport,
                                      SOURCE)
        self.assertEqual(self.offline_count("dave@localhost"), 1)

    def test_phone_timeout_falls_back_to_offline(self):
        """A phone that never answers: after timer F the message is stored offline."""
        self.online("bob@localhost/pc").send(
            "<message to='dave@localhost' type='chat'><body>keep me</body></message>")
        self.clock.advance(40)
        self.assertEqual(self.offline_count("dave@localhost"), 1)

    def test_session_wins(self):
        """With an XMPP session available the phone is not used."""
        dave = self.online("dave@localhost/pc")
        self.online("bob@localhost/pc").send(
            "<message to='dave@localhost' type='chat'><body>x</body></message>")
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(len(self.messages(dave)), 1)


class GatewayDomainTests(MessagingTestCase):
    def test_disco_info(self):
        """The gateway's domain is identity gateway/sip with jabber:iq:gateway and disco#info."""
        bob = self.online("bob@localhost/pc")
        reply = bob.iq("<iq type='get' id='d1' to='sip.localhost'>"
                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertEqual(reply["type"], "result")
        identity = reply.query.identity
        self.assertEqual((identity["category"], identity["type"]), ("gateway", "sip"))
        features = {f["var"] for f in reply.query.elements() if f.name == "feature"}
        self.assertLessEqual({"jabber:iq:gateway", "http://jabber.org/protocol/disco#info"}, features)

    def test_listed_in_host_items(self):
        """The host's disco#items lists the gateway's domain."""
        bob = self.online("bob@localhost/pc")
        reply = bob.iq("<iq type='get' id='d2' to='localhost'>"
                       "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.assertIn("sip.localhost", [item["jid"] for item in reply.query.elements()])

    def test_gateway_prompt_and_translation(self):
        """XEP-0100: get gives a prompt; set with sip:carol@pbx.example gives the escaped JID."""
        bob = self.online("bob@localhost/pc")
        reply = bob.iq("<iq type='get' id='g1' to='sip.localhost'><query xmlns='jabber:iq:gateway'/></iq>")
        self.assertEqual(str(reply.query.prompt), "SIP address")
        reply = bob.iq("<iq type='set' id='g2' to='sip.localhost'><query xmlns='jabber:iq:gateway'>"
                       "<prompt>sip:carol@pbx.example</prompt></query></iq>")
        self.assertEqual(str(reply.query.jid), CAROL)

    def test_gateway_bad_address(self):
        """An address that maps to no JID is answered not-acceptable."""
        bob = self.online("bob@localhost/pc")
        reply = bob.iq("<iq type='set' id='g3' to='sip.localhost'><query xmlns='jabber:iq:gateway'>"
                       "<prompt>sip:@</prompt></query></iq>")
        self.assertEqual(reply["type"], "error")

    def test_ordinary_features_and_other_iqs(self):
        """The gateway's domain answers version and ping through the ordinary feature modules; any
        other IQ is answered service-unavailable."""
        bob = self.online("bob@localhost/pc")
        version = bob.iq("<iq type='get' id='v1' to='sip.localhost'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual((version["type"], [str(c) for c in version.query.elements() if c.name == "name"]),
                         ("result", ["bridge"]))
        ping = bob.iq("<iq type='get' id='p1' to='sip.localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(ping["type"], "result")
        reply = bob.iq("<iq type='get' id='l1' to='sip.localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply.error.firstChildElement().name, "service-unavailable")

    def test_unload_removes_route_hooks_and_timers(self):
        """Unloading the gateway's context takes away its route, its disco item, its hooks on the local
        hosts and its timers."""
        phone = Phone(self, aor="sip:dave@localhost")
        self.assertEqual(phone.register(password="secret", user="dave").status, 200)
        self.gateway.start()
        self.assertTrue(self.context.clock.getDelayedCalls())
        self.gateway.stop()
        self.context.unload()
        host = self.server.hosts["localhost"]
        self.assertNotIn("sip.localhost", [jid for jid, _, _ in host.disco.items])
        self.assertFalse(self.server.router.is_local("sip.localhost"))
        owners = (self.gateway.phones, self.gateway.simple, self.gateway.messaging, self.gateway.watch)
        for event in ("message/offline", "pre-presence/self", "presence/bare", "session/ended"):
            self.assertFalse([h for h in host.hooks.handlers(event) if getattr(h, "__self__", None) in owners], event)
        self.assertEqual(self.context.clock.getDelayedCalls(), [])


class SimplePlugTests(MessagingTestCase):
    def test_simple_methods_dispatched(self):
        """SUBSCRIBE, NOTIFY and PUBLISH go to the SIMPLE presence object's handle()."""
        seen = []
        self.gateway.simple.stop()
        self.gateway.simple = type("Simple", (), {"handle": lambda self, tx, req: seen.append(req.method),
                                                  "stop": lambda self: None})()
        for method in ("SUBSCRIBE", "NOTIFY", "PUBLISH"):
            request = sip_message(sender="sip:carol@pbx.example")
            request.method = method
            request.headers.set("CSeq", f"1 {method}")
            self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, SOURCE)
        self.assertEqual(seen, ["SUBSCRIBE", "NOTIFY", "PUBLISH"])


class ConfigTests(SynchronousTestCase):
    def test_domain_and_routes_checked(self):
        """An enabled gateway whose domain is a host, or a static route that is not HOST[:PORT], is refused."""
        with self.assertRaises(configuration.ConfigError) as caught:
            make_config(domain="localhost", static_routes={"pbx.example": "127.0.0.1:notaport"})
        text = str(caught.exception)
        self.assertIn("sip.domain", text)
        self.assertIn("sip.static_routes.pbx.example", text)

    def test_defaults(self):
        """By default the domain is sip.localhost, with no static routes and no allowed foreign domains."""
        sip = configuration.parse({}, "test.toml").sip
        self.assertEqual((sip.domain, sip.static_routes, sip.allowed_domains), ("sip.localhost", {}, []))
