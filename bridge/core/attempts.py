"""Wrong credentials counted per source address, for every way of logging in.

Past ``LIMIT`` within ``WINDOW_SECONDS`` a source's attempts are refused
unread until the window has moved on, so that a password cannot be guessed
at the speed of the network: XMPP SASL and SIP digest both use it.  The
address is always the transport's peer, never one the request names.

The table is bounded: entries whose failures have all left the window are
pruned once per window, and at most ``max_sources`` addresses are tracked.
When a flood of failing addresses has filled the table, the addresses that
find no room share one counter, so a flood from many addresses (spoofed UDP
sources among them) cannot hide a guesser: they are limited together while
the addresses already tracked keep their own counts.
"""

OTHERS = object()  # the counter shared by the addresses that found the table full


class FailedAttempts:
    """Recent failures per source address, on a clock."""

    LIMIT = 10
    WINDOW_SECONDS = 60.0
    MAX_SOURCES = 10000

    def __init__(self, clock, max_sources=MAX_SOURCES):
        self.clock = clock
        self.max_sources = max_sources
        self._times = {}  # source host (or OTHERS) -> times of its recent failures
        self._pruned_at = clock.seconds()

    def _cutoff(self):
        return self.clock.seconds() - self.WINDOW_SECONDS

    def _prune(self):
        """Forget every source whose failures have all left the window."""
        cutoff = self._cutoff()
        self._times = {key: times for key, times in self._times.items() if times[-1] > cutoff}
        self._pruned_at = self.clock.seconds()

    def _key(self, host):
        """The counter ``host`` is counted under: its own, or the shared one when the table is full."""
        if self.clock.seconds() - self._pruned_at >= self.WINDOW_SECONDS:
            self._prune()
        if host in self._times or len(self._times) < self.max_sources:
            return host
        self._prune()
        return host if len(self._times) < self.max_sources else OTHERS

    def _recent(self, key):
        cutoff = self._cutoff()
        times = [t for t in self._times.get(key, ()) if t > cutoff]
        if times:
            self._times[key] = times
        else:
            self._times.pop(key, None)
        return times

    def blocked(self, host):
        return len(self._recent(self._key(host))) >= self.LIMIT

    def failed(self, host):
        key = self._key(host)
        self._times[key] = self._recent(key)[-(self.LIMIT - 1):] + [self.clock.seconds()]

    def __len__(self):
        """How many counters are held (the shared one included)."""
        return len(self._times)
