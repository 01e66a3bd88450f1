"""Authenticated sessions first, when the process has no time to spare.

A flood of peers that never authenticate (connections that send garbage and
reconnect, BOSH session requests, spoofed SIP requests) is a closed loop:
each asks again as soon as it is answered, so it takes whatever share of the
reactor it is given, and the users' own sessions get the rest.  Triage gives
that work a share of its own.

The work done for a peer that has not authenticated (accepting its
connection, its reads, its requests) is timed.  A process with time to
spare lets everything in.  While it is saturated (it used at least
``SATURATED`` of a CPU over the last window), such work waits for the start
of the next window: there, what waits is let in, in the order it came,
until it has taken ``share`` of the window, and the rest waits on.  One
burst a window rather than each piece as it comes: run between the
sessions' reads, the flood's work cost them more than its own time (they
found the processor's caches filled with its data; docs/performance.md).
A datagram cannot wait: it runs as it comes while the window's share
lasts, and is dropped past it.  Authenticated sessions never wait here;
what holds them is their own limits (byte rates, output bounds).
"""

import collections
import time

from twisted.logger import Logger

log = Logger()

# Busier than this over a window, and unauthenticated work is rationed.
SATURATED = 0.9
WINDOW_SECONDS = 0.1
LOG_INTERVAL_SECONDS = 60.0


class Triage:
    """``share``: the fraction of each window that unauthenticated work may take while saturated.

    ``cpu`` tells the process's CPU seconds, ``timer`` times one piece of
    work; both are parameters for tests.
    """

    def __init__(self, clock, share, window=WINDOW_SECONDS, cpu=time.process_time, timer=time.perf_counter):
        self.clock = clock
        self.share = share
        self.window = window
        self.saturated = False
        self.deferred = 0  # pieces of work that had to wait, since the start
        self._cpu = cpu
        self._timer = timer
        self._spent = 0.0  # seconds taken by unauthenticated work in this window
        self._waiting = collections.deque()  # what to call when the peer may go on
        self._cpu_at = None
        self._tick = None
        self._logged_at = float("-inf")

    def start(self):
        self._cpu_at = self._cpu()
        self._tick = self.clock.callLater(self.window, self._next_window)

    def stop(self):
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None

    def allows(self):
        """Whether this window's share has room for more unauthenticated work (always, while the process has
        time to spare)."""
        return not self.saturated or self._spent < self.share * self.window

    def measure(self, work, *args):
        """Run ``work(*args)`` as unauthenticated work: its time counts against the share."""
        started = self._timer()
        try:
            return work(*args)
        finally:
            self._spent += self._timer() - started

    def run(self, work, *args):
        """``work(*args)`` as unauthenticated work: now while the process has time to spare, else when
        triage lets it in."""
        if not self.saturated:
            self.measure(work, *args)
        else:
            self.wait(lambda: self.measure(work, *args))

    def wait(self, resume):
        """Call ``resume()`` when unauthenticated work may run again (a peer waits at most once)."""
        self.deferred += 1
        self._waiting.append(resume)

    def _next_window(self):
        cpu = self._cpu()
        saturated = (cpu - self._cpu_at) >= SATURATED * self.window
        now = self.clock.seconds()
        if saturated and not self.saturated and now - self._logged_at >= LOG_INTERVAL_SECONDS:
            # At most once a minute: the load may come and go ten times a second.
            self._logged_at = now
            log.info("saturated: peers that have not authenticated get {share:.0%} of the time "
                     "({count} of their reads or requests have waited since the start)",
                     share=self.share, count=self.deferred)
        self.saturated = saturated
        self._cpu_at = cpu
        self._spent = 0.0
        while self._waiting and self.allows():
            resume = self._waiting.popleft()
            resume()
        self._tick = self.clock.callLater(self.window, self._next_window)


class Gate:
    """The reads of one unauthenticated peer under triage.

    ``receive(data)`` runs ``take(data)`` at once, timed, while the process has
    time to spare; otherwise the data is kept, reading paused through ``hold`` (an object
    with ``pauseProducing``/``resumeProducing``), and taken when triage lets
    the peer in.  ``take`` must ignore data once its connection has ended.
    """

    def __init__(self, triage, hold, take):
        self.triage = triage
        self.hold = hold
        self.take = take
        self._kept = None  # while waiting: the reads not taken yet

    def receive(self, data):
        if self._kept is not None or self.triage.saturated:
            self.wait(data)
        else:
            self.triage.measure(self.take, data)

    def wait(self, data=b""):
        """Stop reading until triage lets the peer in (``data``, if any, is taken then)."""
        if self._kept is None:
            self._kept = []
            self.hold.pauseProducing()
            self.triage.wait(self._let_in)
        if data:
            self._kept.append(data)

    def _let_in(self):
        kept, self._kept = self._kept, None
        self.hold.resumeProducing()
        for data in kept:
            self.triage.measure(self.take, data)


class AcceptGate:
    """The accepting of new connections on one listening port (a Twisted ``tcp.Port``), under triage.

    A new connection has not authenticated, and accepting it and making its
    protocol cost more than a garbage connection's few reads: that work is
    timed against the share.  While the process is saturated the port stops
    accepting, and accepts what waits when triage lets it in: meanwhile the
    connections wait in the kernel's queue, and a client whose handshake
    finds the queue full tries again (about a second later, the kernel's SYN
    retransmission).
    """

    def __init__(self, triage, port):
        self.triage = triage
        self.port = port
        self._accept = port.doRead
        self._waiting = False
        port.doRead = self.doRead

    def doRead(self):
        if self.triage.saturated:
            if not self._waiting:
                self._waiting = True
                self.port.stopReading()
                self.triage.wait(self._let_in)
            return None
        return self.triage.measure(self._accept)

    def _let_in(self):
        """Accept what waits now, in the window's burst, and watch the port again."""
        self._waiting = False
        if self.port.connected and not self.port.disconnecting:
            self.triage.measure(self._accept)
            self.port.startReading()
