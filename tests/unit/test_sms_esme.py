"""The ESME protocol and SMSC link against small fake SMSCs: StringTransport, Clock, no sleeping."""

import io
import struct

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration, ctl
from bridge.config import SMSConfig, SMSCConfig
from bridge.core.storage.memory import MemoryStorage
from bridge.gateways.sms import pdu as pdus
from bridge.gateways.sms.esme import SMSCLink
from bridge.gateways.sms.queue import OutboundQueue

from tests.unit.helpers import result_of


class FakeSMSC:
    """An SMSC on StringTransports: every connection the link opens lands here."""

    def __init__(self, refuse=0):
        self.connections = []
        self.refuse = refuse  # connection attempts to refuse first
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return defer.fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2775))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return defer.succeed(protocol)

    @property
    def protocol(self):
        return self.connections[-1][0]

    @property
    def transport(self):
        return self.connections[-1][1]

    def received(self):
        """The PDUs the ESME wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        framer = pdus.Framer()
        return [pdus.decode(frame) for frame in framer.feed(data)]

    def send(self, command, sequence, status=0, **fields):
        self.protocol.dataReceived(pdus.encode(command, sequence, status, **fields))

    def answer(self, request, status=0, **fields):
        self.send(request.command + "_resp", request.sequence, status, **fields)

    def bind(self, status=0):
        """Answer the bind the ESME sent; the bind PDU."""
        (bind,) = self.received()
        assert bind.command == "bind_transceiver", bind.command
        self.answer(bind, status, system_id="fake")
        return bind

    def drop(self):
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionDone()))


def smsc_config(**changes):
    values = dict(system_id="bridge", password="pw", system_type="XMPP", source_addr="1000", window=2,
                  submit_rate_per_second=1000.0, enquire_link_seconds=30.0, response_timeout_seconds=10.0,
                  reconnect_min_seconds=1.0, reconnect_max_seconds=8.0, throttle_backoff_seconds=2.0)
    values.update(changes)
    return SMSCConfig(**values)


class Rig:
    """A link to a fake SMSC fed by a real queue on in-memory storage."""

    def __init__(self, smsc=None, sms=None, **config):
        self.clock = Clock()
        self.storage = MemoryStorage()
        self.finals = []
        self.mo = []
        self.queue = OutboundQueue(self.storage, "sms.localhost", self.clock, sms or SMSConfig(),
                                   lambda doc, outcome, reason: self.finals.append((doc, outcome, reason)),
                                   lambda link, received: self.mo.append(received))
        self.smsc = smsc or FakeSMSC()
        self.link = SMSCLink("main", smsc_config(**config), self.clock, self.smsc.connect, self.queue)
        self.queue.links = [self.link]

    def add(self, text="hello", number="+15551234567"):
        return result_of(self.queue.add(number, text, {"to": "alice@localhost/x", "from": "bob@localhost",
                                                       "id": "m1", "receipt": True}))

    def start(self):
        self.link.start()
        return self.smsc.bind()

    def settle(self):
        """Let the submit rate (1000/s here) release what it holds back."""
        for _ in range(20):
            self.clock.advance(0.001)

    def submits(self):
        self.settle()
        return [p for p in self.smsc.received() if p.command == "submit_sm"]


class BindTests(SynchronousTestCase):
    def test_bind_transceiver_fields(self):
        """The ESME binds as a transceiver with its system_id, password and system_type, version 3.4."""
        rig = Rig()
        bind = rig.start()
        self.assertEqual((bind.system_id, bind.password, bind.system_type, bind.interface_version),
                         (b"bridge", b"pw", b"XMPP", 0x34))
        self.assertIs(rig.link.protocol, rig.smsc.protocol)

    def test_refused_bind_reconnects_with_backoff(self):
        """A refused bind closes the connection; reconnects wait 1, 2, 4, 8, 8 seconds."""
        rig = Rig()
        rig.link.start()
        rig.smsc.bind(status=0x0E)
        self.assertTrue(rig.smsc.transport.disconnecting)
        rig.smsc.protocol.connectionLost(Failure(ConnectionDone()))
        delays = []
        for _ in range(5):
            before = len(rig.smsc.connections)
            waited = 0.0
            while len(rig.smsc.connections) == before:
                rig.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
            rig.smsc.bind(status=0x0E)
            rig.smsc.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0])

    def test_refused_connections_then_bind_resets_backoff(self):
        """Refused TCP connections back off too; a successful bind resets the delay."""
        smsc = FakeSMSC(refuse=3)
        rig = Rig(smsc)
        rig.link.start()
        for delay in (1, 2, 4):
            rig.clock.advance(delay)
        self.assertEqual(smsc.attempts, 4)
        smsc.bind()
        self.assertEqual(rig.link.reconnect_delay, 1.0)


class KeepaliveTests(SynchronousTestCase):
    def test_enquire_link_sent_and_timeout_drops(self):
        """An enquire_link goes out every 30 s; no answer within the response timeout drops the link."""
        rig = Rig()
        rig.start()
        rig.clock.advance(30)
        (enquire,) = rig.smsc.received()
        self.assertEqual(enquire.command, "enquire_link")
        rig.smsc.answer(enquire)
        rig.clock.advance(30)
        (enquire,) = rig.smsc.received()
        rig.clock.advance(10)
        self.assertTrue(rig.smsc.transport.disconnecting)

    def test_answers_smsc_enquire_link(self):
        """The SMSC's enquire_link is answered with enquire_link_resp of the same sequence."""
        rig = Rig()
        rig.start()
        rig.smsc.send("enquire_link", 77)
        (resp,) = rig.smsc.received()
        self.assertEqual((resp.command, resp.sequence, resp.status), ("enquire_link_resp", 77, 0))

    def test_garbage_gets_generic_nack(self):
        """An unknown command id is answered generic_nack ESME_RINVCMDID; an impossible length closes."""
        rig = Rig()
        rig.start()
        rig.smsc.protocol.dataReceived(struct.pack(">LLLL", 16, 0x00000099, 0, 5))
        (nack,) = rig.smsc.received()
        self.assertEqual((nack.command, nack.status, nack.sequence), ("generic_nack", pdus.ESME_RINVCMDID, 5))
        rig.smsc.protocol.dataReceived(struct.pack(">L", 3) + b"xxxx")
        (nack,) = rig.smsc.received()
        self.assertEqual((nack.command, nack.status), ("generic_nack", pdus.ESME_RINVCMDLEN))
        self.assertTrue(rig.smsc.transport.disconnecting)

    def test_pdus_split_across_reads(self):
        """PDUs are framed by command_length whatever the reads: byte by byte, or two in one read."""
        rig = Rig()
        rig.start()
        data = pdus.encode("enquire_link", 1) + pdus.encode("enquire_link", 2)
        for byte in data:
            rig.smsc.protocol.dataReceived(bytes([byte]))
        self.assertEqual([p.sequence for p in rig.smsc.received()], [1, 2])

    def test_unbind_from_smsc(self):
        """The SMSC's unbind is answered unbind_resp and the connection closes."""
        rig = Rig()
        rig.start()
        rig.smsc.send("unbind", 9)
        (resp,) = rig.smsc.received()
        self.assertEqual(resp.command, "unbind_resp")
        self.assertTrue(rig.smsc.transport.disconnecting)

    def test_clean_unbind_at_shutdown(self):
        """stop() sends unbind and fires once the connection is gone; no reconnection follows."""
        rig = Rig()
        rig.start()
        stopped = rig.link.stop()
        (unbind,) = rig.smsc.received()
        self.assertEqual(unbind.command, "unbind")
        self.assertNoResult(stopped)
        rig.smsc.answer(unbind)
        self.assertTrue(rig.smsc.transport.disconnecting)
        rig.smsc.protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        rig.clock.advance(100)
        self.assertEqual(len(rig.smsc.connections), 1)


class SubmitTests(SynchronousTestCase):
    def test_window_limits_outstanding_submits(self):
        """No more than `window` submit_sm are outstanding; each answer lets the next go."""
        rig = Rig(window=2)
        rig.start()
        for n in range(5):
            rig.add(f"message {n}")
        first = rig.submits()
        self.assertEqual(len(first), 2)
        rig.smsc.answer(first[0], message_id="a1")
        (third,) = rig.submits()
        self.assertEqual(third.short_message, b"message 2")

    def test_submit_fields(self):
        """submit_sm carries the source, the international destination, data_coding and receipts."""
        rig = Rig()
        rig.start()
        rig.add("привет")
        (submit,) = rig.smsc.received()
        self.assertEqual((submit.source_addr, submit.source_addr_ton, submit.destination_addr,
                          submit.dest_addr_ton, submit.dest_addr_npi, submit.data_coding,
                          submit.registered_delivery),
                         (b"1000", 1, b"15551234567", 1, 1, 8, 1))
        self.assertEqual(submit.short_message, "привет".encode("utf-16-be"))

    def test_submit_rate(self):
        """At 2 submits per second, four parts take 1.5 s to go out however large the window."""
        rig = Rig(window=100, submit_rate_per_second=2.0)
        rig.start()
        for n in range(4):
            rig.add(f"m{n}")
        seen = [len(rig.smsc.received())]
        for _ in range(3):
            rig.clock.advance(0.5)
            seen.append(len(rig.smsc.received()))
        self.assertEqual(seen, [1, 1, 1, 1])

    def test_throttled_backs_off_and_resends(self):
        """ESME_RTHROTTLED pauses submits (2 s, then 4 s) and the same part is sent again, once accepted."""
        rig = Rig()
        rig.start()
        rig.add("hello")
        (submit,) = rig.smsc.received()
        rig.smsc.answer(submit, pdus.ESME_RTHROTTLED)
        rig.clock.advance(1.9)
        self.assertEqual(rig.smsc.received(), [])
        rig.clock.advance(0.1)
        (again,) = rig.smsc.received()
        self.assertEqual(again.short_message, b"hello")
        rig.smsc.answer(again, pdus.ESME_RTHROTTLED)
        rig.clock.advance(3.9)
        self.assertEqual(rig.smsc.received(), [])
        rig.clock.advance(0.1)
        (third,) = rig.smsc.received()
        rig.smsc.answer(third, message_id="ok")
        self.assertEqual(rig.link.stats["throttled"], 2)
        self.assertEqual(rig.link.throttle_delay, 2.0)

    def test_transient_error_retried_then_permanent_failure(self):
        """ESME_RSYSERR is retried after retry_seconds up to max_attempts, then reported failed."""
        rig = Rig(sms=SMSConfig(max_attempts=2, retry_seconds=5.0))
        rig.start()
        rig.add("hello")
        (submit,) = rig.smsc.received()
        rig.smsc.answer(submit, pdus.ESME_RSYSERR)
        self.assertEqual(rig.smsc.received(), [])
        rig.clock.advance(5)
        (again,) = rig.smsc.received()
        rig.smsc.answer(again, pdus.ESME_RSYSERR)
        self.assertEqual([(outcome, reason) for _, outcome, reason in rig.finals],
                         [("failed", "SMSC status 0x08")])

    def test_permanent_error_fails_at_once(self):
        """A permanent status (invalid destination) fails the message without retrying."""
        rig = Rig()
        rig.start()
        rig.add("hello")
        (submit,) = rig.smsc.received()
        rig.smsc.answer(submit, 0x0B)
        self.assertEqual([outcome for _, outcome, _ in rig.finals], ["failed"])
        rig.clock.advance(600)
        self.assertEqual(rig.submits(), [])

    def test_dropped_link_resends_unanswered_parts_after_reconnect(self):
        """Parts whose submit_sm had no answer when the link dropped go out again after the rebind."""
        rig = Rig()
        rig.start()
        rig.add("one")
        rig.add("two")
        first = rig.submits()
        rig.smsc.answer(first[0], message_id="1")
        rig.smsc.drop()
        rig.add("three")
        rig.clock.advance(1)
        rig.smsc.bind()
        again = rig.submits()
        self.assertEqual([p.short_message for p in again], [b"two", b"three"])

    def test_response_timeout_drops_and_resends(self):
        """A submit_sm unanswered within the response timeout drops the link; the part is sent again."""
        rig = Rig()
        rig.start()
        rig.add("slow")
        rig.smsc.received()
        rig.clock.advance(10)
        self.assertTrue(rig.smsc.transport.disconnecting)
        self.assertEqual(rig.smsc.received(), [])
        rig.smsc.protocol.connectionLost(Failure(ConnectionDone()))
        rig.clock.advance(1)
        rig.smsc.bind()
        (again,) = rig.smsc.received()
        self.assertEqual(again.short_message, b"slow")


class ReceiptTests(SynchronousTestCase):
    def receipt(self, rig, message_id, stat="DELIVRD", sequence=50):
        text = f"id:{message_id} sub:001 dlvr:001 submit date:2401011200 done date:2401011201 stat:{stat} err:000"
        rig.smsc.send("deliver_sm", sequence, source_addr="15551234567", destination_addr="1000",
                      esm_class=0x04, short_message=text.encode())

    def test_receipt_in_decimal_matches_hex_id(self):
        """An SMSC that answers submit_sm with a hex id and reports receipts in decimal still matches."""
        rig = Rig()
        rig.start()
        rig.add("hello")
        (submit,) = rig.smsc.received()
        rig.smsc.answer(submit, message_id="1a2b")
        self.receipt(rig, str(0x1A2B))
        (resp,) = rig.smsc.received()
        self.assertEqual((resp.command, resp.sequence, resp.status), ("deliver_sm_resp", 50, 0))
        self.assertEqual([outcome for _, outcome, _ in rig.finals], ["delivered"])

    def test_receipt_in_hex_matches_decimal_id(self):
        """And the other way round: a decimal id reported in hex."""
        rig = Rig()
        rig.start()
        rig.add("hello")
        (submit,) = rig.smsc.received()
        rig.smsc.answer(submit, message_id="123456")
        self.receipt(rig, format(123456, "X"))
        self.assertEqual([outcome for _, outcome, _ in rig.finals], ["delivered"])

    def test_every_part_needs_its_receipt(self):
        """A message of two parts is delivered when both receipts came; an UNDELIV fails it."""
        rig = Rig()
        rig.start()
        rig.add("a" * 200)
        parts = rig.submits()
        self.assertEqual(len(parts), 2)
        rig.smsc.answer(parts[0], message_id="10")
        rig.smsc.answer(parts[1], message_id="11")
        self.receipt(rig, "10")
        self.assertEqual(rig.finals, [])
        self.receipt(rig, "11", stat="UNDELIV", sequence=51)
        self.assertEqual([(outcome, reason) for _, outcome, reason in rig.finals],
                         [("failed", "delivery receipt UNDELIV")])

    def test_mo_goes_to_the_gateway(self):
        """A deliver_sm that is not a receipt is handed over as mobile-originated and answered."""
        rig = Rig()
        rig.start()
        rig.smsc.send("deliver_sm", 60, source_addr="15551234567", destination_addr="1000", short_message=b"hi")
        self.assertEqual([m.short_message for m in rig.mo], [b"hi"])
        (resp,) = rig.smsc.received()
        self.assertEqual((resp.command, resp.status), ("deliver_sm_resp", 0))


class PersistenceTests(SynchronousTestCase):
    def test_restart_resends_unsent_parts_only(self):
        """After a restart, parts submitted are not sent again, nor are parts whose submit_sm was written
        and never answered (held, counted); parts never written are sent."""
        rig = Rig(window=2)
        rig.start()
        rig.add("one")
        rig.add("two")
        first = rig.submits()
        rig.smsc.answer(first[0], message_id="1")
        rig.add("three")
        rig.add("four")
        self.assertEqual([p.short_message for p in first + rig.submits()], [b"one", b"two", b"three"])
        # The process dies here: "two" and "three" were written but not answered, "four" never left.
        queue = OutboundQueue(rig.storage, "sms.localhost", Clock(), SMSConfig(), lambda *a: None)
        smsc = FakeSMSC()
        link = SMSCLink("main", smsc_config(window=10), queue.clock, smsc.connect, queue)
        queue.links = [link]
        result_of(queue.load())
        link.start()
        smsc.bind()
        for _ in range(20):
            queue.clock.advance(0.001)
        self.assertEqual([p.short_message for p in smsc.received() if p.command == "submit_sm"], [b"four"])
        self.assertEqual(queue.held_parts(), 2)
        self.assertEqual([part["state"] for part in result_of(rig.storage.get("sms.localhost", "000000000002",
                                                                              "sms-out"))["parts"]], ["held"])


class Claimed:
    """A claim of the queue whose ownership the test sets."""

    owned = True


class OwnershipTests(SynchronousTestCase):
    def test_no_submit_once_the_queue_is_lost_while_the_attempt_is_recorded(self):
        """The owner records an attempt (a slow write) and loses the queue before it is on disk: the
        submit_sm is never written, and the part is pending again (nothing left)."""
        rig = Rig()
        rig.queue.claim = claim = Claimed()
        rig.link.start()
        rig.add("late")
        commits = Clock()
        rig.storage.clock = commits
        rig.smsc.bind()  # the part is taken; its attempt is being recorded
        self.assertEqual(len(rig.link.in_flight), 1)
        self.assertEqual(rig.smsc.received(), [])
        claim.owned = False
        commits.advance(0)
        commits.advance(0)
        self.assertEqual([p for p in rig.submits()], [])
        self.assertEqual(rig.link.in_flight, set())
        [doc] = rig.queue.docs.values()
        self.assertEqual(doc["parts"][0]["state"], "pending")

    def test_a_late_answer_after_the_queue_was_lost_writes_nothing(self):
        """The answer to a submit_sm comes after the node lost the queue: its stale copy of the message is
        not written over what the new owner does; storage still says ``sending``, which the new owner
        holds."""
        rig = Rig()
        rig.queue.claim = claim = Claimed()
        rig.start()
        rig.add("late answer")
        [submit] = rig.submits()
        claim.owned = False
        rig.smsc.answer(submit, message_id="7")
        [key] = rig.queue.docs
        self.assertEqual([part["state"] for part in result_of(rig.storage.get("sms.localhost", key,
                                                                              "sms-out"))["parts"]], ["sending"])

    def test_a_node_that_does_not_own_the_queue_stores_and_forgets(self):
        """A node that does not serve the queue stores what it accepts and keeps nothing of it; the owner
        reads it at its next look (load) and sends it."""
        rig = Rig()
        rig.start()
        other = OutboundQueue(rig.storage, "sms.localhost", rig.clock, SMSConfig(), lambda *a: None, node="node2",
                              serving=False)
        key = result_of(other.add("+15551234567", "from node2", {}))
        self.assertEqual((key, other.docs, list(other.pending)), ("000000000001-node2", {}, []))
        self.assertEqual(rig.submits(), [])
        result_of(rig.queue.load())
        self.assertEqual([p.short_message for p in rig.submits()], [b"from node2"])

    def test_bridgectl_lists_the_held_parts(self):
        """bridgectl sms-held names each held part (key, part, number, SMSC) and counts them."""
        rig = Rig(window=2)
        rig.start()
        rig.add("one")
        rig.submits()
        queue = OutboundQueue(rig.storage, "sms.localhost", Clock(), SMSConfig(), lambda *a: None)
        result_of(queue.load())
        out = io.StringIO()
        ctl._sms_held(rig.storage, configuration.Config(), out, result_of)
        self.assertEqual(out.getvalue(), "000000000001\tpart 1 of 1\tto +15551234567\tSMSC main\n"
                                         "sms-held: 1 parts held\n")
