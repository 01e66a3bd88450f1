"""A bound on the log lines that peers can cause.

Every connection refused, every stream ended with an error, is worth a line
of log, until a flood makes thousands of them a second: formatting and
writing a line costs the reactor more than the refusal it tells of, and the
lines fill the disk.  A budget lets the first ``LINES_PER_INTERVAL`` lines
of each kind through in every ``INTERVAL_SECONDS``, counts the others, and
says at the end of the interval how many it left out.
"""

from twisted.logger import Logger

log = Logger()

LINES_PER_INTERVAL = 100
INTERVAL_SECONDS = 10.0


class LogBudget:
    def __init__(self, clock):
        self._clock = clock
        self._counts = {}  # kind -> lines asked for in this interval (the kinds are a few fixed names)
        self.totals = {}  # kind -> lines asked for since the start: the refusals and stream errors, for metrics
        self._timer = None

    def allows(self, kind):
        """Whether a line of ``kind`` may be logged now: False once the kind's share of the interval is used."""
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        self.totals[kind] = self.totals.get(kind, 0) + 1
        if self._timer is None:
            self._timer = self._clock.callLater(INTERVAL_SECONDS, self._interval_ended)
        return count <= LINES_PER_INTERVAL

    def stop(self):
        """Its owner stops: say what was left out, and leave no timer behind."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._interval_ended()

    def _interval_ended(self):
        self._timer = None
        counts, self._counts = self._counts, {}
        for kind, count in sorted(counts.items()):
            if count > LINES_PER_INTERVAL:
                log.info("{left_out} lines of {kind} left out of the log in the last {seconds:.0f} s ({count} in all)",
                         left_out=count - LINES_PER_INTERVAL, kind=kind, seconds=INTERVAL_SECONDS, count=count)
