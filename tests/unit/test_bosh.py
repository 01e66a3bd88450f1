"""BOSH (XEP-0124, XEP-0206) sessions, driven through fake HTTP requests and a fake clock."""

import dataclasses
import gc
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.xmlstream import NS_STREAMS, parse_element
from bridge.gateways.bosh import (
    NO_ROOM_COST, NS_HTTPBIND, NS_XBOSH, BoshError, BoshService, BoshSession, parse_request,
)
from bridge.gateways.http import HTTPFactory
from tests.unit.helpers import Harness, make_config, scram_login
from tests.unit.test_http import HTTPClient

NS_CLIENT = "jabber:client"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"


class FakeRequest:
    """What http.py hands the BOSH service."""

    def __init__(self, body, method="POST", secure=False, address="127.0.0.1", local=True):
        self.method = method
        self.path = "/http-bind"
        self.query = ""
        self.headers = {"content-type": "text/xml; charset=utf-8"}
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.peer = f"{address}:40000"
        self.address = address
        self.secure = secure
        self.local = local
        self.transport = None
        self.tls_transport = None


class FakeResponder:
    """Records the one answer; ``drop()`` is the HTTP connection closing first."""

    def __init__(self):
        self.lost = False
        self.answers = []
        self.vouched = False
        self._callbacks = []

    def vouch(self):
        self.vouched = True

    def respond(self, status, headers, body):
        assert not self.answers, "answered twice"
        self.answers.append((status, dict(headers), body))

    def on_lost(self, callback):
        if self.lost:
            if not self.answers:
                callback()
            return
        self._callbacks.append(callback)

    def drop(self):
        self.lost = True
        if not self.answers:
            for callback in self._callbacks:
                callback()

    @property
    def answered(self):
        return bool(self.answers)

    @property
    def status(self):
        return self.answers[0][0]

    @property
    def headers(self):
        return self.answers[0][1]

    @property
    def data(self):
        return self.answers[0][2]

    def body(self):
        """The <body/> element of the answer."""
        body = parse_element(self.data.decode("utf-8"))
        assert (body.uri, body.name) == (NS_HTTPBIND, "body"), self.data
        return body

    def payloads(self):
        return list(self.body().elements())


def body_text(attributes, payload=""):
    attrs = "".join(f" {name}='{value}'" for name, value in attributes.items() if value is not None)
    head = f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}'{attrs}"
    return f"{head}>{payload}</body>" if payload else head + "/>"


class BoshClient:
    """A BOSH client: numbered requests, and the payloads of the answers it has had."""

    def __init__(self, service, rid=5000, address="127.0.0.1", local=True):
        self.service = service
        self.rid = rid
        self.address = address
        self.local = local
        self.sid = None
        self.responders = []
        self._read = set()
        self.jid = None
        self.key_chain = None

    def post(self, payload="", attrs=None, rid=None, secure=False, raw=None):
        """One request (rid: the next one unless given); its responder."""
        if rid is None:
            self.rid += 1
            rid = self.rid
        attributes = {"rid": rid, "sid": self.sid}
        if self.key_chain:
            attributes["key"] = self.key_chain.pop()
        attributes.update(attrs or {})
        responder = FakeResponder()
        self.service.handle(FakeRequest(raw if raw is not None else body_text(attributes, payload),
                                        secure=secure, address=self.address, local=self.local), responder)
        self.responders.append(responder)
        self.settle()
        return responder

    def settle(self):
        """End the reactor turn: what was routed meanwhile is answered together."""
        self.service.server.clock.advance(0)

    def create(self, secure=False, **attrs):
        attributes = {"rid": self.rid, "to": "localhost", "wait": "60", "hold": "1", "ver": "1.6",
                      "xml:lang": "en", "xmpp:version": "1.0", "content": "text/xml; charset=utf-8"}
        attributes.update(attrs)
        responder = FakeResponder()
        self.service.handle(FakeRequest(body_text(attributes), secure=secure, address=self.address,
                                        local=self.local), responder)
        self.responders.append(responder)
        if responder.answered:
            self.sid = responder.body().getAttribute("sid")
        return responder

    # what helpers.scram_login expects of a client
    def send(self, text):
        self.post(text)

    def received(self):
        """Payloads of the answers not read yet, in request order."""
        self.settle()
        found = []
        for responder in self.responders:
            if responder.answered and id(responder) not in self._read:
                self._read.add(id(responder))
                found.extend(responder.payloads())
        return found

    def login(self, jid, password="secret", **create):
        """Session, SCRAM, restart and bind: the bound JID."""
        bare, _, resource = jid.partition("/")
        user, host = bare.split("@")
        self.create(to=host, **create)
        self.received()
        outcome = scram_login(self, user, password)
        assert outcome.name == "success", outcome.toXml()
        features = self.restart(host)
        assert features[-1].bind is not None, features[-1].toXml()
        bind = f"<bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind>"
        self.post(f"<iq type='set' id='bind' xmlns='{NS_CLIENT}'>{bind}</iq>")
        reply = self.received()[-1]
        assert reply.getAttribute("type") == "result", reply.toXml()
        self.jid = str(reply.bind.jid)
        return self.jid

    def restart(self, host="localhost"):
        self.post(attrs={"to": host, "xml:lang": "en", "xmpp:restart": "true"})
        return self.received()


def of_kind(elements, name, kind=None):
    return [e for e in elements if e.name == name and (kind is None or e.getAttribute("type") == kind)]


def http_config(config, **http):
    return dataclasses.replace(config, http=dataclasses.replace(config.http, **http))


def key_sequence(seed, count):
    """K(1)..K(count) of XEP-0124 section 15.3; the client uses them from the last."""
    keys = [hashlib.sha1(seed.encode()).hexdigest()]
    while len(keys) < count:
        keys.append(hashlib.sha1(keys[-1].encode()).hexdigest())
    return keys


class BoshTestCase(SynchronousTestCase):
    http = {}
    c2s = {}

    def setUp(self):
        self.harness = Harness(http_config(make_config(**self.c2s), **self.http))
        self.clock = self.harness.clock
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.service = BoshService(self.harness.server, self.harness.config.http)

    def client(self, **options):
        return BoshClient(self.service, **options)

    def assertTerminated(self, responder, condition=None):
        self.assertTrue(responder.answered, "no answer")
        body = responder.body()
        self.assertEqual(body.getAttribute("type"), "terminate", responder.data)
        self.assertEqual(body.getAttribute("condition"), condition, responder.data)

    def tcp_friend(self, bosh_user="alice@localhost", tcp_jid="bob@localhost/tcp"):
        """A TCP client with a mutual subscription with ``bosh_user`` (whose TCP login is gone again)."""
        bob = self.harness.login(tcp_jid)
        other = self.harness.login(f"{bosh_user}/setup")
        bare = tcp_jid.split("/")[0]
        other.send(f"<presence to='{bare}' type='subscribe'/>")
        bob.send(f"<presence to='{bosh_user}' type='subscribed'/>")
        bob.send(f"<presence to='{bosh_user}' type='subscribe'/>")
        other.send(f"<presence to='{bare}' type='subscribed'/>")
        bob.send("<presence/>")
        other.drop()
        bob.received()
        return bob


class CreationTests(BoshTestCase):
    def test_session_creation_response(self):
        """The creation response has the XEP-0124/0206 attributes, bounded by [http], and the features."""
        responder = self.client().create(wait="3600", hold="5", ver="1.20")
        self.assertEqual(responder.status, 200)
        self.assertEqual(responder.headers["Content-Type"], "text/xml; charset=utf-8")
        body = responder.body()
        self.assertEqual(len(body["sid"]), 32)
        self.assertEqual((body["wait"], body["hold"], body["requests"]), ("60", "1", "2"))
        self.assertEqual((body["inactivity"], body["polling"], body["maxpause"]), ("60", "2", "120"))
        self.assertEqual(body["ver"], "1.11")
        self.assertEqual(body["from"], "localhost")
        self.assertTrue(body["authid"])
        self.assertEqual(body.getAttribute((NS_XBOSH, "version")), "1.0")
        self.assertIn(b"xmlns:xmpp='urn:xmpp:xbosh'", responder.data)
        features = responder.payloads()
        self.assertEqual([(f.uri, f.name) for f in features], [(NS_STREAMS, "features")])
        self.assertIn(b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>", responder.data)
        mechanisms = [str(m) for m in features[0].mechanisms.elements()]
        self.assertEqual(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-1"])

    def test_client_values_below_the_bounds_are_kept(self):
        """A client's lower wait and version are kept; the content type it asks for is used."""
        responder = self.client().create(wait="10", ver="1.6", content="text/plain; charset=utf-8")
        body = responder.body()
        self.assertEqual((body["wait"], body["ver"]), ("10", "1.6"))
        self.assertEqual(responder.headers["Content-Type"], "text/plain; charset=utf-8")

    def test_configured_bounds(self):
        """bosh_max_* keys bound what a session gets: hold 3 gives 4 requests when allowed."""
        self.service = BoshService(self.harness.server, dataclasses.replace(
            self.harness.config.http, bosh_max_hold=3, bosh_max_requests=4, bosh_max_wait_seconds=30,
            bosh_max_inactivity_seconds=20, bosh_polling_seconds=1, bosh_max_pause_seconds=0))
        body = self.client().create(wait="60", hold="3").body()
        self.assertEqual((body["wait"], body["hold"], body["requests"]), ("30", "3", "4"))
        self.assertEqual((body["inactivity"], body["polling"]), ("20", "1"))
        self.assertIsNone(body.getAttribute("maxpause"))

    def test_creation_errors(self):
        """An unknown domain, no 'to', or no valid 'rid': terminal conditions, and no session."""
        client = self.client()
        self.assertTerminated(client.create(to="elsewhere.test"), "host-unknown")
        self.assertTerminated(client.create(to=None), "improper-addressing")
        self.assertTerminated(client.create(rid="-3"), "bad-request")
        self.assertTerminated(client.create(wait="soon"), "bad-request")
        self.assertEqual(self.service.sessions, {})

    def test_unknown_sid(self):
        """A request naming no live session gets item-not-found."""
        client = self.client()
        client.sid = "no-such-session"
        self.assertTerminated(client.post(), "item-not-found")

    def test_get_and_other_methods(self):
        """GET shows a short page; other methods than POST get 405."""
        page = FakeResponder()
        self.service.handle(FakeRequest(b"", method="GET"), page)
        self.assertEqual(page.status, 200)
        self.assertIn(b"BOSH", page.data)
        put = FakeResponder()
        self.service.handle(FakeRequest(b"", method="PUT"), put)
        self.assertEqual(put.status, 405)


class LoginTests(BoshTestCase):
    def test_login_and_messages_both_ways(self):
        """SCRAM, restart and bind over BOSH; messages flow to and from a TCP client."""
        alice = self.client()
        jid = alice.login("alice@localhost/web")
        self.assertEqual(jid, "alice@localhost/web")
        self.assertIsNotNone(self.harness.server.sessions.get(jid))
        bob = self.harness.login("bob@localhost/tcp")

        held = alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp' type='chat'><body>hi bob</body>"
                          "</message>")
        message = of_kind(bob.received(), "message")[0]
        self.assertEqual((message["from"], str(message.body)), ("alice@localhost/web", "hi bob"))
        self.assertFalse(held.answered)

        bob.send("<message to='alice@localhost/web' type='chat'><body>hi alice</body></message>")
        alice.settle()
        self.assertTrue(held.answered)
        self.assertIn(b"<message xmlns='jabber:client'", held.data)
        message = held.payloads()[0]
        self.assertEqual((message.uri, message.name), (NS_CLIENT, "message"))
        self.assertEqual((message["from"], str(message.body)), ("bob@localhost/tcp", "hi alice"))

    def test_unqualified_payloads_are_jabber_client(self):
        """Stanzas written without xmlns (in httpbind's default namespace) are taken as jabber:client."""
        alice = self.client()
        alice.login("alice@localhost/web")
        bob = self.harness.login("bob@localhost/tcp")
        alice.post("<message to='bob@localhost/tcp'><body>plain</body></message>")
        self.assertEqual(str(of_kind(bob.received(), "message")[0].body), "plain")

    def test_restart_is_required_after_sasl(self):
        """After SASL success, stanzas before the xmpp:restart request end the session (bad-request)."""
        alice = self.client()
        alice.create()
        alice.received()
        self.assertEqual(scram_login(alice, "alice", "secret").name, "success")
        responder = alice.post(f"<iq type='set' id='b' xmlns='{NS_CLIENT}'><bind xmlns='{NS_BIND}'/></iq>")
        self.assertTerminated(responder, "bad-request")

    def test_restart_without_sasl(self):
        """An xmpp:restart request before SASL success is a bad request."""
        alice = self.client()
        alice.create()
        self.assertTerminated(alice.post(attrs={"xmpp:restart": "true"}), "bad-request")

    def test_stream_error_is_a_remote_stream_error(self):
        """A stream error (a stanza before authentication) ends the session as remote-stream-error.

        The final response, holding the stream error, is kept for a repeated request for a while."""
        alice = self.client()
        alice.create()
        responder = alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost'><body>x</body></message>")
        self.assertTerminated(responder, "remote-stream-error")
        error = responder.payloads()[-1]
        self.assertEqual((error.uri, error.name), (NS_STREAMS, "error"))
        self.assertEqual(next(error.elements()).name, "not-authorized")
        # kept for a client whose connection dropped, until the inactivity period is over
        self.assertEqual(alice.post(rid=alice.rid).data, responder.data)
        self.clock.advance(60)
        self.assertEqual(self.service.sessions, {})

    def test_stream_error_waits_for_the_next_request(self):
        """A session replaced while no request is held gets its conflict error on the next request."""
        alice = self.client()
        alice.login("alice@localhost/web")
        self.harness.login("alice@localhost/web")
        responder = alice.post()
        self.assertTerminated(responder, "remote-stream-error")
        self.assertEqual(next(responder.payloads()[-1].elements()).name, "conflict")
        self.clock.advance(60)
        self.assertEqual(self.service.sessions, {})


class WindowTests(BoshTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.client()
        self.alice.login("alice@localhost/web")
        self.bob = self.harness.login("bob@localhost/tcp")

    def message(self, text):
        return f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>{text}</body></message>"

    def test_out_of_order_rids(self):
        """A request ahead of a missing rid waits for it; payloads are processed in rid order."""
        rid = self.alice.rid
        second = self.alice.post(self.message("second"), rid=rid + 2)
        self.assertEqual(of_kind(self.bob.received(), "message"), [])
        self.assertFalse(second.answered)
        first = self.alice.post(self.message("first"), rid=rid + 1)
        bodies = [str(m.body) for m in of_kind(self.bob.received(), "message")]
        self.assertEqual(bodies, ["first", "second"])
        self.assertTrue(first.answered)
        self.assertFalse(second.answered)

    def test_repeated_rid_gets_the_cached_response(self):
        """A response written to a connection that then drops is sent again for the same rid."""
        held = self.alice.post()
        self.bob.send("<message to='alice@localhost/web'><body>once</body></message>")
        self.alice.settle()
        self.assertTrue(held.answered)
        held.drop()
        again = self.alice.post(rid=self.alice.rid)
        self.assertEqual(again.data, held.data)
        self.assertEqual(str(again.payloads()[0].body), "once")

    def test_repeated_held_request_takes_its_place(self):
        """A held request sent again: the old connection gets an empty body, the new one the data."""
        held = self.alice.post()
        again = self.alice.post(rid=self.alice.rid)
        self.assertEqual(held.payloads(), [])
        self.assertFalse(again.answered)
        self.bob.send("<message to='alice@localhost/web'><body>late</body></message>")
        self.alice.settle()
        self.assertEqual(str(again.payloads()[0].body), "late")

    def test_rid_too_old_for_the_cache(self):
        """A repeated rid whose response is no longer kept ends the session with item-not-found."""
        first = self.alice.rid
        for _ in range(3):
            self.alice.post(self.message("x"))
        self.assertTerminated(self.alice.post(rid=first - 2), "item-not-found")

    def test_rid_outside_the_window(self):
        """A rid beyond the window ends the session with item-not-found; the sid is then unknown."""
        responder = self.alice.post(rid=self.alice.rid + 10)
        self.assertTerminated(responder, "item-not-found")
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/web"))
        self.assertTerminated(self.alice.post(), "item-not-found")

    def test_hold_and_wait(self):
        """One request is held for 'wait' seconds, then answered empty; a new request releases it at once."""
        held = self.alice.post()
        self.clock.advance(59)
        self.assertFalse(held.answered)
        self.clock.advance(1)
        self.assertEqual(held.payloads(), [])
        first = self.alice.post()
        second = self.alice.post(self.message("x"))
        self.assertTrue(first.answered)
        self.assertFalse(second.answered)

    def test_stanzas_of_one_turn_leave_together(self):
        """Stanzas routed in the same reactor turn go out in one response, not one each."""
        held = self.alice.post()
        for n in range(3):
            self.bob.send(f"<message to='alice@localhost/web' id='m{n}'><body>{n}</body></message>")
        self.assertFalse(held.answered)
        self.alice.settle()
        self.assertEqual([p["id"] for p in held.payloads()], ["m0", "m1", "m2"])

    def test_data_goes_to_the_oldest_held_request(self):
        """With hold=2, two requests stay held; data answers the oldest and the other stays."""
        self.service = BoshService(self.harness.server, dataclasses.replace(
            self.harness.config.http, bosh_max_hold=2, bosh_max_requests=3))
        carol = self.client(rid=9000)
        carol.login("bob@localhost/second", hold="2")
        first, second = carol.post(), carol.post()
        self.assertFalse(first.answered or second.answered)
        self.alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/second'><body>x</body></message>")
        self.assertEqual(len(first.payloads()), 1)
        self.assertFalse(second.answered)
        third = carol.post(f"<presence xmlns='{NS_CLIENT}' type='unavailable'/>")
        self.assertFalse(second.answered or third.answered)
        self.alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/second'><body>y</body></message>")
        self.assertEqual(str(second.payloads()[0].body), "y")
        self.assertFalse(third.answered)

    def test_overactivity(self):
        """More simultaneous requests than 'requests' (a gap never filled) is a policy violation."""
        rid = self.alice.rid
        self.alice.post(rid=rid + 1)
        self.assertTerminated(self.alice.post(rid=rid + 3), "policy-violation")

    def test_terminate_may_be_the_extra_request(self):
        """A terminate request may exceed 'requests' by one."""
        rid = self.alice.rid
        held = self.alice.post(rid=rid + 1)
        terminate = self.alice.post(rid=rid + 3, attrs={"type": "terminate"})
        self.assertFalse(terminate.answered)
        self.alice.post(self.message("last words"), rid=rid + 2)
        self.assertTrue(held.answered)
        self.assertTerminated(terminate)

    def test_too_many_requests_per_second(self):
        """Past the per-session request rate, the session ends with policy-violation."""
        self.patch(BoshSession, "request_burst", 5)
        self.patch(BoshSession, "request_rate_per_second", 1.0)
        session = self.service.sessions[self.alice.sid]
        session._request_tokens = 5
        for _ in range(5):
            self.alice.post(self.message("x"))
            self.assertIn(self.alice.sid, self.service.sessions)
        self.assertTerminated(self.alice.post(self.message("x")), "policy-violation")

    def test_too_frequent_empty_requests(self):
        """An empty request while 'requests' empty ones are unanswered, within 'polling' seconds."""
        self.alice.post()
        self.clock.advance(0.5)
        self.assertTerminated(self.alice.post(), "policy-violation")

    def test_lost_connection_keeps_the_stanzas(self):
        """Stanzas never go to a held request whose connection closed: the next request gets them."""
        held = self.alice.post()
        held.drop()
        self.bob.send("<message to='alice@localhost/web'><body>kept</body></message>")
        self.assertFalse(held.answered)
        later = self.alice.post()
        self.assertEqual(str(later.payloads()[0].body), "kept")

    def test_lost_without_notice(self):
        """A responder found lost only when answering does not take the stanzas either."""
        held = self.alice.post()
        held.lost = True
        self.bob.send("<message to='alice@localhost/web'><body>kept</body></message>")
        self.assertFalse(held.answered)
        self.assertEqual(str(self.alice.post().payloads()[0].body), "kept")

    def test_secure_session_stays_secure(self):
        """A session begun over HTTPS refuses a request over plain HTTP (403) and carries on."""
        client = self.client(rid=7000)
        client.create(secure=True)
        self.assertEqual(client.post(rid=7001).status, 403)
        held = client.post(rid=7001, secure=True)
        self.assertFalse(held.answered)
        self.assertIn(client.sid, self.service.sessions)


class EncryptionTests(BoshTestCase):
    """[c2s] require_encryption over BOSH: SASL in clear for local clients only."""

    c2s = {"require_encryption": True}

    def mechanisms(self, responder):
        [features] = responder.payloads()
        return None if features.mechanisms is None else [str(m) for m in features.mechanisms.elements()]

    def assertEncryptionRequired(self, client):
        outcome = scram_login(client, "alice", "secret")
        self.assertEqual((outcome.name, next(outcome.elements()).name), ("failure", "encryption-required"))

    def test_no_sasl_in_clear_from_elsewhere(self):
        """A plain-HTTP client that is not local is offered no mechanism, and its <auth/> gets
        <encryption-required/>."""
        client = self.client(address="192.0.2.7", local=False)
        self.assertIsNone(self.mechanisms(client.create()))
        self.assertEncryptionRequired(client)
        self.assertEqual(len(self.harness.server.sessions), 0)

    def test_local_client_in_clear(self):
        """A local client (a browser on the server's machine) is offered SCRAM in clear and logs in."""
        client = self.client()
        self.assertEqual(self.mechanisms(client.create()), ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        self.assertEqual(self.client(rid=9000).login("alice@localhost/web"), "alice@localhost/web")

    def test_secure_client(self):
        """Over HTTPS (or a trusted proxy's word) any client is offered PLAIN as well."""
        client = self.client(address="192.0.2.7", local=False)
        self.assertIn("PLAIN", self.mechanisms(client.create(secure=True)))

    def test_each_request_is_judged(self):
        """A session begun by a local client does not let a request from elsewhere authenticate in clear."""
        client = self.client()
        client.create()
        client.received()
        client.local = False
        self.assertEncryptionRequired(client)

    def test_through_the_http_listener(self):
        """The HTTP listener decides who is local: a peer off loopback gets no mechanism, 127.0.0.1 does."""
        factory = HTTPFactory(self.harness.server, self.harness.config.http, self.service, False)
        answers = []
        for address in ("192.0.2.7", "127.0.0.1"):
            client = HTTPClient(factory, address=address)
            client.request("POST", "/http-bind", body_text({"rid": 100, "to": "localhost", "wait": "60",
                                                            "hold": "1", "ver": "1.6", "xmpp:version": "1.0"}).encode())
            [(status, _, body)] = client.responses()
            features = next(parse_element(body.decode()).elements())
            answers.append((status, features.name, features.mechanisms is None))
        self.assertEqual(answers, [(200, "features", True), (200, "features", False)])


class TimingTests(BoshTestCase):
    def test_inactivity_ends_the_session(self):
        """No request for 'inactivity' seconds: the session ends and the contact sees unavailable presence."""
        bob = self.tcp_friend()
        alice = self.client()
        alice.login("alice@localhost/web")
        alice.post(f"<presence xmlns='{NS_CLIENT}'/>")
        available = of_kind(bob.received(), "presence")
        self.assertEqual([p["from"] for p in available if p.getAttribute("type") is None],
                         ["alice@localhost/web"])
        held = alice.post()
        self.clock.advance(60)
        self.assertEqual(held.payloads(), [])
        self.clock.advance(59)
        self.assertEqual(of_kind(bob.received(), "presence", "unavailable"), [])
        self.clock.advance(1)
        gone = of_kind(bob.received(), "presence", "unavailable")
        self.assertEqual([p["from"] for p in gone], ["alice@localhost/web"])
        self.assertEqual(self.service.sessions, {})
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/web"))
        self.assertTerminated(alice.post(), "item-not-found")

    def test_pause(self):
        """A pause answers every held request at once, without payloads, and stretches inactivity."""
        alice = self.client()
        alice.login("alice@localhost/web")
        bob = self.harness.login("bob@localhost/tcp")
        held = alice.post()
        pause = alice.post(attrs={"pause": "500"})
        self.assertEqual(held.payloads(), [])
        self.assertEqual(pause.payloads(), [])
        bob.send("<message to='alice@localhost/web'><body>during the pause</body></message>")
        self.clock.advance(119)
        self.assertIn(alice.sid, self.service.sessions)
        back = alice.post()
        self.assertEqual(str(back.payloads()[0].body), "during the pause")
        # back to the normal inactivity after the pause
        self.clock.advance(60)  # wait
        self.clock.advance(60)  # inactivity
        self.assertEqual(self.service.sessions, {})

    def test_pause_expires(self):
        """A paused client that does not come back within the pause is gone."""
        alice = self.client()
        alice.login("alice@localhost/web")
        alice.post(attrs={"pause": "90"})
        self.clock.advance(89)
        self.assertIn(alice.sid, self.service.sessions)
        self.clock.advance(1)
        self.assertEqual(self.service.sessions, {})

    def test_terminate(self):
        """The payloads of a terminate request are processed, then the stream ends."""
        bob = self.tcp_friend()
        alice = self.client()
        alice.login("alice@localhost/web")
        alice.post(f"<presence xmlns='{NS_CLIENT}'/>")
        bob.received()
        responder = alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>bye</body></message>",
                               attrs={"type": "terminate"})
        self.assertTerminated(responder)
        received = bob.received()
        self.assertEqual([(e.name, e.getAttribute("type")) for e in received],
                         [("message", None), ("presence", "unavailable")])
        self.assertEqual(self.service.sessions, {})
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/web"))

    def test_polling_session(self):
        """wait=0 is a polling session: answers at once; empty polls closer than 'polling' are refused."""
        alice = self.client()
        body = alice.create(wait="0").body()
        self.assertEqual(body["hold"], "0")
        self.assertEqual(body["inactivity"], "62")
        alice.received()
        self.clock.advance(2)
        self.assertTrue(alice.post().answered)
        self.clock.advance(3)
        self.assertTrue(alice.post().answered)
        self.clock.advance(1)
        self.assertTerminated(alice.post(), "policy-violation")


class LimitTests(BoshTestCase):
    c2s = {"rate_limit_bytes_per_second": 1000, "rate_limit_burst_bytes": 2000}

    def test_byte_rate_delays_requests(self):
        """Past the c2s byte rate, requests wait (like a TCP read pause) and are then processed."""
        alice = self.client()
        alice.login("alice@localhost/web")
        bob = self.harness.login("bob@localhost/tcp")
        big = "x" * 3000
        alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>{big}</body></message>")
        self.assertEqual(len(of_kind(bob.received(), "message")), 1)
        alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>small</body></message>")
        self.assertEqual(of_kind(bob.received(), "message"), [])
        self.clock.advance(5)
        self.assertEqual([str(m.body) for m in of_kind(bob.received(), "message")], ["small"])

    def test_undelivered_data_is_bounded(self):
        """A client that never collects its data is ended once max_buffered_bytes is queued."""
        self.service = BoshService(self.harness.server, dataclasses.replace(
            self.harness.config.http, max_buffered_bytes=4096))
        alice = self.client()
        alice.login("alice@localhost/web")
        bob = self.harness.login("bob@localhost/tcp")
        for _ in range(10):
            bob.send(f"<message to='alice@localhost/web'><body>{'y' * 500}</body></message>")
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/web"))
        responder = alice.post()
        self.assertTerminated(responder, "remote-stream-error")
        self.assertEqual(next(responder.payloads()[-1].elements()).name, "resource-constraint")


class SessionCapTests(BoshTestCase):
    """Sessions per client address and in all (XEP-0124 policy-violation past either)."""

    http = {"bosh_max_sessions_per_address": 2, "bosh_max_sessions": 4}

    def test_sessions_per_address(self):
        """Past bosh_max_sessions_per_address an address gets policy-violation and no session; others
        are not affected; a session that ends frees its place."""
        first, second = self.client(address="192.0.2.7"), self.client(address="192.0.2.7")
        first.create()
        second.create()
        refused = self.client(address="192.0.2.7")
        self.assertTerminated(refused.create(), "policy-violation")
        self.assertIsNone(refused.sid)
        self.assertEqual(len(self.service.sessions), 2)
        self.assertIsNotNone(self.client(address="192.0.2.8").create().body().getAttribute("sid"))
        first.post(attrs={"type": "terminate"})
        self.assertIsNotNone(self.client(address="192.0.2.7").create().body().getAttribute("sid"))

    def test_sessions_in_all(self):
        """Past bosh_max_sessions nobody gets a new session until one is gone (here: no login within
        pre_auth_timeout_seconds, then the final answer kept for 'inactivity' seconds)."""
        for number in range(4):
            self.client(address=f"192.0.2.{number}").create()
        self.assertTerminated(self.client(address="198.51.100.1").create(), "policy-violation")
        self.clock.advance(30)
        self.assertTerminated(self.client(address="198.51.100.1").create(), "policy-violation")
        self.clock.advance(60)
        self.assertEqual((self.service.sessions, self.service.per_address.counts), ({}, {}))
        self.assertIsNotNone(self.client(address="198.51.100.1").create().body().getAttribute("sid"))

    def test_a_creation_without_room_is_refused_unread(self):
        """An address at its cap asking for another session is refused before the body is read
        whole (the cheap refusal of a flood): a body spoilt after its start tag gets policy-violation,
        where an address with room gets bad-request for it."""
        for _ in range(2):
            self.client(address="192.0.2.7").create()
        spoilt = "<body rid='5' to='localhost' wait='60' hold='1' xmlns='%s'><oops></body>" % NS_HTTPBIND
        self.assertTerminated(self.client(address="192.0.2.7").post(raw=spoilt), "policy-violation")
        self.assertTerminated(self.client(address="192.0.2.8").post(raw=spoilt), "bad-request")

    def test_a_request_of_a_session_is_never_refused_for_the_cap(self):
        """At its address's cap, a session's own requests (they carry its sid) go on."""
        alice = self.client(address="192.0.2.7")
        alice.login("alice@localhost/web")
        self.client(address="192.0.2.7").create()
        self.assertTerminated(self.client(address="192.0.2.7").create(), "policy-violation")
        bob = self.harness.login("bob@localhost/tcp")
        alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>hi</body></message>")
        self.assertEqual([str(m.body) for m in of_kind(bob.received(), "message")], ["hi"])

    def test_shutdown_releases_every_count(self):
        """Sessions ended by the server's stop leave no count behind."""
        for number in range(3):
            self.client(address="192.0.2.7" if number < 2 else "192.0.2.8").create()
        self.service.stopService()
        self.assertEqual((self.service.sessions, self.service.per_address.counts), ({}, {}))

    def test_one_keep_alive_connection(self):
        """Creation requests back to back on one HTTP connection are counted like any others."""
        factory = HTTPFactory(self.harness.server, self.harness.config.http, self.service, False)
        connection = HTTPClient(factory, address="192.0.2.7")
        conditions = []
        for rid in (100, 200, 300):
            connection.request("POST", "/http-bind", body_text({"rid": rid, "to": "localhost", "wait": "60",
                                                                "hold": "1", "ver": "1.6", "xmpp:version": "1.0"}
                                                               ).encode())
            [(_, _, body)] = connection.responses()
            conditions.append(parse_element(body.decode()).getAttribute("condition"))
        self.assertEqual(conditions, [None, None, "policy-violation"])
        self.assertFalse(connection.transport.disconnecting)

    def test_clients_behind_a_trusted_proxy_count_apart(self):
        """Behind a trusted proxy each session counts against the client's address from X-Forwarded-For."""
        http = dataclasses.replace(self.harness.config.http, trusted_proxies=["10.0.0.1"])
        self.service = BoshService(self.harness.server, http)
        factory = HTTPFactory(self.harness.server, http, self.service, False)
        conditions = []
        for client in ("198.51.100.1", "198.51.100.1", "198.51.100.2", "198.51.100.1"):
            connection = HTTPClient(factory, address="10.0.0.1")
            connection.request("POST", "/http-bind", body_text({"rid": 100, "to": "localhost", "wait": "60",
                                                                "hold": "1", "ver": "1.6", "xmpp:version": "1.0"}
                                                               ).encode(),
                               headers=[("X-Forwarded-For", client)])
            [(_, _, body)] = connection.responses()
            conditions.append(parse_element(body.decode()).getAttribute("condition"))
        self.assertEqual(conditions, [None, None, None, "policy-violation"])
        self.assertEqual(self.service.per_address.counts, {"198.51.100.1": 2, "198.51.100.2": 1})


class SessionlessPaceTests(BoshTestCase):
    """Requests that no live session takes, paced per client address."""

    http = {"bosh_max_sessions_per_address": 2, "bosh_sessionless_requests_per_second_per_address": 1.0,
            "bosh_sessionless_requests_burst": 3}

    def test_refused_creations_are_answered_at_a_slower_pace(self):
        """A client refused for too many sessions that asks again at once waits for each answer in
        turn instead of being refused as fast as it asks, each such request counted as NO_ROOM_COST
        sessionless ones (one a second here: one answer every four seconds); another address is not
        slowed down."""
        self.assertEqual(NO_ROOM_COST, 4)
        for _ in range(2):
            self.assertIsNotNone(self.client(address="192.0.2.7").create().body().getAttribute("sid"))
        early = self.client(address="192.0.2.7").create()  # 1 token left, 4 spent: 3 s to wait
        later = self.client(address="192.0.2.7").create()  # 4 more: 7 s
        self.assertIsNotNone(self.client(address="192.0.2.8").create().body().getAttribute("sid"))
        self.clock.advance(2.99)
        self.assertFalse(early.answered)
        self.clock.advance(0.01)
        self.assertTerminated(early, "policy-violation")
        self.clock.advance(3.99)
        self.assertFalse(later.answered)
        self.clock.advance(0.01)
        self.assertTerminated(later, "policy-violation")

    def test_unknown_sids_and_unreadable_bodies_count_too(self):
        """Requests for a sid that does not exist and bodies that cannot be read share the pace."""
        client = self.client(address="192.0.2.7")
        client.sid = "no-such-session"
        for _ in range(2):
            self.assertTerminated(client.post(), "item-not-found")
        self.assertTerminated(client.post(raw="<body"), "bad-request")
        held = [client.post(), client.post(raw="<body")]
        self.assertEqual([r.answered for r in held], [False, False])
        self.clock.advance(2)
        self.assertTerminated(held[0], "item-not-found")
        self.assertTerminated(held[1], "bad-request")

    def test_live_sessions_are_not_paced(self):
        """The requests of a live session are answered at once while its address's pace is spent."""
        alice = self.client(address="192.0.2.7")
        alice.login("alice@localhost/web")
        for _ in range(3):
            self.client(address="192.0.2.7").create()
        bob = self.harness.login("bob@localhost/tcp")
        alice.post(f"<message xmlns='{NS_CLIENT}' to='bob@localhost/tcp'><body>hi</body></message>")
        self.assertEqual([str(m.body) for m in of_kind(bob.received(), "message")], ["hi"])

    def test_a_waiting_request_whose_connection_closes_is_forgotten(self):
        """A held request whose connection closed is never handled: no session is made for it."""
        for _ in range(3):
            self.client(address="192.0.2.9").create()
        self.clock.advance(3)  # the third, refused, is answered in its turn
        gone = self.client(address="192.0.2.9")
        responder = gone.create()
        responder.drop()
        self.assertEqual(self.service._held, {})
        self.clock.advance(10)
        self.assertFalse(responder.answered)
        self.assertEqual(self.service.per_address.counts, {"192.0.2.9": 2})

    def test_a_request_that_waited_leaves_no_reference_cycle(self):
        """A creation request that waited for its turn is freed once answered, with its responder and
        the call that released it: a flood of them would otherwise fill the heap that every full
        collection walks."""
        factory = HTTPFactory(self.harness.server, self.harness.config.http, self.service, False)
        connection = HTTPClient(factory, address="192.0.2.7")
        creation = body_text({"rid": 100, "to": "localhost", "wait": "60", "hold": "1", "ver": "1.6",
                              "xmpp:version": "1.0"}).encode()
        for _ in range(3):
            connection.request("POST", "/http-bind", creation)
        self.assertEqual(len(connection.responses()), 2)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.clock.advance(3)
        self.assertEqual(len(connection.responses()), 1)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = {type(thing).__name__ for thing in gc.garbage}
        finally:
            gc.set_debug(0)
            del gc.garbage[:]
        self.assertEqual(left & {"Responder", "_Exchange", "DelayedCall", "HTTPRequest"}, set())

    def test_shutdown_answers_waiting_requests(self):
        """When the server stops, a request waiting for its turn gets system-shutdown."""
        for _ in range(3):
            self.client(address="192.0.2.7").create()
        held = self.client(address="192.0.2.7").create()
        self.service.stopService()
        self.assertTerminated(held, "system-shutdown")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_back_to_back_on_one_keep_alive_connection(self):
        """On one keep-alive HTTP connection, creation requests with no room are answered in order at
        their slower pace, and the connection stays open."""
        factory = HTTPFactory(self.harness.server, self.harness.config.http, self.service, False)
        connection = HTTPClient(factory, address="192.0.2.7")
        creation = body_text({"rid": 100, "to": "localhost", "wait": "60", "hold": "1", "ver": "1.6",
                              "xmpp:version": "1.0"}).encode()
        answered = []
        for _ in range(5):
            connection.request("POST", "/http-bind", creation)
            answered.append(len(connection.responses()))
        self.assertEqual(answered, [1, 1, 0, 0, 0])
        self.clock.advance(3)
        self.assertEqual(len(connection.responses()), 1)
        self.clock.advance(4)
        [(_, _, body)] = connection.responses()
        self.assertEqual(parse_element(body.decode()).getAttribute("condition"), "policy-violation")
        self.assertFalse(connection.transport.disconnecting)


class KeyTests(BoshTestCase):
    def keyed_client(self):
        keys = key_sequence("seed", 5)
        alice = self.client()
        alice.create(newkey=keys[-1])
        alice.key_chain = keys[:-1]
        return alice, keys

    def poll(self, client, attrs=None):
        """An empty request a little later (empty requests closer than 'polling' are refused)."""
        self.clock.advance(3)
        return client.post(attrs=attrs)

    def test_key_sequence(self):
        """Each request's key hashes to the key before it; a wrong key ends the session (item-not-found)."""
        alice, keys = self.keyed_client()
        first = self.poll(alice)
        self.poll(alice)
        self.assertEqual(first.payloads(), [])
        self.assertIsNone(first.body().getAttribute("type"))
        alice.key_chain = ["0" * 40]
        self.assertTerminated(self.poll(alice), "item-not-found")
        self.assertEqual(self.service.sessions, {})

    def test_missing_key(self):
        """A session that began with newkey refuses a request without a key."""
        alice, _ = self.keyed_client()
        alice.key_chain = None
        self.assertTerminated(self.poll(alice), "item-not-found")

    def test_switching_key_sequences(self):
        """At the end of a sequence the client sends K(1) with the newkey of a new sequence."""
        alice, keys = self.keyed_client()
        fresh = key_sequence("other seed", 3)
        for _ in range(3):
            self.poll(alice)
        self.assertEqual(alice.key_chain, [keys[0]])
        switch = self.poll(alice, attrs={"newkey": fresh[-1]})
        alice.key_chain = fresh[:-1]
        self.poll(alice)
        self.assertIsNone(switch.body().getAttribute("type"), switch.data)
        self.assertIn(alice.sid, self.service.sessions)


class ParsingTests(BoshTestCase):
    def test_restricted_xml(self):
        """Comments, DTDs and entities are refused with bad-request, and end the session they name."""
        alice = self.client()
        alice.login("alice@localhost/web")
        rid = alice.rid + 1
        comment = f"<body xmlns='{NS_HTTPBIND}' sid='{alice.sid}' rid='{rid}'><!-- hi --></body>"
        self.assertTerminated(alice.post(raw=comment), "bad-request")
        self.assertEqual(self.service.sessions, {})
        self.assertIsNone(self.harness.server.sessions.get("alice@localhost/web"))
        for text in ("<!DOCTYPE body [<!ENTITY a 'aaaa'>]><body xmlns='http://jabber.org/protocol/httpbind'/>",
                     f"<body xmlns='{NS_HTTPBIND}' rid='1' to='localhost'>&a;</body>",
                     f"<body xmlns='{NS_HTTPBIND}' rid='1' to='localhost'><?pi x?></body>",
                     "<message xmlns='jabber:client'/>",
                     f"<body xmlns='{NS_HTTPBIND}' rid='1' to='localhost'>text</body>",
                     f"<body xmlns='{NS_HTTPBIND}' rid='1'",
                     ""):
            responder = FakeResponder()
            self.service.handle(FakeRequest(text), responder)
            self.assertTerminated(responder, "bad-request")

    def test_unreadable_request_with_a_wrong_rid_leaves_the_session(self):
        """A malformed request whose rid is not the session's next one is refused, the session stays."""
        alice = self.client()
        alice.create()
        comment = f"<body xmlns='{NS_HTTPBIND}' sid='{alice.sid}' rid='1'><!-- hi --></body>"
        self.assertTerminated(alice.post(raw=comment), "bad-request")
        self.assertIn(alice.sid, self.service.sessions)

    def test_xml_declaration_is_allowed(self):
        """A body preceded by an XML declaration is read."""
        body = parse_request(b"<?xml version='1.0' encoding='utf-8'?>"
                             b"<body xmlns='http://jabber.org/protocol/httpbind' rid='3'/>", 1024)
        self.assertEqual(body["rid"], "3")

    def test_size_limit(self):
        """A body larger than max_request_bytes is refused."""
        with self.assertRaises(BoshError) as caught:
            parse_request(b"<body xmlns='http://jabber.org/protocol/httpbind'>" + b" " * 2048 + b"</body>", 1024)
        self.assertEqual(caught.exception.condition, "policy-violation")

    def test_legacy_client_gets_http_status(self):
        """A client that sent no 'ver' gets the HTTP status of a terminal condition (404 here)."""
        alice = self.client()
        alice.create(ver=None)
        responder = alice.post(rid=alice.rid + 20)
        self.assertEqual(responder.status, 404)
        self.assertTerminated(responder, "item-not-found")

    def test_shutdown(self):
        """Stopping the service ends every session with system-shutdown."""
        alice = self.client()
        alice.login("alice@localhost/web")
        held = alice.post()
        self.service.stopService()
        self.assertTerminated(held, "system-shutdown")
        self.assertEqual(self.service.sessions, {})
