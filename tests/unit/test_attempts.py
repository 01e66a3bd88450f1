"""The failed-login counter shared by XMPP SASL and SIP digest (bridge.core.attempts): its window and its bound."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.attempts import FailedAttempts


class FailedAttemptsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.attempts = FailedAttempts(self.clock, max_sources=5)

    def fail(self, host, times=1):
        for _ in range(times):
            self.attempts.failed(host)

    def test_blocked_past_the_limit_within_the_window(self):
        """Ten failures in a minute block that address, and only that one, until the minute has passed."""
        self.fail("192.0.2.1", FailedAttempts.LIMIT - 1)
        self.assertFalse(self.attempts.blocked("192.0.2.1"))
        self.fail("192.0.2.1")
        self.assertTrue(self.attempts.blocked("192.0.2.1"))
        self.assertFalse(self.attempts.blocked("192.0.2.2"))
        self.clock.advance(FailedAttempts.WINDOW_SECONDS + 1)
        self.assertFalse(self.attempts.blocked("192.0.2.1"))

    def test_expired_entries_pruned(self):
        """Addresses whose failures left the window are forgotten without being asked about again."""
        for index in range(4):
            self.fail(f"192.0.2.{index}")
        self.assertEqual(len(self.attempts), 4)
        self.clock.advance(FailedAttempts.WINDOW_SECONDS + 1)
        self.fail("198.51.100.1")
        self.assertEqual(len(self.attempts), 1)

    def test_each_counter_holds_at_most_the_limit(self):
        """An address failing on and on keeps no more than LIMIT times: its counter does not grow."""
        self.fail("192.0.2.1", 1000)
        self.assertEqual(len(self.attempts._times["192.0.2.1"]), FailedAttempts.LIMIT)
        self.assertTrue(self.attempts.blocked("192.0.2.1"))

    def test_bounded_and_the_overflow_is_limited_together(self):
        """A flood of failing addresses fills the table to its bound and no further; the addresses that
        find no room share one counter, so a guesser among them is still stopped, while an address
        already tracked keeps its own count."""
        self.fail("192.0.2.1")
        for index in range(100):
            self.fail(f"203.0.113.{index}")
        self.assertLessEqual(len(self.attempts), 5 + 1)
        self.assertTrue(self.attempts.blocked("198.51.100.7"))  # never failed, but counted with the flood
        self.assertFalse(self.attempts.blocked("192.0.2.1"))
        self.clock.advance(FailedAttempts.WINDOW_SECONDS + 1)
        self.assertFalse(self.attempts.blocked("198.51.100.7"))
        self.assertEqual(len(self.attempts), 0)
