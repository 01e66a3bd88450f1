"""The log budget (core/logbudget.py): the lines a flood of refusals may log are bounded."""

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from bridge.core import logbudget
from bridge.core.logbudget import INTERVAL_SECONDS, LINES_PER_INTERVAL, LogBudget


class LogBudgetTests(SynchronousTestCase):
    def test_lines_past_the_share_are_counted_and_told_once(self):
        """Each kind gets its share of lines in an interval; the rest are left out, and one line at the
        end of the interval says how many; the next interval starts afresh."""
        events = []
        self.patch(logbudget, "log", Logger(observer=events.append))
        clock = Clock()
        budget = LogBudget(clock)
        allowed = [budget.allows("stream errors") for _ in range(LINES_PER_INTERVAL + 30)]
        self.assertEqual(allowed, [True] * LINES_PER_INTERVAL + [False] * 30)
        self.assertTrue(budget.allows("BOSH refusals"))
        self.assertEqual(events, [])
        clock.advance(INTERVAL_SECONDS)
        self.assertEqual([(event["kind"], event["left_out"]) for event in events], [("stream errors", 30)])
        self.assertTrue(budget.allows("stream errors"))
        clock.advance(INTERVAL_SECONDS)
        self.assertEqual(len(events), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_says_what_was_left_out_and_leaves_no_timer(self):
        """When its owner stops, the budget logs what it left out so far and cancels its timer."""
        events = []
        self.patch(logbudget, "log", Logger(observer=events.append))
        clock = Clock()
        budget = LogBudget(clock)
        for _ in range(LINES_PER_INTERVAL + 1):
            budget.allows("BOSH refusals")
        budget.stop()
        self.assertEqual([(event["kind"], event["left_out"]) for event in events], [("BOSH refusals", 1)])
        self.assertEqual(clock.getDelayedCalls(), [])

