"""Tests for bridge.gateways.sip.transaction: RFC 3261 section 17 on a fake clock and fake transports."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.message import Request, make_response, parse_datagram
from bridge.gateways.sip.transaction import (
    TransactionLayer, new_branch, response_address, server_key,
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
        """Over UDP the completed transaction lives 64*T1 to absorb retransmissions; over TCP it ends at once."""
        request = make_request("OPTIONS")
        self.layer.receive(wire(request), self.udp, PEER)
        self.user.events[0][1].respond(make_response(request, 200))
        self.advance_to(31.9)
        self.assertEqual(len(self.layer.server), 1)
        self.advance_to(32.1)
        self.assertEqual(self.layer.server, {})
        self.layer.receive(wire(make_request("OPTIONS")), self.tcp, PEER)
        self.user.events[-1][1].respond(make_response(request, 200))
        self.assertEqual(self.layer.server, {})

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


class ServerInviteTests(Base):
    def receive_invite(self, transport=None):
        request = make_request("INVITE")
        self.layer.receive(wire(request), transport or self.udp, PEER)
        return request, self.user.events[-1][1]

    def test_trying_after_200ms(self):
        """An INVITE the user has not answered within 200 ms gets 100 Trying."""
        self.receive_invite()
        self.advance_to(0.15)
        self.assertEqual(self.udp.sent, [])
        self.advance_to(0.25)
        self.assertEqual(self.udp.statuses(), [100])

    def test_prompt_answer_has_no_trying(self):
        """An INVITE answered at once gets no 100 Trying."""
        request, transaction = self.receive_invite()
        transaction.respond(make_response(request, 501, to_tag="n"))
        self.advance_to(0.3)
        self.assertEqual(self.udp.statuses(), [501])

    def test_488_retransmitted_until_ack_then_ack_absorbed(self):
        """A 488 is retransmitted by Timer G until the ACK, which the transaction absorbs; Timer I ends it."""
        request, transaction = self.receive_invite()
        transaction.respond(make_response(request, 488, to_tag="n"))
        self.advance_to(3.6)
        self.assertEqual(self.udp.times(), [0, 0.5, 1.5, 3.5])
        # a retransmitted INVITE gets the 488 again and does not reach the user
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(len(self.udp.sent), 5)
        ack = make_request("ACK", branch=request.top_via.branch)
        ack.headers.set("To", "<sip:bob@example.com>;tag=n")
        self.layer.receive(wire(ack), self.udp, PEER)
        self.layer.receive(wire(ack), self.udp, PEER)
        self.assertEqual(transaction.state, "confirmed")
        self.advance_to(4.9)
        self.assertEqual(len(self.udp.sent), 5)
        self.assertEqual(len(self.layer.server), 1)
        self.advance_to(9)
        self.assertEqual(self.layer.server, {})
        self.assertEqual(self.user.kinds(), ["request"])
        self.assertEqual(set(self.udp.statuses()), {488})

    def test_timer_g_caps_at_t2_and_timer_h(self):
        """Without an ACK the final response is resent at intervals capped at T2 and Timer H times out at 32 s."""
        request, transaction = self.receive_invite()
        transaction.respond(make_response(request, 501, to_tag="n"))
        self.advance_to(40)
        self.assertEqual(self.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(self.user.kinds(), ["request", "timeout"])
        self.assertEqual(self.layer.server, {})

    def test_reliable_invite(self):
        """Over TCP the final response is not retransmitted and the ACK ends the transaction (Timer I = 0)."""
        request, transaction = self.receive_invite(self.tcp)
        transaction.respond(make_response(request, 488, to_tag="n"))
        self.advance_to(5)
        self.assertEqual(self.tcp.statuses(), [488])
        ack = make_request("ACK", branch=request.top_via.branch)
        ack.headers.set("To", "<sip:bob@example.com>;tag=n")
        self.layer.receive(wire(ack), self.tcp, PEER)
        self.assertEqual(self.layer.server, {})

    def test_rfc2543_ack_matched_by_to_tag(self):
        """Without branches, the ACK is matched to the INVITE when its To tag is the response's."""
        request = make_request("INVITE", branch=False)
        self.layer.receive(wire(request), self.udp, PEER)
        transaction = self.user.events[0][1]
        transaction.respond(make_response(request, 488, to_tag="n"))
        stranger = make_request("ACK", branch=False)
        stranger.headers.set("To", "<sip:bob@example.com>;tag=other")
        self.layer.receive(wire(stranger), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        ack = make_request("ACK", branch=False)
        ack.headers.set("To", "<sip:bob@example.com>;tag=n")
        self.layer.receive(wire(ack), self.udp, PEER)
        self.assertEqual(transaction.state, "confirmed")
        self.assertEqual(self.user.kinds(), ["request", "request"])

    def test_2xx_accepted_state(self):
        """After a 2xx, retransmitted INVITEs are absorbed (RFC 6026) and the ACK goes to the user."""
        request, transaction = self.receive_invite()
        transaction.respond(make_response(request, 200, to_tag="ok"))
        self.layer.receive(wire(request), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request"])
        ack = make_request("ACK", branch=request.top_via.branch)
        self.layer.receive(wire(ack), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request", "request"])
        self.assertIsNone(self.user.events[1][1])
        self.advance_to(32.1)
        self.assertEqual(self.layer.server, {})

    def test_cancel_is_its_own_transaction(self):
        """A CANCEL with the INVITE's branch is a separate transaction that finds the INVITE."""
        request, invite_transaction = self.receive_invite()
        cancel = make_request("CANCEL", branch=request.top_via.branch)
        self.layer.receive(wire(cancel), self.udp, PEER)
        cancel_transaction = self.user.events[-1][1]
        self.assertIsNot(cancel_transaction, invite_transaction)
        self.assertIs(self.layer.matching_invite(self.user.events[-1][2]), invite_transaction)
        self.assertNotEqual(server_key(cancel), invite_transaction.key)

    def test_unmatched_ack_goes_to_user(self):
        """An ACK matching no transaction (the ACK of a 2xx) is handed to the user with no transaction."""
        self.layer.receive(wire(make_request("ACK")), self.udp, PEER)
        self.assertEqual(self.user.kinds(), ["request"])
        self.assertIsNone(self.user.events[0][1])
        self.assertEqual(self.layer.server, {})
