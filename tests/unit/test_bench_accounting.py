"""The bench's own bookkeeping: how the soak accounts for messages and how the flood reads the server's log.

Pure functions of bench/soak.py and bench/flood.py; the benchmarks themselves never run in the tests.
"""

import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

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
