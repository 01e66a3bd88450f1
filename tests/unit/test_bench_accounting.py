"""The bench's own bookkeeping: how the soak accounts for messages, how the flood reads the server's log, and
how the cluster bench spreads its loaders and sums its nodes' CPU.

Pure functions of bench/soak.py, bench/flood.py and bench/cluster_bench.py; the benchmarks themselves never
run in the tests.
"""

import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from bench.cluster_bench import LOADERS, mixed_figures, penalty, plan, summary
from bench.flood import log_counts
from bench.soak import Ledger


def message(xml):
    return ET.fromstring(xml.replace("<message", "<message xmlns='jabber:client'", 1))


class LedgerTests(SynchronousTestCase):
    def setUp(self):
        self.ledger = Ledger()
        self.ledger.sent.update({"m1": 2, "m2": 3, "m3": 4})

    def test_each_message_is_received_refused_or_missing(self):
        """A message read by its recipient is received, one answered with an error is refused with
        the error's condition, and one never seen again is missing."""
        self.ledger.on_message(2, message("<message id='m1'><body>m1</body></message>"))
        self.ledger.on_message(3, message(
            "<message id='m2' type='error'><error type='wait'>"
            "<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"))
        figures = self.ledger.account()
        self.assertEqual((figures["sent"], figures["received"], figures["refused"], figures["missing"]),
                         (3, 1, 1, 1))
        self.assertEqual(figures["refused_by_condition"], {"resource-constraint": 1})
        self.assertEqual(figures["missing_examples"], ["m3"])

    def test_a_message_read_by_someone_else_is_not_received(self):
        """A message that reaches a user it was not sent to is counted as unexpected and stays
        missing; one read twice is received once and counted as a duplicate."""
        self.ledger.on_message(9, message("<message id='m1'><body>m1</body></message>"))
        self.ledger.on_message(3, message("<message id='m2'><body>m2</body></message>"))
        self.ledger.on_message(3, message("<message id='m2'><body>m2</body></message>"))
        figures = self.ledger.account()
        self.assertEqual((figures["received"], figures["received_twice_or_more"], figures["unexpected"],
                          figures["missing"]), (1, 1, 1, 2))


class LogCountsTests(SynchronousTestCase):
    def test_lines_are_counted_by_limit_and_by_whose_connection(self):
        """A log line naming a connection of the hostile load is counted for its kind, one from an
        honest address for the honest clients, and lines no limit matches are not counted."""
        text = "\n".join([
            "x stream error not-well-formed for 127.0.0.5:4000: junk",
            "x stream error policy-violation for 127.0.3.10:5000: too many connections from your address",
            "x nothing to see here",
        ])
        counts = log_counts(text, {"127.0.0.5:4000": "garbage"}, {"127.0.3.10"}, {"127.0.0.5"})
        self.assertEqual(counts, {"c2s cut: bad XML": {"garbage": 1},
                                  "c2s refused: connections per address": {"honest": 1}})


class Node:
    def __init__(self, name):
        self.name = name


def loader_result(cores, rate):
    """What one bench.load messages run reports, over a 2 s window."""
    return {"server_cpu_s": 2 * cores, "duration_s": 2.0, "messages_per_s": rate, "latency_p50_ms": 1.0,
            "latency_p99_ms": 2.0 if rate > 500 else 9.0, "lost": 0, "loader_cpu_fraction": 0.1,
            "received_total": 1000}


class ClusterBenchTests(SynchronousTestCase):
    def test_every_node_count_has_the_same_loaders_evenly(self):
        """Every run has LOADERS loaders, as many sending from each node; (N - 1) / N of them cross."""
        for count, crossing in ((1, 0), (2, 3), (3, 4)):
            nodes = [Node(f"node{i}") for i in range(1, count + 1)]
            for layout, crossed in (("same", 0), ("cross", LOADERS if count > 1 else 0), ("mixed", crossing)):
                loaders = plan(nodes, layout, 2)
                self.assertEqual(len(loaders), LOADERS)
                senders = [sender.name for sender, _, _, _ in loaders]
                self.assertEqual({senders.count(node.name) for node in nodes}, {LOADERS // count})
                self.assertEqual(sum(1 for sender, receiver, _, _ in loaders if sender is not receiver), crossed)
                self.assertEqual([offset for _, _, offset, _ in loaders], [4 * i for i in range(LOADERS)])

    def test_each_node_counted_once_and_the_model_checked(self):
        """A node's CPU is the mean of what its loaders saw (not their sum); the CPU per message is the
        nodes' cores over the messages per second; the model takes the share of messages that crossed."""
        nodes = [Node("node1"), Node("node2")]
        results = {}
        for layout, cross_rate in (("same", 1000), ("cross", 250), ("mixed", 250)):
            loaders = plan(nodes, layout, 2)
            loaded = [loader_result(0.3, cross_rate if sender is not receiver else 1000)
                      for sender, receiver, _, _ in loaders]
            results[layout + "2"] = summary(loaders, loaded, redis_cpu=0.01)
            if layout == "mixed":
                results["mixed2"].update(mixed_figures(loaders, loaded))
        self.assertEqual(results["same2"]["node_cpu_cores"], {"node1": 0.3, "node2": 0.3})
        self.assertEqual(results["same2"]["server_cpu_us_per_message"], 100.0)  # 0.6 cores / 6000 messages/s
        self.assertEqual(results["cross2"]["server_cpu_us_per_message"], 400.0)
        self.assertEqual(results["mixed2"]["crossing_message_fraction"], 0.2)  # 750 of 3750 messages/s
        self.assertEqual((results["mixed2"]["cross_pairs_p99_ms"], results["mixed2"]["same_pairs_p99_ms"]),
                         (9.0, 2.0))
        check = penalty(results, 2)
        self.assertEqual((check["cpu_us_per_message"], check["model_mixed_cpu_us_per_message"],
                          check["measured_mixed_cpu_us_per_message"]), (300.0, 160.0, 160.0))
