"""Tests for bridge.gateways.sip.transaction: RFC 3261 section 17 on a fake clock and fake transports."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.message import Request, make_response, parse_datagram
from bridge.gateways.sip.transaction import (
    RETRY_AFTER_SECONDS, ExcessAllowance, ServerTransaction, StatelessResponder, TransactionLayer, new_branch,
    response_address,
)

PEER = ("192.0.2.7", 5062)


class FakeTransport:
    """Records what is sent, with the clock's time."""

    def __init__(self, clock, reliable=False, fail=False):
        self.clock = clock
        self.reliable = reliable
        self.fail = fail
        self.sent = []

    def send(self, message, address):
        if self.fail:
            raise OSError("network unreachable")
        # serialize and parse back, so what is checked is what went on the wire
        self.sent.append((self.clock.seconds(), parse_datagram(message.to_bytes()), address))

    def times(self):
        return [round(t, 6) for t, _, _ in self.sent]

    def statuses(self):
        return [getattr(m, "status", None) or m.method for _, m, _ in self.sent]


class FakeUser:
    """A transaction user that records every event."""

    def __init__(self):
        self.events = []

    def request_received(self, transaction, request):
        self.events.append(("request", transaction, request))

    def response_received(self, transaction, response):
        self.events.append(("response", transaction, response))

    def transaction_timed_out(self, transaction):
        self.events.append(("timeout", transaction))

    def transport_error(self, transaction, error):
        self.events.append(("transport-error", transaction, error))

    def stray_response(self, response, transport, address):
        self.events.append(("stray", response))

    def kinds(self):
        return [e[0] for e in self.events]


def make_request(method="OPTIONS", branch=None, sent_by="192.0.2.7:5062", rport=False, cseq=1):
    request = Request(method, "sip:bob@example.com")
    via = f"SIP/2.0/UDP {sent_by}"
    if branch is not False:
        via += f";branch={branch or new_branch()}"
    if rport:
        via += ";rport"
    request.headers.add("Via", via)
    request.headers.add("Max-Forwards", "70")
    request.headers.add("From", "<sip:alice@example.net>;tag=a1")
    request.headers.add("To", "<sip:bob@example.com>")
    request.headers.add("Call-ID", "call-1@example.net")
    request.headers.add("CSeq", f"{cseq} {method}")
    return request


def wire(message):
    """The message as the peer would see it: serialized and parsed again."""
    return parse_datagram(message.to_bytes())


class Base(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.user = FakeUser()
        self.layer = TransactionLayer(self.clock, self.user)
        self.udp = FakeTransport(self.clock)
        self.tcp = FakeTransport(self.clock, reliable=True)

    def advance_to(self, when):
        """Run the clock to ``when``, stopping exactly at each timer on the way."""
        while True:
            pending = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
            step = min([t for t in pending if t <= when], default=when)
            self.clock.advance(max(0, step - self.clock.seconds()))
            if step >= when:
                return


class ClientNonInviteTests(Base):
    def test_retransmission_schedule_and_timer_f(self):
        """Over UDP a non-INVITE is retransmitted at T1 doubling to T2 until Timer F (64*T1) times out."""
        self.layer.send_request(make_request(), self.udp, PEER)
        self.advance_to(40)
        self.assertEqual(self.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(self.user.kinds(), ["timeout"])
        self.assertEqual(self.layer.client, {})

    def test_reliable_has_no_retransmission(self):
        """Over TCP the request is sent once and Timer F still times out at 32 s."""
        self.layer.send_request(make_request(), self.tcp, PEER)
        self.advance_to(31.9)
        self.assertEqual(self.user.kinds(), [])
        self.advance_to(32.1)
        self.assertEqual(self.tcp.times(), [0])
        self.assertEqual(self.user.kinds(), ["timeout"])

    def test_provisional_slows_retransmission_to_t2(self):
        """After a 1xx, retransmissions continue every T2."""
        request = make_request()
        self.layer.send_request(request, self.udp, PEER)
        self.advance_to(0.6)
        self.layer.receive(wire(make_response(request, 100)), self.udp, PEER)
        self.advance_to(10)
        self.assertEqual(self.udp.times(), [0, 0.5, 1.5, 5.5, 9.5])
        self.assertEqual(self.user.kinds(), ["response"])

    def test_final_response_completes_and_timer_k(self):
        """A final response is passed up once; retransmitted finals are absorbed; Timer K ends it after T4."""
        request = make_request()
        self.layer.send_request(request, self.udp, PEER)
        response = wire(make_response(request, 200, to_tag="t"))
        self.layer.receive(response, self.udp, PEER)
        self.layer.receive(response, self.udp, PEER)
        self.advance_to(4.9)
        self.assertEqual(len(self.layer.client), 1)
        self.advance_to(5.1)
        self.assertEqual(self.layer.client, {})
        self.assertEqual(self.user.kinds(), ["response"])
        self.assertEqual(self.udp.times(), [0])

    def test_reliable_final_terminates_at_once(self):
        """Over TCP Timer K is zero: the transaction ends with the final response."""
        request = make_request()
        self.layer.send_request(request, self.tcp, PEER)
        self.layer.receive(wire(make_response(request, 404)), self.tcp, PEER)
        self.assertEqual(self.layer.client, {})

    def test_stray_response(self):
        """A response matching no client transaction goes to stray_response."""
        self.layer.receive(wire(make_response(make_request(), 200)), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["stray"])

    def test_transport_error(self):
        """A transport that fails to send ends the transaction and tells the user."""
        self.layer.send_request(make_request(), FakeTransport(self.clock, fail=True), PEER)
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.user.kinds(), ["transport-error"])
        self.assertEqual(self.layer.client, {})


class ClientInviteTests(Base):
    def test_timer_a_doubles_until_timer_b(self):
        """An INVITE over UDP is retransmitted at 0.5, 1, 2, 4, 8, 16 s intervals until Timer B at 32 s."""
        self.layer.send_request(make_request("INVITE"), self.udp, PEER)
        self.advance_to(40)
        self.assertEqual(self.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(self.user.kinds(), ["timeout"])

    def test_provisional_stops_retransmission_and_timer_b(self):
        """After a 1xx an INVITE is not retransmitted and Timer B no longer applies."""
        request = make_request("INVITE")
        self.layer.send_request(request, self.udp, PEER)
        self.layer.receive(wire(make_response(request, 180, to_tag="x")), self.udp, PEER)
        self.advance_to(100)
        self.assertEqual(self.udp.times(), [0])
        self.assertEqual(self.user.kinds(), ["response"])

    def test_error_response_is_acknowledged(self):
        """A 486 is ACKed by the transaction with the same branch and the response's To tag; retransmitted 486s get the ACK again."""
        request = make_request("INVITE")
        self.layer.send_request(request, self.udp, PEER)
        busy = wire(make_response(request, 486, to_tag="busy1"))
        self.layer.receive(busy, self.udp, PEER)
        self.layer.receive(busy, self.udp, PEER)
        self.assertEqual(self.udp.statuses(), ["INVITE", "ACK", "ACK"])
        ack = self.udp.sent[1][1]
        self.assertEqual(ack.top_via.branch, request.top_via.branch)
        self.assertEqual(ack.to_address.tag, "busy1")
        self.assertEqual((ack.cseq.number, ack.cseq.method), (1, "ACK"))
        self.assertEqual(self.user.kinds(), ["response"])
        self.advance_to(31.9)
        self.assertEqual(len(self.layer.client), 1)
        self.advance_to(32.1)
        self.assertEqual(self.layer.client, {})

    def test_2xx_terminates(self):
        """A 2xx ends the INVITE client transaction at once; the user sends the ACK."""
        request = make_request("INVITE")
        self.layer.send_request(request, self.udp, PEER)
        self.layer.receive(wire(make_response(request, 200, to_tag="ok")), self.udp, PEER)
        self.assertEqual(self.layer.client, {})
        self.assertEqual(self.user.kinds(), ["response"])
        self.assertEqual(self.udp.statuses(), ["INVITE"])


class ServerNonInviteTests(Base):
    def test_duplicates_absorbed_and_answered(self):
        """A retransmission before the answer is absorbed; after it, the last response is sent again."""
        request = make_request("MESSAGE")
        self.layer.receive(wire(request), self.udp, PEER)
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request"])
        self.assertEqual(self.udp.sent, [])
        transaction = self.user.events[0][1]
        transaction.respond(make_response(self.user.events[0][2], 202, to_tag="s"))
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(self.udp.statuses(), [202, 202])
        self.assertEqual(self.user.kinds(), ["request"])

    def test_provisional_resent_on_retransmission(self):
        """In Proceeding a retransmitted request gets the last provisional response."""
        request = make_request("MESSAGE")
        self.layer.receive(wire(request), self.udp, PEER)
        self.user.events[0][1].respond(make_response(request, 100))
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(self.udp.statuses(), [100, 100])

    def test_timer_j(self):
        """Over UDP the answered transaction is kept 64*T1 to absorb retransmissions, as its answer's
        bytes only; then a retransmission is a new request.  Over TCP it ends at once."""
        request = make_request("OPTIONS")
        self.layer.receive(wire(request), self.udp, PEER)
        self.user.events[0][1].respond(make_response(request, 200))
        self.assertEqual(self.layer.server, {})
        self.advance_to(31.9)
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual((self.user.kinds(), self.udp.statuses()), (["request"], [200, 200]))
        self.advance_to(32.1)
        self.assertEqual((self.layer.answered.entries, self.layer.answered.bytes), ({}, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        self.layer.receive(wire(make_request("OPTIONS")), self.tcp, PEER)
        self.user.events[-1][1].respond(make_response(request, 200))
        self.assertEqual(len(self.layer.answered.entries), 0)

    def test_one_timer_for_the_answered(self):
        """The answers kept for timer J share one timer, which follows the oldest: each is forgotten at
        its own 32 s, not at the first one's."""
        first, second = make_request("OPTIONS"), make_request("OPTIONS")
        self.layer.receive(wire(first), self.udp, PEER)
        self.user.events[-1][1].respond(make_response(first, 200))
        self.clock.advance(10)
        self.layer.receive(wire(second), self.udp, PEER)
        self.user.events[-1][1].respond(make_response(second, 200))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.advance_to(32.1)
        self.assertEqual(len(self.layer.answered.entries), 1)
        self.layer.receive(wire(second), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        self.advance_to(42.1)
        self.assertEqual((self.layer.answered.entries, self.clock.getDelayedCalls()), ({}, []))

    def test_same_branch_other_sent_by_is_another_transaction(self):
        """Matching uses branch and sent-by: the same branch from another host is a new transaction."""
        branch = new_branch()
        self.layer.receive(make_request(branch=branch), self.udp, PEER)
        self.layer.receive(make_request(branch=branch, sent_by="192.0.2.8"), self.udp, ("192.0.2.8", 5060))
        self.assertEqual(self.user.kinds(), ["request", "request"])

    def test_rfc2543_matching(self):
        """Without the magic cookie, a retransmission is matched on URI, tags, Call-ID, CSeq and Via."""
        self.layer.receive(make_request(branch=False), self.udp, PEER)
        self.layer.receive(make_request(branch=False), self.udp, PEER)
        self.layer.receive(make_request(branch=False, cseq=2), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])

    def test_via_stamped_and_rport_used(self):
        """received and rport are filled in and the response goes to the source port (RFC 3581)."""
        request = make_request(sent_by="10.0.0.5:5060", rport=True)
        self.layer.receive(request, self.udp, ("198.51.100.9", 40000))
        transaction, received = self.user.events[0][1:]
        via = received.top_via
        self.assertEqual((via.received, via.rport), ("198.51.100.9", 40000))
        transaction.respond(make_response(received, 200))
        self.assertEqual(self.udp.sent[0][2], ("198.51.100.9", 40000))
        self.assertEqual(self.udp.sent[0][1].top_via.rport, 40000)

    def test_client_supplied_received_replaced_or_removed(self):
        """A received= the client wrote itself never survives: it is replaced by the peer's address
        when that differs from the sent-by (or rport is asked for), and removed when the sent-by is
        already the peer's address (RFC 3261 18.2.1); a client-written rport value is overwritten too."""
        request = make_request(sent_by="192.0.2.7:5062")
        request.headers.set("Via", request.headers.get("Via") + ";received=203.0.113.66")
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertNotIn("received", self.user.events[-1][2].top_via.params)
        request = make_request(sent_by="10.0.0.5:5060")
        request.headers.set("Via", request.headers.get("Via") + ";received=203.0.113.66;rport=1")
        self.layer.receive(wire(request), self.udp, ("198.51.100.9", 40000))
        via = self.user.events[-1][2].top_via
        self.assertEqual((via.received, via.rport), ("198.51.100.9", 40000))

    def test_response_address_without_rport(self):
        """Without rport a UDP response goes to the source host at the sent-by port."""
        request = make_request(sent_by="10.0.0.5:5070")
        self.assertEqual(response_address(request, self.udp, ("198.51.100.9", 40000)), ("198.51.100.9", 5070))
        self.assertEqual(response_address(request, self.tcp, ("198.51.100.9", 40000)), ("198.51.100.9", 40000))


class StatelessInviteTests(Base):
    def receive_invite(self, transport=None, request=None):
        request = request or make_request("INVITE")
        self.layer.receive(wire(request), transport or self.udp, PEER)
        return request, self.user.events[-1][1]

    def test_invite_answered_once_and_forgotten(self):
        """An INVITE is answered through a stateless responder: its one response is sent once, no 100
        Trying, no retransmission without an ACK, no timer and no transaction left behind."""
        request, responder = self.receive_invite()
        self.assertIsInstance(responder, StatelessResponder)
        responder.respond(make_response(request, 488, to_tag="n"))
        self.advance_to(64)
        self.assertEqual(self.udp.statuses(), [488])
        self.assertEqual((self.layer.server, self.clock.getDelayedCalls()), ({}, []))

    def test_retransmitted_invite_answered_again(self):
        """A retransmitted INVITE reaches the user again and gets its own single answer: one datagram
        back for each one in, never more."""
        request, responder = self.receive_invite()
        responder.respond(make_response(request, 488, to_tag="n"))
        _, again = self.receive_invite(request=request)
        again.respond(make_response(request, 488, to_tag="n"))
        self.assertEqual(self.udp.statuses(), [488, 488])

    def test_ack_goes_to_the_user_without_transaction(self):
        """Every ACK (there is no INVITE transaction for it to end) is handed on with no transaction."""
        request, responder = self.receive_invite()
        responder.respond(make_response(request, 488, to_tag="n"))
        ack = make_request("ACK", branch=request.top_via.branch)
        ack.headers.set("To", "<sip:bob@example.com>;tag=n")
        self.layer.receive(wire(ack), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        self.assertIsNone(self.user.events[1][1])

    def test_cancel_is_an_ordinary_transaction(self):
        """A CANCEL with the INVITE's branch is a non-INVITE transaction of its own."""
        request, _ = self.receive_invite()
        self.layer.receive(wire(make_request("CANCEL", branch=request.top_via.branch)), self.udp, PEER)
        self.assertIsInstance(self.user.events[-1][1], ServerTransaction)
        self.assertEqual(len(self.layer.server), 1)


def small_register(branch):
    """A REGISTER with nothing beyond the headers every request needs, as a spoofer sends."""
    request = make_request("REGISTER", branch=branch)
    request.headers.remove("Max-Forwards")
    return request


class UnverifiedSourceTests(Base):
    def challenge(self, request):
        response = make_response(request, 401, to_tag="t")
        response.headers.add("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", algorithm=MD5, qop="auth"')
        response.headers.add("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", algorithm=SHA-256, qop="auth"')
        response.headers.add("Server", "bridge/test")
        return response

    def answer(self, request, response, transport=None, source=PEER):
        """Receive ``request`` (from ``source``) and answer it with ``response``; the bytes sent and in."""
        data = request.to_bytes()
        self.layer.receive(parse_datagram(data), transport or self.udp, source)
        transaction = self.user.events[-1][1]
        transaction.respond(response)
        sent = (transport or self.udp).sent
        return [len(message.to_bytes()) for _, message, _ in sent], len(data)

    def test_answers_no_longer_than_the_request(self):
        """To an unverified UDP source a response is cut down until it is no longer than the request:
        only the headers every response copies (Server, Allow... dropped), the standard reason.  When
        even that is longer, the excess is paid from the source's allowance, and once that is spent
        nothing is sent."""
        request = make_request("MESSAGE")
        response = make_response(request, 200, reason="OK (with a long explanation of nothing at all)",
                                 to_tag="t")
        for name in ("Allow", "Accept", "Supported", "Server"):
            response.headers.add(name, "x" * 40)
        sizes, size = self.answer(request, response)
        self.assertLessEqual(sizes[0], size)
        [(_, sent, _)] = self.udp.sent
        self.assertEqual((sent.status, sent.reason, sent.headers.get("Allow")), (200, "OK", None))
        tiny = small_register(new_branch())
        self.answer(tiny, make_response(tiny, 423, headers=[("Min-Expires", "60")], to_tag="a-long-to-tag" * 3))
        self.assertEqual(self.udp.statuses(), [200, 423])
        while self.layer.allowance.take(PEER[0], 1):
            pass  # the source's allowance spent (the clock stands still)
        tiny = small_register(new_branch())
        self.answer(tiny, make_response(tiny, 423, headers=[("Min-Expires", "60")], to_tag="a-long-to-tag" * 3))
        self.assertEqual(self.udp.statuses(), [200, 423])
        self.clock.advance(ExcessAllowance.REFILL_SECONDS)
        self.assertTrue(self.layer.allowance.take(PEER[0], ExcessAllowance.BURST_BYTES))

    def test_small_request_gets_one_challenge(self):
        """A challenge to a short request keeps its first WWW-Authenticate only (and it is still sent:
        a phone must be able to authenticate); a long request gets every challenge."""
        tiny = small_register(new_branch())
        sizes, size = self.answer(tiny, self.challenge(tiny))
        [(_, sent, _)] = self.udp.sent
        self.assertEqual(len(sent.headers.get_all("WWW-Authenticate")), 1)
        self.assertIn("MD5", sent.headers.get("WWW-Authenticate"))
        long = make_request("REGISTER")
        long.headers.add("User-Agent", "a softphone " * 40)
        self.answer(long, self.challenge(long))
        self.assertEqual(len(self.udp.sent[1][1].headers.get_all("WWW-Authenticate")), 2)

    def test_verified_and_reliable_answers_are_whole(self):
        """Once the sender proved who it is (Request.verified), or over TCP, the response goes whole."""
        request = make_request("REGISTER")
        self.layer.receive(wire(request), self.udp, PEER)
        transaction, received = self.user.events[-1][1:]
        received.verified = True
        response = self.challenge(received)
        response.status = 200
        transaction.respond(response)
        self.assertEqual(self.udp.sent[0][1].headers.get("Server"), "bridge/test")
        self.layer.receive(wire(make_request("REGISTER")), self.tcp, PEER)
        self.user.events[-1][1].respond(self.challenge(make_request("REGISTER")))
        self.assertEqual(len(self.tcp.sent[0][1].headers.get_all("WWW-Authenticate")), 2)


class LimitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.user = FakeUser()
        self.udp = FakeTransport(self.clock)

    def test_past_the_count_503_with_retry_after(self):
        """Past max_transactions live server transactions a new request is answered 503 with
        Retry-After, statelessly, and never reaches the user; once one ends, requests are taken again."""
        layer = TransactionLayer(self.clock, self.user, max_transactions=2)
        for _ in range(3):
            message = make_request("MESSAGE")
            message.body = b"a message long enough to be answered 503 with Retry-After"
            layer.receive(wire(message), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        [(_, busy, _)] = self.udp.sent
        self.assertEqual((busy.status, busy.headers.get("Retry-After")), (503, str(RETRY_AFTER_SECONDS)))
        self.assertEqual(len(layer.server), 2)
        self.user.events[0][1].respond(make_response(self.user.events[0][2], 200))
        self.clock.advance(33)
        layer.receive(wire(make_request("MESSAGE")), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request", "request"])

    def test_past_the_bytes_503(self):
        """The bytes of the requests the transactions hold are bounded too: a large request that would
        pass max_transaction_bytes gets 503, and the count falls when transactions end."""
        first = make_request("MESSAGE")
        first.body = b"x" * 600
        layer = TransactionLayer(self.clock, self.user, max_transaction_bytes=1000)
        layer.receive(wire(first), self.udp, PEER)
        held = layer.server_bytes
        self.assertGreater(held, 600)
        second = make_request("MESSAGE")
        second.body = b"y" * 600
        layer.receive(wire(second), self.udp, PEER)
        self.assertEqual(self.udp.statuses(), [503])
        self.assertEqual(layer.server_bytes, held)
        self.user.events[0][1].respond(make_response(first, 200))
        self.clock.advance(33)
        self.assertEqual((layer.server, layer.server_bytes), ({}, 0))

    def test_answered_ones_do_not_count_against_the_limits(self):
        """Only transactions not answered yet count against max_transactions: a steady rate of requests
        answered at once is never refused, whatever their number over timer J."""
        layer = TransactionLayer(self.clock, self.user, max_transactions=2)
        for _ in range(50):
            layer.receive(wire(make_request("MESSAGE")), self.udp, PEER)
            self.user.events[-1][1].respond(make_response(self.user.events[-1][2], 202))
            self.clock.advance(0.1)
        self.assertEqual(self.udp.statuses(), [202] * 50)
        self.assertEqual(len(layer.answered.entries), 50)

    def test_answers_kept_are_bounded_oldest_first(self):
        """Past max_transaction_bytes of kept answers, the oldest are forgotten (a retransmission of one
        is then a new request) and the newest still absorb theirs."""
        layer = TransactionLayer(self.clock, self.user, max_transaction_bytes=3000)
        requests = [make_request("MESSAGE") for _ in range(20)]
        for request in requests:
            layer.receive(wire(request), self.udp, PEER)
            self.user.events[-1][1].respond(make_response(self.user.events[-1][2], 202))
        self.assertLessEqual(layer.answered.bytes, 3000)
        kept = len(layer.answered.entries)
        self.assertTrue(0 < kept < 20)
        layer.receive(wire(requests[-1]), self.udp, PEER)
        self.assertEqual(len(self.user.events), 20)
        layer.receive(wire(requests[0]), self.udp, PEER)
        self.assertEqual(len(self.user.events), 21)

    def test_retransmission_to_an_unverified_source_pays_again(self):
        """An answer longer than its request, sent again to each retransmission, is paid from the
        allowance each time: a spoofed source that replays one request soon gets nothing."""
        layer = TransactionLayer(self.clock, self.user)
        request = make_request("OPTIONS")
        layer.receive(wire(request), self.udp, PEER)
        answer = make_response(self.user.events[0][2], 200)
        answer.headers.add("Allow", "INVITE, ACK, CANCEL, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, REGISTER")
        answer.headers.add("Accept", "text/plain, application/pidf+xml, message/cpim")
        self.user.events[0][1].respond(answer)
        sent = len(self.udp.sent)
        self.assertEqual(sent, 1)
        for _ in range(200):
            layer.receive(wire(request), self.udp, PEER)
        self.assertLess(len(self.udp.sent), 200)
        self.assertGreater(len(self.udp.sent), 1)

    def test_invites_and_acks_hold_nothing(self):
        """INVITEs and ACKs are answered past the limit too: they hold no transaction."""
        layer = TransactionLayer(self.clock, self.user, max_transactions=1)
        layer.receive(wire(make_request("MESSAGE")), self.udp, PEER)
        layer.receive(wire(make_request("INVITE")), self.udp, PEER)
        layer.receive(wire(make_request("ACK")), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request", "request"])
