"""Triage (core/triage.py): while the process is saturated, peers that have not authenticated
wait their turn, and authenticated sessions do not."""

import itertools
import socket

from twisted.internet import protocol, tcp
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.triage import WINDOW_SECONDS, AcceptGate, Gate, Triage
from bridge.gateways.bosh import BoshService
from bridge.gateways.sip.message import parse_datagram
from bridge.gateways.sip.transport import UDPTransport
from tests.unit.helpers import Harness, scram_login
from tests.unit.test_bosh import BoshClient
from tests.unit.test_http import HTTPTestCase, StubBosh
from tests.unit.test_sip_registrar import SOURCE, Phone, RegistrarTestCase
from tests.unit.test_sip_transport import FakeDatagramTransport, request_text

COST = 0.02  # what each piece of measured work takes, by the fake timer: twice the share of a window
SHARE = 0.1


class ProcessCPU:
    """The process's CPU seconds as the test says: ``busy()`` spends a whole window."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self):
        return self.seconds

    def busy(self):
        self.seconds += WINDOW_SECONDS


class Hold:
    def __init__(self):
        self.paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


def saturated_triage(clock, cpu):
    """A started Triage whose every measured piece of work costs COST, its process busy."""
    triage = Triage(clock, SHARE, cpu=cpu, timer=itertools.count(0, COST).__next__)
    triage.start()
    cpu.busy()
    clock.advance(WINDOW_SECONDS)
    assert triage.saturated
    return triage


class TriageTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        self.clock = self.harness.clock
        self.cpu = ProcessCPU()

    def test_time_to_spare_lets_everything_in(self):
        """A process that is not saturated rations nothing, however much the work costs."""
        triage = Triage(self.clock, SHARE, cpu=self.cpu, timer=itertools.count(0, COST).__next__)
        triage.start()
        self.clock.advance(WINDOW_SECONDS)
        taken, hold = [], Hold()
        gate = Gate(triage, hold, taken.append)
        for n in range(20):
            gate.receive(n)
        self.assertEqual((taken, hold.paused, triage.saturated), (list(range(20)), False, False))

    def test_saturated_work_waits_for_the_next_window_in_order(self):
        """Saturated, a peer's reads are kept and its reading paused, however little of the share is
        spent; the start of each window lets the waiting peers in, first come first, as far as the
        share allows, and their reads go in order."""
        triage = saturated_triage(self.clock, self.cpu)
        first, second = [], []
        first_hold, second_hold = Hold(), Hold()
        first_gate, second_gate = Gate(triage, first_hold, first.append), Gate(triage, second_hold, second.append)
        first_gate.receive("a1")
        first_gate.receive("a2")
        second_gate.receive("b1")
        first_gate.receive("a3")
        self.assertEqual((first, second), ([], []))
        self.assertTrue(first_hold.paused and second_hold.paused)
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual((first, second), (["a1", "a2", "a3"], []))
        self.assertEqual((first_hold.paused, second_hold.paused), (False, True))
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual(second, ["b1"])
        self.assertFalse(second_hold.paused)
        self.assertEqual(triage.deferred, 2)

    def test_saturation_is_logged_once_a_minute_at_most(self):
        """Saturation that comes and goes every tenth of a second is logged once, then again a minute
        later."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        triage = Triage(self.clock, SHARE, cpu=self.cpu)
        triage.start()
        for _ in range(300):  # 30 s, busy every other window
            self.cpu.busy()
            self.clock.advance(WINDOW_SECONDS)
            self.clock.advance(WINDOW_SECONDS)
        for _ in range(200):
            self.cpu.busy()
            self.clock.advance(WINDOW_SECONDS)
            self.clock.advance(WINDOW_SECONDS)
        logged = [e for e in events if "saturated" in str(e.get("log_format"))]
        self.assertEqual(len(logged), 2)

    def test_c2s_sessions_go_on_while_newcomers_wait(self):
        """Saturated, with the share spent: a logged-in user's messages are delivered at once, while a
        new connection's stream header waits for the next window."""
        self.harness.add_user("alice@localhost")
        self.harness.add_user("bob@localhost")
        alice = self.harness.login("alice@localhost/a")
        bob = self.harness.login("bob@localhost/b")
        self.harness.server.triage = saturated_triage(self.clock, self.cpu)
        newcomer = self.harness.connect(address="127.0.0.9")  # its connection costs the whole share
        newcomer.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                      "to='localhost' version='1.0'>")
        self.assertEqual((newcomer.received(), newcomer.headers), ([], []))
        for n in range(5):
            alice.send(f"<message to='bob@localhost/b' id='m{n}'><body>hi</body></message>")
        self.assertEqual([m["id"] for m in bob.received() if m.name == "message"], [f"m{n}" for n in range(5)])
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual([e.name for e in newcomer.received()], ["features"])
        self.assertEqual(len(newcomer.headers), 1)


class Readers:
    """The part of a reactor that a real listening port and its connections use: who is read from,
    and the clock."""

    def __init__(self, clock):
        self.readers = set()
        self.callLater = clock.callLater

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)


class AcceptGateTests(SynchronousTestCase):
    """Accepting new connections is unauthenticated work: a saturated process stops accepting past
    its share, and accepts again when triage lets the port in (a real port on loopback, the kernel
    holding the connections meanwhile)."""

    def setUp(self):
        self.clock = Clock()
        self.cpu = ProcessCPU()
        self.reactor = Readers(self.clock)
        self.accepted = []
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        factory.buildProtocol = lambda address: self.accepted.append(address) or protocol.Protocol()
        self.port = tcp.Port(0, factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        self.addCleanup(self.port.socket.close)
        self.addCleanup(self.close_accepted)

    def connect(self):
        """A client connects: the kernel completes the handshake, the connection waits to be accepted."""
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(client.close)

    def accept(self):
        """What the reactor does when the port is readable and in its set."""
        if self.port in self.reactor.readers:
            self.port.doRead()

    def close_accepted(self):
        for connection in self.reactor.readers - {self.port}:
            connection.socket.close()

    def test_time_to_spare_accepts_every_connection(self):
        triage = Triage(self.clock, SHARE, cpu=self.cpu, timer=itertools.count(0, COST).__next__)
        triage.start()
        self.clock.advance(WINDOW_SECONDS)
        AcceptGate(triage, self.port)
        for _ in range(3):
            self.connect()
            self.accept()
        self.assertEqual((len(self.accepted), self.port in self.reactor.readers), (3, True))

    def test_saturated_the_port_accepts_at_the_start_of_a_window(self):
        """Saturated, the port accepts nothing as connections come and leaves the reactor's readers;
        the next window accepts what waits in the kernel's queue, in one burst, and watches the port
        again."""
        triage = saturated_triage(self.clock, self.cpu)
        AcceptGate(triage, self.port)
        self.connect()
        self.accept()
        self.connect()
        self.accept()
        self.assertEqual((len(self.accepted), self.port in self.reactor.readers), (0, False))
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual((len(self.accepted), self.port in self.reactor.readers), (2, True))

    def test_accepting_takes_the_share_of_reads(self):
        """A window's accepting counts against its share: a peer whose read waits behind a port that
        spends the share is let in a window later."""
        triage = saturated_triage(self.clock, self.cpu)
        AcceptGate(triage, self.port)
        self.connect()
        self.accept()
        taken, hold = [], Hold()
        Gate(triage, hold, taken.append).receive(b"<stream:stream")
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual((len(self.accepted), taken, hold.paused), (1, [], True))
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual((taken, hold.paused), ([b"<stream:stream"], False))

    def test_a_port_closed_while_waiting_stays_out_of_the_reactor(self):
        triage = saturated_triage(self.clock, self.cpu)
        AcceptGate(triage, self.port)
        self.connect()
        self.accept()
        self.connect()
        self.port.stopListening()
        self.cpu.busy()
        self.clock.advance(WINDOW_SECONDS)
        self.assertEqual((len(self.accepted), self.port in self.reactor.readers), (0, False))


class HTTPTriageTests(HTTPTestCase):
    def test_requests_of_authenticated_sessions_go_on(self):
        """Saturated: a connection that has carried a request of an authenticated session (vouched
        for by BOSH) is read at once; another one's requests wait for the next windows."""
        self.make(bosh=StubBosh(answer_now=True))
        cpu = ProcessCPU()
        self.harness.server.triage = saturated_triage(self.harness.clock, cpu)
        trusted, stranger = self.connect(), self.connect(address="127.0.0.9")
        trusted.channel.vouched = True  # as Responder.vouch() does for an authenticated BOSH session
        stranger.request("POST", "/http-bind", b"<body rid='1'/>")
        stranger.request("POST", "/http-bind", b"<body rid='2'/>")
        for n in range(3):
            trusted.request("POST", "/http-bind", b"<body/>")
        self.assertEqual(len(trusted.responses()), 3)
        self.assertEqual(len(stranger.responses()), 0)
        cpu.busy()
        self.harness.clock.advance(WINDOW_SECONDS)
        self.assertEqual(len(stranger.responses()), 2)

    def test_bosh_vouches_for_authenticated_sessions_only(self):
        """BOSH vouches for the connection of a request of a session that has authenticated, not for
        the requests that create a session or come before SASL succeeds; vouch() marks the channel."""
        service = BoshService(self.make().server, self.harness.config.http)
        self.harness.add_user("alice@localhost")
        client = BoshClient(service)
        client.create()
        client.received()
        scram_login(client, "alice", "secret")
        before = len(client.responders)
        client.restart()
        self.assertEqual([r.vouched for r in client.responders], [False] * before + [True])
        http = self.connect()
        http.request("POST", "/http-bind", b"<body/>")
        [(_, responder)] = self.bosh.calls
        self.assertFalse(http.channel.vouched)
        responder.vouch()
        self.assertTrue(http.channel.vouched)


class SIPTriageTests(RegistrarTestCase):
    def test_sources_that_proved_nothing_are_dropped_while_saturated(self):
        """Saturated, with the share spent: a phone whose address answered a digest challenge right
        is still served over UDP; a datagram from an address that proved nothing is dropped (a phone
        would retransmit it)."""
        cpu = ProcessCPU()
        self.gateway.policy.triage = saturated_triage(self.clock, cpu)
        Phone(self).register()  # from SOURCE, through the gateway: its address is vouched for
        udp = UDPTransport(self.gateway, policy=self.gateway.policy)
        socket = FakeDatagramTransport()
        udp.makeConnection(socket)
        stranger = ("192.0.2.200", 5060)
        udp.datagramReceived(request_text(branch="z9hG4bK-s1"), stranger)  # within the share: answered
        udp.datagramReceived(request_text(branch="z9hG4bK-s2"), stranger)  # the share is spent: dropped
        udp.datagramReceived(request_text(branch="z9hG4bK-p1"), SOURCE)
        udp.datagramReceived(request_text(branch="z9hG4bK-p2"), SOURCE)
        answered = [(address, parse_datagram(data).headers.get("Via")) for data, address in socket.written]
        self.assertEqual([address for address, _ in answered], [stranger, SOURCE, SOURCE])
        self.assertNotIn("z9hG4bK-s2", " ".join(via for _, via in answered))

    def test_vouched_addresses_are_bounded(self):
        """The addresses vouched for are kept up to MAX_TRACKED_SOURCES: the expired go first, then
        the oldest; the newest stays."""
        policy = self.gateway.policy
        self.patch(policy, "MAX_TRACKED_SOURCES", 3)
        for n in range(3):
            policy.vouch(f"192.0.2.{n}")
        self.clock.advance(policy.VOUCHED_SECONDS + 1)  # those three expire
        for n in range(3, 8):
            policy.vouch(f"192.0.2.{n}")
        self.assertEqual(len(policy._vouched), 3)
        self.assertEqual([policy.vouched(f"192.0.2.{n}") for n in range(8)], [False] * 5 + [True] * 3)
