"""The metrics of issue 15 beyond the first set: routing and storage latency histograms, SIP transactions by
method and final class, SMS submits and receipts."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.counters import ROUTE_SECONDS_BUCKETS, Histogram
from bridge.core.router import RoutingTable
from bridge.core.storage import ArchiveItemNotFound, ArchiveQuery
from bridge.core.storage.memory import MemoryStorage
from bridge.core.storage.timed import TIMED_OPERATIONS, TimedStorage
from bridge.core.xmlstream import parse_element
from bridge.gateways.sip.message import make_response
from bridge.gateways.sip.transaction import Timers, TransactionLayer
from bridge.gateways.sms import pdu as pdus
from tests.unit.test_metrics import MetricsTestCase, scrape
from tests.unit.test_sip_transaction import FakeTransport, FakeUser, PEER, make_request, wire
from tests.unit.test_sms_gateway import GatewayRig


class FakeTimer:
    """A monotonic clock that moves only when told: ``step`` seconds at each reading after the first."""

    def __init__(self, step):
        self.now = 100.0
        self.step = step

    def __call__(self):
        self.now += self.step
        return self.now


class Route:
    def __init__(self):
        self.delivered = []

    def deliver(self, stanza):
        self.delivered.append(stanza)


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_upper_bounds_inclusive(self):
        """An observation equal to a bound falls in that bound's bucket; cumulative sums them up, infinity last."""
        histogram = Histogram((0.001, 0.01))
        for value in (0.001, 0.0005, 0.005, 2.0):
            histogram.observe(value)
        self.assertEqual(histogram.counts, [2, 1, 1])
        self.assertEqual(histogram.cumulative(), [(0.001, 2), (0.01, 3), (float("inf"), 4)])
        self.assertAlmostEqual(histogram.total, 2.0065)

    def test_route_is_timed(self):
        """Each stanza through the routing table is one observation of the time its route took; what is routed
        on its way (here the bounce of a stanza no route takes) is within that time, not observed again."""
        router = RoutingTable(timer=FakeTimer(0.0003))
        route = Route()
        router.addRoute("localhost", route)
        router.route(parse_element("<message to='a@localhost' from='b@localhost'/>"))
        self.assertEqual(len(route.delivered), 1)
        self.assertEqual(sum(router.route_seconds.counts), 1)
        self.assertAlmostEqual(router.route_seconds.total, 0.0003)
        self.assertEqual(router.route_seconds.counts[ROUTE_SECONDS_BUCKETS.index(0.0005)], 1)
        router.route(parse_element("<message to='a@nowhere' from='b@localhost'/>"))  # bounced back to localhost
        self.assertEqual(len(route.delivered), 2)
        self.assertEqual(sum(router.route_seconds.counts), 2)


class StorageTimingTests(SynchronousTestCase):
    def test_operations_timed_from_call_to_answer(self):
        """A storage operation is observed when its answer comes, failures too, and the answer is unchanged;
        what is not an operation is the storage's own."""
        inner = MemoryStorage()
        storage = TimedStorage(inner, timer=FakeTimer(0.002))
        self.successResultOf(storage.set("localhost", "alice", "roster", {"a": 1}))
        self.assertEqual(self.successResultOf(storage.get("localhost", "alice", "roster")), {"a": 1})
        self.failureResultOf(storage.archive_query("localhost", "alice", ArchiveQuery(after_id="nope")),
                             ArchiveItemNotFound)
        seconds = storage.operation_seconds
        self.assertEqual([sum(seconds[name].counts) for name in ("set", "get", "archive_query", "count")],
                         [1, 1, 1, 0])
        self.assertAlmostEqual(seconds["get"].total, 0.002)
        self.assertNotIn("archive_append", TIMED_OPERATIONS)
        self.assertIs(storage.archive_append.__self__, inner)
        # Found on the instance, not by ``__getattr__``'s failed lookup first: two appends a message.
        self.assertIs(object.__getattribute__(storage, "archive_append").__self__, inner)
        inner.available = False
        self.assertIs(storage.available, False)  # an attribute of the interface, not an operation


class SIPTransactionCountTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.user = FakeUser()
        self.layer = TransactionLayer(self.clock, self.user, Timers())
        self.transport = FakeTransport(self.clock)

    def test_server_final_responses_by_method_and_class(self):
        """A server transaction counts once, at its final response, by method and class; provisional ones
        and retransmissions do not count; an unknown method is "other"."""
        for method, status in (("MESSAGE", 202), ("MESSAGE", 403), ("FOO", 501)):
            self.layer.receive(wire(make_request(method)), self.transport, PEER)
            _, transaction, request = self.user.events[-1]
            transaction.respond(make_response(request, 100))
            transaction.respond(make_response(request, status))
            transaction.receive_request(request)
        counts = {key: count for key, count in self.layer.counts.items() if count}
        self.assertEqual(counts, {("server", "MESSAGE", "2xx"): 1, ("server", "MESSAGE", "4xx"): 1,
                                  ("server", "other", "5xx"): 1})

    def test_client_final_response_and_timeout(self):
        """A client transaction counts its final response once, or "timeout" when none came."""
        answered = self.layer.send_request(make_request("OPTIONS"), self.transport, PEER)
        final = wire(make_response(answered.request, 200))
        self.layer.receive(final, self.transport, PEER)
        self.layer.receive(final, self.transport, PEER)
        self.layer.send_request(make_request("MESSAGE"), self.transport, PEER)
        self.clock.advance(Timers().timeout + 1)
        counts = {key: count for key, count in self.layer.counts.items() if count}
        self.assertEqual(counts, {("client", "OPTIONS", "2xx"): 1, ("client", "MESSAGE", "timeout"): 1})


class SMSCountTests(SynchronousTestCase):
    def test_submits_and_receipts(self):
        """An accepted part, a rejected one, a failed receipt and a receipt for no message of ours are counted."""
        rig = GatewayRig()
        counters = rig.server.counters
        rig.write("+15557654321@sms.localhost", "hello", id="x1")
        (submit,) = rig.submits()
        rig.smsc.answer(submit, message_id="5")
        rig.receipt("5", stat="UNDELIV")
        rig.receipt("999")
        rig.write("+15557654321@sms.localhost", "again", id="x2")
        (submit,) = rig.submits()
        rig.smsc.answer(submit, status=pdus.ESME_RINVMSGLEN)
        for _ in range(50):
            rig.clock.advance(0.001)
        self.assertEqual(counters.sms_submits, {"accepted": 1, "rejected": 1, "retried": 0})
        self.assertEqual(counters.sms_receipts, {"delivered": 0, "failed": 1, "not final": 0, "unmatched": 1})


class ScrapeTests(MetricsTestCase):
    def test_latency_histograms_and_new_counters_are_exposed(self):
        """A scrape shows the routing histogram (one observation per routed stanza), the storage histogram by
        operation, SIP transactions and SMS counts, parsed by prometheus-client's own parser."""
        alice = self.harness.login("alice@localhost/a")
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        server = self.harness.server
        server.storage = TimedStorage(server.storage)
        self.successResultOf(server.storage.get("localhost", "alice", "roster"))
        before = scrape(self.site)
        for number in range(3):
            alice.send(f"<message to='bob@localhost/b' type='chat' id='m{number}'><body>hi</body></message>")
        server.counters.sip_transactions[("server", "REGISTER", "2xx")] += 2
        server.counters.sms_submits["accepted"] += 1
        after = scrape(self.site)
        self.assertEqual(after[("bridge_route_seconds_count", ())] - before[("bridge_route_seconds_count", ())], 3)
        self.assertEqual(after[("bridge_route_seconds_bucket", (("le", "+Inf"),))],
                         after[("bridge_route_seconds_count", ())])
        self.assertEqual(after[("bridge_storage_seconds_count", (("operation", "get"),))], 1)
        self.assertEqual(after[("bridge_sip_transactions_total",
                                (("method", "REGISTER"), ("outcome", "2xx"), ("side", "server")))], 2)
        self.assertNotIn(("bridge_sip_transactions_total", (("method", "INVITE"), ("outcome", "2xx"),
                                                            ("side", "server"))), after)
        self.assertEqual(after[("bridge_sms_submits_total", (("result", "accepted"),))], 1)
        self.assertEqual(after[("bridge_sms_receipts_total", (("result", "unmatched"),))], 0)
