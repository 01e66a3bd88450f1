"""Wrong credentials counted per source address, for every way of logging in.

Past ``LIMIT`` within ``WINDOW_SECONDS`` a source's attempts are refused
unread until the window has moved on, so that a password cannot be guessed
at the speed of the network: XMPP SASL and SIP digest both use it.
"""


class FailedAttempts:
    """Recent failures per source address, on a clock."""

    LIMIT = 10
    WINDOW_SECONDS = 60.0

    def __init__(self, clock):
        self.clock = clock
        self._times = {}  # source host -> times of its recent failures

    def _recent(self, host):
        cutoff = self.clock.seconds() - self.WINDOW_SECONDS
        times = [t for t in self._times.get(host, ()) if t > cutoff]
        if times:
            self._times[host] = times
        else:
            self._times.pop(host, None)
        return times

    def blocked(self, host):
        return len(self._recent(host)) >= self.LIMIT

    def failed(self, host):
        self._times[host] = self._recent(host) + [self.clock.seconds()]
