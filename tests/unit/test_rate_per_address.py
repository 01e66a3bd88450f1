"""RatePerAddress: a token bucket per peer address, on a fake clock."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.streams.base import RatePerAddress


class RatePerAddressTests(SynchronousTestCase):
    def test_burst_then_rate(self):
        """The burst passes at once; each event after it waits for its share of the rate, queued
        behind those before it; time refills the bucket."""
        clock = Clock()
        rate = RatePerAddress(clock, rate=2.0, burst=3)
        self.assertEqual([rate.delay("a") for _ in range(5)], [0.0, 0.0, 0.0, 0.5, 1.0])
        self.assertEqual(rate.delay("b"), 0.0)
        clock.advance(10)
        self.assertEqual(rate.delay("a"), 0.0)

    def test_table_is_bounded(self):
        """Past max_tracked addresses those whose buckets are full again are forgotten; if none is,
        new addresses share one bucket instead of growing the table."""
        clock = Clock()
        rate = RatePerAddress(clock, rate=1.0, burst=2, max_tracked=3)
        for key in ("a", "b", "c"):
            rate.delay(key)
        clock.advance(5)
        rate.delay("d")
        self.assertEqual(set(rate._buckets), {"d"})
        for key in ("e", "f"):
            rate.delay(key)
        self.assertEqual([rate.delay(key) for key in ("g", "h", "i")], [0.0, 0.0, 1.0])
        self.assertEqual(set(rate._buckets), {"d", "e", "f", None})
